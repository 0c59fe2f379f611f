"""Judging a canary: every check named, "no data" where data is missing, required checks,
and tail latency compared at one quantile on both sides."""

from __future__ import annotations

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.windows import LATENCY_BOUNDS
from services.registry.analysis import Limits, describe, judge, judged, tail
from services.registry.windows import quantile


def histogram(**by_bound: int) -> tuple[tuple[float, ...], list[int]]:
    """Counts per bucket, keyed like ms1=... for the bucket ending at 1 ms."""
    counts = [0] * (len(LATENCY_BOUNDS) + 1)
    for key, n in by_bound.items():
        counts[LATENCY_BOUNDS.index(float(key[2:].replace("_", ".")) / 1000)] += n
    return LATENCY_BOUNDS, counts


def test_one_slow_request_of_a_small_sample_fails_no_same_model() -> None:
    # The same model on both sides; under 1% of requests hit by a 100 ms scheduling
    # hiccup, and the candidate, with a fifth of the requests (a 20% step), unlucky by
    # one: two of its hundred.
    stable = histogram(ms1=496, ms100=4)
    candidate = histogram(ms1=98, ms100=2)
    p99_ratio = quantile(*candidate, 0.99) / quantile(*stable, 0.99)
    assert p99_ratio > 1.8  # read as they are, the small side's p99 is its slowest requests
    compared = tail(stable, candidate)
    assert compared is not None and compared.samples == 100
    assert compared.quantile == 0.95
    assert compared.candidate / compared.stable < 1.8


def test_a_really_slower_candidate_is_still_caught() -> None:
    stable = histogram(ms1=500)
    candidate = histogram(ms10=100)
    compared = tail(stable, candidate)
    assert compared is not None and compared.candidate / compared.stable > 5


def test_too_few_samples_is_no_data() -> None:
    assert tail(histogram(ms1=500), histogram(ms100=19)) is None
    limits = Limits.of(rpb.AnalysisPolicy(steps=[50, 100]))
    # Raw p99s that would fail (100 ms against 1 ms) are not read: too few to judge.
    s = metrics(1, requests=500, p99_seconds=0.001)
    c = metrics(2, requests=19, p99_seconds=0.1)
    (latency,) = [x for x in judge(limits, s, c) if x.name == "max_p99_latency_ratio"]
    assert latency.ok is None and "fewer than 20 answered requests each" in latency.text
    # With enough requests they are.
    c = metrics(2, requests=40, p99_seconds=0.1)
    (latency,) = [x for x in judge(limits, s, c) if x.name == "max_p99_latency_ratio"]
    assert latency.ok is False
    assert tail(None, histogram(ms1=500)) is None


def metrics(version: int, **fields: object) -> rpb.VersionMetrics:
    return rpb.VersionMetrics(version=version, **fields)  # type: ignore[arg-type]


def test_every_check_is_listed_and_missing_data_says_what_is_missing() -> None:
    limits = Limits.of(rpb.AnalysisPolicy(steps=[50, 100], max_accuracy_drop=0.1))
    assert limits.required == {"max_accuracy_drop"}
    checks = judge(limits, metrics(1, requests=100), metrics(2, requests=100))
    by_name = {c.name: c for c in checks}
    assert set(by_name) == {
        "max_error_rate_delta",
        "max_p99_latency_ratio",
        "max_accuracy_drop",
        "max_drift_psi",
    }
    assert by_name["max_error_rate_delta"].ok is True
    accuracy = by_name["max_accuracy_drop"]
    assert accuracy.ok is None and accuracy.required and accuracy.value is None
    assert "10 feedback labels needed each, v1 had 0 and v2 0" in accuracy.text
    assert not by_name["max_drift_psi"].required
    text = describe(checks)
    assert "accuracy: no data (10 feedback labels needed each" in text
    assert "tail latency: no data (fewer than 20 answered requests each)" in text
    assert "drift PSI: no data" in text


def test_min_feedback_makes_accuracy_required_and_sets_the_bar() -> None:
    limits = Limits.of(rpb.AnalysisPolicy(steps=[100], min_feedback=25))
    assert limits.required == {"max_accuracy_drop"} and limits.min_feedback == 25
    s = metrics(1, requests=100, feedback_total=30, accuracy=0.9)
    c = metrics(2, requests=100, feedback_total=24, accuracy=0.9)
    (accuracy,) = [x for x in judge(limits, s, c) if x.name == "max_accuracy_drop"]
    assert accuracy.ok is None
    c.feedback_total = 25
    (accuracy,) = [x for x in judge(limits, s, c) if x.name == "max_accuracy_drop"]
    assert accuracy.ok is True


def test_fairness_is_listed_only_when_asked_and_needs_two_groups() -> None:
    assert "max_fairness_gap" not in {
        c.name for c in judge(Limits.of(rpb.AnalysisPolicy()), metrics(1), metrics(2))
    }
    limits = Limits.of(rpb.AnalysisPolicy(max_fairness_gap=0.2))
    (gap,) = [c for c in judge(limits, metrics(1), metrics(2)) if c.name == "max_fairness_gap"]
    assert gap.ok is None and gap.required and "fewer than two groups" in gap.text


def test_callers_mistakes_are_not_judged_requests() -> None:
    assert judged(metrics(1, requests=100, client_errors=30)) == 70
