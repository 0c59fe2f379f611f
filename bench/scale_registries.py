"""The registry processes of bench/registry_scale.py: one, or N replicas sharing one
PostgreSQL database, with the model and versions the simulated fleet reports.

Replicas share what a deployment's replicas share: the one LIVEML_DATABASE_URL, the
artifact directory (the audit key file and the artifacts live there) and the admin
token file. They are started one after another: the first migrates the empty database
and creates the bootstrap admin token, writing its secret to the file; each later one
finds a token in the database, creates none and leaves the file as it is (the same
token then authenticates on every replica). Each replica leads the controller or not
as the leader lease decides; any of them takes heartbeats and serves watches. With
`--replica-cpus X` each one runs under a CPU quota of X cores (bench/scale_cpucap.py).
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc import aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import scale_cpucap
from bench.scale_common import cpu_seconds
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.helpers.models import linear
from tests.helpers.procs import Proc, registry_process
from tests.helpers.registry import database, stream, upload


@dataclass
class Registries:
    """Running registry processes (replica 0 first) and a stub for each."""

    procs: list[Proc]
    ports: list[int]
    token: str
    stubs: list[rpb_grpc.RegistryServiceStub]
    caps: list[scale_cpucap.Cap] = field(default_factory=list)

    @property
    def md(self) -> Any:
        return (("authorization", f"Bearer {self.token}"),)

    @property
    def stub(self) -> rpb_grpc.RegistryServiceStub:
        """Replica 0's: where the bench's own calls (rollouts, revisions) go."""
        return self.stubs[0]

    @property
    def pids(self) -> list[int]:
        return [proc.popen.pid for proc in self.procs]

    def cpu(self) -> list[float]:
        """CPU seconds of each replica so far."""
        return [cpu_seconds(pid) for pid in self.pids]

    def throttled_ms(self) -> list[float]:
        """Time each capped replica waited for CPU quota so far (none uncapped)."""
        return [cap.throttled_ms() for cap in self.caps]


async def start(
    stack: AsyncExitStack,
    root: Path,
    replicas: int,
    postgres: bool,
    env: dict[str, str],
    cpus: float | None = None,
) -> Registries:
    """`replicas` registries (PostgreSQL if `postgres`, else SQLite: then only one), stopped
    when `stack` closes, each capped at `cpus` cores if given; model "m" created with
    versions 1 and 2."""
    if replicas > 1 and not postgres:
        raise SystemExit("--replicas above 1 needs --postgres: replicas share one database")
    env = {"LIVEML_LOG_LEVEL": "WARNING", **env}
    if postgres:
        env["LIVEML_DATABASE_URL"] = await stack.enter_async_context(database("postgres", root))
    procs, ports, caps = [], [], []
    for _ in range(replicas):
        proc, port = registry_process(root, **env)
        stack.callback(proc.stop)
        procs.append(proc)
        ports.append(port)
        if cpus is not None:
            # Capped once it is up (start-up, migrations included, runs at full speed).
            caps.append(scale_cpucap.cap(proc.popen.pid, cpus))
            stack.callback(caps[-1].release, proc.popen.pid)
    token = (root / "admin.token").read_text().strip()
    channels = [aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    for channel in channels:
        stack.push_async_callback(channel.close)
    registries = Registries(
        procs, ports, token, [rpb_grpc.RegistryServiceStub(c) for c in channels], caps
    )
    stub, md = registries.stub, registries.md
    await stub.CreateModel(rpb.CreateModelRequest(model_id="m"), metadata=md)
    for seed in (1, 2):
        data = linear(root / f"v{seed}.onnx", seed=seed).read_bytes()
        await stub.CreateVersion(stream(upload("models/m", data)), metadata=md)
    for other in registries.stubs[1:]:
        # Every replica takes the one token (it reads tokens from the shared database).
        await other.GetModel(rpb.GetModelRequest(name="models/m"), metadata=md)
    return registries
