"""The audit trail against database writers: every tamper is named, keys and rotation.

A real registry (SQLite, and PostgreSQL when it runs) makes audited changes; the test
then writes the database directly, as someone with database access but not the audit
key would, and checks VerifyAudit (and `liveml audit verify`) names the first bad event.
Each tamper is undone before the next, and the trail must then verify again.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry.audit import GENESIS_HASH, audit_hash
from services.registry.db import AuditRow
from services.registry.secrets import SecretsError
from services.registry.store import MIGRATIONS
from tests.helpers.audit_tamper import COLUMNS, INSERT, NAMES, SELECT, restore, tamper
from tests.helpers.registry import RunningRegistry, database, registry_settings, running_registry
from tests.integration.test_cli import liveml
from tests.integration.test_registry_serve import serve

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def changes(running: RunningRegistry, *names: str) -> None:
    for name in names:
        await running.client().CreateModel(rpb.CreateModelRequest(model_id=name))


async def verify(running: RunningRegistry) -> rpb.VerifyAuditResponse:
    return await running.client().VerifyAudit(rpb.VerifyAuditRequest())


async def run_sql(running: RunningRegistry, statements: list[tuple[str, dict[str, Any]]]) -> None:
    async with running.registry.store.engine.begin() as conn:
        for sql, params in statements:
            await conn.execute(text(sql), params)


async def audit_rows(running: RunningRegistry) -> list[dict[str, Any]]:
    async with running.registry.store.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(text(SELECT))]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_tamper_is_named(backend: str, tmp_path: Path) -> None:
    async with (
        database(backend, tmp_path) as url,
        running_registry(registry_settings(url, tmp_path)) as running,
    ):
        await changes(running, "m1", "m2", "m3", "m4")
        intact = await verify(running)
        assert intact.ok and intact.events_checked == 5 and intact.checkpoint_sequence == 5
        assert intact.key_id == "k1"
        original = await audit_rows(running)
        assert {r["key_id"] for r in original} == {"k1"}
        for name in NAMES:
            expected, statements = tamper(name, [dict(r) for r in original])
            await run_sql(running, statements)
            verdict = await verify(running)
            assert not verdict.ok, name
            assert verdict.first_bad_sequence == expected.first_bad, (name, verdict.problem)
            assert expected.says in verdict.problem, (name, verdict.problem)
            await run_sql(running, restore(original))
            assert (await verify(running)).ok, name


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_cut_tail_stays_reported_after_new_changes(backend: str, tmp_path: Path) -> None:
    """New events after a cut are validly MACed, but the checkpoint is not moved over the
    cut: the trail written again is caught where the checkpoint was."""
    async with (
        database(backend, tmp_path) as url,
        running_registry(registry_settings(url, tmp_path)) as running,
    ):
        await changes(running, "m1", "m2", "m3", "m4")
        _, statements = tamper("delete-tail", await audit_rows(running))
        await run_sql(running, statements)
        await changes(running, "n1", "n2", "n3")  # events #4 to #6 again
        verdict = await verify(running)
        assert not verdict.ok and verdict.first_bad_sequence == 5, verdict.problem
        assert "event #5 is not the one the signed checkpoint vouches for" in verdict.problem
        assert verdict.checkpoint_sequence == 5


def test_cli_names_every_tamper(tmp_path: Path) -> None:
    proc, port = serve(tmp_path)
    try:
        token = (tmp_path / "admin.token").read_text().strip()
        env = {"LIVEML_REGISTRY": f"127.0.0.1:{port}", "LIVEML_TOKEN": token, "COLUMNS": "200"}
        for name in ("m1", "m2", "m3", "m4"):
            liveml(env, "models", "create", name)
        intact = liveml(env, "audit", "verify")
        assert "audit trail intact: 5 events (HMAC key k1, signed checkpoint at #5)" in (
            intact.stdout
        )
        db = tmp_path / "registry.db"
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            original = [dict(r) for r in conn.execute(SELECT)]
        for name in NAMES:
            expected, statements = tamper(name, [dict(r) for r in original])
            with sqlite3.connect(db) as conn:
                for sql, params in statements:
                    conn.execute(sql, params)
            broken = liveml(env, "audit", "verify", ok=False)
            assert broken.returncode == 1, name
            assert f"audit trail BROKEN at event #{expected.first_bad}" in broken.stderr, (
                name,
                broken.stderr,
            )
            assert expected.says in " ".join(broken.stderr.split()), (name, broken.stderr)
            with sqlite3.connect(db) as conn:
                for sql, params in restore(original):
                    conn.execute(sql, params)
            liveml(env, "audit", "verify")
    finally:
        assert proc.stop() == 0
    key = (tmp_path / "artifacts" / "audit" / "key").read_text().strip()
    log = "".join(proc.output)
    assert "audit key generated in" in log
    assert not [line for line in proc.output if "WARNING" in line and "audit" in line]
    assert key not in log


async def test_rotation_and_a_missing_old_key(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/registry.db"
    first, second = new_key(), new_key()
    async with running_registry(registry_settings(url, tmp_path, audit_key=first)) as running:
        await changes(running, "m1")
    rotated = registry_settings(
        url, tmp_path, audit_key=second, audit_key_id="k2", audit_old_keys=f"k1:{first}"
    )
    async with running_registry(rotated) as running:
        await changes(running, "m2")
        verdict = await verify(running)
        assert verdict.ok and verdict.events_checked == 3 and verdict.key_id == "k2"
        assert [r["key_id"] for r in await audit_rows(running)] == ["k1", "k1", "k2"]
    forgot = registry_settings(url, tmp_path, audit_key=second, audit_key_id="k2")
    async with running_registry(forgot) as running:
        verdict = await verify(running)
        assert not verdict.ok and verdict.first_bad_sequence == 1
        assert "event #1 was MACed with audit key 'k1', which is not configured" in (
            verdict.problem
        )


async def test_a_wrong_or_lost_key_fails_verification_clearly(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/registry.db"
    async with running_registry(registry_settings(url, tmp_path)) as running:
        await changes(running, "m1")
    key_file = tmp_path / "artifacts" / "audit" / "key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    checkpoint = tmp_path / "artifacts" / "audit" / "checkpoint.json"
    assert checkpoint.stat().st_mode & 0o777 == 0o600
    assert base64.b64decode(key_file.read_text()) not in (tmp_path / "registry.db").read_bytes()

    wrong = registry_settings(url, tmp_path, audit_key=new_key())
    async with running_registry(wrong) as running:
        verdict = await verify(running)
    assert not verdict.ok and verdict.first_bad_sequence == 1
    assert "event #1 (CreateToken on tokens/" in verdict.problem
    assert "so that key is probably not the one the trail was written with" in verdict.problem

    key_file.unlink()  # the default key lost: a new one is made, the old trail fails
    async with running_registry(registry_settings(url, tmp_path)) as running:
        verdict = await verify(running)
    assert not verdict.ok and verdict.first_bad_sequence == 1
    assert "probably not the one the trail was written with" in verdict.problem

    missing = registry_settings(url, tmp_path, audit_key_file=tmp_path / "nope")
    with pytest.raises(
        SecretsError, match=r"cannot read --audit-key-file \(LIVEML_AUDIT_KEY_FILE\)"
    ):
        async with running_registry(missing):
            pass
    both = registry_settings(url, tmp_path, audit_key=new_key(), audit_key_file=key_file)
    with pytest.raises(SecretsError, match=r"set --audit-key .* or --audit-key-file .*, not both"):
        async with running_registry(both):
            pass
    bad = registry_settings(url, tmp_path, audit_key="c2hvcnQ=")
    with pytest.raises(SecretsError, match="audit key 'k1' must be 32 bytes"):
        async with running_registry(bad):
            pass


async def legacy_database(url: str, events: int) -> list[dict[str, Any]]:
    """A database at migration 0007 holding an unkeyed sha256 trail, as older registries
    wrote it; returns its rows."""
    engine = create_async_engine(url)

    def upgrade(connection: Any) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0007")

    rows, previous = [], GENESIS_HASH
    for sequence in range(1, events + 1):
        row = {
            "sequence": sequence,
            "time_us": 1_700_000_000_000_000 + sequence,
            "actor": "tokens/old",
            "action": "CreateModel",
            "target": f"models/old{sequence}",
            "before_digest": "",
            "after_digest": "ab" * 32,
            "details": "{}",
            "previous_hash": previous,
        }
        row["hash"] = previous = audit_hash(AuditRow(**row))
        rows.append(row)
    legacy_insert = INSERT.replace(", key_id", "").replace(", :key_id", "")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
            for row in rows:
                await conn.execute(text(legacy_insert), row)
            await conn.execute(text("UPDATE meta SET audit_head = :h"), {"h": events})
    finally:
        await engine.dispose()
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_legacy_trail_is_rechained_once(backend: str, tmp_path: Path) -> None:
    async with database(backend, tmp_path) as url:
        legacy = await legacy_database(url, 3)
        async with running_registry(registry_settings(url, tmp_path)) as running:
            verdict = await verify(running)
            assert verdict.ok and verdict.events_checked == 4, verdict.problem  # + admin token
            rows = await audit_rows(running)
        assert {r["key_id"] for r in rows} == {"k1"}
        kept = [c for c in COLUMNS if c not in ("hash", "previous_hash", "key_id")]
        assert [{c: r[c] for c in kept} for r in rows[:3]] == [
            {c: r[c] for c in kept} for r in legacy
        ]
        assert rows[0]["hash"] != legacy[0]["hash"]

        # Rewritten wholly unkeyed by an attacker: never re-chained again (a checkpoint
        # exists), so it is reported, not laundered.
        async with running_registry(registry_settings(url, tmp_path)) as running:
            previous, forged = GENESIS_HASH, []
            for row in rows:
                row = {**row, "key_id": "", "previous_hash": previous}
                row["hash"] = previous = audit_hash(AuditRow(**row))
                forged.append(row)
            await run_sql(running, restore(forged))
        async with running_registry(registry_settings(url, tmp_path)) as running:
            verdict = await verify(running)
        assert not verdict.ok and verdict.first_bad_sequence == 1
        assert "event #1 (CreateModel on models/old1) carries no MAC" in verdict.problem


async def test_a_broken_legacy_trail_is_not_laundered(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/registry.db"
    await legacy_database(url, 3)
    with sqlite3.connect(tmp_path / "registry.db") as conn:
        conn.execute("UPDATE audit_events SET target = 'models/evil' WHERE sequence = 2")
    async with running_registry(registry_settings(url, tmp_path)) as running:
        verdict = await verify(running)
        events = (await running.client().ListAuditEvents(rpb.ListAuditEventsRequest())).events
    assert not verdict.ok and verdict.first_bad_sequence == 1
    assert "carries no MAC" in verdict.problem
    assert [e.key_id for e in reversed(events)] == ["", "", "", "k1"]
    assert json.loads(events[0].details)["bootstrap"] is True
