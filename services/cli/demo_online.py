"""`liveml demo online`: an online model tracks a concept that drifts twice, while a
static batch model decays.

On the embedded default (SQLite, a local artifact folder) it starts a registry, two
workers, a gateway and a trainer as processes. Two models serve the same stream of
8-feature rows: `static`, a logistic regression trained once on the first concept,
and `online`, whose training policy is in online mode: the trainer's learner reads
the labelled examples ingested through the gateway, learns them (prequential, with
drift detection) and publishes a version every second through its light gate. The
concept (a linear rule) turns by 50 degrees twice, abruptly. Probes send rows of the
current concept through the gateway to both models and score the answers.

Each phase ends once the online model's served accuracy is back above the bar (or
fails after a deadline): the demo waits on conditions, not on a clock. It writes
`online-demo.png` (accuracy over time of both, the drifts marked) and
`online-demo.txt` (the summary) to its folder, prints the summary, and exits 0 only
if what the summary claims held: the online model recovered after each drift, the
static one decayed, and no client request failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from grpc import aio

from services.cli import demo_plot
from services.cli.demo import seconds
from services.cli.demo_cluster import DemoFailure, Services, free_port, until
from services.cli.demo_online_summary import (
    ONLINE,
    RECOVERED,
    STATIC,
    SUMMARY,
    Record,
    verdict,
    write_outputs,
)
from services.cli.demo_report import console
from services.common import codec
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc

FEATURES = 8
TURN_DEGREES = 50.0  # each drift turns the rule by this much
NOISE = 0.02  # labels flipped at random
WINDOW = 2.0  # seconds of probes an accuracy is measured over


@dataclass
class Size:
    phase_examples: int = 6000  # examples of each concept at least
    rate: int = 600  # examples ingested per second
    phase_seconds: float = 120.0  # a phase that has not recovered by then fails


class StreamFailed(DemoFailure):
    """The ingesting or a probing task ended with an error."""


class Concepts:
    """Three linear rules, each turned TURN_DEGREES from the one before."""

    def __init__(self) -> None:
        rng = np.random.default_rng(11)
        w0 = rng.normal(size=FEATURES)
        w0 /= np.linalg.norm(w0)
        u = rng.normal(size=FEATURES)
        u -= (u @ w0) * w0
        u /= np.linalg.norm(u)
        angles = [math.radians(TURN_DEGREES * k) for k in range(3)]
        self.rules = [math.cos(a) * w0 + math.sin(a) * u for a in angles]
        self.current = 0
        self.rng = np.random.default_rng(12)

    def draw(self, n: int, noisy: bool = True) -> tuple[npt.NDArray[np.float32], np.ndarray]:
        x = self.rng.normal(size=(n, FEATURES)).astype(np.float32)
        y = (x @ self.rules[self.current] > 0).astype(np.int64)
        if noisy:
            flip = self.rng.random(n) < NOISE
            y = np.where(flip, 1 - y, y)
        return x, y


def _request(model: str, x: npt.NDArray[np.float32]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    datatype, shape, raw = codec.encode_raw(x)
    request.inputs.add(name="X", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


def _labels(reply: pb.ModelInferResponse) -> np.ndarray:
    for i, out in enumerate(reply.outputs):
        if out.name == "label":
            return codec.decode_raw(out.name, out.datatype, out.shape, reply.raw_output_contents[i])
    raise DemoFailure(f"the answer of {reply.model_name} has no 'label' output")


Md = tuple[tuple[str, str], ...]


async def probe(gateway: str, model: str, concepts: Concepts, record: Record, md: Md) -> None:
    """Rows of the current concept to `model` through the gateway, scored, 10 times a second."""
    record.scores[model] = []
    async with aio.insecure_channel(gateway) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer  # type: ignore[no-untyped-call]
        while not record.stop.is_set():
            x, y = concepts.draw(50, noisy=False)  # scored on the rule itself
            record.requests += 1
            try:
                reply = await infer(_request(model, x), timeout=10, metadata=md)
            except aio.AioRpcError as exc:
                record.failures.append(f"{model}: {exc.code().name}: {exc.details()}")
            else:
                right = int((_labels(reply).ravel() == y).sum())
                record.scores[model].append((record.now(), right, len(y)))
            await asyncio.sleep(0.1)  # the probes' pace, not a synchronisation


async def ingest(gateway: str, concepts: Concepts, record: Record, rate: int, md: Md) -> None:
    """Labelled examples of the current concept through the gateway, `rate` a second."""
    per_call = max(1, rate // 10)
    async with aio.insecure_channel(gateway) as channel:
        stub = gpb_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
        next_at = time.monotonic()
        while not record.stop.is_set():
            x, y = concepts.draw(per_call)
            examples = [
                gpb.Example(features=row.tolist(), label=gpb.Label(class_index=int(label)))
                for row, label in zip(x, y, strict=True)
            ]
            try:
                await stub.IngestExamples(
                    gpb.IngestExamplesRequest(model_name=ONLINE, examples=examples),
                    timeout=30,
                    metadata=md,
                )
            except aio.AioRpcError as exc:
                # Until the model's first version serves, the gateway does not know it
                # (NOT_FOUND) or not its input signature (FAILED_PRECONDITION).
                waiting = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
                if record.served or exc.code() not in waiting:
                    raise
                await asyncio.sleep(0.1)  # a retry's pause
                continue
            record.ingested += per_call
            next_at += per_call / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # the stream's pace


def _static_model(concepts: Concepts, path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = concepts.draw(4000)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    onnx = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17)
    path.write_bytes(onnx.SerializeToString())


async def seed(
    stub: rpb_grpc.RegistryServiceStub, token: str, concepts: Concepts, record: Record
) -> None:
    x, y = concepts.draw(500)
    events = [
        epb.Event(
            kind=epb.EVENT_KIND_EXAMPLE,
            model=ONLINE,
            key=f"seed-{i}",
            example=epb.Example(
                features=row.tolist(),
                label=gpb.Label(class_index=int(label)),
                origin=epb.EXAMPLE_ORIGIN_INGESTED,
            ),
        )
        for i, (row, label) in enumerate(zip(x, y, strict=True))
    ]
    await stub.AppendEvents(
        rpb.AppendEventsRequest(events=events), metadata=(("authorization", f"Bearer {token}"),)
    )
    record.ingested += len(events)


async def served(gateway: str, model: str, within: float, md: Md) -> None:
    """Wait until the gateway answers for `model` (before the probes count anything)."""
    async with aio.insecure_channel(gateway) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer  # type: ignore[no-untyped-call]

        async def answers() -> bool:
            try:
                await infer(
                    _request(model, np.zeros((1, FEATURES), np.float32)), timeout=5, metadata=md
                )
            except aio.AioRpcError:
                return False
            return True

        await until(answers, within, f"the gateway to answer for {model}")


async def register_static(
    stub: rpb_grpc.RegistryServiceStub, md: Any, path: Path, within: float
) -> None:
    """The static model's only version, taking all its traffic."""
    await stub.CreateModel(rpb.CreateModelRequest(model_id=STATIC), metadata=md)
    data = await asyncio.to_thread(path.read_bytes)

    async def upload() -> Any:
        meta = rpb.CreateVersionRequest.Metadata(
            parent=f"models/{STATIC}",
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            format=rpb.ARTIFACT_FORMAT_ONNX,
            version=rpb.Version(description="trained once, on concept A"),
        )
        yield rpb.CreateVersionRequest(metadata=meta)
        yield rpb.CreateVersionRequest(chunk=data)

    made = await stub.CreateVersion(upload(), metadata=md)
    await stub.UpdateRollout(
        rpb.UpdateRolloutRequest(
            rollout=rpb.Rollout(
                name=f"models/{STATIC}/rollout",
                targets=[rpb.TrafficTarget(version=made.version.number, percent=100)],
            )
        ),
        metadata=md,
    )


def _policy() -> tpb.TrainingPolicy:
    params = {"loss": '"log_loss"', "learning_rate": '"constant"', "eta0": "0.01"}
    return tpb.TrainingPolicy(
        name=f"models/{ONLINE}/trainingPolicy",
        task=tpb.TRAINING_TASK_CLASSIFICATION,
        estimator=tpb.Estimator(class_path="sklearn.linear_model.SGDClassifier", params=params),
        features=[f"f{i}" for i in range(FEATURES)],
        label="y",
        mode=tpb.TRAINING_MODE_ONLINE,
        online=tpb.OnlinePolicy(
            batch_size=64,
            publish_every=10**9,
            publish_interval=seconds(1),
            rollout=tpb.ONLINE_ROLLOUT_DIRECT,
            # A turned rule moves the weights further than a small update would (a
            # flipped one, twice their norm, is still held as a label-flip storm).
            max_weight_change=1.6,
            max_forgetting=0.15,
        ),
        cooldown=seconds(30),
    )


class OnlineDemo:
    def __init__(self, workdir: Path, size: Size) -> None:
        self.workdir = workdir
        self.size = size
        self.services = Services(workdir)
        self.record = Record()
        self.status: tpb.LearnerStatus | None = None

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.record.stop.set()
            self.services.stop()

    async def _start(self) -> tuple[str, str]:
        w = self.workdir
        port = free_port()
        self.services.start(
            "registry",
            {
                "LIVEML_DATABASE_URL": f"sqlite+aiosqlite:///{w}/registry.db",
                "LIVEML_ARTIFACT_DIR": str(w / "artifacts"),
                "LIVEML_ADMIN_TOKEN_FILE": str(w / "admin.token"),
                "LIVEML_WATCH_POLL_SECONDS": "0.2",
            },
            "registry", "serve", "--port", str(port), "--metrics-port", "-1",
        )  # fmt: skip
        await self.services.wait_port("registry", port)
        return f"127.0.0.1:{port}", (w / "admin.token").read_text().strip()

    async def _run(self) -> None:
        registry, admin = await self._start()
        md = (("authorization", f"Bearer {admin}"),)
        channel = aio.insecure_channel(registry)
        stub = rpb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        training = tpb_grpc.TrainingServiceStub(channel)  # type: ignore[no-untyped-call]
        tokens = {}
        roles = (
            (rpb.ROLE_GATEWAY, "demo gateway"),
            (rpb.ROLE_TRAINER, "demo"),
            (rpb.ROLE_INGEST, "demo seed"),
            (rpb.ROLE_CLIENT, "demo application"),
        )
        for role, display in roles:
            made = await stub.CreateToken(
                rpb.CreateTokenRequest(display_name=display, role=role), metadata=md
            )
            tokens[role] = made.secret
        plane = {"LIVEML_REPORT_SECONDS": "0.5"}
        ports = {"worker-1": free_port(), "worker-2": free_port(), "gateway": free_port()}
        w = self.workdir
        for name in ("worker-1", "worker-2"):
            # Each worker its own token, bound to its id (one cannot act for another).
            made = await stub.CreateToken(
                rpb.CreateTokenRequest(
                    display_name=f"demo {name}", role=rpb.ROLE_WORKER, worker_id=name
                ),
                metadata=md,
            )
            self.services.start(
                name, {**plane, "LIVEML_REGISTRY_TOKEN": made.secret},
                "worker", "serve", "--registry", registry, "--port", str(ports[name]),
                "--metrics-port", "-1", "--worker-id", name, "--cache-dir", str(w / name),
                "--heartbeat-seconds", "0.5", "--drain-grace", "1",
            )  # fmt: skip
        self.services.start(
            "gateway", {**plane, "LIVEML_REGISTRY_TOKEN": tokens[rpb.ROLE_GATEWAY]},
            "gateway", "serve", "--registry", registry, "--port", str(ports["gateway"]),
            "--metrics-port", "-1",
        )  # fmt: skip
        trainer_port = free_port()
        self.services.start(
            "trainer", {"LIVEML_REGISTRY_TOKEN": tokens[rpb.ROLE_TRAINER]},
            "trainer", "serve", "--registry", registry, "--port", str(trainer_port),
            "--metrics-port", "-1", "--work-dir", str(w / "trainer"),
        )  # fmt: skip
        for name, p in {**ports, "trainer": trainer_port}.items():
            await self.services.wait_port(name, p)
        gateway = f"127.0.0.1:{ports['gateway']}"
        console.print(f"[bold green]✓[/] registry, 2 workers, gateway {gateway}, trainer")

        concepts = Concepts()
        path = w / "static.onnx"
        await asyncio.to_thread(_static_model, concepts, path)
        await register_static(stub, md, path, 60)
        await stub.CreateModel(rpb.CreateModelRequest(model_id=ONLINE), metadata=md)
        await training.SetTrainingPolicy(
            tpb.SetTrainingPolicyRequest(policy=_policy()), metadata=md
        )
        console.print(
            "[bold green]✓[/] static: a logistic regression of the first concept; online: "
            "SGDClassifier learning the stream, a version a second"
        )
        record = self.record
        record.started = time.monotonic()
        # The gateway routes (and takes examples for) models that serve a version: the
        # first examples go to the event stream directly, the learner's first version
        # follows within a second or two.
        await seed(stub, tokens[rpb.ROLE_INGEST], concepts, record)
        # The application infers with a client token, sends examples with an ingest one.
        client_md = (("authorization", f"Bearer {tokens[rpb.ROLE_CLIENT]}"),)
        ingest_md = (("authorization", f"Bearer {tokens[rpb.ROLE_INGEST]}"),)
        tasks = [asyncio.create_task(ingest(gateway, concepts, record, self.size.rate, ingest_md))]
        try:
            for model in (STATIC, ONLINE):  # the online one once its first version serves
                await served(gateway, model, self.size.phase_seconds, client_md)
                record.served = record.served or model == ONLINE
                tasks.append(
                    asyncio.create_task(probe(gateway, model, concepts, record, client_md))
                )
            for k in range(3):
                await self._phase(k, concepts, tasks)
        finally:
            record.stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise DemoFailure(f"the stream or a probe failed: {result}")
        reply = await training.GetLearnerStatus(
            tpb.GetLearnerStatusRequest(parent=f"models/{ONLINE}"), metadata=md
        )
        self.status = reply.status
        await channel.close()

    async def _phase(self, k: int, concepts: Concepts, tasks: list[asyncio.Task[None]]) -> None:
        record = self.record
        start_examples = record.ingested
        if k:
            concepts.current = k
            record.drifts.append(record.now())
            console.print(f"[bold yellow]↻[/] drift {k}: the rule turned {TURN_DEGREES:g}°")
        began = record.now()
        phase: dict[str, Any] = {"concept": "ABC"[k], "start": began}
        record.phases.append(phase)

        async def settled() -> bool:
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise StreamFailed(f"the stream or a probe failed: {task.exception()!r}")
            now = record.now()
            if now - began < WINDOW:
                return False
            online = record.accuracy(ONLINE, now - WINDOW)
            if online is not None and online >= RECOVERED and "recovered" not in phase:
                phase["recovered"] = now - began
            enough = record.ingested - start_examples >= self.size.phase_examples
            return enough and "recovered" in phase

        try:
            await until(settled, self.size.phase_seconds, f"concept {'ABC'[k]} to be learned")
        except StreamFailed:
            raise
        except DemoFailure:
            phase["end"] = record.now()
            raise DemoFailure(
                f"after {'the start' if not k else f'drift {k}'} the online model's served "
                f"accuracy did not reach {RECOVERED:g} within {self.size.phase_seconds:g} s"
            ) from None
        end = record.now()
        phase["end"] = end
        for model in (ONLINE, STATIC):
            phase[model] = record.accuracy(model, end - WINDOW, end)
        console.print(
            f"[bold green]✓[/] concept {phase['concept']}: online {phase[ONLINE]:.3f} "
            f"(≥ {RECOVERED:g} after {phase['recovered']:.1f} s), static {phase[STATIC]:.3f}"
        )


def main(out: Path, keep: Path | None = None, size: Size | None = None) -> int:
    """Run the demo; the plot and the summary go to `out`, the processes' database,
    artifacts and logs to `keep` (a temporary folder, removed after a pass, if None)."""
    workdir = keep or Path(tempfile.mkdtemp(prefix="liveml-demo-online-"))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        console.print(f"[bold red]✗ demo failed:[/] cannot use its folders: {exc}")
        return 1
    console.rule("[bold]liveml demo online: learning a drifting stream while it is served")
    if not demo_plot.available():
        console.print(f"[yellow]matplotlib is not installed: no plot ({demo_plot.INSTALL})[/]")
    demo = OnlineDemo(workdir, size or Size())
    error = ""
    try:
        asyncio.run(demo.run())
    except (DemoFailure, aio.AioRpcError) as exc:
        error = str(exc)
    lines, ok = verdict(demo.record, demo.status)
    if error:
        lines = [*lines, f"stopped early: {error}"]
        ok = False
    _, lines = write_outputs(out, demo.record, lines)
    console.print("\n".join(lines))
    console.print(f"summary: {out / SUMMARY}")
    if ok:
        console.print("[bold green]demo passed[/]")
    else:
        console.print(f"[bold red]✗ demo failed[/]: logs of every process in {workdir}/*.log")
    if keep is None and ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1
