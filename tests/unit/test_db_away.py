"""db_away: which database errors become UNAVAILABLE (the server or the connection)
and which stay what they are (the statement's own), on real SQLite errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, exc, text

from services.common.errors import Unavailable
from services.registry.db_away import away


def test_a_locked_database_is_unavailable_and_the_message_carries_no_sql(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with pytest.raises(Unavailable) as err, away(), engine.begin() as conn:
            conn.execute(text("INSERT INTO t (id) VALUES (:id)"), {"id": 12345})
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert err.value.message == (
            "the registry's database is unreachable or busy "
            "(OperationalError: database is locked); retry when it is back"
        )
        assert isinstance(err.value.__cause__, exc.OperationalError)
    finally:
        holder.close()
        engine.dispose()


def test_a_statement_error_stays_what_it_is(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO t (id) VALUES (1)"))
    try:
        with pytest.raises(exc.IntegrityError), away(), engine.begin() as conn:
            conn.execute(text("INSERT INTO t (id) VALUES (1)"))
    finally:
        engine.dispose()


def test_a_refused_connection_is_unavailable() -> None:
    with pytest.raises(Unavailable) as err, away():
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
    assert "ConnectionRefusedError: [Errno 111] Connect call failed" in err.value.message


def test_other_errors_pass_through() -> None:
    with pytest.raises(ValueError, match="not a database error"), away():
        raise ValueError("not a database error")
