"""The contracts stay clean (buf lint) and the committed stubs match protos/."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import require
from tests.helpers.procs import ROOT

BUF = ROOT / "node_modules" / ".bin" / "buf"


def test_buf_lint_is_clean() -> None:
    require(BUF.exists(), "buf (npm install)")
    done = subprocess.run(
        [str(BUF), "lint", "protos"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_stubs_are_not_stale() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.common.protogen", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout


def test_stale_check_notices_a_change(tmp_path: object) -> None:
    from pathlib import Path

    from services.common import protogen

    scratch = Path(str(tmp_path)) / "gen"
    protogen.generate(scratch)
    assert protogen.differences(scratch, protogen.GEN) == []
    victim = scratch / "inference" / "grpc_predict_v2_pb2.py"
    victim.write_text(victim.read_text() + "\n# edited\n")
    (scratch / "extra.py").write_text("")
    assert protogen.differences(scratch, protogen.GEN) == [
        "extra.py",
        "inference/grpc_predict_v2_pb2.py",
    ]
