"""Migration 0010 on a registry that already holds events: every event, its key and
bounds kept, the append and the reads work on after it, on SQLite (the table is copied
so the sequence becomes the rowid) and on PostgreSQL (an index dropped)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection

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
async def test_events_survive_migration_0010(kind: str, tmp_path: Path) -> None:
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
            assert {"ix_events_model_sequence", "ix_events_model_kind"} <= names
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
