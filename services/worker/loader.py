"""Registry mode: the worker's reconcile loop, i.e. the hot swap.

The worker registers, watches the registry's change feed and keeps the versions it
holds equal to the desired set: every version named by the rollouts (targets,
mirrors, pinned, and the fallback that answers while a target is not READY
anywhere) of the models it serves; with --role primary only the targets, pinned
and fallback versions, with --role mirror only the mirrors. A version to load is
downloaded (into a local cache by digest, reused when present, unless the registry
keeps it sealed: then in memory only; see fetch.py), verified, opened,
checked against the registered signature and warmed up; it reports READY (or
FAILED with the reason) at once. A failed load is retried with backoff and never
touches what is serving. A version no longer desired is retired only once every
target of its model is READY here (or failed here while READY elsewhere, which the
registry says by clearing the fallback), so traffic always has somewhere to go; a
draining version that is wanted again is revived rather than reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from google.protobuf.duration_pb2 import Duration
from grpc import StatusCode, aio

from services.common import onnxsig, registry_client
from services.common.errors import InvalidArgument, ServiceError
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.windows import FeatureCounts, Reporter
from services.dataplane.watcher import RegistryWatcher
from services.worker.fetch import fetch, prepare_cache
from services.worker.heartbeats import Heartbeats
from services.worker.held import Batching, Held, State
from services.worker.repository import Repository
from services.worker.runtime import Runtime
from services.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

LOAD_STATES = {
    State.LOADING: rpb.VERSION_LOAD_STATE_LOADING,
    State.READY: rpb.VERSION_LOAD_STATE_READY,
    State.FAILED: rpb.VERSION_LOAD_STATE_FAILED,
    State.DRAINING: rpb.VERSION_LOAD_STATE_DRAINING,
}
ROLES = {
    "all": rpb.WORKER_ROLE_ALL,
    "primary": rpb.WORKER_ROLE_PRIMARY,
    "mirror": rpb.WORKER_ROLE_MIRROR,
}
MAX_BACKOFF = 60.0

Key = tuple[str, int]


class RegistryLoader:
    def __init__(
        self,
        settings: WorkerSettings,
        repository: Repository,
        default: Batching,
        port: int,
        forward_port: int | None = None,
    ) -> None:
        assert settings.registry is not None
        self.settings = settings
        self.repository = repository
        self.default = default
        # Without --worker-id the registry picks the id: the one the worker token is
        # bound to (so a restart keeps it), else a new one the token then binds to.
        self.name = f"workers/{settings.worker_id}" if settings.worker_id else ""
        self.address = settings.advertise or f"{settings.host}:{port}"
        # The framed listener is reached at the same host as the gRPC port.
        self.forward_address = (
            f"{self.address.rpartition(':')[0]}:{forward_port}" if forward_port else ""
        )
        self.models = {m.strip() for m in settings.models.split(",") if m.strip()}
        self.channel, self.stub = registry_client.connect(
            settings.registry,
            ca=settings.registry_ca,
            cert=settings.registry_cert,
            key=settings.registry_key,
            max_message_bytes=settings.max_message_bytes,
        )
        self.metadata = registry_client.auth_metadata(
            registry_client.read_token(settings.registry_token, settings.registry_token_file)
        )
        # A worker reads rollouts, versions and credentials of the models it serves,
        # never other workers: it asks the feed for only those (at fleet scale every
        # worker's state change was otherwise sent to every worker).
        kind = rpb.WatchRequest.Kind
        self.watcher = RegistryWatcher(
            self.stub,
            self.metadata,
            lambda _: self._wake.set(),
            models=self.models,
            kinds=(kind.KIND_ROLLOUT, kind.KIND_VERSION, kind.KIND_CREDENTIAL),
        )
        self._wake = asyncio.Event()
        self._report = asyncio.Event()
        self._loading: dict[Key, asyncio.Task[None]] = {}
        self._retiring: dict[Key, asyncio.Task[None]] = {}
        self._failures: dict[Key, tuple[int, float]] = {}  # attempts, retry not before
        self._rollout_revisions: dict[str, int] = {}  # of the served models, last reconciled
        self._tasks: list[asyncio.Task[None]] = []
        self._registered = asyncio.Event()
        self.heartbeats = Heartbeats(self.stub, self.metadata)
        repository.on_change.append(self._changed)
        self.reporter: Reporter | None = None
        if repository.book is not None:
            repository.book.reporter = self.name
            self.reporter = Reporter(
                [repository.book], self.stub, self.metadata, settings.report_seconds
            )

    def _changed(self, held: Held) -> None:
        self._report.set()
        self._wake.set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        prepare_cache(self.settings.cache_dir)
        self._tasks = [
            asyncio.create_task(self.watcher.run(), name="registry-watch"),
            asyncio.create_task(self._heartbeat(), name="registry-heartbeat"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
        ]
        if self.reporter is not None:
            self._tasks.append(asyncio.create_task(self.reporter.run(), name="window-reporter"))

    async def stop(self) -> None:
        for task in [*self._tasks, *self._loading.values()]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.reporter is not None:
            await self.reporter.stop()
        self.heartbeats.close()
        if self._registered.is_set():
            with contextlib.suppress(aio.AioRpcError):
                await self.stub.DeleteWorker(
                    rpb.DeleteWorkerRequest(name=self.name), metadata=self.metadata, timeout=2
                )
        await self.channel.close()

    # --- registry conversation ------------------------------------------------------------

    async def _register(self) -> None:
        worker = rpb.Worker(
            name=self.name,
            address=self.address,
            forward_address=self.forward_address,
            role=ROLES[self.settings.role],
            models=sorted(self.models),
            capacity=self.settings.capacity,
            versions=self._states(),
            observed_revision=self.watcher.applied_revision,
        )
        lease = Duration()
        lease.FromNanoseconds(int(max(3 * self.settings.heartbeat_seconds, 1.0) * 1e9))
        reply = await self.stub.RegisterWorker(
            rpb.RegisterWorkerRequest(worker=worker, lease_duration=lease),
            metadata=self.metadata,
            timeout=10,
        )
        self.name = reply.worker.name
        if self.repository.book is not None:
            self.repository.book.reporter = self.name
        for window in self.reporter.pending if self.reporter is not None else ():
            window.reporter = window.reporter or self.name  # measured before the id was known
        self._registered.set()
        log.info("registered as %s (%s) with %s", self.name, self.address, self.settings.registry)

    def _states(self) -> list[rpb.WorkerVersionState]:
        return [
            rpb.WorkerVersionState(
                model=h.model, version=h.version, state=LOAD_STATES[h.state], error=h.error
            )
            for h in self.repository.states()
        ]

    async def _heartbeat(self) -> None:
        while True:
            try:
                if not self._registered.is_set():
                    await self._register()
                self._report.clear()
                await self.heartbeats.send(
                    rpb.HeartbeatRequest(
                        name=self.name,
                        versions=self._states(),
                        observed_revision=self.watcher.applied_revision,
                    )
                )
            except aio.AioRpcError as exc:
                if exc.code() == StatusCode.NOT_FOUND:
                    self._registered.clear()  # our lease ran out: register again at once
                    continue
                log.warning("heartbeat to the registry failed: %s", exc.details())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_seconds):
                    await self._report.wait()

    # --- reconcile --------------------------------------------------------------------------

    @property
    def rollouts(self) -> dict[str, rpb.Rollout]:
        return self.watcher.picture.rollouts

    @property
    def versions(self) -> dict[Key, rpb.Version]:
        return self.watcher.picture.versions

    def desired(self) -> set[Key]:
        wanted: set[Key] = set()
        for model, rollout in self.rollouts.items():
            if self.models and model not in self.models:
                continue
            numbers: set[int] = set()
            if self.settings.role != "mirror":
                numbers |= {t.version for t in rollout.targets} | set(rollout.pinned)
                numbers |= {f.version for f in rollout.fallback}
            if self.settings.role != "primary":
                numbers |= {m.version for m in rollout.mirrors}
            wanted |= {(model, n) for n in numbers}
        return wanted

    async def _reconcile_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_retry = self.reconcile()
            except Exception:  # one bad pass must not end reconciling
                log.exception("reconcile failed")
                next_retry = 5.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next_retry):
                    await self._wake.wait()

    def reconcile(self) -> float:
        """Start loads and retirements; return seconds until the next failed load may retry."""
        desired = self.desired()
        for key, version in self.versions.items():
            if key in desired:
                self.track_features(version)  # a reference the registry adopted since
        revisions = {}
        for model, rollout in self.rollouts.items():
            self.repository.targets[model] = [(t.version, t.percent) for t in rollout.targets]
            self.repository.fallback[model] = [(f.version, f.percent) for f in rollout.fallback]
            if not self.models or model in self.models:
                revisions[model] = rollout.revision
        if revisions != self._rollout_revisions:
            # The registry moves traffic off a fallback only on a report from a worker
            # that has seen the new rollout: report at once, not at the next interval.
            self._rollout_revisions = revisions
            self._report.set()
        now = time.monotonic()
        next_retry = 30.0
        for key in sorted(desired):
            held = self.repository.held.get(key[0], {}).get(key[1])
            if held is not None and held.state is State.DRAINING:
                if not self.repository.revive(held):
                    next_retry = min(next_retry, 0.1)  # unloading: load it again after
                continue
            if key in self._loading or (held is not None and held.state is not State.FAILED):
                continue
            if key not in self.versions:
                continue  # the version's description has not arrived yet
            _, not_before = self._failures.get(key, (0, 0.0))
            if now < not_before:
                next_retry = min(next_retry, not_before - now)
                continue
            _track(self._loading, key, asyncio.create_task(self._load(key), name=f"load {key}"))
        for held in list(self.repository.states()):
            key = (held.model, held.version)
            if key in desired or key in self._retiring or held.state is State.DRAINING:
                continue
            if self._can_retire(held.model, desired):
                task = asyncio.create_task(self._retire(key), name=f"retire {key}")
                _track(self._retiring, key, task)
        return next_retry

    def _can_retire(self, model: str, desired: set[Key]) -> bool:
        """Make before break: every target of the model READY here first, or failed
        here while the registry, having cleared the fallback, says it is READY
        elsewhere (this worker's copy then answers for nobody)."""
        rollout = self.rollouts.get(model)
        if rollout is None or not rollout.targets or self.settings.role == "mirror":
            # A mirror worker holds no target, and no client's request waits on it.
            return True
        versions = self.repository.held.get(model, {})
        settled = not rollout.fallback
        for target in rollout.targets:
            held = versions.get(target.version)
            state = held.state if held is not None else None
            if state is State.READY or (settled and state is State.FAILED):
                continue
            return False
        return True

    async def _retire(self, key: Key) -> None:
        await self.repository.retire(*key, grace=self.settings.drain_grace)
        self._wake.set()

    async def _load(self, key: Key) -> None:
        model, number = key
        version = self.versions[key]
        try:
            path = await self._fetch(version)
        except (ServiceError, aio.AioRpcError, OSError) as exc:
            message = exc.message if isinstance(exc, ServiceError) else str(exc)
            if isinstance(exc, aio.AioRpcError):
                message = f"download failed: {exc.code().name}: {exc.details()}"
            self._fail(key, message)
            return
        batching = self.default
        if version.batching.max_batch_size or version.batching.HasField("max_queue_delay"):
            batching = Batching(
                version.batching.max_batch_size or self.default.max_batch_size,
                version.batching.max_queue_delay.ToTimedelta().total_seconds()
                if version.batching.HasField("max_queue_delay")
                else self.default.max_queue_delay,
            )
        expected = onnxsig.from_proto(version.signature)

        def check(runtime: Runtime) -> None:
            why = onnxsig.mismatch(expected, runtime.signature)
            if why is not None:
                raise InvalidArgument(f"signature does not match the registry's: {why}")

        held = await self.repository.load(model, number, path, batching, check)
        self.track_features(version)
        if held.state is State.FAILED:
            self._fail(key, held.error, report=False)
        else:
            self._failures.pop(key, None)
        self._wake.set()

    def track_features(self, version: rpb.Version) -> None:
        """Histogram a version's inputs and outputs on its reference bins (or learn bins
        when it has none yet; the registry then adopts them as its reference)."""
        book = self.repository.book
        model = version.name.split("/")[1]
        key = (model, version.number)
        held = self.repository.held.get(model, {}).get(version.number)
        if book is None or held is None or held.state is not State.READY:
            return
        reference = (
            version.reference_statistics if version.HasField("reference_statistics") else None
        )
        current = book.features.get(key)
        if current is None or (reference is not None and not current.has_reference):
            book.features[key] = FeatureCounts(reference, self.settings.drift_learn_rows)

    def _fail(self, key: Key, message: str, report: bool = True) -> None:
        attempts, _ = self._failures.get(key, (0, 0.0))
        delay = min(MAX_BACKOFF, 0.5 * 2**attempts)
        self._failures[key] = (attempts + 1, time.monotonic() + delay)
        log.warning(
            "%s v%d failed (attempt %d, retry in %.1f s): %s", *key, attempts + 1, delay, message
        )
        if report:
            self.repository.fail(*key, message)
        self._wake.set()

    async def _fetch(self, version: rpb.Version) -> Path | bytes:
        return await fetch(self.stub, self.metadata, version, self.settings.cache_dir)


def _track(tasks: dict[Key, asyncio.Task[None]], key: Key, task: asyncio.Task[None]) -> None:
    """Keep `task` under `key` until it finishes."""
    tasks[key] = task

    def done(_: asyncio.Task[None]) -> None:
        if tasks.get(key) is task:
            del tasks[key]

    task.add_done_callback(done)
