"""The embedded backend of the event stream: the `events` table of the registry's database.

Appends take the `event_meta` row lock, look up which keys are stored already,
hand out the next sequences and insert the rest in one transaction: sequences commit
in the order they were handed out, so a reader that has read through N never misses
one committed later, and a key (UNIQUE) is stored once for ever. Readers are woken by
appends in this process and poll for those of other registry replicas. Retention
removes the oldest events, by age and by size, always a prefix of the stream, and
moves `first_sequence` on so a reader asking for removed events is told so.

Appends that arrive while one is being written wait and are then written together, in
one transaction (group commit): each SubmitFeedback or IngestExamples is one small
append, and one transaction each would cap them at what the database commits per
second (a few dozen on SQLite with its fsync), however many callers wait. Each caller
still gets its own sequences and duplicate flags, and its answer only once its events
are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import cast

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import OutOfRange
from services.common.events import (
    DEFAULT_BATCH,
    Appended,
    Batch,
    Start,
    Stats,
    retention_gap,
)
from services.registry.db import EventMeta, EventRow
from services.registry.db_away import away
from services.registry.event_recent import Appendable, Recent
from services.registry.event_sql import (
    KEYS_PER_QUERY,
    Statements,
    append_sqlite,
    bounds,
    fetch,
    on_sqlite_thread,
    parse,
    plan,
    statements,
)
from services.registry.store import Store, now_us

log = logging.getLogger(__name__)

_GROUP_EVENTS = 5000  # events written together at most (a batch bigger goes alone)
_RETAIN_CHUNK = 20_000  # events deleted per retention transaction
# An idle follower sends its position this often, so a filtered reader's lag stays known.
PROGRESS_SECONDS = 5.0


class SqlEventLog:
    backend = "sql"

    def __init__(
        self,
        store: Store,
        *,
        retention_seconds: float,
        retention_bytes: int,
        poll_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.retention_seconds = retention_seconds
        self.retention_bytes = retention_bytes
        self.poll_seconds = poll_seconds
        self._appended = asyncio.Event()
        self._waiting: list[tuple[Sequence[Appendable], asyncio.Future[Appended]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._recent = Recent()  # this process's last appends, for its readers
        self._write_engine = store.engine.execution_options(liveml_write=True)

    @contextlib.asynccontextmanager
    async def _transaction(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """A Core connection in a transaction, committed at the end (BEGIN IMMEDIATE on
        SQLite for a write, as the store's write sessions take): appends and reads use
        driver-level SQL only, and an ORM session around each cost ~400 us more (about
        a microsecond per event of a 500-event append, and as much for the joiner's poll
        that follows it)."""
        with away():
            async with (self._write_engine if write else self.store.engine).begin() as conn:
                yield conn

    def _wake(self) -> None:
        self._appended.set()
        self._appended = asyncio.Event()

    async def append(self, events: Sequence[Appendable]) -> Appended:
        if not events:
            return Appended()
        done: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._waiting.append((events, done))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_waiting())
        return await asyncio.shield(done)  # a caller gone does not undo the others' write

    async def _write_waiting(self) -> None:
        """Write what waits, group by group, until nothing does."""
        try:
            while self._waiting:
                group: list[tuple[Sequence[Appendable], asyncio.Future[Appended]]] = []
                size = 0
                while self._waiting and (
                    not group or size + len(self._waiting[0][0]) <= _GROUP_EVENTS
                ):
                    group.append(self._waiting.pop(0))
                    size += len(group[-1][0])
                try:
                    try:
                        appended = await self._write([e for events, _ in group for e in events])
                    except Exception as exc:
                        await self._write_alone(group, exc)
                        continue
                except BaseException:  # cancelled (shutdown): so are the callers waiting
                    for _, done in [*group, *self._waiting]:
                        done.cancel()
                    self._waiting.clear()  # told CANCELLED: never written after all
                    raise
                at = 0
                for events, done in group:
                    n = len(events)
                    if not done.done():
                        done.set_result(
                            Appended(
                                appended.sequences[at : at + n], appended.duplicates[at : at + n]
                            )
                        )
                    at += n
        finally:
            self._writer = None

    async def _write_alone(
        self, group: list[tuple[Sequence[Appendable], asyncio.Future[Appended]]], exc: Exception
    ) -> None:
        """The group's write failed: one caller's batch must not fail the others', so
        each is written alone (a group of one has its answer already)."""
        for events, done in group:
            if len(group) == 1:
                if not done.done():
                    done.set_exception(exc)
                return
            try:
                alone = await self._write(events)
            except Exception as own:
                if not done.done():
                    done.set_exception(own)
                continue
            if not done.done():
                done.set_result(alone)

    async def _write(self, events: Sequence[Appendable]) -> Appended:
        sql = statements(self.store.dialect)
        stored_us = now_us()
        async with self._transaction(write=True) as conn:
            if self.store.dialect == "sqlite":
                # The whole append in one call on SQLite's own thread: every statement
                # through the async adapter is a few trips between threads.
                result, first = await on_sqlite_thread(conn, append_sqlite, sql, events, stored_us)
            else:
                # PostgreSQL: the meta row's lock orders appends.
                last = int((await conn.exec_driver_sql(sql.lock)).scalar_one())
                keys = list({e.key for e in events})
                known: dict[str, int] = {}
                for i in range(0, len(keys), KEYS_PER_QUERY):
                    part = keys[i : i + KEYS_PER_QUERY]
                    found = await conn.exec_driver_sql(sql.known(len(part)), sql.keys(part))
                    known.update(cast(list[tuple[str, int]], found.all()))
                result, rows, sequence, size = plan(events, last, known, stored_us)
                if rows:
                    await conn.exec_driver_sql(sql.insert, rows)
                    await conn.exec_driver_sql(sql.advance, (sequence, size))
                first = last + 1
        if result.stored:  # committed: this process's readers may take them from memory
            duplicates = result.duplicates
            self._recent.add(
                first,
                [e for e, d in zip(events, duplicates, strict=True) if not d]
                if any(duplicates)
                else events,
            )
            self._wake()
        return result

    async def _bounds(self) -> tuple[int, int]:
        async with self.store.read() as session:
            first, last = (
                await session.execute(
                    select(EventMeta.first_sequence, EventMeta.last_sequence).where(
                        EventMeta.id == 1
                    )
                )
            ).one()
        return int(first), int(last)

    async def read(
        self,
        after: int = 0,
        *,
        start: int = Start.START_AFTER_SEQUENCE,
        model: str = "",
        kinds: Sequence[int] = (),
        follow: bool = False,
        max_batch: int = DEFAULT_BATCH,
    ) -> AsyncIterator[Batch]:
        first, last = await self._bounds()
        if start == Start.START_LATEST:
            after = last
        elif start == Start.START_OLDEST:
            after = first - 1
        sql = statements(self.store.dialect)
        query, params = sql.rows(model, list(kinds))
        reported = time.monotonic()
        told = after  # the reader knows it has everything through here
        while True:
            woken = self._appended
            # The bounds are read on both sides of the rows: `last` before (everything up
            # to it is committed, so the rows cover it), `first` after (retention that
            # ran meanwhile is seen). One transaction for the three: in SQLite it is one
            # snapshot (rows and bounds agree), in PostgreSQL each statement sees what
            # committed before it began; a session each would cost more than the reads.
            # What this process appended itself is taken from memory (`Recent`), only
            # the bounds from the database: the rows are committed, so `last` and
            # `first` read now hold for them as for the rows read.
            recent = self._recent.holds(after + 1)
            async with self._transaction(write=False) as conn:
                parameters = (after, *params, max_batch)
                if recent:
                    last, first = await self._poll_bounds(conn, sql)
                    taken = self._recent.take(after, model, kinds, max_batch)
                else:
                    taken = None
                if taken is not None:
                    parsed, through = taken
                    full = len(parsed) == max_batch or through < last
                elif self.store.dialect == "sqlite":
                    last, rows, first = await on_sqlite_thread(conn, fetch, sql, query, parameters)
                else:
                    last = int((await conn.exec_driver_sql(sql.last)).scalar_one())
                    rows = list((await conn.exec_driver_sql(query, parameters)).all())
                    first = int((await conn.exec_driver_sql(sql.first)).scalar_one())
            if taken is None:
                parsed = parse(rows)
                through = rows[-1][0] if rows else after
                full = len(rows) == max_batch
                if not full:
                    through = max(through, last)
            gap = retention_gap(after, first, Start.START_AFTER_SEQUENCE)
            if gap is not None:
                raise OutOfRange(gap)
            # Events it does not want (other kinds or models) move `after` on without a
            # batch; a progress mark tells the reader, so its position can follow.
            if parsed or (through > told and time.monotonic() - reported >= PROGRESS_SECONDS):
                yield Batch(parsed, through, first, max(last, through))
                reported, told = time.monotonic(), through
            after = through
            if full:
                continue
            if not follow:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await woken.wait()

    async def _poll_bounds(self, conn: AsyncConnection, sql: Statements) -> tuple[int, int]:
        """(last, first) through the driver, as a reader's poll reads them."""
        if self.store.dialect == "sqlite":
            return await on_sqlite_thread(conn, bounds, sql)
        last = int((await conn.exec_driver_sql(sql.last)).scalar_one())
        return last, int((await conn.exec_driver_sql(sql.first)).scalar_one())

    async def retain(self) -> int:
        """Remove what retention no longer keeps; the number of events removed."""
        removed = 0
        horizon = now_us() - int(self.retention_seconds * 1e6)
        while True:
            async with self.store.write_unversioned() as session:
                meta = (
                    await session.execute(
                        select(EventMeta).where(EventMeta.id == 1).with_for_update()
                    )
                ).scalar_one()
                limit = meta.first_sequence - 1 + _RETAIN_CHUNK
                # No index on stored_us: the prefix that may go is scanned by sequence
                # (at most _RETAIN_CHUNK events).
                aged = (
                    await session.execute(
                        select(func.max(EventRow.sequence)).where(
                            EventRow.stored_us < horizon,
                            EventRow.sequence >= meta.first_sequence,
                            EventRow.sequence <= limit,
                        )
                    )
                ).scalar_one()
                cutoff = int(aged or 0)
                excess = meta.bytes - self.retention_bytes
                if excess > 0:
                    sizes = await session.execute(
                        select(EventRow.sequence, EventRow.size)
                        .where(EventRow.sequence <= limit)
                        .order_by(EventRow.sequence)
                    )
                    for sequence, size in sizes.all():
                        if excess <= 0:
                            break
                        excess -= size
                        cutoff = max(cutoff, sequence)
                if cutoff < meta.first_sequence:
                    return removed
                gone = await session.execute(
                    select(func.count(), func.coalesce(func.sum(EventRow.size), 0)).where(
                        EventRow.sequence <= cutoff
                    )
                )
                count, size = gone.one()
                await session.execute(delete(EventRow).where(EventRow.sequence <= cutoff))
                await session.execute(
                    update(EventMeta)
                    .where(EventMeta.id == 1)
                    .values(first_sequence=cutoff + 1, bytes=EventMeta.bytes - size)
                )
            removed += int(count)
            log.info("event retention removed %d events, through sequence %d", count, cutoff)

    async def stats(self, model: str = "") -> Stats:
        async with self.store.read() as session:
            meta = (await session.execute(select(EventMeta).where(EventMeta.id == 1))).scalar_one()
            counted = select(EventRow.kind, func.count()).group_by(EventRow.kind)
            # The oldest and newest events' times, at the two ends of the sequence (its
            # index, or the model's): stored_us has no index of its own.
            times = select(EventRow.stored_us).limit(1)
            if model:
                counted = counted.where(EventRow.model == model)
                times = times.where(EventRow.model == model)
            counts = {int(k): int(n) for k, n in (await session.execute(counted)).all()}
            oldest = (await session.execute(times.order_by(EventRow.sequence))).scalar_one_or_none()
            newest = (
                await session.execute(times.order_by(EventRow.sequence.desc()))
            ).scalar_one_or_none()
        return Stats(
            backend=self.backend,
            counts=counts,
            first_sequence=meta.first_sequence,
            last_sequence=meta.last_sequence,
            oldest_us=int(oldest or 0),
            newest_us=int(newest or 0),
            bytes=meta.bytes,
            retention_seconds=self.retention_seconds,
            retention_bytes=self.retention_bytes,
        )

    async def close(self) -> None:
        if self._writer is not None:  # let the appends being written finish
            await asyncio.wait([self._writer], timeout=10)
