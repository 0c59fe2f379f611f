"""Lowering a process lowers every thread it has, and every thread it starts later."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import os, threading
from services.common import priority
early = threading.Thread(target=threading.Event().wait, daemon=True)
early.start()
priority.lower_process("idle")
print(os.sched_getscheduler(early.native_id))
late = threading.Thread(target=lambda: print(os.sched_getscheduler(threading.get_native_id())))
late.start(); late.join()
print(os.sched_getscheduler(0))
"""


def test_every_thread_early_or_late_runs_at_idle_priority() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    assert [int(p) for p in done.stdout.split()] == [os.SCHED_IDLE] * 3
