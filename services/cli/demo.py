"""`liveml demo`: the live-update workflow on the embedded default, narrated step by step.

It runs on SQLite and a local artifact folder with no other server: starts a
registry, trains and registers model versions (scikit-learn -> ONNX), moves
traffic between them through rollouts while a watcher (what workers and gateways
run) sees every change, rolls back, and proves the audit trail intact. Exits 0
when every step did what it should, non-zero otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from grpc import aio
from rich.console import Console
from rich.table import Table

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.registry import app as registry_app
from services.registry.settings import RegistrySettings

console = Console()


class DemoFailure(RuntimeError):
    pass


def train(path: Path, seed: int, C: float) -> dict[str, float]:
    """A logistic regression on a synthetic task, exported to ONNX; returns its metrics."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = make_classification(n_samples=2000, n_features=8, n_informative=5, random_state=7)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, random_state=seed)
    model = LogisticRegression(C=C, max_iter=500).fit(x_train, y_train)
    onnx_model = to_onnx(model, x_train[:1], options={"zipmap": False}, target_opset=17)
    path.write_bytes(onnx_model.SerializeToString())
    return {"accuracy": float(model.score(x_test, y_test))}


async def _upload(
    parent: str, path: Path, metrics: dict[str, float]
) -> AsyncIterator[rpb.CreateVersionRequest]:
    data = await asyncio.to_thread(path.read_bytes)
    meta = rpb.CreateVersionRequest.Metadata(
        parent=parent,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        format=rpb.ARTIFACT_FORMAT_ONNX,
        version=rpb.Version(metrics=metrics, description=path.stem),
    )
    yield rpb.CreateVersionRequest(metadata=meta)
    for start in range(0, len(data), 1 << 20):
        yield rpb.CreateVersionRequest(chunk=data[start : start + (1 << 20)])


def _traffic(rollout: rpb.Rollout) -> str:
    return " + ".join(f"v{t.version} {t.percent}%" for t in rollout.targets) or "none"


async def run_demo(workdir: Path) -> list[tuple[str, str]]:
    settings = RegistrySettings(
        port=0,
        metrics_port=-1,
        database_url=f"sqlite+aiosqlite:///{workdir}/registry.db",
        artifact_dir=workdir / "artifacts",
        admin_token_file=workdir / "admin.token",
        watch_poll_seconds=0.2,
        shutdown_grace=0,
    )
    registry = await registry_app.start(settings)
    steps: list[tuple[str, str]] = []

    def step(title: str, outcome: str) -> None:
        steps.append((title, outcome))
        console.print(f"[bold green]✓[/] {title}: {outcome}")

    try:
        token = settings.admin_token_file.read_text().strip()
        md = (("authorization", f"Bearer {token}"),)
        async with aio.insecure_channel(f"127.0.0.1:{registry.port}") as channel:
            stub = rpb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
            step("registry", f"serving on 127.0.0.1:{registry.port} (SQLite in {workdir})")
            watch = stub.Watch(rpb.WatchRequest(since_revision=0), metadata=md)
            snapshot = await asyncio.wait_for(watch.read(), 10)
            step("watcher", f"connected, snapshot at revision {snapshot.revision}")

            await stub.CreateModel(
                rpb.CreateModelRequest(
                    model_id="demo", model=rpb.Model(description="demo classifier")
                ),
                metadata=md,
            )
            versions = []
            for seed, c in ((1, 0.01), (2, 1.0)):
                path = workdir / f"demo-v{seed}.onnx"
                metrics = await asyncio.to_thread(train, path, seed, c)
                reply = await stub.CreateVersion(_upload("models/demo", path, metrics), metadata=md)
                versions.append(reply.version)
                step(
                    f"v{reply.version.number} registered",
                    f"accuracy {metrics['accuracy']:.3f}, "
                    f"sha256 {reply.version.artifact.sha256[:12]}…",
                )

            async def set_traffic(*targets: tuple[int, int]) -> rpb.Rollout:
                request = rpb.UpdateRolloutRequest(
                    rollout=rpb.Rollout(
                        name="models/demo/rollout",
                        targets=[rpb.TrafficTarget(version=v, percent=p) for v, p in targets],
                    )
                )
                written: rpb.Rollout = (await stub.UpdateRollout(request, metadata=md)).rollout
                while True:  # what a gateway would see
                    seen = await asyncio.wait_for(watch.read(), 10)
                    if seen.kind == rpb.WatchResponse.KIND_EVENTS and any(
                        e.HasField("rollout") for e in seen.events
                    ):
                        break
                if seen.revision != written.revision:
                    raise DemoFailure(
                        f"watcher saw revision {seen.revision}, wrote {written.revision}"
                    )
                return written

            rollout = await set_traffic((1, 100))
            step(
                "serve v1",
                f"{_traffic(rollout)} (revision {rollout.revision}, seen by the watcher)",
            )
            rollout = await set_traffic((1, 90), (2, 10))
            step(
                "canary v2",
                f"{_traffic(rollout)} (revision {rollout.revision}, seen by the watcher)",
            )
            try:
                await stub.UpdateRollout(
                    rpb.UpdateRolloutRequest(
                        rollout=rpb.Rollout(
                            name="models/demo/rollout",
                            targets=[rpb.TrafficTarget(version=2, percent=70)],
                        )
                    ),
                    metadata=md,
                )
                raise DemoFailure("a rollout summing to 70% was accepted")
            except aio.AioRpcError as exc:
                step("bad rollout refused", f"{exc.code().name}: {exc.details()}")
            rollout = (
                await stub.RollbackRollout(
                    rpb.RollbackRolloutRequest(name="models/demo/rollout"), metadata=md
                )
            ).rollout
            if _traffic(rollout) != "v1 100%":
                raise DemoFailure(f"rollback gave {_traffic(rollout)}")
            step("rollback", f"back to {_traffic(rollout)} (revision {rollout.revision})")
            verdict = await stub.VerifyAudit(rpb.VerifyAuditRequest(), metadata=md)
            if not verdict.ok:
                raise DemoFailure(f"audit trail broken: {verdict.problem}")
            step("audit", f"hash chain intact over {verdict.events_checked} events")
            watch.cancel()
    finally:
        await registry.stop()
    return steps


def main(keep: Path | None = None) -> int:
    workdir = keep or Path(tempfile.mkdtemp(prefix="liveml-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]liveml demo: changing a model while it is served")
    try:
        steps = asyncio.run(run_demo(workdir))
    except (DemoFailure, aio.AioRpcError, TimeoutError) as exc:
        console.print(f"[bold red]✗ demo failed:[/] {exc}")
        return 1
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    table = Table(title="summary")
    table.add_column("step")
    table.add_column("outcome")
    for title, outcome in steps:
        table.add_row(title, outcome)
    console.print(table)
    return 0
