"""`liveml demo` (what `make run` runs): the live-update workflow, narrated, end to end.

On the embedded default (SQLite and a local artifact folder, no other server) it
starts a registry, two workers and a gateway as processes, trains v1 with
scikit-learn, exports it to ONNX with its reference statistics, and drives client
traffic with ground-truth feedback through the gateway. Then it publishes a better
v2, which the rollout controller walks to 100%, and a bad v3 (trained on shuffled
labels), which the controller rolls back on its feedback accuracy. It ends with a
summary table and exits 0 only when every step did what it should: no client
request failed, v2 was promoted, v3 was rolled back and the audit trail is intact.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from google.protobuf.duration_pb2 import Duration
from grpc import aio
from rich.console import Console
from rich.table import Table

from services.common import codec, drift
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc

console = Console()
MODEL = "demo"
Phase = rpb.AnalysisStatus
T = TypeVar("T")


class DemoFailure(RuntimeError):
    pass


# --- data and models ------------------------------------------------------------------------


@dataclass
class Data:
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_live: npt.NDArray[np.float32]
    y_live: npt.NDArray[np.int64]


def make_data() -> Data:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=6000, n_features=8, n_informative=5, flip_y=0.02, random_state=7
    )
    x = x.astype(np.float32)
    return Data(x[:3000], y[:3000].astype(np.int64), x[3000:], y[3000:].astype(np.int64))


def train(data: Data, path: Path, rows: int, c: float, shuffle: bool = False) -> rpb.Version:
    """A logistic regression exported to ONNX; the version's metrics and reference statistics."""
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = data.x_train[:rows], data.y_train[:rows]
    if shuffle:  # a broken pipeline: labels no longer belong to their rows
        y = np.random.default_rng(3).permutation(y)
    model = LogisticRegression(C=c, max_iter=1000).fit(x, y)
    onnx_model = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17)
    path.write_bytes(onnx_model.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"X": data.x_train})
    holdout = float(model.score(data.x_live[:1000], data.y_live[:1000]))
    return rpb.Version(
        description=path.stem,
        metrics={"holdout_accuracy": holdout},
        params={"C": str(c), "rows": str(rows), "shuffled_labels": str(shuffle).lower()},
        dataset=rpb.Dataset(uri="sklearn:make_classification", rows=rows),
        reference_statistics=drift.reference_statistics(
            {"X": data.x_train}, {"label": label, "probabilities": probabilities}
        ),
    )


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Services:
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, env: dict[str, str], *args: str) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", *args],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def wait_port(self, name: str, port: int, within: float = 60) -> None:
        async def up() -> bool:
            if self.procs[name].poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")
                raise DemoFailure(f"{name} exited early:\n{log[-2000:]}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            return True

        await until(up, within, f"{name} listening on port {port}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def until(check: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailure(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


# --- traffic --------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Clients calling the gateway and reporting the true label of every answer."""

    address: str
    data: Data
    clients: int = 4
    answers: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _client(self, index: int) -> None:
        rng = np.random.default_rng(index)
        async with aio.insecure_channel(self.address) as channel:
            infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer  # type: ignore[no-untyped-call]
            feedback = gpb_grpc.GatewayServiceStub(channel).SubmitFeedback  # type: ignore[no-untyped-call]
            n = 0
            while not self._stop.is_set():
                row = int(rng.integers(len(self.data.x_live)))
                request = pb.ModelInferRequest(model_name=MODEL, id=f"c{index}-{n}")
                datatype, shape, raw = codec.encode_raw(self.data.x_live[row : row + 1])
                request.inputs.add(name="X", datatype=datatype, shape=shape)
                request.raw_input_contents.append(raw)
                n += 1
                try:
                    reply = await infer(request, timeout=10)
                except aio.AioRpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")
                    continue
                version = reply.model_version
                self.answers[version] = self.answers.get(version, 0) + 1
                truth = gpb.Label(class_index=int(self.data.y_live[row]))
                await feedback(
                    gpb.SubmitFeedbackRequest(
                        model_name=MODEL, request_id=request.id, ground_truth=truth
                    ),
                    timeout=10,
                )

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


# --- the demo -------------------------------------------------------------------------------


def seconds(value: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


async def _upload(path: Path, version: rpb.Version) -> AsyncIterator[rpb.CreateVersionRequest]:
    data = await asyncio.to_thread(path.read_bytes)
    meta = rpb.CreateVersionRequest.Metadata(
        parent=f"models/{MODEL}",
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        format=rpb.ARTIFACT_FORMAT_ONNX,
        version=version,
    )
    yield rpb.CreateVersionRequest(metadata=meta)
    for start in range(0, len(data), 1 << 20):
        yield rpb.CreateVersionRequest(chunk=data[start : start + (1 << 20)])


def _shares(rollout: rpb.Rollout) -> str:
    return " + ".join(f"v{t.version} {t.percent}%" for t in rollout.targets) or "none"


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.services = Services(workdir)
        self.steps: list[tuple[str, str]] = []

    def step(self, title: str, outcome: str) -> None:
        self.steps.append((title, outcome))
        console.print(f"[bold green]✓[/] [bold]{title}[/]: {outcome}")

    async def run(self) -> list[rpb.VersionMetrics]:
        try:
            return await self._run()
        finally:
            self.services.stop()

    async def _start(self) -> tuple[rpb_grpc.RegistryServiceStub, Any, str, aio.Channel]:
        w = self.workdir
        port = free_port()
        self.services.start(
            "registry",
            {
                "LIVEML_DATABASE_URL": f"sqlite+aiosqlite:///{w}/registry.db",
                "LIVEML_ARTIFACT_DIR": str(w / "artifacts"),
                "LIVEML_ADMIN_TOKEN_FILE": str(w / "admin.token"),
                "LIVEML_CONTROLLER_SECONDS": "0.25",
                "LIVEML_MONITOR_SECONDS": "1",
                "LIVEML_WATCH_POLL_SECONDS": "0.2",
            },
            "registry", "serve", "--port", str(port), "--metrics-port", "-1",
        )  # fmt: skip
        await self.services.wait_port("registry", port)
        registry = f"127.0.0.1:{port}"
        channel = aio.insecure_channel(registry)
        stub = rpb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        md = (("authorization", f"Bearer {(w / 'admin.token').read_text().strip()}"),)
        made = await stub.CreateToken(
            rpb.CreateTokenRequest(display_name="demo data plane", role=rpb.ROLE_WORKER),
            metadata=md,
        )
        self.step("registry", f"{registry} (SQLite and artifacts in {w})")
        plane = {"LIVEML_REGISTRY_TOKEN": made.secret, "LIVEML_REPORT_SECONDS": "0.5"}
        ports = {"worker-1": free_port(), "worker-2": free_port(), "gateway": free_port()}
        for name in ("worker-1", "worker-2"):
            self.services.start(
                name,
                plane,
                "worker", "serve", "--registry", registry, "--port", str(ports[name]),
                "--metrics-port", "-1", "--worker-id", name, "--cache-dir", str(w / name),
                "--heartbeat-seconds", "0.5", "--drain-grace", "1",
            )  # fmt: skip
        self.services.start(
            "gateway",
            plane,
            "gateway", "serve", "--registry", registry, "--port", str(ports["gateway"]),
            "--metrics-port", "-1",
        )  # fmt: skip
        for name, p in ports.items():
            await self.services.wait_port(name, p)
        self.step("data plane", f"2 workers and the gateway on 127.0.0.1:{ports['gateway']}")
        return stub, md, f"127.0.0.1:{ports['gateway']}", channel

    async def _run(self) -> list[rpb.VersionMetrics]:
        stub, md, gateway, channel = await self._start()
        data = await asyncio.to_thread(make_data)

        async def publish(name: str, **how: Any) -> rpb.Version:
            path = self.workdir / f"{name}.onnx"
            described = await asyncio.to_thread(train, data, path, **how)
            reply = await stub.CreateVersion(_upload(path, described), metadata=md)
            version: rpb.Version = reply.version
            self.step(
                f"v{version.number} published",
                f"{name}: holdout accuracy {described.metrics['holdout_accuracy']:.3f}, "
                f"{len(described.reference_statistics.inputs)} input features in its "
                "reference statistics",
            )
            return version

        async def rollout() -> rpb.Rollout:
            reply = await stub.GetRollout(
                rpb.GetRolloutRequest(name=f"models/{MODEL}/rollout"), metadata=md
            )
            return reply.rollout  # type: ignore[no-any-return]

        async def ready_everywhere(number: int) -> None:
            async def ready() -> bool:
                reply = await stub.ListWorkers(rpb.ListWorkersRequest(), metadata=md)
                return (
                    sum(
                        1
                        for w in reply.workers
                        for v in w.versions
                        if v.version == number and v.state == rpb.VERSION_LOAD_STATE_READY
                    )
                    == 2
                )

            await until(ready, 60, f"v{number} READY on both workers")

        async def canary(number: int, end: int) -> rpb.Rollout:
            current = await rollout()
            stable = current.targets[0].version
            request = rpb.UpdateRolloutRequest(
                rollout=rpb.Rollout(
                    name=current.name,
                    targets=[
                        rpb.TrafficTarget(version=stable, percent=80),
                        rpb.TrafficTarget(version=number, percent=20),
                    ],
                    analysis=rpb.AnalysisPolicy(
                        steps=[20, 50, 100],
                        step_interval=seconds(3),
                        min_requests=40,
                        max_accuracy_drop=0.05,
                        max_p99_latency_ratio=3.0,
                        ready_timeout=seconds(60),
                        candidate_version=number,
                    ),
                ),
                expected_revision=current.revision,
            )
            await stub.UpdateRollout(request, metadata=md)
            self.step(
                f"canary v{number}", f"v{stable} 80% + v{number} 20%, steps 20→50→100 every 3 s"
            )
            seen = ""

            async def anything_final() -> rpb.Rollout | None:
                nonlocal seen
                now = await rollout()  # one read decides: a second could be newer
                if now.status.last_decision != seen:
                    seen = now.status.last_decision
                    console.print(f"   [dim]controller:[/] {seen}")
                if now.status.phase == end:
                    return now
                if now.status.phase not in (Phase.PHASE_PROGRESSING, Phase.PHASE_PAUSED):
                    raise DemoFailure(
                        f"canary of v{number} ended {Phase.Phase.Name(now.status.phase)}"
                        f", expected {Phase.Phase.Name(end)}: {now.status.last_decision}"
                    )
                return None

            return await until(anything_final, 90, f"the canary of v{number} to finish")

        await stub.CreateModel(
            rpb.CreateModelRequest(
                model_id=MODEL, model=rpb.Model(description="demo classifier, 8 features")
            ),
            metadata=md,
        )
        v1 = await publish("v1-small-sample", rows=40, c=0.01)
        await stub.UpdateRollout(
            rpb.UpdateRolloutRequest(
                rollout=rpb.Rollout(
                    name=f"models/{MODEL}/rollout",
                    targets=[rpb.TrafficTarget(version=v1.number, percent=100)],
                )
            ),
            metadata=md,
        )
        await ready_everywhere(v1.number)
        traffic = Traffic(gateway, data)
        traffic.start()
        try:
            await until(self._answered(traffic, 300), 60, "300 answers from v1")
            self.step("serving v1", "4 clients through the gateway, feedback for every answer")

            v2 = await publish("v2-full-data", rows=3000, c=1.0)
            promoted = await canary(v2.number, Phase.PHASE_PROMOTED)
            self.step(
                f"v{v2.number} promoted", f"{_shares(promoted)}: {promoted.status.last_decision}"
            )
            champion = await stub.GetVersion(
                rpb.GetVersionRequest(name=f"models/{MODEL}/aliases/champion"), metadata=md
            )
            if champion.version.number != v2.number:
                raise DemoFailure(f"champion is v{champion.version.number}, not v{v2.number}")

            v3 = await publish("v3-shuffled-labels", rows=3000, c=1.0, shuffle=True)
            back = await canary(v3.number, Phase.PHASE_ROLLED_BACK)
            self.step(f"v{v3.number} rolled back", f"{_shares(back)}: {back.status.last_decision}")
            if "max_accuracy_drop" not in back.status.last_decision:
                raise DemoFailure(
                    f"v3 was rolled back for another reason: {back.status.last_decision}"
                )
            after = dict(traffic.answers)
            await until(self._answered(traffic, sum(after.values()) + 200), 60, "200 more answers")
        finally:
            await traffic.stop()
        late = {v: n - after.get(v, 0) for v, n in traffic.answers.items()}
        if late.get(str(v3.number)):
            raise DemoFailure(f"v{v3.number} still answered {late[str(v3.number)]} requests")
        if traffic.failures:
            raise DemoFailure(f"{len(traffic.failures)} requests failed: {traffic.failures[:3]}")
        total = sum(traffic.answers.values())
        self.step(
            "clients", f"{total} requests answered, 0 failed; after the rollback only v{v2.number}"
        )

        alerts = await stub.ListAlerts(rpb.ListAlertsRequest(model=MODEL), metadata=md)
        kinds = sorted({a.alert for a in alerts.alerts})
        if "RolloutRolledBack" not in kinds or "CanaryPromoted" not in kinds:
            raise DemoFailure(f"expected promotion and rollback alerts, got {kinds}")
        self.step("alerts", ", ".join(kinds))
        events = await stub.ListAuditEvents(
            rpb.ListAuditEventsRequest(target=f"models/{MODEL}/rollout", page_size=100),
            metadata=md,
        )
        decisions = [e for e in events.events if e.action.startswith("Canary")]
        rollback = next(e for e in decisions if e.action == "CanaryRollback")
        breached = json.loads(rollback.details)["breached"]
        verdict = await stub.VerifyAudit(rpb.VerifyAuditRequest(), metadata=md)
        if not verdict.ok:
            raise DemoFailure(f"audit trail broken: {verdict.problem}")
        self.step(
            "audit",
            f"{len(decisions)} controller decisions with their numbers (rollback: {breached}); "
            f"hash chain intact over {verdict.events_checked} events",
        )
        metrics = await stub.GetVersionMetrics(
            rpb.GetVersionMetricsRequest(parent=f"models/{MODEL}", window=seconds(600)),
            metadata=md,
        )
        await channel.close()
        return list(metrics.metrics)

    @staticmethod
    def _answered(traffic: Traffic, count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return sum(traffic.answers.values()) >= count

        return check


def _summary(steps: list[tuple[str, str]], metrics: list[rpb.VersionMetrics]) -> None:
    table = Table(title="what happened")
    table.add_column("step")
    table.add_column("outcome")
    for title, outcome in steps:
        table.add_row(title, outcome)
    console.print(table)
    numbers = Table(title="per version, as the controller saw it")
    for column in (
        "version",
        "requests",
        "errors",
        "p99 ms",
        "feedback accuracy",
        "worst drift PSI",
    ):
        numbers.add_column(column)
    for m in metrics:
        numbers.add_row(
            f"v{m.version}",
            str(m.requests),
            str(m.errors),
            f"{m.p99_seconds * 1e3:.2f}",
            f"{m.accuracy:.3f} ({m.feedback_total})" if m.feedback_total else "-",
            f"{m.max_drift_psi:.3f} ({m.worst_feature})" if m.drift_psi else "-",
        )
    console.print(numbers)


def main(keep: Path | None = None) -> int:
    workdir = keep or Path(tempfile.mkdtemp(prefix="liveml-demo-"))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        console.print(f"[bold red]✗ demo failed:[/] cannot use {workdir} as its folder: {exc}")
        return 1
    console.rule("[bold]liveml demo: changing a model while it is served")
    demo = Demo(workdir)
    try:
        metrics = asyncio.run(demo.run())
    except (DemoFailure, aio.AioRpcError) as exc:
        console.print(f"[bold red]✗ demo failed:[/] {exc}")
        console.print(f"  logs of every process: {workdir}/*.log")
        return 1
    else:
        _summary(demo.steps, metrics)
        console.print("[bold green]demo passed[/]")
        return 0
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
