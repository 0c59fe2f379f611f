"""Rollouts: the desired traffic of a model, validated, versioned and reversible."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import names
from services.registry.catalog import model_row
from services.registry.db import ModelRow, RolloutHistoryRow, RolloutRow, VersionRow
from services.registry.store import Tx, now_us, page


def empty(model_id: str) -> rpb.Rollout:
    return rpb.Rollout(name=f"models/{model_id}/rollout")


async def get(session: AsyncSession, name: str) -> rpb.Rollout:
    model_id = names.rollout(name)
    model = await model_row(session, model_id)
    row = await session.get(RolloutRow, model.id)
    return rpb.Rollout.FromString(row.proto) if row else empty(model_id)


async def _validate(session: AsyncSession, model: ModelRow, rollout: rpb.Rollout) -> None:
    targets = list(rollout.targets)
    seen: set[int] = set()
    for target in targets:
        if not 0 <= target.percent <= 100:
            raise InvalidArgument(f"target version {target.version}: percent must be 0-100")
        if target.version in seen:
            raise InvalidArgument(f"version {target.version} is listed twice in targets")
        seen.add(target.version)
    total = sum(t.percent for t in targets)
    if targets and total != 100:
        shares = ", ".join(f"v{t.version}={t.percent}%" for t in targets)
        raise InvalidArgument(f"target percentages must sum to 100, got {total} ({shares})")
    for mirror in rollout.mirrors:
        if not 1 <= mirror.percent <= 100:
            raise InvalidArgument(f"mirror version {mirror.version}: percent must be 1-100")
    steps = list(rollout.analysis.steps)
    if steps and (steps != sorted(set(steps)) or steps[0] <= 0 or steps[-1] != 100):
        raise InvalidArgument(
            f"analysis steps must ascend within 1-100 and end at 100, got {steps}"
        )
    wanted = (
        {t.version for t in targets} | {m.version for m in rollout.mirrors} | set(rollout.pinned)
    )
    if not wanted:
        return
    rows = (
        await session.execute(
            select(VersionRow.number, VersionRow.approval).where(
                VersionRow.model_id == model.id, VersionRow.number.in_(wanted)
            )
        )
    ).all()
    known = {number: approval for number, approval in rows}
    missing = sorted(wanted - set(known))
    if missing:
        raise NotFound(
            f"model '{model.name}' has no version {', '.join(map(str, missing))}; "
            f"its latest version is {model.latest_version}"
        )
    rejected = sorted(n for n, a in known.items() if a == rpb.APPROVAL_STATE_REJECTED)
    if rejected:
        raise FailedPrecondition(
            f"version {', '.join(map(str, rejected))} of '{model.name}' was rejected "
            "and cannot be rolled out"
        )


async def _store(
    tx: Tx, model: ModelRow, before: rpb.Rollout | None, after: rpb.Rollout, action: str
) -> rpb.Rollout:
    after.revision = tx.revision
    after.updater = tx.actor
    after.update_time.FromMicroseconds(now_us())
    payload = after.SerializeToString()
    row = await tx.session.get(RolloutRow, model.id)
    if row is None:
        tx.session.add(RolloutRow(model_id=model.id, proto=payload))
    else:
        row.proto = payload
    tx.session.add(RolloutHistoryRow(model_id=model.id, revision=tx.revision, proto=payload))
    tx.put(after, after.name)
    await tx.audit(
        action,
        after.name,
        before,
        after,
        {
            "targets": {str(t.version): t.percent for t in after.targets},
            "mirrors": {str(m.version): m.percent for m in after.mirrors},
            "pinned": list(after.pinned),
        },
    )
    return after


async def update(tx: Tx, rollout: rpb.Rollout, expected_revision: int = 0) -> rpb.Rollout:
    model_id = names.rollout(rollout.name)
    model = await model_row(tx.session, model_id, lock=True)
    current = await tx.session.get(RolloutRow, model.id)
    before = rpb.Rollout.FromString(current.proto) if current else None
    have = before.revision if before else 0
    if expected_revision and expected_revision != have:
        raise Aborted(
            f"rollout of '{model_id}' changed: expected revision {expected_revision}, "
            f"it is at {have}; read it again and retry"
        )
    await _validate(tx.session, model, rollout)
    after = rpb.Rollout()
    after.CopyFrom(rollout)
    after.name = f"models/{model_id}/rollout"
    return await _store(tx, model, before, after, "UpdateRollout")


async def history(
    session: AsyncSession, name: str, size: int, page_token: str
) -> tuple[list[rpb.Rollout], str]:
    model = await model_row(session, names.rollout(name))
    query = select(RolloutHistoryRow).where(RolloutHistoryRow.model_id == model.id)
    if page_token:
        query = query.where(RolloutHistoryRow.id < int(names.decode_page(page_token)))
    rows, token = await page(
        session, query.order_by(RolloutHistoryRow.id.desc()), size, lambda r: int(r.id)
    )
    return [rpb.Rollout.FromString(r.proto) for r in rows], token


async def rollback(tx: Tx, name: str) -> rpb.Rollout:
    """Restore the state before the current one (as a new revision, itself reversible)."""
    model_id = names.rollout(name)
    model = await model_row(tx.session, model_id, lock=True)
    rows = (
        (
            await tx.session.execute(
                select(RolloutHistoryRow)
                .where(RolloutHistoryRow.model_id == model.id)
                .order_by(RolloutHistoryRow.id.desc())
                .limit(2)
            )
        )
        .scalars()
        .all()
    )
    if len(rows) < 2:
        raise FailedPrecondition(f"rollout of '{model_id}' has no previous state to roll back to")
    before = rpb.Rollout.FromString(rows[0].proto)
    previous = rpb.Rollout.FromString(rows[1].proto)
    try:
        await _validate(tx.session, model, previous)
    except (InvalidArgument, NotFound, FailedPrecondition) as exc:
        raise FailedPrecondition(
            f"cannot roll back to revision {previous.revision}: {exc}"
        ) from None
    after = rpb.Rollout()
    after.CopyFrom(previous)
    return await _store(tx, model, before, after, "RollbackRollout")
