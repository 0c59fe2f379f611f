"""`make run` (the live-update demo) completes every step and exits 0."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers.procs import ROOT


@pytest.mark.timeout(300)
def test_make_run_walks_the_whole_live_update() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("LIVEML_")},
            "COLUMNS": "220",
        },
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for step in (
        "✓ registry",
        "✓ data plane: 2 workers and the gateway",
        "✓ v1 published",
        "✓ serving v1",
        "✓ canary v2",
        "✓ v2 promoted: v2 100%",
        "✓ v3 rolled back: v2 100%: rolled back to v2: max_accuracy_drop",
        "0 failed; after the rollback only v2",
        "hash chain intact",
        "per version, as the controller saw it",
        "demo passed",
    ):
        assert step in out, f"missing {step!r} in:\n{out}"


def test_demo_exits_non_zero_when_a_step_misbehaves() -> None:
    # A registry that cannot start (its database path is a file's child) fails the demo.
    blocker = ROOT / ".liveml-demo-blocker"
    blocker.write_text("not a folder")
    try:
        done = subprocess.run(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LIVEML_DEMO_DIR": str(blocker / "inside")},
        )
    finally:
        blocker.unlink()
    assert done.returncode != 0
    assert "demo failed: cannot use" in done.stdout + done.stderr
