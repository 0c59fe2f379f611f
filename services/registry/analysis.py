"""Judging a canary: an analysis policy's limits, and every check of a candidate
against the stable version over the same windows.

A check either has its number (ok or breached) or says "no data" and what was
missing; none is ever left out. The checks a policy names explicitly are required:
without their data a step cannot pass. Requests refused for the caller's mistake
say nothing about a version and are not counted.

Tail latency is compared like with like. A canary's candidate has a fraction of the
stable version's requests, and the p99 of a few dozen requests is their slowest
one, while the stable side's is a real 99th percentile: on a busy machine one
scheduling hiccup then fails a candidate that is the very same model. So both sides
are read at the same quantile, the highest that leaves at least TAIL_SAMPLES
requests above it on the smaller side (p99 once each side has 500).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry.windows import MIN_GROUP_PREDICTIONS, Latency, quantile

TAIL_SAMPLES = 5  # requests above the compared quantile, on the side with fewer
MIN_LATENCY_SAMPLES = 20  # below this, a tail says nothing


@dataclass(frozen=True)
class Tail:
    """Both sides' latency at one quantile."""

    quantile: float
    stable: float
    candidate: float
    samples: int  # answered requests on the side with fewer


def tail(stable: Latency | None, candidate: Latency | None) -> Tail | None:
    """The comparison of the two latency histograms, or None with too few samples (then
    `judge` reads the windows' p99s, if each side has MIN_LATENCY_SAMPLES requests)."""
    if stable is None or candidate is None:
        return None
    n = min(sum(stable[1]), sum(candidate[1]))
    if n < MIN_LATENCY_SAMPLES:
        return None
    q = min(0.99, 1 - TAIL_SAMPLES / n)
    return Tail(q, quantile(*stable, q), quantile(*candidate, q), n)


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
    # Checks the policy asked for explicitly: without data for one, a step cannot pass.
    required: frozenset[str] = frozenset()

    @classmethod
    def of(cls, policy: rpb.AnalysisPolicy) -> Limits:
        def seconds(d: Any, default: float) -> float:
            value = d.ToNanoseconds() / 1e9
            return value if value > 0 else default

        min_requests = policy.min_requests or 50
        asked = {
            "max_p99_latency_ratio": policy.max_p99_latency_ratio > 0,
            "max_accuracy_drop": policy.max_accuracy_drop > 0 or policy.min_feedback > 0,
            "max_drift_psi": policy.max_drift_psi > 0,
            "max_fairness_gap": policy.max_fairness_gap > 0,
        }
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
            min_feedback=policy.min_feedback or max(10, min_requests // 5),
            required=frozenset(name for name, yes in asked.items() if yes),
        )


@dataclass(frozen=True)
class Check:
    """One threshold's verdict: ok True/False, or None for "no data" (then `text` says
    what was missing)."""

    name: str
    value: float | None
    limit: float
    ok: bool | None
    text: str
    required: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "value": None if self.value is None else round(self.value, 6),
            "limit": self.limit,
            "ok": self.ok,
            "required": self.required,
            **({"no_data": self.text} if self.ok is None else {}),
        }


def judged(m: rpb.VersionMetrics) -> int:
    """Requests that say something about the version: callers' mistakes left out."""
    return m.requests - m.client_errors


def judge(
    limits: Limits,
    stable: rpb.VersionMetrics,
    candidate: rpb.VersionMetrics,
    latency: Tail | None = None,
) -> list[Check]:
    """Every threshold, candidate against stable over the same windows; one without the
    data it needs is "no data", never left out. `latency`: the tail comparison (without
    it, the p99 numbers are compared as they are)."""

    def check(name: str, value: float | None, limit: float, text: str) -> Check:
        ok = None if value is None else value <= limit
        return Check(name, value, limit, ok, text, name in limits.required)

    delta = candidate.error_rate - stable.error_rate
    checks = [
        check(
            "max_error_rate_delta",
            delta,
            limits.max_error_rate_delta,
            f"error rate {candidate.error_rate:.3f} vs {stable.error_rate:.3f} "
            f"(delta {delta:+.3f}, max {limits.max_error_rate_delta:g})",
        )
    ]
    if (
        latency is None
        and stable.p99_seconds > 0
        and candidate.p99_seconds > 0
        # The p99 of a dozen requests is their slowest one, one hiccup of a busy box.
        and min(judged(stable), judged(candidate)) >= MIN_LATENCY_SAMPLES
    ):
        latency = Tail(0.99, stable.p99_seconds, candidate.p99_seconds, 0)
    if latency is not None and latency.stable > 0 and latency.candidate > 0:
        ratio = latency.candidate / latency.stable
        at = f"p{latency.quantile * 100:.3g}"
        over = f" over {latency.samples}+ requests each" if latency.samples else ""
        checks.append(
            check(
                "max_p99_latency_ratio",
                ratio,
                limits.max_p99_latency_ratio,
                f"{at} {latency.candidate * 1e3:.2f} ms vs {latency.stable * 1e3:.2f} ms{over} "
                f"(ratio {ratio:.2f}, max {limits.max_p99_latency_ratio:g})",
            )
        )
    else:
        checks.append(
            check(
                "max_p99_latency_ratio",
                None,
                limits.max_p99_latency_ratio,
                f"fewer than {MIN_LATENCY_SAMPLES} answered requests each",
            )
        )
    if min(stable.feedback_total, candidate.feedback_total) >= limits.min_feedback:
        drop = stable.accuracy - candidate.accuracy
        checks.append(
            check(
                "max_accuracy_drop",
                drop,
                limits.max_accuracy_drop,
                f"accuracy {candidate.accuracy:.3f} vs {stable.accuracy:.3f} "
                + (
                    f"(drop {drop:.3f}, max {limits.max_accuracy_drop:g})"
                    if drop > 0
                    else f"(no drop: {-drop:+.3f}, max drop {limits.max_accuracy_drop:g})"
                ),
            )
        )
    else:
        checks.append(
            check(
                "max_accuracy_drop",
                None,
                limits.max_accuracy_drop,
                f"{limits.min_feedback} feedback labels needed each, v{stable.version} had "
                f"{stable.feedback_total} and v{candidate.version} {candidate.feedback_total}",
            )
        )
    if candidate.drift_psi:
        checks.append(
            check(
                "max_drift_psi",
                candidate.max_drift_psi,
                limits.max_drift_psi,
                f"drift PSI {candidate.max_drift_psi:.3f} on {candidate.worst_feature} "
                f"(max {limits.max_drift_psi:g})",
            )
        )
    else:
        checks.append(
            check(
                "max_drift_psi",
                None,
                limits.max_drift_psi,
                "no reference statistics, or too few samples of the candidate's inputs",
            )
        )
    if limits.max_fairness_gap > 0:
        groups = sum(1 for g in candidate.groups if g.predictions >= MIN_GROUP_PREDICTIONS)
        checks.append(
            check(
                "max_fairness_gap",
                candidate.fairness_gap if groups >= 2 else None,
                limits.max_fairness_gap,
                f"fairness gap {candidate.fairness_gap:.3f} (max {limits.max_fairness_gap:g})"
                if groups >= 2
                else f"fewer than two groups with {MIN_GROUP_PREDICTIONS} predictions",
            )
        )
    return checks


def describe(checks: list[Check]) -> str:
    """Every check in words: its number, or why there is none."""
    return "; ".join(
        c.text if c.ok is not None else f"{_LABELS.get(c.name, c.name)}: no data ({c.text})"
        for c in checks
    )


_LABELS = {
    "max_p99_latency_ratio": "tail latency",
    "max_accuracy_drop": "accuracy",
    "max_drift_psi": "drift PSI",
    "max_fairness_gap": "fairness gap",
}


def numbers_of(m: rpb.VersionMetrics) -> dict[str, Any]:
    return {
        "requests": m.requests,
        "errors": m.errors,
        "client_errors": m.client_errors,
        "error_rate": round(m.error_rate, 6),
        "p99_ms": round(m.p99_seconds * 1e3, 3),
        "feedback": m.feedback_total,
        "accuracy": round(m.accuracy, 6),
        "max_drift_psi": round(m.max_drift_psi, 6),
        "fairness_gap": round(m.fairness_gap, 6),
    }
