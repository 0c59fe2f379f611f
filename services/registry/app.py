"""The registry process: store, artifact store, change feed, auth and background duties."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from grpc import aio

from services.common import server
from services.common.auth import Role
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc
from services.registry import (
    event_stream,
    metrics,
    security,
    training_runs,
    worker_identity,
    workers,
)
from services.registry.alerts import Alerts
from services.registry.artifacts import ArtifactStore
from services.registry.audit_chain import AuditChain
from services.registry.audit_legacy import rechain_legacy
from services.registry.controller import Controller
from services.registry.lease_sweep import LeaseSweep
from services.registry.leases import Leases
from services.registry.secrets import Secrets, SecretsError, resolved_secrets, supplied_admin_token
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.registry.store import Store, wait_for_database
from services.registry.training_servicer import TrainingServicer
from services.registry.watch import Feed, FeedCompaction

log = logging.getLogger(__name__)

SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["RegistryService"].full_name
TRAINING_SERVICE = tpb.DESCRIPTOR.services_by_name["TrainingService"].full_name


@dataclass
class Registry:
    settings: RegistrySettings
    store: Store
    feed: Feed
    running: server.RunningServer
    controller: Controller
    events: event_stream.EventParts
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float = 0) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.controller.stop()  # hands leadership over without waiting for the lease
        if self.store.leases is not None:
            with contextlib.suppress(Exception):  # the restart grace covers what is lost
                await self.store.leases.flush()
        await self.events.stop()
        await self.feed.stop()  # ends open watches first, so the server can stop at once
        await self.running.stop(grace)
        await self.store.close()


def _write_secret(path: os.PathLike[str], secret: str) -> None:
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)


async def bootstrap_admin(settings: RegistrySettings, store: Store) -> None:
    """On an empty database, create the admin token (its secret is never logged).

    Its secret is the one an operator put in --admin-token-file, or else a new one that
    is written there (mode 0600). Registries starting together on one empty database
    create one admin between them: the write transaction's meta row lock orders them,
    and each looks for tokens again once it holds it.
    """
    if await security.count_tokens(store):
        return
    async with store.write("registry") as tx:
        if await security.count_tokens_in(tx.session):
            return  # another registry got there first
        supplied = supplied_admin_token(settings.admin_token_file)
        row, secret = await security.create_token(
            tx, "bootstrap admin", Role.ADMIN, None, secret=supplied
        )
        token = security.token_proto(row)
        details = {"role": "admin", "bootstrap": True, "supplied": supplied is not None}
        await tx.audit("CreateToken", token.name, None, token, details)
        if supplied is None:
            # Before the commit: a token written but never committed is adopted next start.
            _write_secret(settings.admin_token_file, secret)
    if supplied is None:
        log.info("bootstrap admin token %s written to %s", token.name, settings.admin_token_file)
    else:
        log.info("bootstrap admin token %s taken from %s", token.name, settings.admin_token_file)


def audit_chain(settings: RegistrySettings, secrets: Secrets) -> AuditChain:
    """The audit keys: --audit-key if given, else the registry's own key file."""
    directory = settings.artifact_dir / "audit"
    if secrets.audit_keys is not None:
        return AuditChain(secrets.audit_keys, directory)
    try:
        return AuditChain.local(
            settings.artifact_dir, settings.audit_key_id, secrets.audit_old_keys
        )
    except ValueError as exc:  # names the file, never the key
        raise SecretsError(str(exc)) from None


async def _every(seconds: float, what: str, job: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except Exception as exc:  # a failed sweep is retried at the next tick
            log.warning("%s failed: %s", what, exc)


async def start(settings: RegistrySettings) -> Registry:
    """Start a registry; SecretsError if a secret setting is unusable (the message says why)."""
    secrets = resolved_secrets(settings)
    chain = audit_chain(settings, secrets)
    await wait_for_database(secrets.database_url)
    store = Store(secrets.database_url, audit=chain)
    await store.migrate()
    await rechain_legacy(store, chain)
    if settings.auth:
        await bootstrap_admin(settings, store)
    worker_identity.SHARED_TOKENS = settings.shared_worker_tokens
    if settings.shared_worker_tokens:
        log.warning(
            "--shared-worker-tokens: a worker token not bound at creation may act for any "
            "worker (register, heartbeat, leave, report windows); bind one per worker with "
            "`liveml token create NAME --role worker --worker-id ID` to close that"
        )
    artifacts = ArtifactStore(
        settings.artifact_dir, secrets.artifact_keys, settings.max_artifact_bytes
    )
    async with store.write("registry") as tx:
        # Covers the renewals a registry that died held in memory, not yet written.
        await workers.renew_all(tx, settings.restart_grace_seconds)
    leases = Leases(store, settings.lease_flush_seconds)
    feed = Feed(store, settings.watch_poll_seconds, settings.watch_slow_seconds)
    await feed.start()
    alerts = Alerts(store, settings.alert_webhook)
    controller = Controller(
        store,
        alerts,
        settings.controller_id or f"{socket.gethostname()}:{os.getpid()}",
        tick_seconds=settings.controller_seconds,
        lease_seconds=settings.leader_lease_seconds,
        monitor_window=settings.monitor_window_seconds,
        monitor_seconds=settings.monitor_seconds,
        keep_windows=settings.keep_windows_seconds,
        drift_alert_psi=settings.drift_alert_psi,
        accuracy_alert=(settings.accuracy_alert_drop, settings.accuracy_alert_feedback),
        ready_alert_seconds=settings.ready_alert_seconds,
    )
    holder = settings.controller_id or f"{socket.gethostname()}:{os.getpid()}"
    events = event_stream.parts(settings, store, holder)
    servicer = RegistryServicer(settings, store, artifacts, feed, alerts, controller, events)

    def register(grpc_server: aio.Server) -> Sequence[str]:
        rpb_grpc.add_RegistryServiceServicer_to_server(servicer, grpc_server)  # type: ignore[no-untyped-call]
        tpb_grpc.add_TrainingServiceServicer_to_server(  # type: ignore[no-untyped-call]
            TrainingServicer(store, alerts, artifacts), grpc_server
        )
        return [SERVICE_NAME, TRAINING_SERVICE]

    authenticator = None
    if settings.auth:
        authenticator = security.TokenAuthenticator(
            store, security.parse_cert_roles(settings.cert_roles)
        )
    try:
        running = await server.start_server(
            "registry", settings, register, authenticator=authenticator, policy=security.POLICY
        )
    except BaseException:
        # A port that cannot be had: end the feed's polling and close the database now,
        # not by cancelling them mid-query on the way out (which logs a pool traceback).
        await feed.stop()
        await store.close()
        raise
    registry = Registry(settings, store, feed, running, controller, events)
    sweep = LeaseSweep(store, min(1.0, settings.lease_seconds / 2))
    metrics.watch(controller, sweep)

    compaction = FeedCompaction(store, settings.watch_keep_revisions, settings.watch_keep_seconds)

    async def expire_runs() -> None:
        async with store.read() as session:
            if not await training_runs.any_expired(session):
                return
        async with store.write("registry") as tx:
            for name in await training_runs.expire(tx, alerts):
                log.warning("training run %s: its trainer stopped answering", name)

    registry.tasks += [
        asyncio.create_task(sweep.run(), name="lease sweep"),
        asyncio.create_task(_every(60.0, "change-feed compaction", compaction.run_once)),
        *([asyncio.create_task(leases.run(), name="lease flush")] if leases.flush_seconds else []),
        asyncio.create_task(leases.settler.run(), name="rollout settler"),
        asyncio.create_task(_every(1.0, "training-run leases", expire_runs)),
        asyncio.create_task(controller.run(), name="rollout-controller"),
    ]
    events.start(settings)
    return registry


def tune_gc(young_threshold: int) -> None:
    """Fewer, larger young collections, and what the process holds after start left out
    of every collection. A heartbeat's objects live until the next one (seconds): with
    Python's default thresholds they outlived the young collections, filled the old
    generation and set off a full collection every 2-4 s at 5,000 workers, a 400 ms
    pause each (heartbeat p99 250-340 ms; bench/RESULTS.md). Only `serve` tunes it: its
    process is its own, while tests start registries inside theirs."""
    if young_threshold:
        gc.set_threshold(young_threshold, 20, 10)
    gc.freeze()  # modules, metadata, descriptors: never garbage, never scanned again


def serve(settings: RegistrySettings) -> int:
    async def build() -> server.RunningServer:
        registry = await start(settings)
        tune_gc(settings.gc_young_threshold)

        async def halt_background() -> None:
            for task in registry.tasks:
                task.cancel()
            await registry.controller.stop()
            if registry.store.leases is not None:
                with contextlib.suppress(Exception):  # the restart grace covers it
                    await registry.store.leases.flush()
            await registry.events.stop()
            await registry.feed.stop()  # ends open watches so the server can stop

        registry.running.on_stop.append(halt_background)
        return registry.running

    return server.run("registry", settings, build)
