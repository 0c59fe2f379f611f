"""`make run` (the founding workflow: only data goes in) completes every step and exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from tests.helpers.procs import ROOT


def run_demo(timeout: float, env: dict[str, str]) -> tuple[int, str]:
    """`make run` in a session of its own, so a timeout kills the demo's servers too."""
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"make run did not end within {timeout:g} s:\n{out}") from None
    return proc.returncode, out


@pytest.mark.timeout(600)
def test_make_run_walks_the_founding_workflow() -> None:
    code, out = run_demo(
        560,
        {
            **{k: v for k, v in os.environ.items() if not k.startswith("LIVEML_")},
            "COLUMNS": "220",
        },
    )
    assert code == 0, out
    for step in (
        "✓ processes",
        "✓ data in: stored 5700 of 5700 examples from history.csv",
        "300 examples through the gateway",
        "✓ v1 trained: run 1 (data_volume) SUCCEEDED",
        "no version served: v1 takes all the traffic",
        "✓ v2 promoted: run 2 (data_volume) SUCCEEDED",
        "✓ concept shifted: alert AccuracyDrop: v2 of demo",
        "✓ v3 promoted: run 3 (alert) SUCCEEDED",
        "✓ bad data rejected: run 4 (data_volume) REJECTED",
        "floor:accuracy",
        "no version registered, no traffic",
        "✓ v4 rolled back: run 5 (data_volume) SUCCEEDED",
        "rolled back to v3: max_accuracy_drop",
        "0 failed; after the rollback only v3",
        "hash chain intact",
        "every run: trigger, gate, version, canary",
        "demo passed",
    ):
        assert step in out, f"missing {step!r} in:\n{out}"
    # A promotion is said once: the step's title, then what the canary saw.
    assert "✓ v2 promoted: " in out and "canary passed 50%" in out
    assert "canary: promoted v" not in out, out
    # The controller counted what the clients saw: per version, the same answers.
    answered = re.search(r"✓ clients: (\d+) requests answered \(([^)]*)\)", out)
    assert answered is not None, out
    clients = {v: int(n) for v, n in re.findall(r"v(\d+) (\d+)", answered[2])}
    assert sum(clients.values()) == int(answered[1])
    controller = dict(re.findall(r"^│ v(\d+)\s+│ (\d+)\s+│", out, re.MULTILINE))
    assert {v: int(n) for v, n in controller.items()} == clients, out


def test_demo_exits_non_zero_when_a_step_misbehaves() -> None:
    # A registry that cannot start (its database path is a file's child) fails the demo.
    blocker = ROOT / ".liveml-demo-blocker"
    blocker.write_text("not a folder")
    try:
        code, out = run_demo(120, {**os.environ, "LIVEML_DEMO_DIR": str(blocker / "inside")})
    finally:
        blocker.unlink()
    assert code != 0
    assert "demo failed: cannot use" in out
