"""The embedded event stream's SQL: its statements in each driver's parameter style,
and the functions that run an append or a read on SQLite's own thread in one trip.

Driver-level SQL with rows as plain tuples: SQLAlchemy's per-row work (bind processing,
compiled parameters, result rows) cost the registry more CPU per event than SQLite's
own insert did.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.events import Appended
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.registry.event_recent import Appendable

KEYS_PER_QUERY = 500  # bound parameters per IN (...) lookup
# Rows per INSERT on SQLite: 7 parameters each, under the 999 per statement of SQLite
# before 3.32.
ROWS_PER_INSERT = 128


@dataclass(frozen=True)
class Statements:
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
    "sqlite": Statements(
        lock="SELECT last_sequence FROM event_meta WHERE id = 1",
        insert=f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        advance="UPDATE event_meta SET last_sequence = ?, bytes = bytes + ? WHERE id = 1",
        first=_FIRST,
        last=_LAST,
        in_list=True,
    ),
    "postgresql": Statements(
        lock="SELECT last_sequence FROM event_meta WHERE id = 1 FOR UPDATE",
        insert=f"INSERT INTO events ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        advance="UPDATE event_meta SET last_sequence = $1, bytes = bytes + $2 WHERE id = 1",
        first=_FIRST,
        last=_LAST,
        in_list=False,
    ),
}


def statements(dialect: str) -> Statements:
    return _STATEMENTS[dialect]


_T = TypeVar("_T")


async def on_sqlite_thread(conn: AsyncConnection, work: Callable[..., _T], *args: Any) -> _T:
    """`work(sqlite3_connection, *args)` on the transaction's connection, on aiosqlite's
    thread, in one trip (as SQLAlchemy's own aiosqlite adapter reaches that connection)."""
    driver: Any = (await conn.get_raw_connection()).driver_connection  # aiosqlite.Connection
    return cast(_T, await driver._execute(work, driver._conn, *args))


def fetch(
    db: sqlite3.Connection, sql: Statements, query: str, parameters: tuple[Any, ...]
) -> tuple[int, list[Any], int]:
    """A reader's poll on SQLite: the last sequence, the rows, the first sequence."""
    last = int(db.execute(sql.last).fetchone()[0])
    rows = db.execute(query, parameters).fetchall()
    return last, rows, int(db.execute(sql.first).fetchone()[0])


def plan(
    events: Sequence[Appendable], last: int, known: dict[str, int], stored_us: int
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


def parse(rows: Sequence[Any]) -> list[epb.Event]:
    """Stored rows (sequence, proto) as events. The sequence is set after parsing:
    appending its field to the bytes first copied every event once more."""
    out = []
    for sequence, proto in rows:
        event = epb.Event.FromString(proto)
        event.sequence = sequence
        out.append(event)
    return out


@functools.lru_cache(maxsize=ROWS_PER_INSERT)
def _insert_rows(n: int) -> str:
    return f"INSERT INTO events ({_COLUMNS}) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n)


def insert_sqlite(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Rows inserted many to a statement: executemany is one step of SQLite's VM per row,
    with the GIL given up and taken back around each, and cost SQLite's thread about 4.5
    us of CPU per event; rows by 128 cost about 2.5 (a UNIQUE key stored already fails
    the statement, as it failed executemany)."""
    for i in range(0, len(rows), ROWS_PER_INSERT):
        part = rows[i : i + ROWS_PER_INSERT]
        db.execute(_insert_rows(len(part)), [value for row in part for value in row])


def append_sqlite(
    db: sqlite3.Connection, sql: Statements, events: Sequence[Appendable], stored_us: int
) -> tuple[Appended, int]:
    """An append on SQLite's thread (BEGIN IMMEDIATE, taken by the caller, holds the
    write lock): the answer, and the first sequence stored (its rows are that one and
    the next ones, one per event not a duplicate)."""
    last = int(db.execute(sql.lock).fetchone()[0])
    keys = list({e.key for e in events})
    known: dict[str, int] = {}
    for i in range(0, len(keys), KEYS_PER_QUERY):
        part = keys[i : i + KEYS_PER_QUERY]
        known.update(db.execute(sql.known(len(part)), part).fetchall())
    result, rows, sequence, size = plan(events, last, known, stored_us)
    if rows:
        insert_sqlite(db, rows)
        db.execute(sql.advance, (sequence, size))
    return result, last + 1


def bounds(db: sqlite3.Connection, sql: Statements) -> tuple[int, int]:
    """A reader's poll on SQLite when its rows come from memory: (last, first)."""
    return int(db.execute(sql.last).fetchone()[0]), int(db.execute(sql.first).fetchone()[0])
