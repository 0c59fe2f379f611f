"""The rollout controller: walks canaries through their steps, promotes or rolls back,
and watches every served version for drift and missing workers.

One registry replica leads (leader.py); the others only keep the numbers their
/metrics page shows. Each tick the leader judges every progressing canary whose step
interval has passed: the candidate against the stable version over the same
windows, with at least the minimum requests each. Too little data counts an idle
interval, and too many of them fail the canary (no data is a failure, never an
endless wait); so does a candidate that is not READY anywhere within its timeout.
Every decision is written in one transaction with the audit event that carries its
numbers and the alert it raises, fenced by the rollout revision it was made on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import select

from services.common.errors import Aborted, FailedPrecondition, InvalidArgument, ServiceError
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import alerts, catalog, names, rollouts, windows
from services.registry.alerts import Alerts
from services.registry.db import ModelRow, RolloutRow
from services.registry.leader import Lease
from services.registry.store import Store, Tx, now_us

log = logging.getLogger(__name__)

Phase = rpb.AnalysisStatus
CHAMPION = "champion"


@dataclass(frozen=True)
class Limits:
    """An analysis policy with the defaults filled in for the fields left at zero."""

    steps: tuple[int, ...]
    interval: float
    min_requests: int
    max_error_rate_delta: float
    max_p99_latency_ratio: float
    max_accuracy_drop: float
    max_drift_psi: float
    max_fairness_gap: float
    ready_timeout: float
    max_idle_intervals: int
    min_feedback: int

    @classmethod
    def of(cls, policy: rpb.AnalysisPolicy) -> Limits:
        def seconds(d: Any, default: float) -> float:
            value = d.ToNanoseconds() / 1e9
            return value if value > 0 else default

        min_requests = policy.min_requests or 50
        return cls(
            steps=tuple(policy.steps),
            interval=seconds(policy.step_interval, 60.0),
            min_requests=min_requests,
            max_error_rate_delta=policy.max_error_rate_delta or 0.02,
            max_p99_latency_ratio=policy.max_p99_latency_ratio or 1.5,
            max_accuracy_drop=policy.max_accuracy_drop or 0.05,
            max_drift_psi=policy.max_drift_psi or 0.25,
            max_fairness_gap=policy.max_fairness_gap,
            ready_timeout=seconds(policy.ready_timeout, 300.0),
            max_idle_intervals=policy.max_idle_intervals or 3,
            min_feedback=max(10, min_requests // 5),
        )


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    limit: float
    ok: bool
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "value": round(self.value, 6),
            "limit": self.limit,
            "ok": self.ok,
        }


def judge(limits: Limits, stable: rpb.VersionMetrics, candidate: rpb.VersionMetrics) -> list[Check]:
    """The thresholds, candidate against stable over the same windows."""
    checks = []
    delta = candidate.error_rate - stable.error_rate
    checks.append(
        Check(
            "max_error_rate_delta",
            delta,
            limits.max_error_rate_delta,
            delta <= limits.max_error_rate_delta,
            f"error rate {candidate.error_rate:.3f} vs {stable.error_rate:.3f} "
            f"(delta {delta:+.3f}, max {limits.max_error_rate_delta:g})",
        )
    )
    if stable.p99_seconds > 0 and candidate.p99_seconds > 0:
        ratio = candidate.p99_seconds / stable.p99_seconds
        checks.append(
            Check(
                "max_p99_latency_ratio",
                ratio,
                limits.max_p99_latency_ratio,
                ratio <= limits.max_p99_latency_ratio,
                f"p99 {candidate.p99_seconds * 1e3:.2f} ms vs {stable.p99_seconds * 1e3:.2f} ms "
                f"(ratio {ratio:.2f}, max {limits.max_p99_latency_ratio:g})",
            )
        )
    if min(stable.feedback_total, candidate.feedback_total) >= limits.min_feedback:
        drop = stable.accuracy - candidate.accuracy
        checks.append(
            Check(
                "max_accuracy_drop",
                drop,
                limits.max_accuracy_drop,
                drop <= limits.max_accuracy_drop,
                f"accuracy {candidate.accuracy:.3f} vs {stable.accuracy:.3f} "
                f"(drop {drop:+.3f}, max {limits.max_accuracy_drop:g})",
            )
        )
    if candidate.drift_psi:
        checks.append(
            Check(
                "max_drift_psi",
                candidate.max_drift_psi,
                limits.max_drift_psi,
                candidate.max_drift_psi <= limits.max_drift_psi,
                f"drift PSI {candidate.max_drift_psi:.3f} on {candidate.worst_feature} "
                f"(max {limits.max_drift_psi:g})",
            )
        )
    if limits.max_fairness_gap > 0 and len(candidate.groups) >= 2:
        checks.append(
            Check(
                "max_fairness_gap",
                candidate.fairness_gap,
                limits.max_fairness_gap,
                candidate.fairness_gap <= limits.max_fairness_gap,
                f"fairness gap {candidate.fairness_gap:.3f} (max {limits.max_fairness_gap:g})",
            )
        )
    return checks


def _numbers(m: rpb.VersionMetrics) -> dict[str, Any]:
    return {
        "requests": m.requests,
        "errors": m.errors,
        "error_rate": round(m.error_rate, 6),
        "p99_ms": round(m.p99_seconds * 1e3, 3),
        "feedback": m.feedback_total,
        "accuracy": round(m.accuracy, 6),
        "max_drift_psi": round(m.max_drift_psi, 6),
        "fairness_gap": round(m.fairness_gap, 6),
    }


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
        self.ready_alert_seconds = ready_alert_seconds
        self._ready_since: dict[tuple[str, int], float] = {}
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
        now = time.time()
        current = await self._rollouts()
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
        key = (model, candidate)
        if not ready.get(candidate):
            self._ready_since.pop(key, None)
            waited = now - status.start_time.ToMicroseconds() / 1e6
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
        ready_since = self._ready_since.setdefault(key, now)
        step_start = max(status.step_start_time.ToMicroseconds() / 1e6, ready_since)
        if now - step_start < limits.interval:
            return
        async with self.store.read() as session:
            measured = await windows.summarize(session, model, int(step_start * 1e6))
        s = measured.get(stable) or rpb.VersionMetrics(version=stable)
        c = measured.get(candidate) or rpb.VersionMetrics(version=candidate)
        numbers: dict[str, Any] = {"stable": {"version": stable, **_numbers(s)}}
        numbers["candidate"] = {"version": candidate, **_numbers(c)}
        step = limits.steps[status.step_index]
        if min(s.requests, c.requests) < limits.min_requests:
            idle = status.idle_intervals + 1
            why = (
                f"too little data at {step}%: v{stable} had {s.requests} and v{candidate} "
                f"{c.requests} requests, {limits.min_requests} needed each"
            )
            if idle > limits.max_idle_intervals:
                await self._rollback(
                    model,
                    rollout,
                    "min_requests",
                    f"{why}, for {idle} intervals (max {limits.max_idle_intervals})",
                    {**numbers, "idle_intervals": idle},
                )
                return

            def wait(r: rpb.Rollout) -> None:
                r.status.idle_intervals = idle
                r.status.step_start_time.FromMicroseconds(now_us())
                _decided(r, f"waiting ({idle}/{limits.max_idle_intervals}): {why}")

            await self._decide(
                model,
                rollout,
                wait,
                "CanaryWait",
                {**numbers, "idle_intervals": idle},
                alert=("CanaryWaiting", alerts.INFO, f"canary of v{candidate} is short of data"),
            )
            return
        checks = judge(limits, s, c)
        numbers["checks"] = [check.as_dict() for check in checks]
        breached = [check for check in checks if not check.ok]
        if breached:
            first = breached[0]
            await self._rollback(model, rollout, first.name, f"{first.name}: {first.text}", numbers)
            return
        summary = "; ".join(check.text for check in checks)
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
        settled = now - rollout.update_time.ToMicroseconds() / 1e6 > self.ready_alert_seconds
        for target in rollout.targets:
            if target.percent <= 0:
                continue
            ready = measured.get(target.version, rpb.VersionMetrics()).ready_workers
            if ready == 0 and settled:
                raise_.append(
                    (
                        "NoReadyWorker",
                        alerts.CRITICAL,
                        target.version,
                        f"v{target.version} of {model} has {target.percent}% of the traffic "
                        "and no READY worker",
                        {"percent": target.percent},
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
            if (kind == "NoReadyWorker" and version not in served) or (
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
