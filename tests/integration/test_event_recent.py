"""The SQL log's readers take the process's own appends from memory (`Recent`), and
what is not there -- another replica's appends on the same database, appends older
than memory holds -- from the database: in order, nothing missed or repeated, on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from services.common.events import Encoded
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry.event_log import SqlEventLog
from services.registry.event_recent import Parsed, Recent
from services.registry.store import Store
from tests.helpers.events import example, read_all
from tests.helpers.registry import database
from tests.helpers.wait import async_wait_until

KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def parsed(keys: list[str], kind: int = epb.EVENT_KIND_PREDICTION) -> list[Parsed]:
    """Events as AppendEvents hands them to the log: parsed, in the request's field."""
    request = rpb.AppendEventsRequest()
    for key in keys:
        event = request.events.add(kind=kind, model="m", key=key)  # type: ignore[arg-type]
        if kind == epb.EVENT_KIND_PREDICTION:
            event.prediction.request_id = key
        else:
            event.feedback.request_id = key
    given = request.events
    return [
        Parsed(e.kind, e.model, e.key, e.SerializeToString(), given, i) for i, e in enumerate(given)
    ]


def log_of(store: Store) -> SqlEventLog:
    return SqlEventLog(store, retention_seconds=86400.0, retention_bytes=1 << 30, poll_seconds=0.05)


@pytest.mark.parametrize("kind", KINDS)
async def test_two_replicas_on_one_database_each_read_every_event_in_order(
    kind: str, tmp_path: Path
) -> None:
    """Replicas A and B append in turn to one table: each one's own appends are in its
    memory, the other's are holes there; a reader on either sees every event once, in
    sequence order, as a follower while they are appended and as a read from 0."""
    async with database(kind, tmp_path) as url:
        stores = [Store(url), Store(url)]
        try:
            await stores[0].migrate()
            a, b = log_of(stores[0]), log_of(stores[1])
            followed: list[epb.Event] = []

            async def follow() -> None:
                async for batch in a.read(0, follow=True, kinds=[epb.EVENT_KIND_PREDICTION]):
                    followed.extend(batch.events)

            follower = asyncio.create_task(follow())
            keys: list[str] = []
            for turn in range(12):
                log = a if turn % 3 else b  # A twice, then B: runs and holes in A's memory
                batch = [f"t{turn}-{i}" for i in range(7)]
                appended = await log.append(parsed(batch))
                assert not any(appended.duplicates)
                keys += batch
            # A's own appends are held by A; one by B never is.
            assert a._recent.holds(8) and not a._recent.holds(1)
            again = await a.append(parsed(["t0-0", "t1-0"]))  # B's key and A's: both known
            assert again.duplicates == [True, True] and again.sequences == [1, 8]
            await async_wait_until(lambda: len(followed) >= len(keys), what="the follower read all")
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            assert [e.key for e in followed] == keys
            assert [e.sequence for e in followed] == list(range(1, len(keys) + 1))
            for log in (a, b):
                read = await read_all(log, max_batch=5)
                assert [e.key for e in read] == keys
                assert [e.sequence for e in read] == list(range(1, len(keys) + 1))
                assert [e.prediction.request_id for e in read] == keys
                only = await read_all(log, kinds=[epb.EVENT_KIND_FEEDBACK])
                assert only == []
        finally:
            for store in stores:
                await store.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_reader_behind_what_memory_holds_reads_from_the_database(
    kind: str, tmp_path: Path
) -> None:
    """Memory holds the last appends only: a reader from further back gets the older
    events from the database and the newer from memory, with filters and batch limits,
    and appends of bytes (not parsed) read back as the same events."""
    async with database(kind, tmp_path) as url:
        store = Store(url)
        try:
            await store.migrate()
            log = log_of(store)
            log._recent = Recent(limit=12)
            expected: list[str] = []
            for turn in range(10):
                keys = [f"k{turn}-{i}" for i in range(5)]
                if turn % 2:
                    batch: list[Encoded | Parsed] = [example(i, key=k) for i, k in enumerate(keys)]
                else:
                    batch = list(parsed(keys, epb.EVENT_KIND_FEEDBACK))
                await log.append(batch)
                expected += keys
            assert not log._recent.holds(1) and log._recent.holds(50)
            for max_batch in (3, 500):
                read = await read_all(log, max_batch=max_batch)
                assert [e.key for e in read] == expected
                assert [e.sequence for e in read] == list(range(1, 51))
            examples = await read_all(log, 20, kinds=[epb.EVENT_KIND_EXAMPLE], max_batch=2)
            assert [e.key for e in examples] == [k for k in expected[20:] if int(k[1]) % 2]
            assert [e.example.features[0] for e in examples] == [0, 1, 2, 3, 4] * 3
        finally:
            await store.close()
