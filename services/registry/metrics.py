"""The registry's Prometheus metrics (`liveml_rollout_*`, `liveml_version_*`, `liveml_alerts_*`,
`liveml_registry_*`).

Computed at scrape time from the controller's last look at the reported windows
(every replica keeps one, leader or not), so the numbers Prometheus alerts on are
the ones the controller decides on.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry.controller import Controller
from services.registry.lease_sweep import LeaseSweep

_CONTROLLERS: weakref.WeakSet[Controller] = weakref.WeakSet()
_SWEEPS: weakref.WeakSet[LeaseSweep] = weakref.WeakSet()
PHASES = [p for p in rpb.AnalysisStatus.Phase.keys() if p != "PHASE_UNSPECIFIED"]  # noqa: SIM118


def watch(controller: Controller, sweep: LeaseSweep | None = None) -> None:
    _CONTROLLERS.add(controller)
    if sweep is not None:
        _SWEEPS.add(sweep)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class _Collector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        mv = ["model", "version"]
        target = _gauge(
            "liveml_rollout_target_percent",
            "Desired traffic share per version (role target or mirror).",
            [*mv, "role"],
        )
        phase = _gauge(
            "liveml_rollout_phase", "1 for a canary's current phase.", ["model", "phase"]
        )
        decisions = CounterMetricFamily(
            "liveml_rollout_decisions",
            "Controller and operator decisions on canaries (by this replica).",
            labels=["model", "decision"],
        )
        rollbacks = CounterMetricFamily(
            "liveml_rollout_rollbacks", "Canaries rolled back automatically.", labels=["model"]
        )
        ready = _gauge("liveml_version_ready_workers", "Workers with the version READY.", mv)
        errors = _gauge("liveml_version_error_rate", "Failed share of requests.", mv)
        p99 = _gauge("liveml_version_p99_seconds", "p99 latency seen by clients.", mv)
        accuracy = _gauge("liveml_version_accuracy", "Share of feedback that was correct.", mv)
        psi = _gauge(
            "liveml_version_drift_psi", "PSI against the reference, per feature.", [*mv, "feature"]
        )
        psi_max = _gauge("liveml_version_drift_psi_max", "PSI of the worst feature.", mv)
        fairness = _gauge(
            "liveml_version_fairness_gap", "Spread of positive-prediction rates across groups.", mv
        )
        firing = _gauge(
            "liveml_alerts_firing", "1 per firing alert.", ["alert", "model", "version", "severity"]
        )
        for controller in list(_CONTROLLERS):
            counted = {m for m, d in controller.decisions if d == "CanaryRollback"}
            for model in controller.snapshot:
                if model not in counted:  # a counter that exists before its first increment
                    rollbacks.add_metric([model], 0)
            for a in controller.firing:
                severity = rpb.Alert.Severity.Name(a.severity).removeprefix("SEVERITY_").lower()
                firing.add_metric([a.alert, a.model, str(a.version), severity], 1)
            for (model, decision), count in list(controller.decisions.items()):
                name = decision.removeprefix("Canary").lower()
                decisions.add_metric([model, name], count)
                if decision == "CanaryRollback":
                    rollbacks.add_metric([model], count)
            for model, (rollout, measured) in list(controller.snapshot.items()):
                for t in rollout.targets:
                    target.add_metric([model, str(t.version), "target"], t.percent)
                for m in rollout.mirrors:
                    target.add_metric([model, str(m.version), "mirror"], m.percent)
                if rollout.status.phase:
                    current = rpb.AnalysisStatus.Phase.Name(rollout.status.phase)
                    for name in PHASES:
                        phase.add_metric(
                            [model, name.removeprefix("PHASE_")], float(name == current)
                        )
                for version, v in measured.items():
                    labels = [model, str(version)]
                    ready.add_metric(labels, v.ready_workers)
                    if v.requests:
                        errors.add_metric(labels, v.error_rate)
                        p99.add_metric(labels, v.p99_seconds)
                    if v.feedback_total:
                        accuracy.add_metric(labels, v.accuracy)
                    for feature, value in v.drift_psi.items():
                        psi.add_metric([*labels, feature], value)
                    if v.drift_psi:
                        psi_max.add_metric(labels, v.max_drift_psi)
                    if len(v.groups) >= 2:
                        fairness.add_metric(labels, v.fairness_gap)
        yield from (target, phase, decisions, rollbacks, ready, errors, p99, accuracy, psi)
        yield from (psi_max, fairness, firing)
        held = CounterMetricFamily(
            "liveml_registry_lease_sweeps_held",
            "Lease sweeps that judged no lease: the registry was stalled (every lease "
            "renewed) or behind (its event loop busy 90% of the interval).",
            labels=["reason"],
        )
        sweeps = list(_SWEEPS)
        held.add_metric(["stalled"], sum(s.renewals for s in sweeps))
        held.add_metric(["behind"], sum(s.postponed for s in sweeps))
        yield held


REGISTRY.register(_Collector())
