"""The one-off re-chaining of an audit trail written before the keyed chain (migration 0008).

Trails from before 0008 are chained with a plain sha256, which anyone with database
access can recompute. On the first start with 0008, the registry checks that old chain
(sequence, links, hashes, head) and, if it holds, MACs every event again with the
current audit key and writes the first checkpoint; from then on every event must be
keyed. The alternative, verifying the old events as a sha256 prefix for ever, would need
a trusted record of where the prefix ends (else an attacker rewrites keyed events as
"legacy" ones) and would keep a forgeable format alive; re-chaining vouches for exactly
what the old chain vouched for at upgrade time and nothing less.

It runs only when every event is unkeyed and there is no checkpoint yet: unkeyed events
next to keyed ones, or with a checkpoint present, are forgeries (or were written by an
older registry still running during the upgrade) and are left for `liveml audit verify`
to report. A broken old chain is left unkeyed too, so it is reported rather than
laundered.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from services.registry.audit import GENESIS_HASH, audit_hash
from services.registry.audit_chain import AuditChain
from services.registry.db import AuditRow, Meta
from services.registry.store import Store

log = logging.getLogger(__name__)


async def rechain_legacy(store: Store, chain: AuditChain) -> int:
    """Re-MAC a wholly unkeyed trail with the audit key; return how many events it had."""
    async with store.write("registry") as tx:
        session = tx.session
        unkeyed = (
            await session.execute(select(func.count()).where(AuditRow.key_id == ""))
        ).scalar_one()
        if not unkeyed:
            return 0
        total = (await session.execute(select(func.count()).select_from(AuditRow))).scalar_one()
        if total != unkeyed or not chain.read_checkpoint().missing:
            log.error(
                "%d audit events carry no MAC beside keyed ones or a checkpoint: not "
                "re-chaining them (`liveml audit verify` names the first)",
                unkeyed,
            )
            return 0
        rows = list((await session.execute(select(AuditRow).order_by(AuditRow.sequence))).scalars())
        head = (await session.execute(select(Meta.audit_head))).scalar_one()
        problem = _legacy_problem(rows, int(head))
        if problem:
            log.error(
                "the audit trail from before the keyed chain is broken (%s): left unkeyed, "
                "so `liveml audit verify` keeps reporting it",
                problem,
            )
            return 0
        previous = GENESIS_HASH
        for row in rows:
            row.previous_hash = previous
            chain.seal(row)
            previous = row.hash
        last = rows[-1]
        tx.after_commit.append(lambda: chain.advance(last.sequence, last.hash))
    log.info(
        "audit trail: %d events from before the keyed chain were re-chained with HMAC key %r "
        "(once)",
        len(rows),
        chain.keys.current_id,
    )
    return len(rows)


def _legacy_problem(rows: list[AuditRow], head: int) -> str:
    previous = GENESIS_HASH
    for expected, row in enumerate(rows, start=1):
        if row.sequence != expected:
            return f"event #{expected} is missing"
        if row.previous_hash != previous or audit_hash(row) != row.hash:
            return f"event #{expected} does not match its hash"
        previous = row.hash
    if head != len(rows):
        return f"the audit head says #{head}, the trail ends at #{len(rows)}"
    return ""
