"""The SQL event log's group commit: one caller's batch the database refuses fails that
caller alone (on PostgreSQL, which refuses a NUL in text; SQLite stores it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers.events import backend, example, read_all


@pytest.mark.postgres
async def test_a_batch_the_database_refuses_fails_only_its_own_caller(tmp_path: Path) -> None:
    """Appends written together in one transaction: when the database refuses one
    caller's batch (PostgreSQL takes no NUL in text), the others are still stored and
    answered, and the refused caller gets the database's error."""
    async with backend("postgres", tmp_path) as b:
        assert b.registry is not None
        log = b.registry.registry.events.stream  # the registry's SqlEventLog, in process
        good = [[example(c, key=f"g{c}")] for c in range(20)]
        bad = [example(99, key="bad\x00key")]
        answers = await asyncio.gather(
            *(log.append(events) for events in good[:10]),
            log.append(bad),
            *(log.append(events) for events in good[10:]),
            return_exceptions=True,
        )
        refused = answers.pop(10)
        assert isinstance(refused, Exception), refused
        assert "0x00" in str(refused), refused
        assert all(not isinstance(a, BaseException) for a in answers), answers
        read = await read_all(b.stream)
        assert sorted(e.key for e in read) == sorted(f"g{c}" for c in range(20))
