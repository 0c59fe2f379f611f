"""What a database writer without the audit key can do to the trail, as SQL.

Each tamper is a list of (statement, parameters) with named parameters, so it runs the
same through sqlite3 and through SQLAlchemy's `text()` (SQLite and PostgreSQL). Forged
hashes are the plain sha256 of the legacy chain (`audit.audit_hash`): all an attacker
without the key can compute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.registry.audit import audit_hash
from services.registry.db import AuditRow

COLUMNS = (
    "sequence",
    "time_us",
    "actor",
    "action",
    "target",
    "before_digest",
    "after_digest",
    "details",
    "previous_hash",
    "hash",
    "key_id",
)
SELECT = f"SELECT {', '.join(COLUMNS)} FROM audit_events ORDER BY sequence"
INSERT = (
    f"INSERT INTO audit_events ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in COLUMNS)})"
)
Statements = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Tamper:
    name: str
    first_bad: int
    says: str  # a part of the problem VerifyAudit must report


def _sha256_rechain(rows: list[dict[str, Any]], start: int) -> Statements:
    """Rows from index `start` on re-linked with plain sha256 (keeping their key ids)."""
    out: Statements = []
    previous = rows[start - 1]["hash"]
    for row in rows[start:]:
        row = {**row, "previous_hash": previous}
        row["hash"] = audit_hash(AuditRow(**row))
        out.append(
            (
                "UPDATE audit_events SET details = :details, previous_hash = :previous_hash, "
                "hash = :hash WHERE sequence = :sequence",
                row,
            )
        )
        previous = row["hash"]
    return out


def tamper(name: str, rows: list[dict[str, Any]]) -> tuple[Tamper, Statements]:
    """The statements of one tamper on a trail of at least 5 events (`rows`, by sequence)."""
    n = len(rows)
    last = rows[-1]
    if name == "edit":
        return Tamper(name, 3, "event #3 (CreateModel on models/m2) was altered"), [
            ("UPDATE audit_events SET details = :d WHERE sequence = 3", {"d": '{"evil":true}'})
        ]
    if name == "edit-and-rechain":
        edited = [dict(r) for r in rows]
        edited[2]["details"] = json.dumps({"evil": True})
        return Tamper(name, 3, "event #3 (CreateModel on models/m2) was altered"), (
            _sha256_rechain(edited, 2)
        )
    if name == "forged-append":
        forged = {
            **last,
            "sequence": n + 1,
            "actor": "mallory",
            "target": "models/forged",
            "previous_hash": last["hash"],
        }
        forged["hash"] = audit_hash(AuditRow(**forged))
        return Tamper(name, n + 1, f"event #{n + 1} (CreateModel on models/forged) was altered"), [
            (INSERT, forged),
            ("UPDATE meta SET audit_head = :h", {"h": n + 1}),
        ]
    if name == "unkeyed-append":
        forged = {**last, "sequence": n + 1, "previous_hash": last["hash"], "key_id": ""}
        forged["hash"] = audit_hash(AuditRow(**forged))
        return Tamper(
            name, n + 1, f"event #{n + 1} (CreateModel on models/m{n - 1}) carries no MAC"
        ), [
            (INSERT, forged),
            ("UPDATE meta SET audit_head = :h", {"h": n + 1}),
        ]
    if name == "raise-head":
        return Tamper(name, n + 1, f"the database's audit head says #{n + 2}"), [
            ("UPDATE meta SET audit_head = :h", {"h": n + 2})
        ]
    if name == "lower-head":
        return Tamper(name, n, f"event #{n} is past the database's audit head (#{n - 1})"), [
            ("UPDATE meta SET audit_head = :h", {"h": n - 1})
        ]
    if name == "delete-middle":
        return Tamper(name, 3, "event #3 is missing (next present is #4)"), [
            ("DELETE FROM audit_events WHERE sequence = 3", {})
        ]
    if name == "delete-tail":
        # The careful attacker also lowers the head to match: only the checkpoint knows.
        return Tamper(name, n - 1, f"events #{n - 1} to #{n} are missing"), [
            ("DELETE FROM audit_events WHERE sequence >= :s", {"s": n - 1}),
            ("UPDATE meta SET audit_head = :h", {"h": n - 2}),
        ]
    if name == "swap":
        return Tamper(name, 2, "event #2 does not link to event #1"), [
            ("UPDATE audit_events SET sequence = -1 WHERE sequence = 2", {}),
            ("UPDATE audit_events SET sequence = 2 WHERE sequence = 3", {}),
            ("UPDATE audit_events SET sequence = 3 WHERE sequence = -1", {}),
        ]
    raise ValueError(name)


NAMES = (
    "edit",
    "edit-and-rechain",
    "forged-append",
    "unkeyed-append",
    "raise-head",
    "lower-head",
    "delete-middle",
    "delete-tail",
    "swap",
)


def restore(rows: list[dict[str, Any]]) -> Statements:
    """Put the trail back as it was (and the head), undoing any tamper."""
    return [
        ("DELETE FROM audit_events", {}),
        *((INSERT, row) for row in rows),
        ("UPDATE meta SET audit_head = :h", {"h": len(rows)}),
    ]
