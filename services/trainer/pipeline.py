"""One training run: dataset → fit → ONNX → gate → register (or reject), reported as
it goes.

The run's lease is renewed in the background for as long as the run works, each
renewal carrying what is known so far; CPU-bound stages (reading, fitting, exporting,
scoring) run on worker threads. A candidate that passes is registered as a version
whose lineage names this run (the registry refuses a second version for one run);
the registry then approves it and starts its canary, or waits for a deployer, as
the policy says. A run that cannot finish says why in `error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration
from grpc import StatusCode, aio

from services.common import drift
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc
from services.trainer import data, fit, gate

log = logging.getLogger(__name__)

Run = tpb.TrainingRun
T = TypeVar("T")
CHUNK = 1 << 20
REFERENCE_ROWS = 5000


@dataclass
class Registry:
    """The registry as a trainer talks to it."""

    registry: rpb_grpc.RegistryServiceStub
    training: tpb_grpc.TrainingServiceStub
    metadata: tuple[tuple[str, str], ...]

    def call(self, method: Any, request: Any, timeout: float = 30) -> Any:
        return method(request, metadata=self.metadata, timeout=timeout)


class LeaseLost(Exception):
    """The registry gave the run away (this trainer was silent too long)."""


class RunFailed(Exception):
    """The run cannot finish; the message is the run's error."""


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


async def report(reg: Registry, run: Run, lease_seconds: float) -> Run:
    try:
        reply = await reg.call(
            reg.training.UpdateTrainingRun,
            tpb.UpdateTrainingRunRequest(run=run, lease_duration=_duration(lease_seconds)),
        )
    except aio.AioRpcError as exc:
        if exc.code() == StatusCode.ABORTED:
            raise LeaseLost(exc.details()) from None
        raise
    updated: Run = reply.run
    return updated


@asynccontextmanager
async def lease(reg: Registry, run: Run, seconds: float) -> AsyncIterator[asyncio.Event]:
    """Renew the run's lease every third of it; the event is set if the lease is lost."""
    lost = asyncio.Event()

    async def renew() -> None:
        while True:
            await asyncio.sleep(seconds / 3)
            progress = Run()
            progress.CopyFrom(run)
            progress.state = Run.STATE_RUNNING  # the end is reported once, by `execute`
            try:
                await report(reg, progress, seconds)
            except LeaseLost:
                lost.set()
                return
            except aio.AioRpcError as exc:  # the registry away for a moment: try again
                log.warning("renewing the lease of %s failed: %s", run.name, exc.details())

    task = asyncio.create_task(renew(), name=f"lease {run.name}")
    try:
        yield lost
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _stage(run: Run, name: str, work: Callable[[], Awaitable[T]]) -> T:
    started = time.perf_counter()
    try:
        return await work()
    finally:
        run.stage_seconds[name] = round(time.perf_counter() - started, 4)


async def _download(reg: Registry, name: str) -> bytes:
    parts = []
    call = reg.registry.DownloadArtifact(
        rpb.DownloadArtifactRequest(name=name), metadata=reg.metadata, timeout=300
    )
    async for message in call:
        if message.WhichOneof("part") == "chunk":
            parts.append(message.chunk)
    return b"".join(parts)


async def production_of(reg: Registry, model: str) -> int:
    """The version serving all the traffic (a canary's stable one); 0 when none."""
    reply = await reg.call(
        reg.registry.GetRollout, rpb.GetRolloutRequest(name=f"models/{model}/rollout")
    )
    rollout = reply.rollout
    if rollout.status.phase in (
        rpb.AnalysisStatus.PHASE_PROGRESSING,
        rpb.AnalysisStatus.PHASE_PAUSED,
    ):
        return int(rollout.status.stable_version)
    serving = [t for t in rollout.targets if t.percent > 0]
    return int(max(serving, key=lambda t: t.percent).version) if serving else 0


async def _upload(
    reg: Registry, model: str, onnx_bytes: bytes, version: rpb.Version
) -> rpb.Version:
    async def requests() -> AsyncIterator[rpb.CreateVersionRequest]:
        yield rpb.CreateVersionRequest(
            metadata=rpb.CreateVersionRequest.Metadata(
                parent=f"models/{model}",
                sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                size_bytes=len(onnx_bytes),
                format=rpb.ARTIFACT_FORMAT_ONNX,
                version=version,
            )
        )
        for start in range(0, len(onnx_bytes), CHUNK):
            yield rpb.CreateVersionRequest(chunk=onnx_bytes[start : start + CHUNK])

    reply = await reg.registry.CreateVersion(requests(), metadata=reg.metadata, timeout=300)
    created: rpb.Version = reply.version
    return created


Source = Callable[[tpb.TrainingPolicy, Run], Awaitable[data.Table]]


async def file_source(policy: tpb.TrainingPolicy, run: Run) -> data.Table:
    return await asyncio.to_thread(data.read_file, policy.dataset_uri, data.wanted_columns(policy))


async def execute(
    reg: Registry,
    run: Run,
    policy: tpb.TrainingPolicy,
    lease_seconds: float,
    events: Source | None = None,
) -> Run:
    """Carry a claimed run to its end and report it; returns the run as reported."""
    model = run.name.split("/")[1]
    async with lease(reg, run, lease_seconds) as lost:
        try:
            await _work(reg, run, policy, model, events)
        except LeaseLost:
            raise
        except (RunFailed, data.DataError, fit.FitError) as exc:
            run.state = Run.STATE_FAILED
            run.error = str(exc)
        except aio.AioRpcError as exc:
            run.state = Run.STATE_FAILED
            run.error = f"the registry refused: {exc.code().name}: {exc.details()}"
        except Exception as exc:  # a bug must still end the run, not leave it to the lease
            log.exception("run %s failed", run.name)
            run.state = Run.STATE_FAILED
            run.error = f"{type(exc).__name__}: {exc}"
        if lost.is_set():
            raise LeaseLost(f"{run.name}: the registry gave the run away")
    return await report(reg, run, lease_seconds)


async def _work(
    reg: Registry, run: Run, policy: tpb.TrainingPolicy, model: str, events: Source | None
) -> None:
    if policy.dataset_uri:
        source: Source = file_source
    elif events is not None:
        source = events
    else:
        raise RunFailed(
            "the policy reads the event stream (no dataset_uri) and this trainer has no "
            "event-stream connection"
        )
    table = await _stage(run, "dataset", lambda: source(policy, run))
    run.dataset.uri = table.uri
    run.first_sequence, run.last_sequence = table.first_sequence, table.last_sequence
    run.source_rows = table.rows
    rows = await _stage(run, "split", lambda: asyncio.to_thread(data.split, table, policy))
    run.dropped_rows = rows.dropped
    run.dataset.digest, run.dataset.rows = rows.digest, rows.rows
    run.train_rows, run.holdout_rows = len(rows.y_train), len(rows.y_holdout)
    described = await reg.call(reg.registry.GetModel, rpb.GetModelRequest(name=f"models/{model}"))
    signature = described.model.signature
    run.production_version = await production_of(reg, model)
    production_bytes = b""
    if run.production_version:
        name = f"models/{model}/versions/{run.production_version}"
        production_bytes = await _stage(run, "production", lambda: _download(reg, name))
    fitted = await _stage(
        run,
        "fit",
        lambda: asyncio.to_thread(
            fit.fit, policy.estimator, policy.task, rows.x_train, rows.y_train, signature
        ),
    )

    def judge() -> gate.Verdict:
        candidate = gate.Model(fitted.onnx_bytes, policy.task)
        production = gate.Model(production_bytes, policy.task) if production_bytes else None
        return gate.judge(
            policy,
            rows.x_holdout,
            rows.y_holdout,
            rows.groups_holdout,
            candidate,
            production,
            fitted.estimator,
        )

    verdict = await _stage(run, "gate", lambda: asyncio.to_thread(judge))
    del run.checks[:]
    run.checks.extend(verdict.checks)
    run.candidate_metrics.update(verdict.candidate)
    run.production_metrics.update(verdict.production)
    if not verdict.passed:
        run.state = Run.STATE_REJECTED
        failed = [c.text for c in verdict.checks if not c.passed]
        log.info("run %s rejected: %s", run.name, "; ".join(failed))
        return
    version = await _stage(
        run, "register", lambda: _register(reg, run, policy, model, fitted, rows, signature)
    )
    run.state = Run.STATE_SUCCEEDED
    log.info("run %s registered v%d", run.name, version.number)


async def _register(
    reg: Registry,
    run: Run,
    policy: tpb.TrainingPolicy,
    model: str,
    fitted: fit.Fitted,
    rows: data.Split,
    signature: rpb.Signature,
) -> rpb.Version:
    def reference() -> rpb.ReferenceStatistics:
        sample = rows.x_train[-REFERENCE_ROWS:]
        candidate = gate.Model(fitted.onnx_bytes, policy.task)
        names = [o.name for o in candidate.session.get_outputs()]
        outputs = dict(zip(names, candidate.run(sample), strict=True))
        return drift.reference_statistics({candidate.input: sample}, outputs)

    statistics = await asyncio.to_thread(reference)
    metrics = {f"holdout_{k}": v for k, v in run.candidate_metrics.items()}
    metrics.update({f"holdout_{k}_production": v for k, v in run.production_metrics.items()})
    trigger = tpb.TrainingTrigger.Name(run.trigger).removeprefix("TRAINING_TRIGGER_").lower()
    version = rpb.Version(
        description=f"trained by {run.name} ({trigger})",
        dataset=rpb.Dataset(uri=run.dataset.uri, digest=run.dataset.digest, rows=run.dataset.rows),
        params={
            **fitted.params,
            "estimator": policy.estimator.class_path or policy.estimator.entry_point,
        },
        metrics=metrics,
        reference_statistics=statistics,
        lineage=rpb.Lineage(parent_version=run.production_version, pipeline_run=run.name),
        tags={"trigger": trigger, "train_rows": str(run.train_rows)},
    )
    created = await _upload(reg, model, fitted.onnx_bytes, version)
    run.version = created.number
    return created
