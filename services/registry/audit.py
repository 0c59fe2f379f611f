"""The HMAC-chained audit trail: each new event's hashes and link, and reading and
verifying the trail (`Tx.audit` writes the event these functions make, in the write's
own transaction).

What is checked, and why it catches a database writer without the audit key
(services/registry/audit_chain.py has the keys and the checkpoint):

- sequences run 1, 2, 3... with no gap: a deleted middle event is named;
- every event carries a key id that is configured and a MAC over its content, its
  sequence and the previous event's MAC: an edited, inserted, swapped or re-chained event
  (a plain sha256 is all an attacker without the key can compute) fails at the first one
  touched;
- the signed checkpoint outside the database holds the head's sequence and MAC: a cut
  tail (even with the head in the database lowered to match) or a trail rewritten up to
  the checkpoint is named;
- the database's `meta.audit_head` must equal the last event: raised or lowered, it is
  named too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import names
from services.registry.audit_chain import AuditChain, Checkpoint, event_fields
from services.registry.db import AuditRow, Meta
from services.registry.names import page

# The name these lines carried when writing lived in store.py: log filters keep matching.
log = logging.getLogger("services.registry.store")

GENESIS_HASH = "0" * 64  # what the first event links to


def digest(message: Message | None) -> str:
    """sha256 of a resource's state, for the audit trail's before/after."""
    if message is None:
        return ""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def audit_hash(row: AuditRow) -> str:
    """The unkeyed sha256 of events written before the keyed chain (migration 0008)."""
    body = json.dumps(event_fields(row), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


async def last_event(session: AsyncSession) -> tuple[int, str] | None:
    """The newest event's (sequence, MAC), or None for an empty trail."""
    last = (
        await session.execute(
            select(AuditRow.sequence, AuditRow.hash).order_by(AuditRow.sequence.desc()).limit(1)
        )
    ).first()
    return None if last is None else (last[0], last[1])


def chained_event(
    chain: AuditChain,
    last: tuple[int, str] | None,
    time_us: int,
    actor: str,
    action: str,
    target: str,
    before: Message | None,
    after: Message | None,
    details: dict[str, Any] | None,
) -> AuditRow:
    """The event after `last`: digests of the states, linked to `last` and MACed."""
    row = AuditRow(
        sequence=(last[0] + 1) if last else 1,
        time_us=time_us,
        actor=actor,
        action=action,
        target=target,
        before_digest=digest(before),
        after_digest=digest(after),
        details=json.dumps(details or {}, sort_keys=True, separators=(",", ":")),
        previous_hash=last[1] if last else GENESIS_HASH,
    )
    chain.seal(row)
    return row


async def checkpoint_matches(
    session: AsyncSession, chain: AuditChain, last: tuple[int, str] | None
) -> bool:
    """Whether the trail still holds the event the checkpoint vouches for; if not, the
    checkpoint stays where it is, so verification keeps reporting the damage."""
    checkpoint = chain.read_checkpoint()
    if checkpoint.missing:
        return True
    mac = None
    if checkpoint.ok and last is not None and checkpoint.sequence == last[0]:
        mac = last[1]
    elif checkpoint.ok and last is not None and checkpoint.sequence < last[0]:
        # The checkpoint lags (a crash between a commit and its write).
        vouched = select(AuditRow.hash).where(AuditRow.sequence == checkpoint.sequence)
        mac = (await session.execute(vouched)).scalar_one_or_none()
    if mac == checkpoint.mac:
        return True
    log.error(
        "the audit trail no longer matches its checkpoint (#%d): the checkpoint is not "
        "advanced; `liveml audit verify` says what is wrong",
        checkpoint.sequence,
    )
    return False


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
        key_id=row.key_id,
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
    checkpoint: int = 0


async def verify(session: AsyncSession, chain: AuditChain, batch: int = 1000) -> Verdict:
    """Walk the chain from event #1; the first event found wrong is named, with why."""
    # Read before the database: the checkpoint is written after commit, so every event
    # it vouches for is already visible to the reads that follow.
    checkpoint = chain.read_checkpoint()
    expected, previous, last_seen = 1, GENESIS_HASH, 0
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
            newer = select(AuditRow.sequence).where(AuditRow.sequence > last_seen)
            more = (await session.execute(newer)).first()
            if more is not None:  # committed while this walk read (PostgreSQL)
                continue
            return _ending(last_seen, int(head), checkpoint)
        for row in rows:
            problem = _row_problem(row, expected, previous, chain, checkpoint)
            if problem:
                bad = expected if row.sequence != expected else row.sequence
                return Verdict(False, expected - 1, bad, problem, checkpoint.sequence)
            if checkpoint.ok and row.sequence == checkpoint.sequence and row.hash != checkpoint.mac:
                return Verdict(
                    False,
                    expected - 1,
                    row.sequence,
                    f"event #{row.sequence} is not the one the signed checkpoint vouches for: "
                    "the trail was cut back and written again from here or before",
                    checkpoint.sequence,
                )
            previous, expected = row.hash, row.sequence + 1
        last_seen = rows[-1].sequence


def _row_problem(
    row: AuditRow, expected: int, previous: str, chain: AuditChain, checkpoint: Checkpoint
) -> str:
    seq = row.sequence
    if seq != expected:
        return f"event #{expected} is missing (next present is #{seq})"
    if not row.key_id:
        return (
            f"event #{seq} ({row.action} on {row.target}) carries no MAC, only an unkeyed "
            "hash: it was inserted or rewritten without the audit key"
        )
    if row.key_id not in chain.keys.keys:
        return (
            f"event #{seq} was MACed with audit key {row.key_id!r}, which is not configured "
            "(--audit-key-id / --audit-old-keys)"
        )
    if row.previous_hash != previous:
        return f"event #{seq} does not link to event #{seq - 1}: events were swapped or replaced"
    if not chain.check(row):
        suspect = ""
        if checkpoint.problem and checkpoint.key_id == row.key_id:
            suspect = (
                f"; the signed checkpoint does not verify with key {row.key_id!r} either, so "
                "that key is probably not the one the trail was written with"
            )
        return (
            f"event #{seq} ({row.action} on {row.target}) was altered: its content no longer "
            f"matches its MAC under audit key {row.key_id!r}{suspect}"
        )
    return ""


def _ending(last: int, head: int, checkpoint: Checkpoint) -> Verdict:
    """The checks of the trail's end: the database's head and the signed checkpoint."""
    at = checkpoint.sequence
    if checkpoint.problem:
        return Verdict(False, last, at or last, checkpoint.problem, at)
    if checkpoint.missing and last:
        return Verdict(
            False,
            last,
            last,
            "the signed checkpoint is missing (ARTIFACT_DIR/audit/checkpoint.json): the "
            f"trail's end (#{last}) cannot be vouched for",
        )
    if at > last:
        return Verdict(
            False,
            last,
            last + 1,
            f"events #{last + 1} to #{at} are missing: the trail ends at #{last}, its signed "
            f"checkpoint is at #{at} (the tail was deleted)",
            at,
        )
    if head > last:
        return Verdict(
            False,
            last,
            last + 1,
            f"events #{last + 1} to #{head} are missing: the trail ends early at #{last} "
            f"(the database's audit head says #{head}, the signed checkpoint #{at})",
            at,
        )
    if head < last:
        return Verdict(
            False,
            last,
            head + 1,
            f"event #{head + 1} is past the database's audit head (#{head}): the head was lowered",
            at,
        )
    return Verdict(True, last, checkpoint=at)
