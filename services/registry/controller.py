"""The rollout controller's loop: one registry replica leads, and each tick it judges
every progressing canary whose step interval has passed and applies the decision;
every few ticks it looks at every served version for alerts, and prunes old windows.

One registry replica leads (leader.py); the others only keep the numbers their
/metrics page shows. What a step's numbers decide is judge.py's (its checks
analysis.py's); what the controller keeps is the timing judge.py cannot know: when
the candidate was first READY in this step (its interval counts from there), and
since when it has been READY nowhere (a candidate not READY anywhere within its
timeout fails the canary). Every decision is written in one transaction with the
audit event that carries its numbers and the alert it raises, fenced by the rollout
revision it was made on (decisions.py). Operators' pause, resume, promote and abort
are operator_actions.py's; the alerting conditions monitor.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from services.common.errors import Aborted, FailedPrecondition, InvalidArgument, ServiceError
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import alerts, judge, operator_actions, rollouts, windows
from services.registry.alerts import Alerts
from services.registry.analysis import Limits
from services.registry.decisions import Decider, Phase, decided, share
from services.registry.leader import Lease
from services.registry.monitor import Monitor
from services.registry.store import Store, now_us

log = logging.getLogger(__name__)


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
        self.decider = Decider(store, alerts_, holder)
        self.monitor = Monitor(
            store,
            alerts_,
            window=monitor_window,
            drift_alert_psi=drift_alert_psi,
            accuracy_alert=accuracy_alert,
            ready_alert_seconds=ready_alert_seconds,
        )
        self.tick_seconds = tick_seconds
        self.monitor_seconds = monitor_seconds
        self.keep_windows = keep_windows
        # (model, candidate, step start) -> when the candidate was first seen READY then
        self._ready_since: dict[tuple[str, int, int], float] = {}
        # Since when a canary's candidate has been READY nowhere (by model and candidate),
        # across steps: the ready timeout counts from there, not from the canary's start.
        self._not_ready_since: dict[tuple[str, int], float] = {}
        self._leading_since = time.time()
        self._last_monitor = 0.0
        self._ticked = False
        self._last_prune = 0.0

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
            await self.monitor.look(current, now, leader)
        if leader and now - self._last_prune >= min(60.0, self.keep_windows / 2):
            self._last_prune = now
            async with self.store.write_unversioned() as session:
                await windows.prune(session, self.keep_windows)

    async def _rollouts(self) -> dict[str, rpb.Rollout]:
        async with self.store.read() as session:
            return await rollouts.all_by_model(session)

    # --- canary analysis -----------------------------------------------------------------

    async def _evaluate(self, model: str, rollout: rpb.Rollout, now: float) -> None:
        status = rollout.status
        limits = Limits.of(rollout.analysis)
        candidate = status.candidate_version
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
            timed_out = judge.not_ready(limits, candidate, now - since)
            if timed_out is not None:
                await self._apply(model, rollout, timed_out)
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
        await self._apply(model, rollout, judge.step(limits, status, measured, latency))

    async def _apply(self, model: str, rollout: rpb.Rollout, decision: judge.Decision) -> None:
        d = decision
        stable, candidate = rollout.status.stable_version, rollout.status.candidate_version
        if d.kind == "rollback":
            await self.decider.rollback(model, rollout, d.breached, d.why, d.numbers)
            return
        if d.kind == "promote":
            await self.decider.promote(model, rollout, "controller", d.why, d.numbers)
            return
        if d.kind == "wait":

            def wait(r: rpb.Rollout) -> None:
                r.status.idle_intervals = d.idle_intervals
                r.status.step_start_time.FromMicroseconds(now_us())
                decided(r, d.why)

            await self.decider.decide(
                model,
                rollout,
                wait,
                "CanaryWait",
                d.numbers,
                alert=("CanaryWaiting", alerts.INFO, f"canary of v{candidate} is short of data"),
            )
            return

        def advance(r: rpb.Rollout) -> None:
            share(r, stable, candidate, d.to_percent)
            r.status.step_index += 1
            r.status.idle_intervals = 0
            r.status.step_start_time.FromMicroseconds(now_us())
            decided(r, d.why)

        await self.decider.decide(
            model,
            rollout,
            advance,
            "CanaryStep",
            d.numbers,
            alert=(
                "CanaryStep",
                alerts.INFO,
                f"v{candidate} of {model}: {d.from_percent}% → {d.to_percent}%",
            ),
        )

    # --- what others read and ask --------------------------------------------------------

    async def control(self, name: str, action: int, reason: str, actor: str) -> rpb.Rollout:
        """Pause, resume, promote or abort a canary by hand (operator_actions.py)."""
        return await operator_actions.control(self.store, self.decider, name, action, reason, actor)

    @property
    def decisions(self) -> dict[tuple[str, str], int]:
        return self.decider.counts

    @property
    def snapshot(self) -> dict[str, tuple[rpb.Rollout, dict[int, rpb.VersionMetrics]]]:
        return self.monitor.snapshot

    @property
    def firing(self) -> list[rpb.Alert]:
        return self.monitor.firing
