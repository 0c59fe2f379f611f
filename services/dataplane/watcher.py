"""A data-plane copy of the registry's picture, kept current by its Watch feed.

Workers and gateways hold rollouts, versions and live workers as the registry last
said, resume the feed from their last revision after any interruption (a
snapshot replaces the picture when the registry asks for it), and keep serving
from what they know while the registry is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.common.registry_client import Metadata

log = logging.getLogger(__name__)

VersionKey = tuple[str, int]


class Picture:
    """Models and rollouts by model, versions by (model, number), workers by name."""

    def __init__(self) -> None:
        self.models: dict[str, rpb.Model] = {}
        self.rollouts: dict[str, rpb.Rollout] = {}
        self.versions: dict[VersionKey, rpb.Version] = {}
        self.workers: dict[str, rpb.Worker] = {}
        # Tokens the data plane accepts, by the sha256 of their secret (revoked ones dropped).
        self.credentials: dict[str, rpb.Credential] = {}
        self._credential_digest: dict[str, str] = {}  # token name -> its digest above

    def apply(self, events: Iterable[rpb.WatchEvent]) -> None:
        for event in events:
            kind = event.WhichOneof("resource")
            if kind == "rollout":
                self.rollouts[event.rollout.name.split("/")[1]] = event.rollout
            elif kind == "version":
                model = event.version.name.split("/")[1]
                self.versions[(model, event.version.number)] = event.version
            elif kind == "worker":
                self.workers[event.worker.name] = event.worker
            elif kind == "model":
                self.models[event.model.name.split("/")[1]] = event.model
            elif kind == "credential":
                self._put_credential(event.credential)
            elif event.type == rpb.WatchEvent.TYPE_DELETE:
                parts = event.resource_name.split("/")
                if parts[0] == "workers":
                    self.workers.pop(event.resource_name, None)
                elif parts[0] == "models" and len(parts) == 2:
                    self.models.pop(parts[1], None)
                    self.rollouts.pop(parts[1], None)
                    self.versions = {k: v for k, v in self.versions.items() if k[0] != parts[1]}

    def _put_credential(self, credential: rpb.Credential) -> None:
        old = self._credential_digest.pop(credential.name, None)
        if old is not None:
            self.credentials.pop(old, None)
        if not credential.revoked:
            self.credentials[credential.secret_sha256] = credential
            self._credential_digest[credential.name] = credential.secret_sha256


class RegistryWatcher:
    def __init__(
        self,
        stub: rpb_grpc.RegistryServiceStub,
        metadata: Metadata,
        on_change: Callable[[Picture], None],
        models: Iterable[str] = (),
        kinds: Iterable[rpb.WatchRequest.Kind] = (),
    ) -> None:
        self.stub = stub
        self.metadata = metadata
        self.on_change = on_change
        # What of the feed to ask for (WatchRequest.models, .kinds); empty = everything.
        self.models = sorted(models)
        self.kinds = list(kinds)
        self.picture = Picture()
        self.revision = 0
        # The revision of the last snapshot or change applied: what a worker reports as
        # seen. Progress messages move `revision` past changes this watcher's filter
        # left out; a heartbeat reporting that would stop being a quiet renewal every
        # time anything anywhere changed (and the heartbeat is itself a change).
        self.applied_revision = 0
        self.connected = asyncio.Event()
        # Set once a whole snapshot has arrived (the picture, tokens included, is known).
        self.synced = asyncio.Event()
        self._pending: Picture | None = None  # a snapshot arriving over several messages

    def handle(self, response: rpb.WatchResponse) -> None:
        if response.kind == rpb.WatchResponse.KIND_SNAPSHOT:
            if self._pending is None:
                self._pending = Picture()
            self._pending.apply(response.events)
            if response.snapshot_complete:
                self.picture, self._pending = self._pending, None
                self.revision = self.applied_revision = response.revision
                self.synced.set()
                self.on_change(self.picture)
            return
        if response.events:
            self.picture.apply(response.events)
            self.applied_revision = response.revision
            self.on_change(self.picture)
        self.revision = response.revision

    async def run(self) -> None:
        """Follow the feed forever, resuming from the last revision after interruptions
        (among them the registry ending a watch that fell behind, RESOURCE_EXHAUSTED:
        every message before that status has been handled, so its revision is right)."""
        delay = 0.2
        while True:
            try:
                request = rpb.WatchRequest(
                    since_revision=self.revision, models=self.models, kinds=self.kinds
                )
                call = self.stub.Watch(request, metadata=self.metadata)
                async for response in call:
                    delay = 0.2
                    self.connected.set()
                    self.handle(response)
            except aio.AioRpcError as exc:
                self.connected.clear()
                log.warning(
                    "watch interrupted (%s); resuming from revision %d",
                    exc.code().name,
                    self.revision,
                )
            self._pending = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
