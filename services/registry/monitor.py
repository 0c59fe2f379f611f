"""Watching every served version: the conditions that raise and resolve alerts
(`DriftHigh`, `AccuracyDrop`, `NoReadyWorker`), and the numbers /metrics shows.

Every replica sums the monitor window for its own /metrics page; only the leader
raises and resolves, so one condition is one alert however many replicas run. An
alert already FIRING is not raised again and one not firing is not resolved
(alerts.py keeps them); a version the rollout moved away from settles its alerts.
"""

from __future__ import annotations

import logging
from typing import Any

from services.common import serving
from services.common.errors import ServiceError
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import alerts, catalog, names, rollouts, windows, workers
from services.registry.alerts import Alerts
from services.registry.store import Store

# The name these lines carried before the controller was split: log filters keep matching.
log = logging.getLogger("services.registry.controller")


class Monitor:
    def __init__(
        self,
        store: Store,
        alerts_: Alerts,
        *,
        window: float,
        drift_alert_psi: float,
        accuracy_alert: tuple[float, int],
        ready_alert_seconds: float,
    ) -> None:
        self.store = store
        self.alerts = alerts_
        self.window = window
        self.drift_alert_psi = drift_alert_psi
        self.accuracy_alert_drop, self.accuracy_alert_feedback = accuracy_alert
        self.ready_alert_seconds = ready_alert_seconds
        self._holdout: dict[tuple[str, int], float | None] = {}  # registered accuracy
        # model -> (rollout, per-version numbers over the monitor window), for /metrics.
        self.snapshot: dict[str, tuple[rpb.Rollout, dict[int, rpb.VersionMetrics]]] = {}
        self.firing: list[rpb.Alert] = []

    async def look(self, current: dict[str, rpb.Rollout], now: float, leader: bool) -> None:
        """Sum the window of every model; the leader also raises and resolves."""
        since = int((now - self.window) * 1e6)
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
