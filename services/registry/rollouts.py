"""Rollouts: the desired traffic of a model, validated, versioned and reversible.

A rollout whose analysis policy has steps is a canary: the registry starts its
status at the first step, and from then on the controller (controller.py) moves it
through `transition`, fenced by the revision it decided on.

Make before break (services/common/serving.py): every write records, as the new
state's `fallback`, the split that was serving just before, so a target that is not
READY anywhere yet leaves its share with the versions that had it. `settle` clears
the fallback once every target is reported READY by a worker that has seen the new
state: a READY the registry heard before that may be stale (the worker about to
retire the version, as the previous state told it), so it does not count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common import serving
from services.common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import names, workers
from services.registry.catalog import model_row
from services.registry.db import ModelRow, RolloutHistoryRow, RolloutRow, VersionRow
from services.registry.names import page
from services.registry.store import Tx, now_us

# The tag of an archived online version whose artifact was collected (learners.py).
COLLECTED = "liveml.artifact_collected"


def empty(model_id: str) -> rpb.Rollout:
    return rpb.Rollout(name=f"models/{model_id}/rollout")


async def all_by_model(session: AsyncSession) -> dict[str, rpb.Rollout]:
    """Every model's rollout, by model name."""
    rows = (
        await session.execute(
            select(ModelRow.name, RolloutRow.proto).join(
                RolloutRow, RolloutRow.model_id == ModelRow.id
            )
        )
    ).all()
    return {name: rpb.Rollout.FromString(proto) for name, proto in rows}


async def get(session: AsyncSession, name: str) -> rpb.Rollout:
    model_id = names.rollout(name)
    model = await model_row(session, model_id)
    row = await session.get(RolloutRow, model.id)
    return rpb.Rollout.FromString(row.proto) if row else empty(model_id)


async def _validate(session: AsyncSession, model: ModelRow, rollout: rpb.Rollout) -> None:
    if rollout.sticky_key != rollout.sticky_key.strip():
        raise InvalidArgument(
            "sticky_key must name a request parameter or metadata key, with no surrounding "
            f"whitespace (or be empty for none), got {rollout.sticky_key!r}"
        )
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
    if steps and rollout.status.phase == rpb.AnalysisStatus.PHASE_PROGRESSING:
        _check_canary(rollout, steps)
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
    collected = (
        await session.execute(
            select(VersionRow.number, VersionRow.proto).where(
                VersionRow.model_id == model.id,
                VersionRow.number.in_(wanted),
                VersionRow.stage == rpb.STAGE_ARCHIVED,
            )
        )
    ).all()
    gone = sorted(n for n, p in collected if rpb.Version.FromString(p).tags.get(COLLECTED))
    if gone:
        raise FailedPrecondition(
            f"version {', '.join(map(str, gone))} of '{model.name}' is an archived online "
            "version whose artifact was collected; it cannot serve again"
        )
    rejected = sorted(n for n, a in known.items() if a == rpb.APPROVAL_STATE_REJECTED)
    if rejected:
        raise FailedPrecondition(
            f"version {', '.join(map(str, rejected))} of '{model.name}' was rejected "
            "and cannot be rolled out"
        )


def _check_canary(rollout: rpb.Rollout, steps: list[int]) -> None:
    candidate = rollout.analysis.candidate_version
    shares = {t.version: t.percent for t in rollout.targets}
    if candidate not in shares or len(shares) != 2:
        raise InvalidArgument(
            "a canary (analysis with steps) needs exactly two targets, the stable version "
            f"and analysis.candidate_version (got candidate {candidate}, "
            f"targets {sorted(shares)})"
        )
    step = steps[rollout.status.step_index]
    if shares[candidate] != step:
        raise InvalidArgument(
            f"candidate version {candidate} must start at the first step's weight, "
            f"{step}%, got {shares[candidate]}%"
        )


def start_status(rollout: rpb.Rollout) -> None:
    """A canary starts at its first step (status is the registry's, never the client's)."""
    rollout.ClearField("status")
    if not rollout.analysis.steps:
        return
    status = rollout.status
    status.phase = rpb.AnalysisStatus.PHASE_PROGRESSING
    status.candidate_version = rollout.analysis.candidate_version
    others = [t.version for t in rollout.targets if t.version != status.candidate_version]
    status.stable_version = others[0] if others else 0
    status.start_time.FromMicroseconds(now_us())
    status.step_start_time.CopyFrom(status.start_time)
    status.last_decision = f"started at {rollout.analysis.steps[0]}%"
    status.last_decision_time.CopyFrom(status.start_time)


def targets_of(rollout: rpb.Rollout) -> list[tuple[int, float]]:
    return [(t.version, float(t.percent)) for t in rollout.targets]


def fallback_of(rollout: rpb.Rollout) -> list[tuple[int, float]]:
    return [(f.version, f.percent) for f in rollout.fallback]


async def _hold(
    tx: Tx, model: ModelRow, before: rpb.Rollout | None, after: rpb.Rollout, force: bool
) -> None:
    """Set `after.fallback`: what served under `before`, unless nothing needs it."""
    del after.fallback[:]
    if force or before is None:
        return
    ready = await workers.ready_counts(tx.session, model.name)
    shares = serving.split(targets_of(before), fallback_of(before), ready).shares
    if not shares:
        # The registry sees nothing of it READY — its picture may be behind the data
        # plane's (a lease lapsed under load while the worker still answers): keep what
        # `before` meant to serve, and let gateways and workers judge READY themselves,
        # rather than leave the new targets with nothing to fall back on.
        shares = tuple(fallback_of(before)) or tuple((v, p) for v, p in targets_of(before) if p > 0)
    after.fallback.extend(rpb.ServingShare(version=v, percent=p) for v, p in shares)


async def _store(
    tx: Tx,
    model: ModelRow,
    before: rpb.Rollout | None,
    after: rpb.Rollout,
    action: str,
    details: dict[str, Any] | None = None,
    force: bool = False,
) -> rpb.Rollout:
    await _hold(tx, model, before, after, force)
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
            "fallback": {str(f.version): round(f.percent, 3) for f in after.fallback},
            **({"force": True} if force else {}),
            **(details or {}),
        },
    )
    return after


async def update(
    tx: Tx, rollout: rpb.Rollout, expected_revision: int = 0, force: bool = False
) -> rpb.Rollout:
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
    after = rpb.Rollout()
    after.CopyFrom(rollout)
    after.name = f"models/{model_id}/rollout"
    start_status(after)
    await _validate(tx.session, model, after)
    return await _store(tx, model, before, after, "UpdateRollout", force=force)


async def transition(
    tx: Tx,
    model_id: str,
    expected_revision: int,
    change: Callable[[rpb.Rollout], None],
    action: str,
    details: dict[str, Any],
) -> rpb.Rollout:
    """Apply a controller or operator decision to the rollout it was made on."""
    model = await model_row(tx.session, model_id, lock=True)
    current = await tx.session.get(RolloutRow, model.id)
    if current is None:
        raise NotFound(f"model '{model_id}' has no rollout")
    before = rpb.Rollout.FromString(current.proto)
    if expected_revision and before.revision != expected_revision:
        raise Aborted(
            f"rollout of '{model_id}' changed (revision {before.revision}, decided on "
            f"{expected_revision}); the decision is dropped"
        )
    after = rpb.Rollout()
    after.CopyFrom(before)
    change(after)
    await _validate(tx.session, model, after)
    return await _store(tx, model, before, after, action, details)


async def history(
    session: AsyncSession, name: str, size: int, page_token: str
) -> tuple[list[rpb.Rollout], str]:
    model = await model_row(session, names.rollout(name))
    query = select(RolloutHistoryRow).where(RolloutHistoryRow.model_id == model.id)
    if page_token:
        query = query.where(RolloutHistoryRow.id < names.decode_page_number(page_token))
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
    # The traffic comes back, not a canary's progress: a restored canary would be judged
    # again on windows it was already judged on.
    after.ClearField("status")
    return await _store(tx, model, before, after, "RollbackRollout")


async def _due(
    session: AsyncSession, models: set[str]
) -> list[tuple[str, RolloutRow, rpb.Rollout]]:
    """The rollouts of `models` whose fallback may go: every target with traffic READY
    on a worker that has observed the rollout's revision."""
    if not models:
        return []
    rows = (
        await session.execute(
            select(ModelRow.name, RolloutRow)
            .join(RolloutRow, RolloutRow.model_id == ModelRow.id)
            .where(ModelRow.name.in_(sorted(models)))
        )
    ).all()
    due = []
    for name, row in rows:
        before = rpb.Rollout.FromString(row.proto)
        if not before.fallback:
            continue
        confirmed = await workers.ready_counts(session, name, before.revision)
        if serving.settled(targets_of(before), confirmed):
            due.append((name, row, before))
    return due


async def settleable(session: AsyncSession, models: set[str]) -> set[str]:
    """Which of `models` `settle` would settle now (a read: no write unless one would)."""
    return {name for name, _, _ in await _due(session, models)}


async def settle(tx: Tx, models: set[str]) -> None:
    """Clear the fallback of these models' rollouts once every target with traffic is
    READY on some worker that has seen the rollout: the versions that answered
    meanwhile may now be retired.

    Not a new desired state: no history row, and `revision` stays (a controller's or
    an operator's decision fenced by it still applies).
    """
    for _, row, before in await _due(tx.session, models):
        after = rpb.Rollout()
        after.CopyFrom(before)
        del after.fallback[:]
        row.proto = after.SerializeToString()
        tx.put(after, after.name)
        await tx.audit(
            "SettleRollout",
            after.name,
            before,
            after,
            {"released": {str(f.version): round(f.percent, 3) for f in before.fallback}},
        )


async def serving_now(
    session: AsyncSession, rollout: rpb.Rollout
) -> tuple[list[rpb.ServingShare], list[rpb.HeldShare]]:
    """The split the data plane applies now, and why any target's share is held."""
    model = names.rollout(rollout.name)
    ready = await workers.ready_counts(session, model)
    now = serving.split(targets_of(rollout), fallback_of(rollout), ready)
    shares = [rpb.ServingShare(version=v, percent=p) for v, p in now.shares]
    held = [
        rpb.HeldShare(
            version=h.version,
            percent=int(h.percent),
            reason=await workers.why_not_ready(session, model, h.version),
            held_on=list(h.held_on),
        )
        for h in now.held
    ]
    return shares, held
