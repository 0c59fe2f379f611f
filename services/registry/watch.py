"""The change feed: `Watch(since_revision)` like a Kubernetes list+watch or an etcd watch.

A watcher that starts at revision 0, or at one older than the compacted feed, first
gets a snapshot of everything the data plane needs (models, versions, rollouts, live
workers) taken in one consistent read, then every change after it in revision
order, whole revisions at a time. When nothing changes it gets a progress message
so it can resume from a recent revision after a reconnect. Watchers are woken by
writes in this process, by PostgreSQL NOTIFY from other registry processes, and by
polling as a fallback.

One reader per process reads each change from the database once, into a cache of
recent responses (`_Batch`) that every watcher at that point of the feed is handed —
the same message object, not a read of its own — as Kubernetes' API server serves
watches from its watch cache. Only a watcher older than the cache reads the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
# Reads of the feed the cache keeps (each one or more whole revisions).
CACHE_BATCHES = 2000


@dataclass
class _Batch:
    """What one read of the feed found: the events of revisions after `after` up to
    and including `upto`, as the one response every watcher at `after` is sent."""

    after: int
    upto: int
    response: rpb.WatchResponse


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
        # The cache: reads in order, contiguous (each one's `after` the last one's
        # `upto`), indexed by `after`; `position` is how far it has read.
        self._batches: deque[_Batch] = deque()
        self._by_after: dict[int, _Batch] = {}
        self.position = 0
        self._advanced = asyncio.Event()
        self.reads = 0  # database reads of the feed by the reader (for tests)
        self.fallback_reads = 0  # by watchers older than the cache
        self._watching = 0
        self._no_watchers = asyncio.Event()
        self._no_watchers.set()

    async def start(self) -> None:
        self.position = (await self.store.revision())[0]
        self.hub.notify(self.position)
        self._tasks.append(asyncio.create_task(self._poll(), name="watch-poll"))
        self._tasks.append(asyncio.create_task(self._read(), name="watch-read"))
        if self.store.dialect == "postgresql":
            self._tasks.append(asyncio.create_task(self._listen(), name="watch-listen"))

    async def stop(self) -> None:
        """End every watch, letting each finish its database read (not cancelling it
        mid-query, which would leave the connection to a store that is closing)."""
        self.hub.close()
        self._wake()
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

    async def _read(self) -> None:
        """Read each change once, into the cache, and hand the credential and worker
        events other registry processes committed to the store's event listeners (the
        token table, the leases held in memory; this process's own reach them at
        commit)."""
        while not self.hub.closed:
            await self.hub.wait_beyond(self.position, 30.0)
            if self.hub.revision <= self.position:
                continue
            try:
                await self._read_more()
            except Exception as exc:  # read again at the next change or poll
                log.warning("change feed: reading changes failed: %s", exc)
                await asyncio.sleep(self.poll_seconds)

    async def _read_more(self) -> None:
        while True:
            self.reads += 1
            current, compacted, events = await self._changes_after(self.position)
            if self.position < compacted:
                # Changes were compacted before they were read: whoever keeps state
                # from the feed starts over, and watchers here go to the database.
                for reset in self.store.reset_listeners:
                    reset()
                self._batches.clear()
                self._by_after.clear()
                self.position = current
                self._wake()
                return
            newest = events[-1].revision if events else 0
            # A full read may have left revisions for the next one; otherwise all up to
            # `current` are in (read before the rows, which may hold newer ones still).
            full = bool(events) and newest < current
            upto = newest if full else max(self.position, current, newest)
            if upto <= self.position:
                return
            local = self.store.local_revisions
            remote = [
                e
                for e in events
                if e.revision not in local
                and (
                    e.WhichOneof("resource") in ("credential", "worker")
                    or e.resource_name.startswith("workers/")
                )
            ]
            if remote:
                for on_events in self.store.event_listeners:
                    on_events(remote, False)
            batch = _Batch(
                self.position,
                upto,
                rpb.WatchResponse(kind=rpb.WatchResponse.KIND_EVENTS, revision=upto, events=events),
            )
            self._batches.append(batch)
            self._by_after[batch.after] = batch
            while len(self._batches) > CACHE_BATCHES:
                del self._by_after[self._batches.popleft().after]
            self.position = upto
            self._wake()
            if not full:
                return

    def _wake(self) -> None:
        self._advanced.set()
        self._advanced = asyncio.Event()

    def _cached_after(self, last: int) -> _Batch | None:
        """The cached read that follows `last`, trimmed to what is after it; None if
        `last` is older than the cache (or newer than what it has read)."""
        batch = self._by_after.get(last)
        if batch is not None:
            return batch
        if not self._batches or last < self._batches[0].after or last >= self.position:
            return None
        # `last` falls inside a read (a snapshot's revision): that read, from `last` on.
        for batch in self._batches:
            if batch.after < last < batch.upto:
                kept = [e for e in batch.response.events if e.revision > last]
                response = rpb.WatchResponse(
                    kind=rpb.WatchResponse.KIND_EVENTS, revision=batch.upto, events=kept
                )
                return _Batch(last, batch.upto, response)
        return None

    async def _wait_beyond(self, last: int, within: float) -> bool:
        if self.position > last or self.hub.closed:
            return True
        advanced = self._advanced
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await advanced.wait()
        return self.position > last

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
            cached = self._cached_after(last)
            if cached is not None:
                last = cached.upto
                if cached.response.events:
                    yield cached.response
                continue
            if last < self.position:
                # Older than the cache: from the database.
                self.fallback_reads += 1
                current, compacted, events = await self._changes_after(last)
                if last < compacted:
                    last = None  # fell behind compaction: start over from a snapshot
                    continue
                if events:
                    last = events[-1].revision
                    yield rpb.WatchResponse(
                        kind=rpb.WatchResponse.KIND_EVENTS, revision=last, events=events
                    )
                else:
                    last = max(last, current)
                continue
            if not await self._wait_beyond(last, progress_seconds):
                # All changes up to the reader's position are read: nothing for this
                # watcher up to there.
                last = max(last, self.position)
                yield rpb.WatchResponse(kind=rpb.WatchResponse.KIND_PROGRESS, revision=last)


class FeedCompaction:
    """Change-feed history kept by time as well as by count: a revision is compacted
    away once it is older than `keep_seconds` and not among the newest
    `keep_revisions`, so a watcher connected all along never falls behind the history
    at a busy moment (10,000 revisions were ~40 s of a 500-worker fleet's heartbeats)."""

    def __init__(self, store: Store, keep_revisions: int, keep_seconds: float) -> None:
        self.store = store
        self.keep_revisions = keep_revisions
        self.keep_seconds = keep_seconds
        # (when, revision) at each tick: the revision a tick `keep_seconds` ago saw is
        # the newest that is surely that old.
        self._marks: deque[tuple[float, int]] = deque()

    async def run_once(self) -> None:
        await self.tick(time.monotonic())

    async def tick(self, now: float) -> int | None:
        """Compact what is old enough at monotonic time `now`; the new floor, or None
        when nothing is that old yet."""
        self._marks.append((now, (await self.store.revision())[0]))
        through = None
        while self._marks and self._marks[0][0] <= now - self.keep_seconds:
            through = self._marks.popleft()[1]
        if through is None:
            return None
        return await self.store.compact(self.keep_revisions, through)
