"""Training runs: asked for, claimed by one trainer under a lease, finished — and what
follows a passing candidate (its approval, its canary).

Coinciding requests for a model make one run (a queued or running run absorbs them);
automatic triggers wait out the policy's cooldown. A run is claimed by one trainer at
a time, and only while no other run of its model is running, so trainer replicas
never train one model twice at once. A trainer that stops answering loses its lease:
its run is FAILED and, unless it already registered its version, retried as a new
attempt (a version registered names its run, and a run registers at most one — a
run whose trainer died after registering is finished by the registry instead, so a
crash never yields two versions).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.registry import alerts, catalog, names, rollouts, training_policies
from services.registry.alerts import Alerts
from services.registry.db import ModelRow, TrainingRunRow
from services.registry.names import page
from services.registry.store import Tx, now_us

Run = tpb.TrainingRun
QUEUED, RUNNING = Run.STATE_QUEUED, Run.STATE_RUNNING
SUCCEEDED, REJECTED, FAILED = Run.STATE_SUCCEEDED, Run.STATE_REJECTED, Run.STATE_FAILED
FINAL = (SUCCEEDED, REJECTED, FAILED)
MAX_ATTEMPTS = 3
DEFAULT_COOLDOWN = 60.0
DEFAULT_STEPS = (10, 50, 100)
DEFAULT_STEP_SECONDS = 60.0


def run_name(model_id: str, number: int) -> str:
    return f"models/{model_id}/trainingRuns/{number}"


def parse_run_name(name: str) -> tuple[str, int]:
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "models" and parts[2] == "trainingRuns" and parts[1]:
        number = names.positive_number(parts[3])
        if number is not None:
            return parts[1], number
    raise InvalidArgument(f"expected a run name like 'models/iris/trainingRuns/3', got {name!r}")


def _save(tx: Tx, row: TrainingRunRow, run: Run) -> None:
    row.state = run.state
    row.lease_expire_us = run.lease_expire_time.ToMicroseconds()
    row.proto = run.SerializeToString()


async def _row(session: AsyncSession, name: str, *, lock: bool = False) -> TrainingRunRow:
    model_id, number = parse_run_name(name)
    model = await catalog.model_row(session, model_id)
    query = select(TrainingRunRow).where(
        TrainingRunRow.model_id == model.id, TrainingRunRow.number == number
    )
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"training run {name} not found")
    return row


async def get(session: AsyncSession, name: str) -> Run:
    return Run.FromString((await _row(session, name)).proto)


async def listing(
    session: AsyncSession, parent: str, size: int, token: str
) -> tuple[list[Run], str]:
    model = await catalog.model_row(session, names.model(parent))
    query = select(TrainingRunRow).where(TrainingRunRow.model_id == model.id)
    if token:
        before = names.decode_page_number(token)
        query = query.where(TrainingRunRow.number < before)
    rows, next_token = await page(
        session, query.order_by(TrainingRunRow.number.desc()), size, lambda r: int(r.number)
    )
    return [Run.FromString(r.proto) for r in rows], next_token


async def _latest(session: AsyncSession, model_id: int) -> Run | None:
    row = (
        await session.execute(
            select(TrainingRunRow)
            .where(TrainingRunRow.model_id == model_id)
            .order_by(TrainingRunRow.number.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    return Run.FromString(row.proto) if row else None


async def _new(tx: Tx, model: ModelRow, run: Run) -> Run:
    number = (
        await tx.session.execute(
            select(func.coalesce(func.max(TrainingRunRow.number), 0)).where(
                TrainingRunRow.model_id == model.id
            )
        )
    ).scalar_one() + 1
    run.name = run_name(model.name, number)
    run.number = number
    run.state = QUEUED
    run.create_time.FromMicroseconds(now_us())
    row = TrainingRunRow(model_id=model.id, number=number, state=QUEUED, lease_expire_us=0)
    _save(tx, row, run)
    tx.session.add(row)
    return run


async def request(tx: Tx, parent: str, trigger: int, reason: str) -> tuple[Run, bool]:
    """A run for `parent`: the queued or running one (absorbing this request), or a new one."""
    model_id = names.model(parent)
    if trigger not in tpb.TrainingTrigger.values() or trigger in (
        tpb.TRAINING_TRIGGER_UNSPECIFIED,
        tpb.TRAINING_TRIGGER_RETRY,
    ):
        raise InvalidArgument(
            "trigger must be TRAINING_TRIGGER_MANUAL, _SCHEDULE, _DATA_VOLUME or _ALERT"
        )
    model = await catalog.model_row(tx.session, model_id, lock=True)  # orders requests
    policy = await training_policies.of_model(tx.session, model)
    if policy is None:
        raise FailedPrecondition(
            f"model '{model_id}' has no training policy (liveml train policy set {model_id})"
        )
    why = f"{tpb.TrainingTrigger.Name(trigger).removeprefix('TRAINING_TRIGGER_').lower()}: " + (
        reason.strip() or "requested"
    )
    open_row = (
        await tx.session.execute(
            select(TrainingRunRow)
            .where(TrainingRunRow.model_id == model.id, TrainingRunRow.state.in_((QUEUED, RUNNING)))
            .order_by(TrainingRunRow.number)
            .limit(1)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if open_row is not None:
        run = Run.FromString(open_row.proto)
        if why not in run.reasons:
            run.reasons.append(why)
            _save(tx, open_row, run)
        return run, False
    last = await _latest(tx.session, model.id)
    cooldown = policy.cooldown.ToNanoseconds() / 1e9 or DEFAULT_COOLDOWN
    if trigger != tpb.TRAINING_TRIGGER_MANUAL and last is not None:
        since = (now_us() - last.create_time.ToMicroseconds()) / 1e6
        if since < cooldown:
            raise FailedPrecondition(
                f"model '{model_id}' was last trained {since:.1f} s ago, within its "
                f"{cooldown:g} s cooldown; run {last.name} covers it"
            )
    run = await _new(tx, model, Run(trigger=trigger, reasons=[why], attempt=1))  # type: ignore[arg-type]
    await tx.audit("RequestTrainingRun", run.name, None, run, {"reason": why})
    return run, True


async def claim(
    tx: Tx, trainer: str, lease_seconds: float
) -> tuple[Run, tpb.TrainingPolicy] | None:
    if not trainer:
        raise InvalidArgument("trainer must name the claiming trainer, e.g. trainers/t1")
    if lease_seconds <= 0:
        raise InvalidArgument("lease_duration must be positive")
    busy = select(TrainingRunRow.model_id).where(TrainingRunRow.state == RUNNING)
    candidates = (
        (
            await tx.session.execute(
                select(TrainingRunRow)
                .where(TrainingRunRow.state == QUEUED, TrainingRunRow.model_id.not_in(busy))
                .order_by(TrainingRunRow.id)
                .limit(10)
                .with_for_update()
            )
        )
        .scalars()
        .all()
    )
    for row in candidates:
        model = await tx.session.get(ModelRow, row.model_id)
        assert model is not None
        policy = await training_policies.of_model(tx.session, model)
        run = Run.FromString(row.proto)
        if policy is None:  # deleted since it was asked for
            _finish(run, FAILED, "the model's training policy was deleted before the run began")
            _save(tx, row, run)
            continue
        run.state = RUNNING
        run.trainer = trainer
        run.start_time.FromMicroseconds(now_us())
        run.lease_expire_time.FromMicroseconds(now_us() + int(lease_seconds * 1e6))
        _save(tx, row, run)
        await tx.audit("ClaimTrainingRun", run.name, None, run, {"trainer": trainer})
        return run, policy
    return None


def _finish(run: Run, state: int, error: str = "") -> None:
    run.state = state  # type: ignore[assignment]
    if error:
        run.error = error
    run.end_time.FromMicroseconds(now_us())
    run.ClearField("lease_expire_time")


_REPORTED = (
    "dataset",
    "train_rows",
    "holdout_rows",
    "first_sequence",
    "last_sequence",
    "source_rows",
    "dropped_rows",
    "production_version",
    "checks",
    "candidate_metrics",
    "production_metrics",
    "stage_seconds",
    "error",
)


async def update(tx: Tx, reported: Run, lease_seconds: float, alerts_: Alerts) -> Run:
    """The claiming trainer's report: progress (RUNNING, renewing the lease) or the end."""
    row = await _row(tx.session, reported.name, lock=True)
    run = Run.FromString(row.proto)
    if run.state != RUNNING or run.trainer != reported.trainer or run.attempt != reported.attempt:
        state = Run.State.Name(run.state).removeprefix("STATE_")
        raise Aborted(
            f"run {run.name} is no longer {reported.trainer or 'this trainer'}'s: it is "
            f"{state}" + (f" ({run.error})" if run.error else "")
        )
    if reported.state not in (RUNNING, *FINAL):
        raise InvalidArgument("state must be STATE_RUNNING or a final state")
    before = Run()
    before.CopyFrom(run)
    for field in _REPORTED:
        if field in ("checks",):
            del run.checks[:]
            run.checks.extend(reported.checks)
        elif field in ("candidate_metrics", "production_metrics", "stage_seconds"):
            getattr(run, field).clear()
            getattr(run, field).update(getattr(reported, field))
        elif field == "dataset":
            run.dataset.CopyFrom(reported.dataset)
        else:
            setattr(run, field, getattr(reported, field))
    if reported.state == RUNNING:
        if lease_seconds <= 0:
            raise InvalidArgument("lease_duration must be positive")
        run.lease_expire_time.FromMicroseconds(now_us() + int(lease_seconds * 1e6))
        _save(tx, row, run)
        return run
    if reported.state == SUCCEEDED and not run.version:
        raise FailedPrecondition(
            f"run {run.name} cannot succeed without a version: register it first (CreateVersion "
            f"with lineage.pipeline_run = {run.name})"
        )
    _finish(run, reported.state, reported.error)
    model = run.name.split("/")[1]
    if run.state == SUCCEEDED:
        await _after_success(tx, run)
    elif run.state == REJECTED:
        failed = [c for c in run.checks if not c.passed]
        await alerts_.raise_(
            tx,
            "TrainingRejected",
            alerts.WARNING,
            model,
            0,
            f"run {run.number} of {model} rejected by its gate: "
            + "; ".join(f"{c.name}: {c.text}" for c in failed[:3]),
            {"run": run.name, "failed": [c.name for c in failed]},
            event=True,
        )
    else:
        await _raise_failed(tx, alerts_, run)
    _save(tx, row, run)
    await tx.audit(
        "FinishTrainingRun",
        run.name,
        before,
        run,
        {"state": Run.State.Name(run.state), "version": run.version, "error": run.error},
    )
    return run


async def _raise_failed(tx: Tx, alerts_: Alerts, run: Run) -> None:
    model = run.name.split("/")[1]
    await alerts_.raise_(
        tx,
        "TrainingFailed",
        alerts.WARNING,
        model,
        0,
        f"run {run.number} of {model} failed: {run.error}",
        {"run": run.name, "attempt": run.attempt},
        event=True,
    )


async def any_queued(session: AsyncSession) -> bool:
    query = select(TrainingRunRow.id).where(TrainingRunRow.state == QUEUED).limit(1)
    return (await session.execute(query)).first() is not None


async def any_expired(session: AsyncSession) -> bool:
    query = select(TrainingRunRow.id).where(
        TrainingRunRow.state == RUNNING, TrainingRunRow.lease_expire_us < now_us()
    )
    return (await session.execute(query.limit(1))).first() is not None


async def expire(tx: Tx, alerts_: Alerts) -> list[str]:
    """Runs whose trainer's lease ran out: FAILED and retried, or finished if their
    version was already registered."""
    rows = (
        (
            await tx.session.execute(
                select(TrainingRunRow)
                .where(TrainingRunRow.state == RUNNING, TrainingRunRow.lease_expire_us < now_us())
                .with_for_update()
            )
        )
        .scalars()
        .all()
    )
    touched = []
    for row in rows:
        run = Run.FromString(row.proto)
        before = Run()
        before.CopyFrom(run)
        gone = f"trainer {run.trainer} stopped answering (its lease expired)"
        if run.version:
            _finish(run, SUCCEEDED, "")
            run.error = f"{gone} after registering v{run.version}; the registry finished the run"
            await _after_success(tx, run)
        else:
            _finish(run, FAILED, gone)
            await _raise_failed(tx, alerts_, run)
            model = await tx.session.get(ModelRow, row.model_id)
            assert model is not None
            if run.attempt < MAX_ATTEMPTS:
                retry = Run(
                    trigger=tpb.TRAINING_TRIGGER_RETRY,
                    reasons=[*run.reasons, f"retry of {run.name}: {gone}"],
                    attempt=run.attempt + 1,
                    retry_of=run.name,
                )
                await _new(tx, model, retry)
        _save(tx, row, run)
        await tx.audit("ExpireTrainingRun", run.name, before, run, {"reason": gone})
        touched.append(run.name)
    return touched


# --- versions produced by runs --------------------------------------------------------


async def claim_version(tx: Tx, pipeline_run: str, model_id: str, number: int) -> None:
    """CreateVersion of a run's candidate: the run must be running and have none yet."""
    run_model, _ = parse_run_name(pipeline_run)
    if run_model != model_id:
        raise InvalidArgument(
            f"lineage.pipeline_run {pipeline_run} is a run of another model than '{model_id}'"
        )
    row = await _row(tx.session, pipeline_run, lock=True)
    run = Run.FromString(row.proto)
    if run.version:
        raise AlreadyExists(f"run {pipeline_run} already registered version {run.version}")
    if run.state != RUNNING:
        state = Run.State.Name(run.state).removeprefix("STATE_")
        raise FailedPrecondition(f"run {pipeline_run} is {state}: it registers no version now")
    run.version = number
    _save(tx, row, run)


async def _after_success(tx: Tx, run: Run) -> None:
    """Approve (auto) and start the policy's canary, or wait for a deployer (manual)."""
    model_id = run.name.split("/")[1]
    model = await catalog.model_row(tx.session, model_id)
    policy = await training_policies.of_model(tx.session, model)
    if policy is None or policy.approval == tpb.APPROVAL_MODE_MANUAL:
        run.canary_decision = (
            f"waiting for approval (liveml versions review {model_id} {run.version} --approve)"
        )
        return
    await catalog.review_version(
        tx,
        names.version_name(model_id, run.version),
        rpb.APPROVAL_STATE_APPROVED,
        f"passed the gate of {run.name}; the training policy approves automatically",
    )
    run.canary_decision = await start_canary(tx, model_id, run.version, policy.canary)
    run.canary_phase = (await rollouts.get(tx.session, f"models/{model_id}/rollout")).status.phase


async def on_approved(tx: Tx, version: rpb.Version) -> None:
    """A deployer approved a version a run produced under a manual policy: its canary."""
    pipeline_run = version.lineage.pipeline_run
    if not pipeline_run.startswith("models/"):
        return
    try:
        row = await _row(tx.session, pipeline_run, lock=True)
    except (InvalidArgument, NotFound):
        return
    run = Run.FromString(row.proto)
    if run.version != version.number or run.state != SUCCEEDED:
        return
    model = await catalog.model_row(tx.session, run.name.split("/")[1])
    policy = await training_policies.of_model(tx.session, model)
    canary = policy.canary if policy is not None else rpb.AnalysisPolicy()
    run.canary_decision = await start_canary(tx, model.name, version.number, canary)
    run.canary_phase = (await rollouts.get(tx.session, f"models/{model.name}/rollout")).status.phase
    _save(tx, row, run)


async def start_canary(tx: Tx, model_id: str, candidate: int, policy: rpb.AnalysisPolicy) -> str:
    """Give `candidate` the policy's canary against the version serving all the traffic
    (or all the traffic, when nothing serves yet); say what was done."""
    current = await rollouts.get(tx.session, f"models/{model_id}/rollout")
    serving = [t.version for t in current.targets if t.percent > 0]
    if not serving:
        after = rpb.Rollout(
            name=current.name, targets=[rpb.TrafficTarget(version=candidate, percent=100)]
        )
        await rollouts.update(tx, after, current.revision)
        return f"no version served: v{candidate} takes all the traffic"
    if len(serving) != 1 or current.status.phase in (
        rpb.AnalysisStatus.PHASE_PROGRESSING,
        rpb.AnalysisStatus.PHASE_PAUSED,
    ):
        return (
            "canary not started: the rollout is not one version at 100% "
            f"({', '.join(f'v{t.version} {t.percent}%' for t in current.targets)})"
        )
    analysis = rpb.AnalysisPolicy()
    analysis.CopyFrom(policy)
    if not analysis.steps:
        analysis.steps.extend(DEFAULT_STEPS)
    if not analysis.step_interval.ToNanoseconds():
        analysis.step_interval.FromNanoseconds(int(DEFAULT_STEP_SECONDS * 1e9))
    analysis.candidate_version = candidate
    first = analysis.steps[0]
    after = rpb.Rollout()
    after.CopyFrom(current)
    del after.targets[:]
    if first < 100:
        after.targets.add(version=serving[0], percent=100 - first)
    after.targets.add(version=candidate, percent=first)
    after.analysis.CopyFrom(analysis)
    if first >= 100:
        after.ClearField("analysis")
    await rollouts.update(tx, after, current.revision)
    return f"canary started: v{candidate} at {first}% against v{serving[0]}"


async def record_canary(tx: Tx, model_id: str, rollout: rpb.Rollout) -> None:
    """The controller decided on a canary: the run that produced the candidate says so."""
    candidate = rollout.status.candidate_version
    try:
        _, row = await catalog.version_row(tx.session, names.version_name(model_id, candidate))
    except (InvalidArgument, NotFound):
        return
    pipeline_run = catalog.version_proto(row).lineage.pipeline_run
    if not pipeline_run.startswith(f"models/{model_id}/trainingRuns/"):
        return
    try:
        run_row = await _row(tx.session, pipeline_run, lock=True)
    except (InvalidArgument, NotFound):
        return
    run = Run.FromString(run_row.proto)
    run.canary_phase = rollout.status.phase
    run.canary_decision = rollout.status.last_decision
    _save(tx, run_row, run)
