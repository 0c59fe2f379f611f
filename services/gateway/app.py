"""The gateway process: routing table from the registry's watch, front door, upstreams.

Membership: a worker that leaves the registry's picture is let go (its connections
closed) unless it still answers and holds versions no other worker does — then it
lingers in the table until its connection fails or stops answering, since a lease
the registry could not renew is no evidence that the worker is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from grpc import aio

from services.common import data_auth, registry_client, server
from services.common.auth import Role
from services.common.events.open import open_stream
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.windows import Reporter, WindowBook
from services.dataplane.watcher import Picture, RegistryWatcher
from services.gateway import metrics, shadow
from services.gateway.after import Bookkeeping
from services.gateway.data import DataPlaneEvents
from services.gateway.feedback import FeedbackBook
from services.gateway.fronts import ControlFront, GatewayServicer, InferenceFront, inference_handler
from services.gateway.links import Connector
from services.gateway.predictions import PredictionLog, sampling_rate
from services.gateway.router import Router
from services.gateway.routing import RoutingTable
from services.gateway.settings import GatewaySettings
from services.gateway.shadow import Shadow
from services.gateway.upstream import UpstreamPool

log = logging.getLogger(__name__)

SERVICES = [
    pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    gpb.DESCRIPTOR.services_by_name["GatewayService"].full_name,
]

_GATEWAY_SERVICE = "/" + SERVICES[1] + "/"
# Clients infer and send feedback; ingest tokens store examples (admins may do all).
POLICY: dict[str, set[Role]] = {
    SERVICES[0]: {Role.CLIENT},
    _GATEWAY_SERVICE + "SubmitFeedback": {Role.CLIENT},
    _GATEWAY_SERVICE + "IngestExamples": {Role.INGEST},
}


@dataclass
class Gateway:
    settings: GatewaySettings
    running: server.RunningServer
    router: Router
    front: InferenceFront
    watcher: RegistryWatcher
    channels: list[aio.Channel]
    reporter: Reporter
    predictions: PredictionLog
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.running.port

    async def halt(self) -> None:
        self.front.close_streams()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.reporter.stop()
        await self.predictions.stop()
        await self.predictions.sink.close()
        await self.router.after.shadow.close()

    async def stop(self, grace: float = 0) -> None:
        await self.halt()
        await self.running.stop(grace)
        await self.router.pool.close()
        for channel in self.channels:
            await channel.close()


async def start(settings: GatewaySettings) -> Gateway:
    registry_channel, stub = registry_client.connect(
        settings.registry,
        ca=settings.registry_ca,
        cert=settings.registry_cert,
        key=settings.registry_key,
        max_message_bytes=settings.max_message_bytes,
    )
    token = registry_client.read_token(settings.registry_token, settings.registry_token_file)
    metadata = registry_client.auth_metadata(token)
    control_channels: dict[str, aio.Channel] = {}
    current = [RoutingTable()]

    def forward_address(address: str) -> str | None:
        if settings.upstream_transport != "frames":
            return None
        return current[0].forward.get(address)

    connector = Connector(
        settings.worker_ca,
        settings.worker_cert,
        settings.worker_key,
        settings.max_message_bytes,
        forward_address,
        # The gateway's own identity toward workers: its token (role gateway).
        token,
        settings.worker_tls_name,
    )

    def control_channel(address: str) -> aio.Channel:
        if address not in control_channels:
            control_channels[address] = connector.channel(address)
        return control_channels[address]

    pool = UpstreamPool(connector.links, settings.forward_hold_ms / 1000, connector.healthy)
    closing: set[asyncio.Task[None]] = set()

    def drop_control_channel(address: str) -> None:
        # A channel to a dead worker sits in reconnect backoff: a restarted one gets a new.
        channel = control_channels.pop(address, None)
        if channel is not None:
            task = asyncio.get_running_loop().create_task(channel.close())
            closing.add(task)
            task.add_done_callback(closing.discard)

    pool.on_eject.append(drop_control_channel)
    pool.on_eject.append(lambda address: metrics.EJECTIONS.labels(address).inc())
    book = WindowBook(
        rpb.WINDOW_SOURCE_GATEWAY,
        f"gateways/{settings.gateway_id or f'{socket.gethostname()}:{settings.port}'}",
    )
    sink = open_stream(settings, registry_channel, metadata, f"liveml-{book.reporter}")
    predictions = PredictionLog(
        sink,
        book.reporter,
        lambda model: sampling_rate(watcher.picture.models.get(model), settings.log_predictions),
        buffer=settings.log_buffer,
        batch=settings.log_batch,
        flush_seconds=settings.log_flush_ms / 1000,
        max_request_bytes=settings.log_max_request_bytes,
    )
    after = Bookkeeping(
        book,
        FeedbackBook(settings.feedback_size, settings.feedback_seconds),
        Shadow(shadow.config_of(settings, token), forward_address),
        settings.group_key,
        predictions,
    )
    router = Router(
        lambda: current[0],
        pool,
        settings.route_key_header,
        settings.default_timeout,
        after,
        settings.stall_seconds,
    )
    front, control = InferenceFront(router), ControlFront(router, control_channel)

    members = Members(pool)

    def rebuild(picture: Picture) -> None:
        lingering = members.update(picture)
        # One assignment: a request sees either the old table or the new one, never a mix.
        current[0] = RoutingTable.build(picture, watcher.revision, lingering)
        router.table_changed()
        control.ready.set()
        addresses = {w.address for w in (*picture.workers.values(), *lingering)}
        pool.release(addresses)
        for address in [a for a in list(control_channels) if a not in addresses]:
            drop_control_channel(address)
        pool.kick(w.address for w in picture.workers.values())

    watcher = RegistryWatcher(stub, metadata, rebuild)
    data = DataPlaneEvents(sink, book.reporter, lambda: watcher.picture.models, settings.group_key)

    async def watch_lingering() -> None:
        while True:
            await asyncio.sleep(LINGER_CHECK_SECONDS)
            if members.lingering and not members.still_lingering():
                rebuild(watcher.picture)

    def register(grpc_server: aio.Server) -> Sequence[str]:
        grpc_server.add_generic_rpc_handlers((inference_handler(front, control),))
        feedback = GatewayServicer(after.feedback, data)
        gpb_grpc.add_GatewayServiceServicer_to_server(feedback, grpc_server)  # type: ignore[no-untyped-call]
        return SERVICES

    authenticator = data_auth.authenticator_for(
        "gateway",
        settings.allow_anonymous,
        settings.cert_roles,
        lambda: watcher.picture.credentials,
        watcher.synced.is_set,
    )
    running = await server.start_server(
        "gateway", settings, register, authenticator=authenticator, policy=POLICY
    )
    reporter = Reporter([book], stub, metadata, settings.report_seconds)
    gateway = Gateway(
        settings, running, router, front, watcher, [registry_channel], reporter, predictions
    )
    gateway.tasks += [
        asyncio.create_task(watcher.run(), name="registry-watch"),
        asyncio.create_task(watch_lingering(), name="lingering-workers"),
        asyncio.create_task(reporter.run(), name="window-reporter"),
        asyncio.create_task(predictions.run(), name="prediction-log"),
    ]
    return gateway


LINGER_CHECK_SECONDS = 0.25


class Members:
    """Which departed workers linger: they left the picture but still answer."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.known: dict[str, rpb.Worker] = {}
        self.lingering: dict[str, rpb.Worker] = {}

    def update(self, picture: Picture) -> list[rpb.Worker]:
        present = picture.workers
        for name, worker in self.known.items():
            holds = any(s.state == rpb.VERSION_LOAD_STATE_READY for s in worker.versions)
            if name not in present and holds and self.pool.answering(worker.address):
                log.warning(
                    "worker %s (%s) left the registry's picture but still answers: it keeps "
                    "serving what no other worker holds until its connection fails",
                    name,
                    worker.address,
                )
                self.lingering[name] = worker
        for name in list(self.lingering):
            if name in present or not self.pool.answering(self.lingering[name].address):
                del self.lingering[name]
        self.known = dict(present)
        return list(self.lingering.values())

    def still_lingering(self) -> bool:
        """False when some lingering worker stopped answering (the table must drop it)."""
        return all(self.pool.answering(w.address) for w in self.lingering.values())


def serve(settings: GatewaySettings) -> int:
    async def build() -> server.RunningServer:
        gateway = await start(settings)
        gateway.running.on_stop.append(gateway.halt)
        return gateway.running

    return server.run("gateway", settings, build)
