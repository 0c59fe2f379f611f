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
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import OutOfRange
from services.common.events import (
    DEFAULT_BATCH,
    Appended,
    Batch,
    Encoded,
    Start,
    Stats,
    retention_gap,
)
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.registry.db import EventMeta, EventRow
from services.registry.store import Store, now_us

log = logging.getLogger(__name__)

_KEYS_PER_QUERY = 500  # bound parameters per IN (...) lookup
_GROUP_EVENTS = 5000  # events written together at most (a batch bigger goes alone)
_RETAIN_CHUNK = 20_000  # events deleted per retention transaction
# An idle follower sends its position this often, so a filtered reader's lag stays known.
PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class _Statements:
    """The append's statements in the driver's own parameter style."""

    lock: str
    insert: str
    advance: str
    first: str
    last: str
    in_list: bool  # SQLite: key IN (?, ?, ...); PostgreSQL: key = ANY($1), one array

    def known(self, n: int) -> str:
        if self.in_list:
            return f"SELECT key, sequence FROM events WHERE key IN ({', '.join('?' * n)})"
        return "SELECT key, sequence FROM events WHERE key = ANY($1::varchar[])"

    def keys(self, keys: list[str]) -> tuple[Any, ...]:
        return tuple(keys) if self.in_list else (keys,)

    def rows(self, model: str, kinds: list[int]) -> tuple[str, tuple[Any, ...]]:
        """A reader's query (parameters: after, these, the limit) and its parameters."""

        def mark(n: int) -> str:
            return "?" if self.in_list else f"${n}"

        where = [f"sequence > {mark(1)}"]
        params: list[Any] = []
        if model:
            params.append(model)
            where.append(f"model = {mark(len(params) + 1)}")
        if kinds and self.in_list:
            params += kinds
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
        elif kinds:
            params.append(kinds)
            where.append(f"kind = ANY({mark(len(params) + 1)}::int[])")
        query = (
            f"SELECT sequence, proto FROM events WHERE {' AND '.join(where)} "
            f"ORDER BY sequence LIMIT {mark(len(params) + 2)}"
        )
        return query, tuple(params)


_COLUMNS = "sequence, kind, model, key, stored_us, size, proto"
_FIRST = "SELECT first_sequence FROM event_meta WHERE id = 1"
_LAST = "SELECT last_sequence FROM event_meta WHERE id = 1"
_STATEMENTS = {
    "sqlite": _Statements(
        lock="SELECT last_sequence FROM event_meta WHERE id = 1",
        insert=f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        advance="UPDATE event_meta SET last_sequence = ?, bytes = bytes + ? WHERE id = 1",
        first=_FIRST,
        last=_LAST,
        in_list=True,
    ),
    "postgresql": _Statements(
        lock="SELECT last_sequence FROM event_meta WHERE id = 1 FOR UPDATE",
        insert=f"INSERT INTO events ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        advance="UPDATE event_meta SET last_sequence = $1, bytes = bytes + $2 WHERE id = 1",
        first=_FIRST,
        last=_LAST,
        in_list=False,
    ),
}


def _sql(dialect: str) -> _Statements:
    return _STATEMENTS[dialect]


_T = TypeVar("_T")


async def _on_sqlite_thread(conn: AsyncConnection, work: Callable[..., _T], *args: Any) -> _T:
    """`work(sqlite3_connection, *args)` on the transaction's connection, on aiosqlite's
    thread, in one trip (as SQLAlchemy's own aiosqlite adapter reaches that connection)."""
    driver: Any = (await conn.get_raw_connection()).driver_connection  # aiosqlite.Connection
    return cast(_T, await driver._execute(work, driver._conn, *args))


def _fetch(
    db: sqlite3.Connection, sql: _Statements, query: str, parameters: tuple[Any, ...]
) -> tuple[int, list[Any], int]:
    """A reader's poll on SQLite: the last sequence, the rows, the first sequence."""
    last = int(db.execute(sql.last).fetchone()[0])
    rows = db.execute(query, parameters).fetchall()
    return last, rows, int(db.execute(sql.first).fetchone()[0])


def _plan(
    events: Sequence[Encoded], last: int, known: dict[str, int], stored_us: int
) -> tuple[Appended, list[tuple[Any, ...]], int, int]:
    """Sequences for the events after `last` (keys in `known` are duplicates): the
    answer, the rows to insert, the new last sequence and the bytes they add."""
    result = Appended()
    sequences, duplicates = result.sequences, result.duplicates
    rows = []
    sequence = last
    size = 0
    for event in events:
        seen = known.get(event.key)
        if seen is not None:
            sequences.append(seen)
            duplicates.append(True)
            continue
        sequence += 1
        known[event.key] = sequence  # a key twice in one batch is stored once
        sequences.append(sequence)
        duplicates.append(False)
        n = len(event.data)
        size += n
        rows.append((sequence, event.kind, event.model, event.key, stored_us, n, event.data))
    return result, rows, sequence, size


def _parse(rows: Sequence[Any]) -> list[epb.Event]:
    """Stored rows (sequence, proto) as events. The sequence is set after parsing:
    appending its field to the bytes first copied every event once more."""
    out = []
    for sequence, proto in rows:
        event = epb.Event.FromString(proto)
        event.sequence = sequence
        out.append(event)
    return out


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
        self._waiting: list[tuple[Sequence[Encoded], asyncio.Future[Appended]]] = []
        self._writer: asyncio.Task[None] | None = None

    def _wake(self) -> None:
        self._appended.set()
        self._appended = asyncio.Event()

    async def append(self, events: Sequence[Encoded]) -> Appended:
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
                group: list[tuple[Sequence[Encoded], asyncio.Future[Appended]]] = []
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
        self, group: list[tuple[Sequence[Encoded], asyncio.Future[Appended]]], exc: Exception
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

    async def _write(self, events: Sequence[Encoded]) -> Appended:
        # Driver-level SQL with rows as plain tuples: SQLAlchemy's per-row work (bind
        # processing, compiled parameters, the result rows) cost the registry more CPU
        # per event than SQLite's own insert did.
        sql = _sql(self.store.dialect)
        stored_us = now_us()
        async with self.store.write_unversioned() as session:
            conn = await session.connection()
            if self.store.dialect == "sqlite":
                # The whole append in one call on SQLite's own thread (BEGIN IMMEDIATE,
                # taken above, holds the write lock): every statement through the async
                # adapter is a few trips between threads.
                def append(db: sqlite3.Connection) -> tuple[Appended, bool]:
                    last = int(db.execute(sql.lock).fetchone()[0])
                    keys = list({e.key for e in events})
                    known: dict[str, int] = {}
                    for i in range(0, len(keys), _KEYS_PER_QUERY):
                        part = keys[i : i + _KEYS_PER_QUERY]
                        known.update(db.execute(sql.known(len(part)), part).fetchall())
                    result, rows, sequence, size = _plan(events, last, known, stored_us)
                    if rows:
                        db.executemany(sql.insert, rows)
                        db.execute(sql.advance, (sequence, size))
                    return result, bool(rows)

                result, wrote = await _on_sqlite_thread(conn, append)
            else:
                # PostgreSQL: the meta row's lock orders appends.
                last = int((await conn.exec_driver_sql(sql.lock)).scalar_one())
                keys = list({e.key for e in events})
                known: dict[str, int] = {}
                for i in range(0, len(keys), _KEYS_PER_QUERY):
                    part = keys[i : i + _KEYS_PER_QUERY]
                    found = await conn.exec_driver_sql(sql.known(len(part)), sql.keys(part))
                    known.update(cast(list[tuple[str, int]], found.all()))
                result, rows, sequence, size = _plan(events, last, known, stored_us)
                if rows:
                    await conn.exec_driver_sql(sql.insert, rows)
                    await conn.exec_driver_sql(sql.advance, (sequence, size))
                wrote = bool(rows)
        if wrote:
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
        sql = _sql(self.store.dialect)
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
            # Driver-level SQL and plain rows: the joiner reads every prediction back.
            async with self.store.read() as session:
                conn = await session.connection()
                parameters = (after, *params, max_batch)
                if self.store.dialect == "sqlite":
                    last, rows, first = await _on_sqlite_thread(
                        conn, _fetch, sql, query, parameters
                    )
                else:
                    last = int((await conn.exec_driver_sql(sql.last)).scalar_one())
                    rows = list((await conn.exec_driver_sql(query, parameters)).all())
                    first = int((await conn.exec_driver_sql(sql.first)).scalar_one())
            gap = retention_gap(after, first, Start.START_AFTER_SEQUENCE)
            if gap is not None:
                raise OutOfRange(gap)
            through = rows[-1][0] if rows else after
            if len(rows) < max_batch:
                through = max(through, last)
            # Events it does not want (other kinds or models) move `after` on without a
            # batch; a progress mark tells the reader, so its position can follow.
            if rows or (through > told and time.monotonic() - reported >= PROGRESS_SECONDS):
                parsed = _parse(rows)
                yield Batch(parsed, through, first, max(last, through))
                reported, told = time.monotonic(), through
            after = through
            if len(rows) == max_batch:
                continue
            if not follow:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await woken.wait()

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
