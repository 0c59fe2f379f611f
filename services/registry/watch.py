"""The change feed: `Watch(since_revision)` like a Kubernetes list+watch or an etcd watch.

A watcher that starts at revision 0, or at one older than the compacted feed, first
gets a snapshot of everything the data plane needs (models, versions, rollouts, live
workers) taken in one consistent read, then every change after it in revision
order, whole revisions at a time. When nothing changes it gets a progress message
so it can resume from a recent revision after a reconnect. Watchers are woken by
writes in this process, by PostgreSQL NOTIFY from other registry processes, and by
polling as a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import security, workers
from services.registry.db import ChangeRow, Meta, ModelRow, RolloutRow, TokenRow, VersionRow
from services.registry.store import NOTIFY_CHANNEL, Store, now_us

log = logging.getLogger(__name__)

SNAPSHOT_BATCH = 500
EVENTS_BATCH = 1000


class ChangeHub:
    """The newest revision this process knows of, and a way to wait for a newer one."""

    def __init__(self) -> None:
        self.revision = 0
        self.closed = False
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Wake every watcher for good: the server is stopping."""
        self.closed = True
        self._changed.set()

    def notify(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_beyond(self, revision: int, within: float) -> bool:
        if self.revision > revision or self.closed:
            return True
        changed = self._changed
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await changed.wait()
        return self.revision > revision


class Feed:
    """Serves watches from one store, kept awake by a hub."""

    def __init__(self, store: Store, poll_seconds: float = 1.0) -> None:
        self.store = store
        self.hub = ChangeHub()
        self.poll_seconds = poll_seconds
        store.listeners.append(self.hub.notify)
        self._tasks: list[asyncio.Task[None]] = []
        self._watching = 0
        self._no_watchers = asyncio.Event()
        self._no_watchers.set()

    async def start(self) -> None:
        self.hub.notify((await self.store.revision())[0])
        self._tasks.append(asyncio.create_task(self._poll(), name="watch-poll"))
        self._tasks.append(asyncio.create_task(self._hand_on(), name="watch-hand-on"))
        if self.store.dialect == "postgresql":
            self._tasks.append(asyncio.create_task(self._listen(), name="watch-listen"))

    async def stop(self) -> None:
        """End every watch, letting each finish its database read (not cancelling it
        mid-query, which would leave the connection to a store that is closing)."""
        self.hub.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self._no_watchers.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self) -> None:
        while True:
            try:
                self.hub.notify((await self.store.revision())[0])
            except Exception as exc:  # keep polling through database hiccups
                log.warning("change feed poll failed: %s", exc)
            await asyncio.sleep(self.poll_seconds)

    async def _listen(self) -> None:
        import asyncpg

        url = make_url(self.store.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while True:
            try:
                conn = await asyncpg.connect(dsn)
                try:
                    await conn.add_listener(
                        NOTIFY_CHANNEL, lambda *args: self.hub.notify(int(args[-1]))
                    )
                    while True:
                        await asyncio.sleep(30)
                        await conn.execute("SELECT 1")  # notice a dead connection
                finally:
                    with contextlib.suppress(Exception):
                        await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); polling meanwhile, reconnecting", exc)
                await asyncio.sleep(1)

    async def _hand_on(self) -> None:
        """Hand the credential and worker events other registry processes commit to the
        store's event listeners (the token table, the leases held in memory); this
        process's own reach them at commit."""
        last = self.hub.revision
        while not self.hub.closed:
            await self.hub.wait_beyond(last, 30.0)
            if self.hub.revision <= last:
                continue
            try:
                last = await self._hand_on_after(last)
            except Exception as exc:  # read again at the next change or poll
                log.warning("change feed: reading credential and worker events failed: %s", exc)
                await asyncio.sleep(self.poll_seconds)

    async def _hand_on_after(self, last: int) -> int:
        while True:
            async with self.store.read() as session:
                current, compacted = (
                    await session.execute(select(Meta.revision, Meta.compacted_revision))
                ).one()
                rows = (
                    await session.execute(
                        select(ChangeRow.revision, ChangeRow.proto)
                        .where(
                            ChangeRow.revision > last,
                            ChangeRow.kind.in_(("credential", "worker")),
                        )
                        .order_by(ChangeRow.revision, ChangeRow.seq)
                        .limit(EVENTS_BATCH)
                    )
                ).all()
            if last < compacted:
                for reset in self.store.reset_listeners:
                    reset()
            local = self.store.local_revisions
            remote = [rpb.WatchEvent.FromString(p) for r, p in rows if r not in local]
            if remote:
                for on_events in self.store.event_listeners:
                    on_events(remote, False)
            if len(rows) < EVENTS_BATCH:
                return max(last, int(current))
            if rows[0][0] == rows[-1][0]:
                # One revision larger than a batch (a mass expiry): forget everything
                # rather than read it in pieces.
                for reset in self.store.reset_listeners:
                    reset()
                last = int(rows[-1][0])
            else:
                # Its last revision may continue past the batch: read it again whole
                # (handing an event on twice only forgets twice).
                last = int(rows[-1][0]) - 1

    async def snapshot(self) -> tuple[int, list[rpb.WatchEvent]]:
        """Everything the data plane needs, at one revision."""
        async with self.store.read() as session:
            if self.store.dialect == "postgresql":
                await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            revision = (await session.execute(select(Meta.revision))).scalar_one()
            events: list[rpb.WatchEvent] = []

            def put(kind: str, resource: Any) -> None:
                event = rpb.WatchEvent(
                    revision=revision, type=rpb.WatchEvent.TYPE_PUT, resource_name=resource.name
                )
                getattr(event, kind).CopyFrom(resource)
                events.append(event)

            for proto in (
                await session.execute(select(ModelRow.proto).order_by(ModelRow.id))
            ).scalars():
                put("model", rpb.Model.FromString(proto))
            for proto in (
                await session.execute(select(VersionRow.proto).order_by(VersionRow.id))
            ).scalars():
                put("version", rpb.Version.FromString(proto))
            for proto in (
                await session.execute(select(RolloutRow.proto).order_by(RolloutRow.model_id))
            ).scalars():
                put("rollout", rpb.Rollout.FromString(proto))
            for worker in await workers.live(session):
                put("worker", worker)
            now = now_us()
            for row in (
                await session.execute(select(TokenRow).where(TokenRow.revoked.is_(False)))
            ).scalars():
                if row.expire_us is None or row.expire_us > now:
                    credential = security.credential_proto(row)
                    event = rpb.WatchEvent(
                        revision=revision,
                        type=rpb.WatchEvent.TYPE_PUT,
                        resource_name=credential.name,
                    )
                    event.credential.CopyFrom(credential)
                    events.append(event)
            return int(revision), events

    async def _changes_after(self, revision: int) -> tuple[int, int, list[rpb.WatchEvent]]:
        """(current revision, compacted revision, events after `revision`, whole revisions)."""
        async with self.store.read() as session:
            current, compacted = (
                await session.execute(select(Meta.revision, Meta.compacted_revision))
            ).one()
            rows = (
                await session.execute(
                    select(ChangeRow.revision, ChangeRow.proto)
                    .where(ChangeRow.revision > revision)
                    .order_by(ChangeRow.revision, ChangeRow.seq)
                    .limit(EVENTS_BATCH)
                )
            ).all()
        if len(rows) == EVENTS_BATCH:
            # Never split a revision across messages: drop the possibly partial last one.
            last = rows[-1][0]
            trimmed = [r for r in rows if r[0] != last]
            rows = trimmed or rows
        return int(current), int(compacted), [rpb.WatchEvent.FromString(p) for _, p in rows]

    async def watch(self, since: int, progress_seconds: float) -> AsyncIterator[rpb.WatchResponse]:
        current, compacted = await self.store.revision()
        # None = start with a snapshot: from scratch, compacted away, or from another database.
        last = None if since <= 0 or since < compacted or since > current else since
        self._watching += 1
        self._no_watchers.clear()
        try:
            async for response in self._follow(last, progress_seconds):
                yield response
        finally:
            self._watching -= 1
            if not self._watching:
                self._no_watchers.set()

    async def _follow(
        self, last: int | None, progress_seconds: float
    ) -> AsyncIterator[rpb.WatchResponse]:
        while not self.hub.closed:
            if last is None:
                revision, events = await self.snapshot()
                for start in range(0, max(len(events), 1), SNAPSHOT_BATCH):
                    yield rpb.WatchResponse(
                        kind=rpb.WatchResponse.KIND_SNAPSHOT,
                        revision=revision,
                        events=events[start : start + SNAPSHOT_BATCH],
                        snapshot_complete=start + SNAPSHOT_BATCH >= len(events),
                    )
                last = revision
            current, compacted, events = await self._changes_after(last)
            if last < compacted:
                last = None  # fell behind compaction: start over from a snapshot
                continue
            if events:
                last = events[-1].revision
                yield rpb.WatchResponse(
                    kind=rpb.WatchResponse.KIND_EVENTS, revision=last, events=events
                )
                continue
            if not await self.hub.wait_beyond(max(last, current), progress_seconds):
                last = max(last, current)
                yield rpb.WatchResponse(kind=rpb.WatchResponse.KIND_PROGRESS, revision=last)
