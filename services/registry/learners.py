"""Online learners: one per model, fenced; their checkpoints; and their versions' rollout.

A trainer claims a model's learner under a lease and receives a fencing token, which
grows with every new holder; every checkpoint it commits (state and stream position
together, in one transaction) must carry the current token, so a learner that lost
its lease — paused, partitioned, replaced — can never overwrite its successor's
state. Publishing goes through here too: the registry rolls the version out by the
policy (a short canary, or directly) and archives online versions beyond the policy's
`keep_versions` that no rollout state still names, collecting their artifacts.
Changes a person should hear of — a drift, a guardrail that stopped publishing — are
raised as alerts when a checkpoint reports them.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.registry import alerts, catalog, names, rollouts, training_policies, training_runs
from services.registry.alerts import Alerts
from services.registry.artifacts import ArtifactStore
from services.registry.db import LearnerRow, RolloutHistoryRow, VersionRow
from services.registry.store import Tx, now_us

DEFAULT_KEEP = 5
HISTORY_KEPT = 5  # rollout states whose versions are never archived
QUARANTINE_MARKS = (1, 100, 10_000, 1_000_000)  # counts at which a quarantine is alerted
SHORT_CANARY = rpb.AnalysisPolicy(steps=[50, 100])
COLLECTED = rollouts.COLLECTED  # the tag of an archived version whose artifact is gone


def learner_name(model_id: str) -> str:
    return f"models/{model_id}/learner"


def _status(row: LearnerRow | None, model_id: str) -> tpb.LearnerStatus:
    status = tpb.LearnerStatus.FromString(row.status) if row and row.status else tpb.LearnerStatus()
    status.name = learner_name(model_id)
    if row is not None:
        status.learner = row.holder
        status.fencing_token = row.token
        if row.lease_expire_us:
            status.lease_expire_time.FromMicroseconds(row.lease_expire_us)
    return status


async def _online_policy(session: AsyncSession, model: object) -> tpb.TrainingPolicy:
    policy = await training_policies.of_model(session, model)  # type: ignore[arg-type]
    if policy is None or policy.mode != tpb.TRAINING_MODE_ONLINE:
        name = getattr(model, "name", "?")
        raise FailedPrecondition(
            f"model '{name}' has no training policy in mode ONLINE (liveml train policy set "
            f"{name} --mode online)"
        )
    return policy


async def claim(
    tx: Tx, parent: str, learner: str, lease_seconds: float
) -> tuple[bool, LearnerRow | None, tpb.LearnerStatus]:
    model_id = names.model(parent)
    if not learner:
        raise InvalidArgument("learner must name the claiming trainer, e.g. trainers/t1")
    model = await catalog.model_row(tx.session, model_id, lock=True)
    await _online_policy(tx.session, model)
    row = await tx.session.get(LearnerRow, model.id)
    now = now_us()
    if row is None:
        row = LearnerRow(
            model_id=model.id, holder="", token=0, lease_expire_us=0, checkpoint=b"", status=b""
        )
        tx.session.add(row)
    if row.holder and row.holder != learner and row.lease_expire_us >= now:
        return False, None, _status(row, model_id)
    # Every claim is a new session with a new token, even by a trainer of the same
    # name: a paused predecessor of that name can then never commit again.
    row.token += 1
    previous = row.holder
    row.holder = learner
    await tx.audit(
        "ClaimLearner",
        learner_name(model_id),
        None,
        None,
        {"learner": learner, "token": row.token, "previous": previous},
    )
    row.lease_expire_us = now + int(lease_seconds * 1e6)
    return True, row, _status(row, model_id)


async def _held(tx: Tx, parent: str, learner: str, token: int) -> tuple[object, LearnerRow]:
    model_id = names.model(parent)
    model = await catalog.model_row(tx.session, model_id, lock=True)
    row = await tx.session.get(LearnerRow, model.id)
    if row is None or row.holder != learner or row.token != token:
        holder = row.holder if row else "nobody"
        current = row.token if row else 0
        raise Aborted(
            f"the learner of '{model_id}' is {holder} with fencing token {current}, not "
            f"{learner} with {token}: this learner lost it and must stop"
        )
    return model, row


async def commit(
    tx: Tx,
    request: tpb.CommitLearnerCheckpointRequest,
    lease_seconds: float,
    alerts_: Alerts,
) -> tpb.LearnerStatus:
    if not request.checkpoint:
        raise InvalidArgument("checkpoint must hold the learner's state")
    _, row = await _held(tx, request.parent, request.learner, request.fencing_token)
    model_id = names.model(request.parent)
    before = _status(row, model_id)
    if request.status.last_sequence < before.last_sequence:
        raise InvalidArgument(
            f"status.last_sequence {request.status.last_sequence} is behind the committed "
            f"{before.last_sequence}: a checkpoint never goes back"
        )
    after = tpb.LearnerStatus()
    after.CopyFrom(request.status)
    after.checkpoint_number = before.checkpoint_number + 1
    after.checkpoint_bytes = len(request.checkpoint)
    after.checkpoint_time.FromMicroseconds(now_us())
    for field in ("published_version", "publish_decision"):  # kept by publish, not the learner
        setattr(after, field, getattr(before, field))
    if before.HasField("publish_time"):
        after.publish_time.CopyFrom(before.publish_time)
    row.checkpoint = request.checkpoint
    row.lease_expire_us = now_us() + int(lease_seconds * 1e6)
    row.status = after.SerializeToString()
    await _raise_changes(tx, alerts_, model_id, before, after)
    return _status(row, model_id)


async def _raise_changes(
    tx: Tx, alerts_: Alerts, model_id: str, before: tpb.LearnerStatus, after: tpb.LearnerStatus
) -> None:
    new_drifts = [s for s in after.drift_sequences if s not in set(before.drift_sequences)]
    if new_drifts and after.drift_state in ("warning", "drift"):
        severity = alerts.WARNING if after.drift_state == "drift" else alerts.INFO
        await alerts_.raise_(
            tx,
            "LearnerDrift",
            severity,
            model_id,
            0,
            f"the online learner of {model_id} saw concept drift ({after.drift_state}) at "
            f"sequence {new_drifts[-1]}",
            {"sequences": new_drifts, "state": after.drift_state},
            event=True,
        )
    for reason, count in sorted(after.quarantined.items()):
        seen = before.quarantined.get(reason, 0)
        if any(seen < mark <= count for mark in QUARANTINE_MARKS):
            await alerts_.raise_(
                tx,
                "LearnerQuarantined",
                alerts.WARNING,
                model_id,
                0,
                f"the online learner of {model_id} quarantined {count} examples: {reason}",
                {"reason": reason, "count": count},
                event=True,
            )
    if after.publishing_stopped and not before.publishing_stopped:
        await alerts_.raise_(
            tx,
            "LearnerStopped",
            alerts.CRITICAL,
            model_id,
            0,
            f"the online learner of {model_id} stopped publishing: {after.stopped_reason}",
            {"reason": after.stopped_reason},
        )
    elif before.publishing_stopped and not after.publishing_stopped:
        await alerts_.resolve(tx, "LearnerStopped", model_id, 0, "publishing again")


async def publish(
    tx: Tx, request: tpb.PublishOnlineVersionRequest, artifacts: ArtifactStore
) -> tuple[str, list[int], tpb.LearnerStatus]:
    model, row = await _held(tx, request.parent, request.learner, request.fencing_token)
    model_id = names.model(request.parent)
    policy = await _online_policy(tx.session, model)
    _, version_row = await catalog.version_row(
        tx.session, names.version_name(model_id, request.version)
    )
    version = catalog.version_proto(version_row)
    if version.lineage.pipeline_run != learner_name(model_id):
        raise InvalidArgument(
            f"version {request.version} was not registered by the online learner "
            f"(lineage.pipeline_run = {learner_name(model_id)})"
        )
    if version.approval.state == rpb.APPROVAL_STATE_PENDING:
        await catalog.review_version(
            tx,
            version.name,
            rpb.APPROVAL_STATE_APPROVED,
            "passed the online learner's light gate; online policies approve automatically",
        )
    if policy.online.rollout == tpb.ONLINE_ROLLOUT_DIRECT:
        current = await rollouts.get(tx.session, f"models/{model_id}/rollout")
        if current.status.phase in (
            rpb.AnalysisStatus.PHASE_PROGRESSING,
            rpb.AnalysisStatus.PHASE_PAUSED,
        ):
            decision = "not rolled out: a canary is in progress"
        else:
            after = rpb.Rollout(
                name=current.name,
                targets=[rpb.TrafficTarget(version=request.version, percent=100)],
                mirrors=current.mirrors,
                pinned=current.pinned,
                sticky_key=current.sticky_key,
            )
            await rollouts.update(tx, after, current.revision)
            decision = f"v{request.version} takes all the traffic (direct)"
    else:
        canary = policy.canary if policy.canary.steps else SHORT_CANARY
        if not canary.step_interval.ToNanoseconds():
            canary = _with_interval(canary, 10.0)
        decision = await training_runs.start_canary(tx, model_id, request.version, canary)
    archived = await _archive(tx, model_id, policy, artifacts)
    status = _status(row, model_id)
    status.published_version = request.version
    status.publish_time.FromMicroseconds(now_us())
    status.publish_decision = decision
    row.status = status.SerializeToString()
    await tx.audit(
        "PublishOnlineVersion",
        learner_name(model_id),
        None,
        None,
        {
            "version": request.version,
            "decision": decision,
            "archived": archived,
            "checks": [(c.name, c.passed) for c in request.checks],
        },
    )
    return decision, archived, status


def _with_interval(policy: rpb.AnalysisPolicy, seconds: float) -> rpb.AnalysisPolicy:
    out = rpb.AnalysisPolicy()
    out.CopyFrom(policy)
    out.step_interval.FromNanoseconds(int(seconds * 1e9))
    return out


async def _archive(
    tx: Tx, model_id: str, policy: tpb.TrainingPolicy, artifacts: ArtifactStore
) -> list[int]:
    """Online versions beyond the newest `keep_versions` that no rollout state names."""
    keep = policy.online.keep_versions or DEFAULT_KEEP
    model = await catalog.model_row(tx.session, model_id)
    rows = (
        (
            await tx.session.execute(
                select(VersionRow)
                .where(VersionRow.model_id == model.id)
                .order_by(VersionRow.number.desc())
            )
        )
        .scalars()
        .all()
    )
    online = [
        r for r in rows if catalog.version_proto(r).lineage.pipeline_run == learner_name(model_id)
    ]
    named: set[int] = set()
    current = await rollouts.get(tx.session, f"models/{model_id}/rollout")
    history = (
        (
            await tx.session.execute(
                select(RolloutHistoryRow.proto)
                .where(RolloutHistoryRow.model_id == model.id)
                .order_by(RolloutHistoryRow.id.desc())
                .limit(HISTORY_KEPT)
            )
        )
        .scalars()
        .all()
    )
    for state in (current, *(rpb.Rollout.FromString(p) for p in history)):
        named |= {t.version for t in state.targets} | {m.version for m in state.mirrors}
        named |= set(state.pinned) | {f.version for f in state.fallback}
    archived = []
    for row in online[keep:]:
        if row.number in named or row.stage == rpb.STAGE_ARCHIVED:
            continue
        shared = (
            await tx.session.execute(
                select(VersionRow.id).where(
                    VersionRow.sha256 == row.sha256,
                    VersionRow.stage != rpb.STAGE_ARCHIVED,
                    VersionRow.id != row.id,
                )
            )
        ).first()
        change = rpb.Version(
            name=names.version_name(model_id, row.number), stage=rpb.STAGE_ARCHIVED
        )
        paths = ["stage"]
        if shared is None:
            change.tags[COLLECTED] = "true"
            paths.append("tags")
            tx.after_commit.append(_collector(artifacts, row.sha256))
        await catalog.update_version(tx, change, FieldMask(paths=paths))
        archived.append(int(row.number))
    return archived


def _collector(artifacts: ArtifactStore, sha256: str) -> Callable[[], None]:
    def collect() -> None:
        artifacts.collect(sha256)

    return collect


async def held_elsewhere(
    session: AsyncSession, parent: str, learner: str
) -> tpb.LearnerStatus | None:
    """The status, when another trainer holds the model's learner under a live lease."""
    model_id = names.model(parent)
    model = await catalog.model_row(session, model_id)
    row = await session.get(LearnerRow, model.id)
    if row is None or not row.holder or row.holder == learner or row.lease_expire_us < now_us():
        return None
    return _status(row, model_id)


async def status_of(session: AsyncSession, parent: str) -> tpb.LearnerStatus:
    model_id = names.model(parent)
    model = await catalog.model_row(session, model_id)
    row = await session.get(LearnerRow, model.id)
    if row is None:
        raise NotFound(f"model '{model_id}' has no online learner yet")
    return _status(row, model_id)
