"""Reading and verifying the hash-chained audit trail (writing is `Tx.audit`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import names
from services.registry.db import AuditRow, Meta
from services.registry.store import GENESIS_HASH, audit_hash, page


def event_proto(row: AuditRow) -> rpb.AuditEvent:
    event = rpb.AuditEvent(
        sequence=row.sequence,
        actor=row.actor,
        action=row.action,
        target=row.target,
        before_digest=row.before_digest,
        after_digest=row.after_digest,
        details=row.details,
        previous_hash=row.previous_hash,
        hash=row.hash,
    )
    event.time.FromMicroseconds(row.time_us)
    return event


async def list_events(
    session: AsyncSession, size: int, page_token: str, target: str = ""
) -> tuple[list[rpb.AuditEvent], str]:
    query = select(AuditRow)
    if target:
        query = query.where(AuditRow.target == target)
    if page_token:
        query = query.where(AuditRow.sequence < names.decode_page_number(page_token))
    rows, token = await page(session, query.order_by(AuditRow.sequence.desc()), size, _sequence)
    return [event_proto(r) for r in rows], token


def _sequence(row: AuditRow) -> int:
    return row.sequence


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int
    first_bad: int = 0
    problem: str = ""


async def verify(session: AsyncSession, batch: int = 1000) -> Verdict:
    """Walk the chain: each row's hash must match its content and link to the previous row.

    An edited row fails its own hash; a deleted row leaves a gap in the sequence and
    a broken link in the row after it.
    """
    expected_sequence, previous, checked, last_seen = 1, GENESIS_HASH, 0, 0
    while True:
        rows = (
            (
                await session.execute(
                    select(AuditRow)
                    .where(AuditRow.sequence > last_seen)
                    .order_by(AuditRow.sequence)
                    .limit(batch)
                )
            )
            .scalars()
            .all()
        )
        if not rows:
            head = (await session.execute(select(Meta.audit_head))).scalar_one()
            if head > checked:
                return Verdict(
                    False,
                    checked,
                    checked + 1,
                    f"events #{checked + 1} to #{head} are missing: the trail ends early",
                )
            return Verdict(True, checked)
        for row in rows:
            if row.sequence != expected_sequence:
                return Verdict(
                    False,
                    checked,
                    expected_sequence,
                    f"event #{expected_sequence} is missing (next present is #{row.sequence})",
                )
            if row.previous_hash != previous:
                return Verdict(
                    False,
                    checked,
                    row.sequence,
                    f"event #{row.sequence} does not link to event #{row.sequence - 1}",
                )
            if audit_hash(row) != row.hash:
                return Verdict(
                    False,
                    checked,
                    row.sequence,
                    f"event #{row.sequence} ({row.action} on {row.target}) was altered: "
                    "its content no longer matches its hash",
                )
            previous, expected_sequence, checked = row.hash, row.sequence + 1, checked + 1
        last_seen = rows[-1].sequence
