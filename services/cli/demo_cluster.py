"""The demo's processes: a registry, two workers, a gateway and a trainer started as
`liveml ... serve` children on free loopback ports, each logging to its own file in the
demo's folder, and stopped together at the end."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc

T = TypeVar("T")

# Fast loops, so a demo takes a minute or two rather than the production cadence.
REGISTRY_ENV = {
    "LIVEML_CONTROLLER_SECONDS": "0.25",
    "LIVEML_MONITOR_SECONDS": "0.5",
    # Live accuracy over the last 20 s: AccuracyDrop fires ~14 s after a shift in the
    # concept, once its labels are two thirds of the window's and the trainer's window
    # (the newest 300 examples) is all of the new concept.
    "LIVEML_MONITOR_WINDOW_SECONDS": "20",
    # AccuracyDrop: 0.3 below the version's holdout accuracy, over 50 or more labels.
    "LIVEML_ACCURACY_ALERT_DROP": "0.3",
    "LIVEML_ACCURACY_ALERT_FEEDBACK": "50",
    "LIVEML_WATCH_POLL_SECONDS": "0.2",
    "LIVEML_JOIN_COMMIT_SECONDS": "0.5",
}


class DemoFailure(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(check: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailure(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Services:
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, env: dict[str, str], *args: str) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", *args],
            # The demo runs the data plane as deployed: callers authenticated.
            env={**os.environ, "LIVEML_ALLOW_ANONYMOUS": "false", **env},
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


@dataclass
class Cluster:
    """What the demo talks to: the registry (as its admin), and the gateway's address."""

    registry: str
    gateway: str
    channel: aio.Channel
    stub: rpb_grpc.RegistryServiceStub
    training: tpb_grpc.TrainingServiceStub
    md: tuple[tuple[str, str], ...]
    ingest_token: str
    # The demo's application: inference and feedback through the gateway (role client).
    client_token: str = ""

    @property
    def client_md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.client_token}"),)

    @property
    def ingest_md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.ingest_token}"),)


async def start(services: Services) -> Cluster:
    w = services.workdir
    port = free_port()
    services.start(
        "registry",
        {
            "LIVEML_DATABASE_URL": f"sqlite+aiosqlite:///{w}/registry.db",
            "LIVEML_ARTIFACT_DIR": str(w / "artifacts"),
            "LIVEML_ADMIN_TOKEN_FILE": str(w / "admin.token"),
            **REGISTRY_ENV,
        },
        "registry", "serve", "--port", str(port), "--metrics-port", "-1",
    )  # fmt: skip
    await services.wait_port("registry", port)
    registry = f"127.0.0.1:{port}"
    channel = aio.insecure_channel(registry)
    stub = rpb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
    md = (("authorization", f"Bearer {(w / 'admin.token').read_text().strip()}"),)

    async def token(name: str, role: int, worker_id: str = "") -> str:
        made = await stub.CreateToken(
            rpb.CreateTokenRequest(
                display_name=name,
                role=role,  # type: ignore[arg-type]
                worker_id=worker_id,
            ),
            metadata=md,
        )
        return str(made.secret)

    # Each worker its own token, bound to its id; the gateway its own role.
    plane = {"LIVEML_REPORT_SECONDS": "0.5"}
    gateway = {**plane, "LIVEML_REGISTRY_TOKEN": await token("demo gateway", rpb.ROLE_GATEWAY)}
    trainer = {"LIVEML_REGISTRY_TOKEN": await token("demo trainer", rpb.ROLE_TRAINER)}
    ingest = await token("demo data upload", rpb.ROLE_INGEST)
    client = await token("demo application", rpb.ROLE_CLIENT)
    ports = {n: free_port() for n in ("worker-1", "worker-2", "gateway", "trainer")}
    for name in ("worker-1", "worker-2"):
        bound = await token(f"demo {name}", rpb.ROLE_WORKER, name)
        services.start(
            name,
            {**plane, "LIVEML_REGISTRY_TOKEN": bound},
            "worker", "serve", "--registry", registry, "--port", str(ports[name]),
            "--metrics-port", "-1", "--worker-id", name, "--cache-dir", str(w / name),
            "--heartbeat-seconds", "1", "--drain-grace", "1",
        )  # fmt: skip
    services.start(
        "gateway",
        gateway,
        "gateway", "serve", "--registry", registry, "--port", str(ports["gateway"]),
        "--metrics-port", "-1", "--log-predictions", "1.0",
    )  # fmt: skip
    services.start(
        "trainer",
        trainer,
        "trainer", "serve", "--registry", registry, "--port", str(ports["trainer"]),
        "--metrics-port", "-1", "--trainer-id", "demo", "--poll-seconds", "0.5",
        "--work-dir", str(w / "trainer"),
    )  # fmt: skip
    for name, p in ports.items():
        await services.wait_port(name, p)
    return Cluster(
        registry,
        f"127.0.0.1:{ports['gateway']}",
        channel,
        stub,
        tpb_grpc.TrainingServiceStub(channel),  # type: ignore[no-untyped-call]
        md,
        ingest,
        client,
    )
