"""Migrations 0010 and 0011 on a registry that already holds events: every event, its
key and bounds kept, the append and the reads work on after them, on SQLite (0010
copies the table so the sequence becomes the rowid) and on PostgreSQL (an index
dropped); 0011 makes the two indexes by model one."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection

from services.common.events import Encoded, encode
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.registry.event_log import SqlEventLog
from services.registry.store import MIGRATIONS, Store
from tests.helpers.events import example
from tests.helpers.registry import database


def _to(revision: str) -> object:
    def upgrade(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    return upgrade


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_events_survive_migrations_0010_and_0011(kind: str, tmp_path: Path) -> None:
    async with database(kind, tmp_path) as url:
        store = Store(url)
        try:
            async with store.engine.begin() as conn:
                await conn.run_sync(_to("0009"))  # type: ignore[arg-type]
            log = SqlEventLog(store, retention_seconds=86400.0, retention_bytes=1 << 30)
            before = await log.append([example(i, key=f"k{i}") for i in range(1, 301)])
            await store.migrate()
            async with store.engine.connect() as conn:
                indexes = await conn.execute(
                    text(
                        "SELECT name FROM sqlite_master WHERE tbl_name = 'events' AND type = 'index'"
                        if kind == "sqlite"
                        else "SELECT indexname FROM pg_indexes WHERE tablename = 'events'"
                    )
                )
                names = {row[0] for row in indexes}
            assert "ix_events_stored_us" not in names
            assert "ix_events_model_sequence_kind" in names
            assert not {"ix_events_model_sequence", "ix_events_model_kind"} & names
            if kind == "sqlite":
                # Only the key's UNIQUE index is automatic: the sequence is the rowid.
                assert [n for n in names if n.startswith("sqlite_autoindex")] == [
                    "sqlite_autoindex_events_1"
                ]
            again = await log.append([example(1, key="k1"), example(301, key="k301")])
            assert again.duplicates == [True, False]
            assert again.sequences == [before.sequences[0], before.sequences[-1] + 1]
            read = [e async for batch in log.read(0) for e in batch.events]
            assert [e.key for e in read] == [f"k{i}" for i in range(1, 302)]
            assert [e.example.features[0] for e in read] == list(range(1, 302))
            stats = await log.stats()
            assert (stats.first_sequence, stats.last_sequence) == (1, 301)
            assert 0 < stats.oldest_us <= stats.newest_us
        finally:
            await store.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_reads_by_model_and_kind_after_migration_0011(kind: str, tmp_path: Path) -> None:
    """Events of several models and kinds stored before 0011: after it, reads by model
    (with and without kinds) and the counts by kind come out as before."""
    async with database(kind, tmp_path) as url:
        store = Store(url)
        try:
            async with store.engine.begin() as conn:
                await conn.run_sync(_to("0010"))  # type: ignore[arg-type]
            log = SqlEventLog(store, retention_seconds=86400.0, retention_bytes=1 << 30)
            stored = [
                feedback(i, model=f"m{i % 3}") if i % 2 else example(i, model=f"m{i % 3}")
                for i in range(1, 121)
            ]
            await log.append(stored)
            await store.migrate()
            log = SqlEventLog(store, retention_seconds=86400.0, retention_bytes=1 << 30)
            by_model = [e async for batch in log.read(0, model="m1") for e in batch.events]
            assert [e.key for e in by_model] == [e.key for e in stored if e.model == "m1"]
            only = [
                e
                async for batch in log.read(0, model="m1", kinds=[epb.EVENT_KIND_FEEDBACK])
                for e in batch.events
            ]
            assert [e.key for e in only] == [
                e.key for e in stored if e.model == "m1" and e.kind == epb.EVENT_KIND_FEEDBACK
            ]
            stats = await log.stats("m1")
            assert stats.counts == {epb.EVENT_KIND_EXAMPLE: 20, epb.EVENT_KIND_FEEDBACK: 20}
            assert (await log.stats()).counts == {
                epb.EVENT_KIND_EXAMPLE: 60,
                epb.EVENT_KIND_FEEDBACK: 60,
            }
        finally:
            await store.close()


def feedback(i: int, model: str) -> Encoded:
    event = epb.Event(
        kind=epb.EVENT_KIND_FEEDBACK,
        model=model,
        key=f"f{i}",
        feedback=epb.Feedback(request_id=f"r{i}"),
    )
    return encode(event)
