"""The worker process: the V2 servicer over a repository fed by a folder or the registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from grpc import aio

from services.common import data_auth, server, tls
from services.common.auth import Role
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.common.gen.liveml.worker.v1 import worker_pb2_grpc as wpb_grpc
from services.common.windows import WindowBook
from services.dataplane import priority
from services.worker.executor import Executor
from services.worker.forward import ForwardServicer, FrameListener
from services.worker.held import Batching
from services.worker.loader import RegistryLoader
from services.worker.repository import Repository
from services.worker.runtime import Threads
from services.worker.servicer import InferenceServicer
from services.worker.settings import WorkerSettings
from services.worker.standalone import FolderWatcher

log = logging.getLogger(__name__)

# Longest a stopping worker waits for framed connections to answer what they read.
LISTENER_GRACE = 10.0
SWITCH_INTERVAL = 0.0002  # seconds a thread may hold the GIL while another waits

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
FORWARD_SERVICE = wpb.DESCRIPTOR.services_by_name["WorkerService"].full_name


@dataclass
class Worker:
    settings: WorkerSettings
    repository: Repository
    servicer: InferenceServicer
    running: server.RunningServer
    forward: ForwardServicer
    listener: FrameListener | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    loader: RegistryLoader | None = None

    @property
    def port(self) -> int:
        return self.running.port

    async def halt(self) -> None:
        """Stop background work (before the server stops accepting calls)."""
        self.servicer.close_streams()
        self.forward.close()
        if self.listener is not None:
            await self.listener.close(LISTENER_GRACE)
        if self.loader is not None:
            await self.loader.stop()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self, grace: float = 0) -> None:
        await self.halt()
        await self.running.stop(grace)
        await self.repository.close()


async def start(settings: WorkerSettings) -> Worker:
    if (settings.model_dir is None) == (settings.registry is None):
        raise ValueError("give exactly one of --model-dir (standalone) or --registry")
    if settings.role != "all" and settings.registry is None:
        raise ValueError("--role primary or mirror needs --registry (rollouts name mirrors)")
    if settings.role == "mirror":
        # First, so every thread started from here on (gRPC's, onnxruntime's) inherits it.
        priority.lower_process(settings.shadow_priority)
    book = WindowBook(rpb.WINDOW_SOURCE_WORKER, "") if settings.registry else None
    if settings.shadow_priority != "normal":
        # The shadow thread, between its runs, holds the GIL; CPython would let it keep
        # the event loop (and so primary requests) waiting for up to 5 ms.
        sys.setswitchinterval(SWITCH_INTERVAL)
    executor = Executor(
        settings.run_threads, settings.shadow_priority, shadow_thread=settings.role != "mirror"
    )
    repository = Repository(executor, Threads(settings.intra_op_threads), settings.inline_us, book)
    servicer = InferenceServicer(repository, executor)
    forward = ForwardServicer(servicer.infer)
    default = Batching(settings.max_batch_size, settings.max_queue_delay_ms / 1000)

    def register(grpc_server: aio.Server) -> Sequence[str]:
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, grpc_server)  # type: ignore[no-untyped-call]
        wpb_grpc.add_WorkerServiceServicer_to_server(forward, grpc_server)  # type: ignore[no-untyped-call]
        return [SERVICE_NAME, FORWARD_SERVICE]

    holder: list[RegistryLoader] = []
    authenticator = data_auth.authenticator_for(
        "worker",
        settings.allow_anonymous,
        settings.cert_roles,
        lambda: holder[0].watcher.picture.credentials if holder else {},
        lambda: bool(holder) and holder[0].watcher.synced.is_set(),
    )
    # Inference is the gateway's (it routes, counts and canaries); clients only when
    # the deployer says they may come straight here.
    inference_roles = {Role.GATEWAY} | ({Role.CLIENT} if settings.allow_client_direct else set())
    policy = {SERVICE_NAME: inference_roles, FORWARD_SERVICE: {Role.GATEWAY}}
    listener, forward_port = None, None
    if settings.forward_port >= 0:
        # Bound before the gRPC port opens: whoever waits for that port to start the
        # next process must not find this listener taking a port it was about to use.
        listener = FrameListener(forward, settings.max_message_bytes, authenticator)
        forward_port = await listener.start(
            settings.host,
            settings.forward_port,
            tls.server_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca),
        )
        log.info("framed forward listener on %s:%d", settings.host, forward_port)
    try:
        running = await server.start_server(
            "worker", settings, register, authenticator=authenticator, policy=policy
        )
    except BaseException:
        if listener is not None:
            await listener.close(0)
        raise
    worker = Worker(settings, repository, servicer, running, forward, listener)
    if settings.model_dir is not None:
        watcher = FolderWatcher(settings.model_dir, repository, default, settings.drain_grace)
        await watcher.sync()
        worker.tasks.append(asyncio.create_task(watcher.run(settings.scan_seconds)))
    else:
        loader = RegistryLoader(settings, repository, default, running.port, forward_port)
        holder.append(loader)
        await loader.start()
        worker.loader = loader
    return worker


def serve(settings: WorkerSettings) -> int:
    async def build() -> server.RunningServer:
        worker = await start(settings)
        worker.running.on_stop.append(worker.halt)
        return worker.running

    return server.run("worker", settings, build)
