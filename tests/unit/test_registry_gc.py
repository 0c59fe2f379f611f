"""The registry's own process tunes its garbage collector (`app.tune_gc`): a young
threshold from --gc-young-threshold (0 keeps Python's), and what it holds after start
frozen out of every collection. Run in a child process: the test's own stays as is."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.procs import ROOT

PROBE = """
import gc
from services.registry.app import tune_gc
default = gc.get_threshold()
tune_gc({young})
print(default[0], *gc.get_threshold(), gc.get_freeze_count() > 0)
"""


def tuned(young: int) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(young=young)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    return out.stdout.split()


def test_the_young_threshold_is_set_and_the_start_frozen() -> None:
    assert tuned(50_000) == ["700", "50000", "20", "10", "True"]


def test_zero_keeps_pythons_thresholds() -> None:
    assert tuned(0) == ["700", "700", "10", "10", "True"]
