"""Judging one step of a canary: the numbers summed since the step began, turned into
a decision (advance, wait for data, promote, roll back) with the words and numbers
that justify it.

No database and no clock here: the controller (controller.py) keeps the timers,
reads the windows and applies what is decided; each threshold's check is analysis.py's.
Too little data (too few requests, or none for a check the policy asked for) is a
wait, and the `max_idle_intervals`-th wait in a row a rollback: no data is a failure,
never an endless wait, and never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import windows
from services.registry.analysis import Limits, describe, judge, judged, numbers_of, tail


@dataclass(frozen=True)
class Decision:
    """What to do with a canary, and why (`why` is the rollout's `last_decision` text,
    after "rolled back to vN: " or "promoted vN: " for those two)."""

    kind: Literal["advance", "wait", "promote", "rollback"]
    why: str
    numbers: dict[str, Any]  # the audit event's and the alert's details
    breached: str = ""  # rollback: the check or condition that failed
    from_percent: int = 0  # advance
    to_percent: int = 0  # advance
    idle_intervals: int = 0  # wait: intervals in a row with too little data


def not_ready(limits: Limits, candidate: int, waited: float) -> Decision | None:
    """A candidate READY on no worker for `waited` seconds: rolled back past its timeout."""
    if waited <= limits.ready_timeout:
        return None
    return Decision(
        "rollback",
        f"candidate v{candidate} was not READY on any worker within {limits.ready_timeout:g} s",
        {"ready_workers": 0, "waited_seconds": round(waited, 3)},
        breached="ready_timeout",
    )


def step(
    limits: Limits,
    status: rpb.AnalysisStatus,
    measured: dict[int, rpb.VersionMetrics],
    latency: dict[int, windows.Latency],
) -> Decision:
    """The decision at the end of a step's interval, candidate against stable over the
    same windows, with at least the minimum requests each (callers' mistakes not counted).
    Every check is listed, with its number or "no data"."""
    stable, candidate = status.stable_version, status.candidate_version
    s = measured.get(stable) or rpb.VersionMetrics(version=stable)
    c = measured.get(candidate) or rpb.VersionMetrics(version=candidate)
    numbers: dict[str, Any] = {"stable": {"version": stable, **numbers_of(s)}}
    numbers["candidate"] = {"version": candidate, **numbers_of(c)}
    at = limits.steps[status.step_index]
    checks = judge(limits, s, c, tail(latency.get(stable), latency.get(candidate)))
    numbers["checks"] = [check.as_dict() for check in checks]
    enough = min(judged(s), judged(c)) >= limits.min_requests
    breached = [check for check in checks if check.ok is False] if enough else []
    if breached:
        first = breached[0]
        rest = describe([check for check in checks if check is not first])
        why = f"{first.name}: {first.text}; the other checks: {rest}"
        return Decision("rollback", why, numbers, breached=first.name)
    missing = [check for check in checks if check.ok is None and check.required]
    if not enough or missing:
        shortages = []
        if not enough:
            shortages.append(
                f"v{stable} had {judged(s)} and v{candidate} {judged(c)} requests, "
                f"{limits.min_requests} needed each"
            )
        shortages += [f"{check.name}: no data ({check.text})" for check in missing]
        return _idle(
            limits,
            status,
            numbers,
            "min_requests" if not enough else "no_data",
            f"too little data at {at}%: {'; '.join(shortages)}",
            describe(checks),
        )
    summary = describe(checks)
    last = status.step_index + 1 >= len(limits.steps)
    following = 100 if last else limits.steps[status.step_index + 1]
    if following >= 100:
        return Decision("promote", f"passed {at}%: {summary}", numbers)
    return Decision(
        "advance",
        f"{at}% → {following}%: {summary}",
        {**numbers, "from_percent": at, "to_percent": following},
        from_percent=at,
        to_percent=following,
    )


def _idle(
    limits: Limits,
    status: rpb.AnalysisStatus,
    numbers: dict[str, Any],
    breached: str,
    why: str,
    checks: str,
) -> Decision:
    """An interval without enough data; the `max_idle_intervals`-th in a row fails."""
    idle = status.idle_intervals + 1
    numbers = {**numbers, "idle_intervals": idle}
    if idle >= limits.max_idle_intervals:
        return Decision(
            "rollback",
            f"{why}, for {idle} intervals in a row (max {limits.max_idle_intervals}); "
            f"checks: {checks}",
            numbers,
            breached=breached,
        )
    return Decision(
        "wait",
        f"waiting ({idle}/{limits.max_idle_intervals}): {why}; checks: {checks}",
        numbers,
        idle_intervals=idle,
    )
