"""A canary step's decision from its numbers: advance, promote at the last step, roll
back at a breach, wait with too little data until the last idle interval fails it, and
the ready timeout."""

from __future__ import annotations

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import judge
from services.registry.analysis import Limits

POLICY = rpb.AnalysisPolicy(steps=[10, 50, 100], min_requests=50, max_idle_intervals=3)
LIMITS = Limits.of(POLICY)


def status(step_index: int = 0, idle: int = 0) -> rpb.AnalysisStatus:
    return rpb.AnalysisStatus(
        stable_version=1, candidate_version=2, step_index=step_index, idle_intervals=idle
    )


def measured(requests: int = 100, candidate_errors: int = 0) -> dict[int, rpb.VersionMetrics]:
    return {
        1: rpb.VersionMetrics(version=1, requests=requests),
        2: rpb.VersionMetrics(
            version=2,
            requests=requests,
            errors=candidate_errors,
            error_rate=candidate_errors / requests,
        ),
    }


def test_a_passing_step_advances_to_the_next_share() -> None:
    d = judge.step(LIMITS, status(0), measured(), {})
    assert (d.kind, d.from_percent, d.to_percent) == ("advance", 10, 50)
    assert d.why.startswith("10% → 50%: error rate 0.000 vs 0.000")
    assert d.numbers["from_percent"] == 10 and d.numbers["to_percent"] == 50
    assert d.numbers["candidate"]["requests"] == 100
    assert {c["check"] for c in d.numbers["checks"]} >= {"max_error_rate_delta"}


def test_passing_the_step_before_100_promotes() -> None:
    d = judge.step(LIMITS, status(1), measured(), {})
    assert d.kind == "promote" and d.why.startswith("passed 50%: ")
    assert "to_percent" not in d.numbers


def test_a_breach_rolls_back_naming_it_first() -> None:
    d = judge.step(LIMITS, status(0), measured(candidate_errors=10), {})
    assert d.kind == "rollback" and d.breached == "max_error_rate_delta"
    assert d.why.startswith("max_error_rate_delta: error rate 0.100 vs 0.000")
    assert "; the other checks: " in d.why


def test_too_little_data_waits_and_the_last_idle_interval_rolls_back() -> None:
    d = judge.step(LIMITS, status(0, idle=0), measured(requests=10), {})
    assert d.kind == "wait" and d.idle_intervals == 1
    assert d.why.startswith("waiting (1/3): too little data at 10%: v1 had 10 and v2 10")
    assert d.numbers["idle_intervals"] == 1
    d = judge.step(LIMITS, status(0, idle=2), measured(requests=10), {})
    assert d.kind == "rollback" and d.breached == "min_requests"
    assert "for 3 intervals in a row (max 3)" in d.why
    assert d.numbers["idle_intervals"] == 3


def test_a_breach_with_too_few_requests_is_a_wait_not_a_rollback() -> None:
    d = judge.step(LIMITS, status(0), measured(requests=10, candidate_errors=5), {})
    assert d.kind == "wait"


def test_a_candidate_ready_nowhere_fails_only_past_its_timeout() -> None:
    assert judge.not_ready(LIMITS, 2, LIMITS.ready_timeout) is None
    d = judge.not_ready(LIMITS, 2, LIMITS.ready_timeout + 1.5)
    assert d is not None and d.kind == "rollback" and d.breached == "ready_timeout"
    assert d.why == "candidate v2 was not READY on any worker within 300 s"
    assert d.numbers == {"ready_workers": 0, "waited_seconds": 301.5}


def test_a_more_accurate_candidate_is_said_to_drop_nothing() -> None:
    limits = Limits.of(
        rpb.AnalysisPolicy(
            steps=[10, 50, 100], min_requests=50, max_accuracy_drop=0.05, min_feedback=20
        )
    )
    both = measured()
    for version, accuracy in ((1, 0.80), (2, 0.94)):
        both[version].accuracy = accuracy
        both[version].feedback_total = 100
    d = judge.step(limits, status(0), both, {})
    assert d.kind == "advance"
    assert "accuracy 0.940 vs 0.800 (no drop: +0.140, max drop 0.05)" in d.why
    both[2].accuracy = 0.70
    d = judge.step(limits, status(0), both, {})
    assert d.kind == "rollback" and "(drop 0.100, max 0.05)" in d.why
