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
A filtered watcher (WatchRequest.models, .kinds: `watch_filter`) is handed that read
cut to its filter, cut once per read and filter when it is read, and is woken only
by a read with something for it; while everything that changes is filtered out it
still gets progress messages at its interval.

A watcher never holds the reader or another watcher up: each pulls from the cache
at its own pace, so one whose client stops reading only stops pulling (the
servicer ends it once a write has waited --watch-slow-seconds); what it is owed
stays in the shared cache, never in a queue of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.engine import make_url

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import feed_snapshot
from services.registry.change_hub import ChangeHub
from services.registry.db import ChangeRow, Meta
from services.registry.feed_compaction import FeedCompaction
from services.registry.store import NOTIFY_CHANNEL, Store
from services.registry.watch_filter import WatchFilter
from services.registry.watch_slow import SlowWatchers

# ChangeHub, FeedCompaction and WatchFilter are re-exported (their modules split off this one).
__all__ = ["ChangeHub", "Feed", "FeedCompaction", "WatchFilter"]

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
    # The response cut to each filter a watcher here asked for (made once per filter).
    cuts: dict[WatchFilter, rpb.WatchResponse] = field(default_factory=dict)

    def cut(self, wanted: WatchFilter) -> rpb.WatchResponse:
        if wanted.everything:
            return self.response
        response = self.cuts.get(wanted)
        if response is None:
            response = self.cuts[wanted] = wanted.cut(self.response)
        return response


@dataclass
class _Interest:
    """The watchers of one filter. Each read is cut for it when read, so they are woken
    only by a read with something for them (or their progress interval), not by every
    change of the fleet: thousands of workers watching their own models would
    otherwise all wake for each change of any."""

    watchers: int = 0
    # Every read after `since` was cut for this filter; `relevant` is the `upto` of the
    # newest one that kept anything.
    since: int = 0
    relevant: int = 0
    woken: asyncio.Event = field(default_factory=asyncio.Event)

    def nothing_after(self, last: int) -> bool:
        return last >= self.since and self.relevant <= last

    def wake(self) -> None:
        self.woken.set()
        self.woken = asyncio.Event()


class Feed:
    """Serves watches from one store, kept awake by a hub."""

    def __init__(self, store: Store, poll_seconds: float = 1.0, slow_seconds: float = 10.0) -> None:
        self.store = store
        self.hub = ChangeHub()
        self.poll_seconds = poll_seconds
        self.slow_watchers = SlowWatchers(slow_seconds)
        store.listeners.append(self.hub.notify)
        self._tasks: list[asyncio.Task[None]] = []
        # The cache: reads in order, contiguous (each one's `after` the last one's
        # `upto`), indexed by `after`; `position` is how far it has read.
        self._batches: deque[_Batch] = deque()
        self._by_after: dict[int, _Batch] = {}
        self.position = 0
        self._advanced = asyncio.Event()
        # Filtered watchers by filter (an unfiltered one waits on `_advanced`).
        self._interests: dict[WatchFilter, _Interest] = {}
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
        self._wake_interests()
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
                self._wake_interests()
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
            for wanted, interest in self._interests.items():
                if batch.cut(wanted).events:
                    interest.relevant = upto
                    interest.wake()
            self.position = upto
            self._wake()
            if not full:
                return

    def _wake(self) -> None:
        self._advanced.set()
        self._advanced = asyncio.Event()

    def _wake_interests(self) -> None:
        """Every filtered watcher walks the feed again (it is stopping, or was reset)."""
        for interest in self._interests.values():
            interest.since = self.position
            interest.wake()

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

    async def _wait_beyond(self, last: int, within: float, interest: _Interest | None) -> bool:
        """Whether there is more for a watcher at `last` within `within` seconds: any
        read past it, or for a filtered one, a read with something for its filter."""

        def more() -> bool:
            if interest is None:
                return self.position > last
            return not interest.nothing_after(last)

        if more() or self.hub.closed:
            return True
        woken = self._advanced if interest is None else interest.woken
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await woken.wait()
        return more()

    async def snapshot(self) -> tuple[int, list[rpb.WatchEvent]]:
        """Everything the data plane needs, at one revision."""
        return await feed_snapshot.snapshot(self.store)

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

    async def watch(
        self, since: int, progress_seconds: float, wanted: WatchFilter | None = None
    ) -> AsyncGenerator[rpb.WatchResponse, None]:
        current, compacted = await self.store.revision()
        # None = start with a snapshot: from scratch, compacted away, or from another database.
        last = None if since <= 0 or since < compacted or since > current else since
        wanted = wanted or WatchFilter()
        interest = None
        if not wanted.everything:
            interest = self._interests.get(wanted)
            if interest is None:
                interest = self._interests[wanted] = _Interest(since=self.position)
            interest.watchers += 1
        self._watching += 1
        self._no_watchers.clear()
        try:
            async for response in self._follow(last, progress_seconds, wanted, interest):
                yield response
        finally:
            self._watching -= 1
            if not self._watching:
                self._no_watchers.set()
            if interest is not None:
                interest.watchers -= 1
                if not interest.watchers:
                    del self._interests[wanted]

    async def _follow(
        self,
        last: int | None,
        progress_seconds: float,
        wanted: WatchFilter,
        interest: _Interest | None,
    ) -> AsyncGenerator[rpb.WatchResponse, None]:
        # When this watcher was last sent anything: a progress message is due
        # `progress_seconds` after it, whether the feed was idle or busy only with
        # changes the filter leaves out.
        sent = time.monotonic()
        while not self.hub.closed:
            if last is None:
                revision, events = await self.snapshot()
                events = wanted.events(events)
                for start in range(0, max(len(events), 1), SNAPSHOT_BATCH):
                    yield rpb.WatchResponse(
                        kind=rpb.WatchResponse.KIND_SNAPSHOT,
                        revision=revision,
                        events=events[start : start + SNAPSHOT_BATCH],
                        snapshot_complete=start + SNAPSHOT_BATCH >= len(events),
                    )
                last, sent = revision, time.monotonic()
            response: rpb.WatchResponse | None = None
            idle = False
            if interest is not None and interest.nothing_after(last):
                # Every read since `last` was cut for this filter and kept nothing.
                last = max(last, self.position)
            cached = self._cached_after(last)
            if cached is not None:
                last = cached.upto
                response = cached.cut(wanted)
            elif last < self.position:
                # Older than the cache: from the database.
                self.fallback_reads += 1
                current, compacted, events = await self._changes_after(last)
                if last < compacted:
                    last = None  # fell behind compaction: start over from a snapshot
                    continue
                last = events[-1].revision if events else max(last, current)
                response = rpb.WatchResponse(
                    kind=rpb.WatchResponse.KIND_EVENTS, revision=last, events=wanted.events(events)
                )
            else:
                due = progress_seconds - (time.monotonic() - sent)
                if due > 0 and await self._wait_beyond(last, due, interest):
                    continue
                # All changes up to the reader's position are read: nothing for this
                # watcher up to there.
                last, idle = max(last, self.position), True
            if response is not None and response.events:
                yield response
            elif idle or time.monotonic() - sent >= progress_seconds:
                yield rpb.WatchResponse(kind=rpb.WatchResponse.KIND_PROGRESS, revision=last)
            else:
                continue
            sent = time.monotonic()
