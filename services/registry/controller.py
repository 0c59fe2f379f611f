"""The rollout controller: walks canaries through their steps, promotes or rolls back,
and watches every served version for drift and missing workers.

One registry replica leads (leader.py); the others only keep the numbers their
/metrics page shows. Each tick the leader judges every progressing canary whose step
interval has passed: the candidate against the stable version over the same
windows, with at least the minimum requests each (callers' mistakes not counted).
Every decision lists every check, with its number or "no data". Too little data —
too few requests, or no data for a check the policy asked for (accuracy without
enough feedback, say) — counts an idle interval, and `max_idle_intervals` of them in
a row fail the canary (no data is a failure, never an endless wait, and never a
pass); so does a candidate that is not READY anywhere within its timeout. Every
decision is written in one transaction with the audit event that carries its
numbers and the alert it raises, fenced by the rollout revision it was made on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import select

from services.common import serving
from services.common.errors import Aborted, FailedPrecondition, InvalidArgument, ServiceError
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import alerts, catalog, names, rollouts, training_runs, windows, workers
from services.registry.alerts import Alerts
from services.registry.analysis import Limits, describe, judge, judged, numbers_of, tail
from services.registry.db import ModelRow, RolloutRow
from services.registry.leader import Lease
from services.registry.store import Store, Tx, now_us

log = logging.getLogger(__name__)

Phase = rpb.AnalysisStatus
CHAMPION = "champion"


def _share(rollout: rpb.Rollout, stable: int, candidate: int, weight: int) -> None:
    del rollout.targets[:]
    if weight < 100:
        rollout.targets.add(version=stable, percent=100 - weight)
    rollout.targets.add(version=candidate, percent=weight)


def _decided(rollout: rpb.Rollout, text: str) -> None:
    rollout.status.last_decision = text
    rollout.status.last_decision_time.FromMicroseconds(now_us())


class Controller:
    def __init__(
        self,
        store: Store,
        alerts_: Alerts,
        holder: str,
        *,
        tick_seconds: float = 1.0,
        lease_seconds: float = 5.0,
        monitor_window: float = 300.0,
        monitor_seconds: float = 5.0,
        keep_windows: float = 3600.0,
        drift_alert_psi: float = 0.25,
        accuracy_alert: tuple[float, int] = (0.1, 50),
        ready_alert_seconds: float = 60.0,
    ) -> None:
        self.store = store
        self.alerts = alerts_
        self.lease = Lease(store, "controller", holder, lease_seconds)
        self.tick_seconds = tick_seconds
        self.monitor_window = monitor_window
        self.monitor_seconds = monitor_seconds
        self.keep_windows = keep_windows
        self.drift_alert_psi = drift_alert_psi
        self.accuracy_alert_drop, self.accuracy_alert_feedback = accuracy_alert
        self._holdout: dict[tuple[str, int], float | None] = {}  # registered accuracy
        self.ready_alert_seconds = ready_alert_seconds
        # (model, candidate, step start) -> when the candidate was first seen READY then
        self._ready_since: dict[tuple[str, int, int], float] = {}
        # Since when a canary's candidate has been READY nowhere (by model and candidate),
        # across steps: the ready timeout counts from there, not from the canary's start.
        self._not_ready_since: dict[tuple[str, int], float] = {}
        self._leading_since = time.time()
        self._last_monitor = 0.0
        self._ticked = False
        self._last_prune = 0.0
        # model -> (rollout, per-version numbers over the monitor window), for /metrics.
        self.snapshot: dict[str, tuple[rpb.Rollout, dict[int, rpb.VersionMetrics]]] = {}
        self.decisions: dict[tuple[str, str], int] = {}
        self.firing: list[rpb.Alert] = []

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # one bad tick must not end the controller
                log.exception("rollout controller tick failed")
            await asyncio.sleep(self.tick_seconds)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.lease.release()

    async def tick(self) -> None:
        was = self.lease.held if self._ticked else None
        leader = await self.lease.hold()
        self._ticked = True
        if leader != was:
            log.info(
                "rollout controller %s: %s",
                self.lease.holder,
                "leading" if leader else "standing by",
            )
            if leader:
                self._leading_since = time.time()
        now = time.time()
        current = await self._rollouts()
        steps = {
            (model, r.status.candidate_version, r.status.step_start_time.ToMicroseconds())
            for model, r in current.items()
        }
        self._ready_since = {k: v for k, v in self._ready_since.items() if k in steps}
        candidates = {(model, r.status.candidate_version) for model, r in current.items()}
        self._not_ready_since = {k: v for k, v in self._not_ready_since.items() if k in candidates}
        if leader:
            for model, rollout in current.items():
                if rollout.status.phase == Phase.PHASE_PROGRESSING:
                    try:
                        await self._evaluate(model, rollout, now)
                    except (Aborted, FailedPrecondition, InvalidArgument) as exc:
                        log.info("canary of %s: decision dropped: %s", model, exc)
                    except ServiceError as exc:  # one model's trouble must not stall the rest
                        log.warning("canary of %s: %s", model, exc.message)
                    except Exception:
                        log.exception("canary of %s: evaluation failed", model)
        if now - self._last_monitor >= self.monitor_seconds:
            self._last_monitor = now
            await self._monitor(current, now, leader)
        if leader and now - self._last_prune >= min(60.0, self.keep_windows / 2):
            self._last_prune = now
            async with self.store.write_unversioned() as session:
                await windows.prune(session, self.keep_windows)

    async def _rollouts(self) -> dict[str, rpb.Rollout]:
        async with self.store.read() as session:
            rows = (
                await session.execute(
                    select(ModelRow.name, RolloutRow.proto).join(
                        RolloutRow, RolloutRow.model_id == ModelRow.id
                    )
                )
            ).all()
        return {name: rpb.Rollout.FromString(proto) for name, proto in rows}

    # --- canary analysis -----------------------------------------------------------------

    async def _evaluate(self, model: str, rollout: rpb.Rollout, now: float) -> None:
        status = rollout.status
        limits = Limits.of(rollout.analysis)
        stable, candidate = status.stable_version, status.candidate_version
        async with self.store.read() as session:
            ready = await windows.ready_workers(session, model)
        key = (model, candidate, status.step_start_time.ToMicroseconds())
        if not ready.get(candidate):
            # Never seen READY: since the canary began (or since this registry leads,
            # whichever is later: a new leader does not know); READY before (a worker
            # restarting, or all of them gone): since it stopped being READY.
            never = not any(k[:2] == (model, candidate) for k in self._ready_since)
            started = max(status.start_time.ToMicroseconds() / 1e6, self._leading_since)
            since = self._not_ready_since.setdefault((model, candidate), started if never else now)
            waited = now - since
            if waited > limits.ready_timeout:
                await self._rollback(
                    model,
                    rollout,
                    "ready_timeout",
                    f"candidate v{candidate} was not READY on any worker within "
                    f"{limits.ready_timeout:g} s",
                    {"ready_workers": 0, "waited_seconds": round(waited, 3)},
                )
            return
        self._not_ready_since.pop((model, candidate), None)
        # The step's interval counts from when the candidate could first take its share.
        ready_since = self._ready_since.setdefault(key, now)
        step_start = max(status.step_start_time.ToMicroseconds() / 1e6, ready_since)
        if now - step_start < limits.interval:
            return
        latency: dict[int, windows.Latency] = {}
        async with self.store.read() as session:
            measured = await windows.summarize(
                session, model, int(step_start * 1e6), latency=latency
            )
        s = measured.get(stable) or rpb.VersionMetrics(version=stable)
        c = measured.get(candidate) or rpb.VersionMetrics(version=candidate)
        numbers: dict[str, Any] = {"stable": {"version": stable, **numbers_of(s)}}
        numbers["candidate"] = {"version": candidate, **numbers_of(c)}
        step = limits.steps[status.step_index]
        checks = judge(limits, s, c, tail(latency.get(stable), latency.get(candidate)))
        numbers["checks"] = [check.as_dict() for check in checks]
        enough = min(judged(s), judged(c)) >= limits.min_requests
        breached = [check for check in checks if check.ok is False] if enough else []
        if breached:
            first = breached[0]
            rest = describe([check for check in checks if check is not first])
            why = f"{first.name}: {first.text}; the other checks: {rest}"
            await self._rollback(model, rollout, first.name, why, numbers)
            return
        missing = [check for check in checks if check.ok is None and check.required]
        if not enough or missing:
            shortages = []
            if not enough:
                shortages.append(
                    f"v{stable} had {judged(s)} and v{candidate} {judged(c)} requests, "
                    f"{limits.min_requests} needed each"
                )
            shortages += [f"{check.name}: no data ({check.text})" for check in missing]
            await self._idle(
                model,
                rollout,
                limits,
                numbers,
                "min_requests" if not enough else "no_data",
                f"too little data at {step}%: {'; '.join(shortages)}",
                describe(checks),
            )
            return
        summary = describe(checks)
        last = status.step_index + 1 >= len(limits.steps)
        following = 100 if last else limits.steps[status.step_index + 1]
        if following >= 100:
            await self.promote(model, rollout, "controller", f"passed {step}%: {summary}", numbers)
            return

        def advance(r: rpb.Rollout) -> None:
            _share(r, stable, candidate, following)
            r.status.step_index += 1
            r.status.idle_intervals = 0
            r.status.step_start_time.FromMicroseconds(now_us())
            _decided(r, f"{step}% → {following}%: {summary}")

        await self._decide(
            model,
            rollout,
            advance,
            "CanaryStep",
            {**numbers, "from_percent": step, "to_percent": following},
            alert=("CanaryStep", alerts.INFO, f"v{candidate} of {model}: {step}% → {following}%"),
        )

    async def _idle(
        self,
        model: str,
        rollout: rpb.Rollout,
        limits: Limits,
        numbers: dict[str, Any],
        breached: str,
        why: str,
        checks: str,
    ) -> None:
        """An interval without enough data; the `max_idle_intervals`-th in a row fails."""
        idle = rollout.status.idle_intervals + 1
        candidate = rollout.status.candidate_version
        if idle >= limits.max_idle_intervals:
            await self._rollback(
                model,
                rollout,
                breached,
                f"{why}, for {idle} intervals in a row (max {limits.max_idle_intervals}); "
                f"checks: {checks}",
                {**numbers, "idle_intervals": idle},
            )
            return

        def wait(r: rpb.Rollout) -> None:
            r.status.idle_intervals = idle
            r.status.step_start_time.FromMicroseconds(now_us())
            _decided(r, f"waiting ({idle}/{limits.max_idle_intervals}): {why}; checks: {checks}")

        await self._decide(
            model,
            rollout,
            wait,
            "CanaryWait",
            {**numbers, "idle_intervals": idle},
            alert=("CanaryWaiting", alerts.INFO, f"canary of v{candidate} is short of data"),
        )

    async def _decide(
        self,
        model: str,
        rollout: rpb.Rollout,
        change: Callable[[rpb.Rollout], None],
        action: str,
        details: dict[str, Any],
        *,
        actor: str = "controller",
        alert: tuple[str, int, str] | None = None,
        event: bool = True,
        more: Callable[[Tx], Any] | None = None,
    ) -> rpb.Rollout:
        if actor == "controller":  # which replica decided, when several share the database
            details = {**details, "controller": self.lease.holder}
        async with self.store.write(actor) as tx:
            after = await rollouts.transition(tx, model, rollout.revision, change, action, details)
            await training_runs.record_canary(tx, model, after)
            if alert is not None:
                kind, severity, summary = alert
                await self.alerts.raise_(
                    tx,
                    kind,
                    severity,
                    model,
                    after.status.candidate_version,
                    f"{summary} — {after.status.last_decision}",
                    details,
                    event=event,
                )
            if more is not None:
                await more(tx)
        self.decisions[(model, action)] = self.decisions.get((model, action), 0) + 1
        log.info("%s %s: %s", action, model, after.status.last_decision)
        return after

    async def _rollback(
        self,
        model: str,
        rollout: rpb.Rollout,
        breached: str,
        why: str,
        numbers: dict[str, Any],
        *,
        actor: str = "controller",
        phase: int = Phase.PHASE_ROLLED_BACK,
    ) -> rpb.Rollout:
        stable, candidate = rollout.status.stable_version, rollout.status.candidate_version

        def back(r: rpb.Rollout) -> None:
            del r.targets[:]
            r.targets.add(version=stable, percent=100)
            r.status.phase = phase  # type: ignore[assignment]
            _decided(r, f"rolled back to v{stable}: {why}")

        aborted = phase == Phase.PHASE_ABORTED
        return await self._decide(
            model,
            rollout,
            back,
            "CanaryAbort" if aborted else "CanaryRollback",
            {**numbers, "breached": breached, "reason": why},
            actor=actor,
            alert=(
                ("CanaryAborted", alerts.WARNING, f"canary of v{candidate} aborted")
                if aborted
                else (
                    "RolloutRolledBack",
                    alerts.CRITICAL,
                    f"v{candidate} of {model} rolled back ({breached})",
                )
            ),
            event=aborted,
        )

    async def promote(
        self,
        model: str,
        rollout: rpb.Rollout,
        actor: str,
        why: str,
        numbers: dict[str, Any],
    ) -> rpb.Rollout:
        """All traffic to the candidate; stages and the `champion` alias follow."""
        stable, candidate = rollout.status.stable_version, rollout.status.candidate_version

        def finish(r: rpb.Rollout) -> None:
            _share(r, stable, candidate, 100)
            r.status.phase = Phase.PHASE_PROMOTED
            _decided(r, f"promoted v{candidate}: {why}")

        async def stages(tx: Tx) -> None:
            stage = FieldMask(paths=["stage"])
            await catalog.update_version(
                tx,
                rpb.Version(name=names.version_name(model, candidate), stage=rpb.STAGE_PRODUCTION),
                stage,
            )
            if stable:
                await catalog.update_version(
                    tx,
                    rpb.Version(name=names.version_name(model, stable), stage=rpb.STAGE_ARCHIVED),
                    stage,
                )
            await catalog.set_alias(tx, f"models/{model}", CHAMPION, candidate)

        return await self._decide(
            model,
            rollout,
            finish,
            "CanaryPromote",
            numbers,
            actor=actor,
            alert=("CanaryPromoted", alerts.INFO, f"v{candidate} of {model} promoted"),
            more=stages,
        )

    # --- operators -------------------------------------------------------------------------

    async def control(self, name: str, action: int, reason: str, actor: str) -> rpb.Rollout:
        """Pause, resume, promote or abort a canary by hand."""
        model = names.rollout(name)
        async with self.store.read() as session:
            rollout = await rollouts.get(session, name)
        phase = rollout.status.phase
        live = (Phase.PHASE_PROGRESSING, Phase.PHASE_PAUSED)
        Action = rpb.ControlRolloutRequest
        if action not in (
            Action.ACTION_PAUSE,
            Action.ACTION_RESUME,
            Action.ACTION_PROMOTE,
            Action.ACTION_ABORT,
        ):
            raise InvalidArgument("action must be ACTION_PAUSE, _RESUME, _PROMOTE or _ABORT")
        verb = Action.Action.Name(action).removeprefix("ACTION_").lower()
        if phase not in live:
            state = Phase.Phase.Name(phase).removeprefix("PHASE_") if phase else "no canary"
            raise FailedPrecondition(
                f"rollout of '{model}' has no canary in progress to {verb} (it is {state})"
            )
        why = f"{verb} by {actor}" + (f": {reason}" if reason else "")
        details = {"reason": reason}
        if action == Action.ACTION_PROMOTE:
            return await self.promote(model, rollout, actor, why, details)
        if action == Action.ACTION_ABORT:
            return await self._rollback(
                model, rollout, "operator", why, details, actor=actor, phase=Phase.PHASE_ABORTED
            )
        if action == Action.ACTION_PAUSE and phase == Phase.PHASE_PAUSED:
            raise FailedPrecondition(f"the canary of '{model}' is already paused")
        if action == Action.ACTION_RESUME and phase == Phase.PHASE_PROGRESSING:
            raise FailedPrecondition(f"the canary of '{model}' is not paused")

        def hold(r: rpb.Rollout) -> None:
            pausing = action == Action.ACTION_PAUSE
            r.status.phase = Phase.PHASE_PAUSED if pausing else Phase.PHASE_PROGRESSING
            r.status.step_start_time.FromMicroseconds(now_us())
            _decided(r, why)

        return await self._decide(
            model,
            rollout,
            hold,
            "CanaryPause" if action == Action.ACTION_PAUSE else "CanaryResume",
            details,
            actor=actor,
            alert=(
                "CanaryPaused" if action == Action.ACTION_PAUSE else "CanaryResumed",
                alerts.INFO,
                f"canary of v{rollout.status.candidate_version} {verb}d by {actor}",
            ),
        )

    # --- monitoring ------------------------------------------------------------------------

    async def _holdout_accuracy(self, model: str, version: int) -> float | None:
        key = (model, version)
        if key not in self._holdout:
            try:
                async with self.store.read() as session:
                    _, row = await catalog.version_row(session, names.version_name(model, version))
                self._holdout[key] = catalog.version_proto(row).metrics.get("holdout_accuracy")
            except ServiceError:
                return None
        return self._holdout[key]

    async def _monitor(self, current: dict[str, rpb.Rollout], now: float, leader: bool) -> None:
        since = int((now - self.monitor_window) * 1e6)
        snapshot = {}
        for model, rollout in current.items():
            async with self.store.read() as session:
                measured = await windows.summarize(session, model, since)
            snapshot[model] = (rollout, measured)
            if leader:
                try:
                    await self._conditions(model, rollout, measured, now)
                except ServiceError as exc:
                    log.warning("monitoring %s: %s", model, exc.message)
        self.snapshot = snapshot
        self.firing = await self.alerts.firing()

    async def _conditions(
        self,
        model: str,
        rollout: rpb.Rollout,
        measured: dict[int, rpb.VersionMetrics],
        now: float,
    ) -> None:
        raise_: list[tuple[str, int, int, str, dict[str, Any]]] = []
        resolve: list[tuple[str, int, str]] = []
        for version, m in measured.items():
            if not m.drift_psi:
                continue
            if m.max_drift_psi > self.drift_alert_psi:
                raise_.append(
                    (
                        "DriftHigh",
                        alerts.WARNING,
                        version,
                        f"v{version} of {model}: input drift PSI {m.max_drift_psi:.3f} on "
                        f"{m.worst_feature} (alert above {self.drift_alert_psi:g})",
                        {"psi": dict(m.drift_psi), "worst_feature": m.worst_feature},
                    )
                )
            else:
                resolve.append(("DriftHigh", version, f"PSI {m.max_drift_psi:.3f}"))
        for target in rollout.targets:
            live = measured.get(target.version)
            if target.percent <= 0 or live is None:
                continue
            if live.feedback_total < self.accuracy_alert_feedback:
                continue
            registered = await self._holdout_accuracy(model, target.version)
            if registered is None:
                continue
            floor = registered - self.accuracy_alert_drop
            if live.accuracy < floor:
                raise_.append(
                    (
                        "AccuracyDrop",
                        alerts.WARNING,
                        target.version,
                        f"v{target.version} of {model}: live accuracy {live.accuracy:.3f} over "
                        f"{live.feedback_total} feedback labels, registered with "
                        f"{registered:.3f} (alert below {floor:.3f})",
                        {"accuracy": live.accuracy, "holdout_accuracy": registered},
                    )
                )
            else:
                resolve.append(("AccuracyDrop", target.version, f"accuracy {live.accuracy:.3f}"))
        settled = now - rollout.update_time.ToMicroseconds() / 1e6 > self.ready_alert_seconds
        held_on = {
            h.version: h.held_on
            for h in serving.split(
                rollouts.targets_of(rollout),
                rollouts.fallback_of(rollout),
                {v for v, m in measured.items() if m.ready_workers},
            ).held
        }
        for target in rollout.targets:
            if target.percent <= 0:
                continue
            ready = measured.get(target.version, rpb.VersionMetrics()).ready_workers
            if ready == 0 and settled:
                async with self.store.read() as session:
                    why = await workers.why_not_ready(session, model, target.version)
                takers = held_on.get(target.version, ())
                where = (
                    f"its {target.percent}% is held on " + ", ".join(f"v{v}" for v in takers)
                    if takers
                    else "its requests fail"
                )
                raise_.append(
                    (
                        "NoReadyWorker",
                        alerts.CRITICAL,
                        target.version,
                        f"v{target.version} of {model} has {target.percent}% of the traffic "
                        f"and no READY worker ({why}); {where}",
                        {"percent": target.percent, "why": why, "held_on": list(takers)},
                    )
                )
            elif ready:
                resolve.append(("NoReadyWorker", target.version, f"{ready} READY worker(s)"))
        firing = await self.alerts.firing_keys(model)
        served = {t.version for t in rollout.targets if t.percent > 0}
        watched = served | {m.version for m in rollout.mirrors} | set(rollout.pinned)
        for key in firing:  # versions the rollout moved away from settle their alerts
            kind, _, number = key.rpartition("/")
            kind = kind.rsplit("/", 1)[0]
            version = int(number)
            if (kind in ("NoReadyWorker", "AccuracyDrop") and version not in served) or (
                kind == "DriftHigh" and version not in watched
            ):
                resolve.append((kind, version, "no longer served"))
        raise_ = [r for r in raise_ if alerts.fingerprint(r[0], model, r[2]) not in firing]
        resolve = [r for r in resolve if alerts.fingerprint(r[0], model, r[1]) in firing]
        if not raise_ and not resolve:
            return
        async with self.store.write("controller") as tx:
            for kind, severity, version, summary, details in raise_:
                await self.alerts.raise_(tx, kind, severity, model, version, summary, details)
            for kind, version, why in resolve:
                await self.alerts.resolve(tx, kind, model, version, why)
