"""Registries for tests: a database per test (SQLite file or a fresh PostgreSQL database)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.registry import app
from services.registry.settings import RegistrySettings
from tests.conftest import port_open, require

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


@asynccontextmanager
async def database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A SQLAlchemy URL of an empty database, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/registry.db"
        return
    require(port_open(PG_HOST, PG_PORT), f"PostgreSQL on {PG_HOST}:{PG_PORT}")
    name = f"liveml_test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Client:
    """A registry stub that sends one token."""

    stub: rpb_grpc.RegistryServiceStub
    token: str

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.stub, method)

        def invoke(request: Any = None, **kwargs: Any) -> Any:
            kwargs.setdefault("metadata", auth(self.token))
            return call(request, **kwargs) if request is not None else call(**kwargs)

        return invoke


@dataclass
class RunningRegistry:
    registry: app.Registry
    settings: RegistrySettings
    channel: aio.Channel
    admin_token: str

    @property
    def port(self) -> int:
        return self.registry.port

    def client(self, token: str | None = None) -> Client:
        return Client(rpb_grpc.RegistryServiceStub(self.channel), token or self.admin_token)

    async def token(self, role: int, name: str = "test", ttl_seconds: float = 0) -> str:
        request = rpb.CreateTokenRequest(display_name=name, role=role)  # type: ignore[arg-type]
        if ttl_seconds:
            request.ttl.FromNanoseconds(int(ttl_seconds * 1e9))
        reply = await self.client().CreateToken(request)
        return str(reply.secret)


def registry_settings(url: str, tmp_path: Path, **overrides: Any) -> RegistrySettings:
    values: dict[str, Any] = {
        "port": 0,
        "metrics_port": -1,
        "database_url": url,
        "artifact_dir": tmp_path / "artifacts",
        "admin_token_file": tmp_path / "admin.token",
        "watch_poll_seconds": 0.2,
        "shutdown_grace": 0,
    }
    values.update(overrides)
    return RegistrySettings(**values)


@asynccontextmanager
async def running_registry(settings: RegistrySettings) -> AsyncIterator[RunningRegistry]:
    registry = await app.start(settings)
    channel = aio.insecure_channel(f"127.0.0.1:{registry.port}")
    try:
        token = settings.admin_token_file.read_text().strip()
        yield RunningRegistry(registry, settings, channel, token)
    finally:
        await channel.close()
        await registry.stop()


def upload(
    parent: str,
    data: bytes,
    *,
    chunk: int = 64 * 1024,
    sha256: str | None = None,
    size: int | None = None,
    version: rpb.Version | None = None,
) -> list[rpb.CreateVersionRequest]:
    meta = rpb.CreateVersionRequest.Metadata(
        parent=parent,
        sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
        size_bytes=len(data) if size is None else size,
        format=rpb.ARTIFACT_FORMAT_ONNX,
    )
    if version is not None:
        meta.version.CopyFrom(version)
    messages = [rpb.CreateVersionRequest(metadata=meta)]
    messages += [
        rpb.CreateVersionRequest(chunk=data[i : i + chunk]) for i in range(0, len(data), chunk)
    ]
    return messages


async def stream(messages: list[Any]) -> AsyncIterator[Any]:
    for message in messages:
        yield message
