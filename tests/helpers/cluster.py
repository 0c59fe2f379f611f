"""A registry and workers as real processes on loopback, for swap and failure tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc import aio

from services.common import codec
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.conftest import free_port
from tests.helpers.procs import Proc, python_module, registry_process, restart, wait_port
from tests.helpers.registry import auth, stream, upload
from tests.helpers.wait import async_wait_until


@dataclass
class Cluster:
    root: Path
    registry: Proc
    registry_port: int
    admin: str
    channel: aio.Channel
    stub: rpb_grpc.RegistryServiceStub
    workers: dict[str, tuple[Proc, int]] = field(default_factory=dict)
    gateways: list[Proc] = field(default_factory=list)
    trainers: dict[str, Proc] = field(default_factory=dict)
    # Each worker its own token, bound to its id; the gateways one of role gateway.
    worker_tokens: dict[str, str] = field(default_factory=dict)
    gateway_token: str = ""
    trainer_token: str = ""

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return auth(self.admin)

    async def create_model(self, name: str) -> None:
        await self.stub.CreateModel(rpb.CreateModelRequest(model_id=name), metadata=self.md)

    async def push(self, model: str, path: Path, **version: Any) -> rpb.Version:
        reply = await self.stub.CreateVersion(
            stream(upload(f"models/{model}", path.read_bytes(), version=rpb.Version(**version))),
            metadata=self.md,
        )
        return reply.version  # type: ignore[no-any-return]

    async def route(self, model: str, *targets: tuple[int, int], **extra: Any) -> rpb.Rollout:
        request = rpb.UpdateRolloutRequest(
            rollout=rpb.Rollout(
                name=f"models/{model}/rollout",
                targets=[rpb.TrafficTarget(version=v, percent=p) for v, p in targets],
                **extra,
            )
        )
        return (await self.stub.UpdateRollout(request, metadata=self.md)).rollout  # type: ignore[no-any-return]

    def mint(self, display_name: str, role: int, worker_id: str = "") -> str:
        """A new token's secret (a blocking call: start_worker and start_gateway are sync)."""
        with grpc.insecure_channel(f"127.0.0.1:{self.registry_port}") as channel:
            made = rpb_grpc.RegistryServiceStub(channel).CreateToken(
                rpb.CreateTokenRequest(
                    display_name=display_name,
                    role=role,  # type: ignore[arg-type]
                    worker_id=worker_id,
                ),
                metadata=self.md,
            )
        return str(made.secret)

    def worker_token(self, name: str) -> str:
        """Worker `name`'s token, bound to that worker id (made on first use)."""
        if name not in self.worker_tokens:
            self.worker_tokens[name] = self.mint(f"worker {name}", rpb.ROLE_WORKER, name)
        return self.worker_tokens[name]

    def start_worker(self, name: str, *flags: str) -> int:
        port = free_port()
        proc = python_module(
            "services.cli.main",
            {"LIVEML_REGISTRY_TOKEN": self.worker_token(name)},
            "worker",
            "serve",
            "--registry",
            f"127.0.0.1:{self.registry_port}",
            "--port",
            str(port),
            "--metrics-port",
            "-1",
            "--worker-id",
            name,
            "--cache-dir",
            str(self.root / f"cache-{name}"),
            "--heartbeat-seconds",
            "0.5",
            "--drain-grace",
            "0.5",
            *flags,
        )
        wait_port(port, proc)
        self.workers[name] = (proc, port)
        return port

    async def start_trainer(self, name: str, *flags: str) -> Proc:
        """`liveml trainer serve` with its own trainer token, polling fast."""
        if not self.trainer_token:
            made = await self.stub.CreateToken(
                rpb.CreateTokenRequest(display_name="trainers", role=rpb.ROLE_TRAINER),
                metadata=self.md,
            )
            self.trainer_token = made.secret
        port = free_port()
        proc = python_module(
            "services.cli.main",
            {"LIVEML_REGISTRY_TOKEN": self.trainer_token},
            "trainer",
            "serve",
            "--registry",
            f"127.0.0.1:{self.registry_port}",
            "--port",
            str(port),
            "--metrics-port",
            "-1",
            "--trainer-id",
            name,
            "--poll-seconds",
            "0.2",
            "--work-dir",
            str(self.root / f"trainer-{name}"),
            *flags,
        )
        wait_port(port, proc)
        self.trainers[name] = proc
        return proc

    def restart_worker(self, name: str) -> None:
        """Start a worker again as it was (same id, port and cache), e.g. after a SIGKILL."""
        proc, port = self.workers[name]
        proc = restart(proc)
        wait_port(port, proc)
        self.workers[name] = (proc, port)

    def restart_registry(self) -> None:
        """Start the registry again on the same port and database (after a crash)."""
        self.registry = restart(self.registry)
        wait_port(self.registry_port, self.registry)

    def start_gateway(self, *flags: str) -> int:
        if not self.gateway_token:
            self.gateway_token = self.mint("gateways", rpb.ROLE_GATEWAY)
        port = free_port()
        proc = python_module(
            "services.cli.main",
            {"LIVEML_REGISTRY_TOKEN": self.gateway_token},
            "gateway",
            "serve",
            "--registry",
            f"127.0.0.1:{self.registry_port}",
            "--port",
            str(port),
            "--metrics-port",
            "-1",
            *flags,
        )
        wait_port(port, proc)
        self.gateways.append(proc)
        return port

    async def worker_states(self, name: str) -> dict[tuple[str, int], tuple[str, str]]:
        reply = await self.stub.ListWorkers(rpb.ListWorkersRequest(), metadata=self.md)
        for worker in reply.workers:
            if worker.name == f"workers/{name}":
                return {
                    (v.model, v.version): (rpb.VersionLoadState.Name(v.state)[19:], v.error)
                    for v in worker.versions
                }
        return {}

    async def wait_state(
        self, name: str, model: str, version: int, state: str, within: float = 30
    ) -> str:
        async def reached() -> str | None:
            got = (await self.worker_states(name)).get((model, version))
            return got[1] or "ok" if got and got[0] == state else None

        return await async_wait_until(reached, within, f"{model} v{version} {state} on {name}")

    async def wait_gone(self, name: str, model: str, version: int, within: float = 30) -> None:
        async def gone() -> bool:
            return (model, version) not in await self.worker_states(name)

        await async_wait_until(gone, within, f"{model} v{version} unloaded from {name}")


@asynccontextmanager
async def cluster(root: Path, **registry_env: str) -> AsyncIterator[Cluster]:
    proc, port = registry_process(root, LIVEML_WATCH_POLL_SECONDS="0.2", **registry_env)
    admin = (root / "admin.token").read_text().strip()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    stub = rpb_grpc.RegistryServiceStub(channel)
    c = Cluster(root, proc, port, admin, channel, stub)
    try:
        yield c
    finally:
        for trainer in c.trainers.values():
            trainer.stop()
        for gateway in c.gateways:
            gateway.stop()
        for worker, _ in c.workers.values():
            worker.stop()
        await channel.close()
        c.registry.stop()


def infer_request(
    model: str, x: np.ndarray, request_id: str = "", version: str = ""
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    datatype, shape, raw = codec.encode_raw(x)
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


@dataclass
class Load:
    """Continuous streaming clients; records every answer's version and every failure."""

    address: str
    model: str
    clients: int = 16
    answers: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    answered: dict[int, int] = field(default_factory=dict)  # answers by client index
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _client(self, index: int) -> None:
        # Never all zeros: that is what a warm-up sends (tests/helpers/models.py has a
        # model that is slow on it).
        x = np.full((1, 4), index + 1, dtype=np.float32)
        async with aio.insecure_channel(self.address) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            n = 0
            try:
                while not self._stop.is_set():
                    await call.write(infer_request(self.model, x, f"{index}-{n}"))
                    response = await call.read()
                    if response.error_message:
                        self.failures.append(response.error_message)
                    else:
                        self.answers.append(
                            (time.monotonic(), response.infer_response.model_version)
                        )
                        self.answered[index] = self.answered.get(index, 0) + 1
                    n += 1
                await call.done_writing()
            except aio.AioRpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
