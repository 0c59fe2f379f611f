"""`liveml demo` (what `make run` runs) completes every step and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.procs import ROOT


def test_demo_runs_every_step(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "demo", "--keep", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("v1 registered", "canary v2", "bad rollout refused", "rollback", "audit"):
        assert step in done.stdout
    assert "v1 90% + v2 10%" in done.stdout and "hash chain intact" in done.stdout
    assert (tmp_path / "registry.db").exists()
