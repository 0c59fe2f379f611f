"""The joiner: a prediction and its later feedback, matched by (model, request id),
become a labelled example and count towards the answering version's live accuracy.

It reads the event stream in order (predictions and feedback, whichever gateway
logged each), holds what waits for its partner for `--join-window-seconds` of
event time (the writers' clocks, so a replay decides exactly as the first run did)
and counts what found none. One registry replica runs it at a time (a lease).

Exactly once: every `--join-commit-seconds` it appends the joined examples (keys
`join:<model>:<prediction sequence>`, stored once), then commits in one transaction
the accuracy windows (source WINDOW_SOURCE_JOINER, which GetVersionMetrics and the
rollout controller read), its counters and its position, compare-and-set on the
position it started from. After a restart it reads again from the oldest event it
still held (`low_water`) and replays up to its committed position without effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select, update

from services.common.errors import OutOfRange
from services.common.events import Batch, EventStream, Start
from services.common.events import metrics as event_metrics
from services.common.events.metrics import append_counted
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.registry import catalog, windows
from services.registry.db import ConsumerRow
from services.registry.join_state import NAME, JoinState
from services.registry.leader import Lease
from services.registry.store import Store

log = logging.getLogger(__name__)

KINDS = (epb.EVENT_KIND_PREDICTION, epb.EVENT_KIND_FEEDBACK)
READ_BATCH = 2000
MISSING_SECONDS = 30.0  # how long a model not found stays so before it is looked up again


class LostPosition(Exception):
    """Another joiner committed since this one started (it lost its lease)."""


class Joiner:
    def __init__(
        self,
        store: Store,
        stream: EventStream,
        holder: str,
        *,
        window_seconds: float,
        max_pending: int,
        commit_seconds: float,
        lease_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.stream = stream
        self.window_seconds = window_seconds
        self.max_pending = max_pending
        self.commit_seconds = commit_seconds
        self.lease = Lease(store, NAME, holder, lease_seconds)
        self.position = 0
        self.committed = asyncio.Event()  # set at each commit (tests wait on positions)
        self._from_oldest = False

    async def run(self) -> None:
        while True:
            try:
                if await self.lease.hold():
                    await self._session()
            except asyncio.CancelledError:
                raise
            except LostPosition:
                log.info("joiner: another replica took over")
            except OutOfRange as exc:
                # What it still had to join is gone: go on from the oldest event kept.
                log.warning("joiner: %s; going on from the oldest event kept", exc.message)
                self._from_oldest = True
            except Exception as exc:  # the stream away, the database busy: start again
                log.warning("joiner stopped (%s); resuming from its last commit", exc)
            await asyncio.sleep(min(1.0, self.lease.seconds / 2))

    async def stop(self) -> None:
        await self.lease.release()

    async def _load(self) -> tuple[int, dict[str, Any]]:
        async with self.store.write_unversioned() as session:
            row = await session.get(ConsumerRow, NAME)
            if row is None:
                row = ConsumerRow(name=NAME, position=0, state="{}")
                session.add(row)
            return int(row.position), json.loads(row.state)

    async def _signatures(self, state: JoinState, models: set[str]) -> None:
        missing = models - state.signatures.keys()
        if not missing:
            return
        now = time.monotonic()
        # A model not found is asked for again only after a while, not at every batch.
        missing = {
            m for m in missing if state.not_found.get(m, -MISSING_SECONDS) + MISSING_SECONDS <= now
        }
        if not missing:
            return
        async with self.store.read() as session:
            for model in missing:
                try:
                    row = await catalog.model_row(session, model)
                except Exception:  # a model deleted since: its examples carry no features
                    state.not_found[model] = now
                    continue
                state.not_found.pop(model, None)
                state.signatures[model] = catalog.model_proto(row).signature

    async def _session(self) -> None:
        position, saved = await self._load()
        self.position = position
        state = JoinState(self.window_seconds, self.max_pending)
        state.counters = {m: list(c) for m, c in saved.get("counters", {}).items()}
        replay_through = position
        after = int(saved.get("low_water", position + 1)) - 1
        last_commit = time.time()
        event_metrics.JOINER_POSITION.set(position)
        start = Start.START_OLDEST if self._from_oldest else Start.START_AFTER_SEQUENCE
        self._from_oldest = False
        # Batches larger than the writers' (500): a read that fills its batch is
        # followed at once by another, usually empty, one.
        batches = self.stream.read(
            after, start=start, kinds=KINDS, follow=True, max_batch=READ_BATCH
        )
        queue: asyncio.Queue[Batch | BaseException] = asyncio.Queue(maxsize=8)
        pump = asyncio.create_task(_pump(batches, queue), name="joiner-read")
        through = position
        try:
            while True:
                item: Batch | BaseException | None = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.commit_seconds):
                        item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is not None:
                    await self._signatures(state, {e.model for e in item.events})
                    for event in item.events:
                        state.apply(event, live=event.sequence > replay_through)
                    state.flush_metrics()
                    through = max(through, item.read_through)
                    event_metrics.JOINER_LAG.set(max(0, item.last_sequence - item.read_through))
                    event_metrics.STREAM_LAST.set(item.last_sequence)
                now = time.time()
                if now - last_commit >= self.commit_seconds and through > self.position:
                    await self._commit(state, through, last_commit, now)
                    last_commit = now
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _commit(self, state: JoinState, through: int, start_s: float, end_s: float) -> None:
        if not await self.lease.hold():
            raise LostPosition()
        if state.out:
            await append_counted(self.stream, state.out)
        saved = {"counters": state.counters, "low_water": state.low_water(through)}
        found = state.windows(start_s, end_s)
        async with self.store.write_unversioned() as session:
            result = await session.execute(
                update(ConsumerRow)
                .where(ConsumerRow.name == NAME, ConsumerRow.position == self.position)
                .values(position=through, state=json.dumps(saved, separators=(",", ":")))
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise LostPosition()
            if found:
                await windows.store(session, found)
        state.out = []
        state.tallies = {}
        self.position = through
        event_metrics.JOINER_POSITION.set(through)
        self.committed.set()
        self.committed = asyncio.Event()


async def _pump(batches: AsyncIterator[Batch], queue: asyncio.Queue[Batch | BaseException]) -> None:
    try:
        async for batch in batches:
            await queue.put(batch)
    except Exception as exc:  # raised in the session that reads the queue
        await queue.put(exc)


async def joiner_stats(store: Store, model: str) -> tuple[int, int, int, int]:
    """(joined, feedback unmatched, predictions expired, position) for a model or all."""
    async with store.read() as session:
        row = (
            await session.execute(select(ConsumerRow).where(ConsumerRow.name == NAME))
        ).scalar_one_or_none()
    if row is None:
        return 0, 0, 0, 0
    counters: dict[str, list[int]] = json.loads(row.state).get("counters", {})
    chosen = [counters.get(model, [0, 0, 0])] if model else list(counters.values())
    joined, unmatched, expired = (sum(c[i] for c in chosen) for i in range(3))
    return joined, unmatched, expired, int(row.position)
