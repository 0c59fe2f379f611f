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


def _child(code: str, new_session: bool = False) -> str:
    """What a fresh Python process running `code` prints."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
        start_new_session=new_session,
    )
    return done.stdout.strip()


def test_every_thread_early_or_late_runs_at_idle_priority() -> None:
    assert [int(p) for p in _child(CHILD).split()] == [os.SCHED_IDLE] * 3


SESSION_CHILD = """
from pathlib import Path
from services.common import priority
priority.lower_own_session()
group = Path("/proc/self/autogroup")
print(group.read_text().split()[-1] if group.exists() else "none")
"""


def test_only_the_leader_of_its_own_session_lowers_the_session() -> None:
    group = Path("/proc/self/autogroup")
    ours = group.read_text().split()[-1] if group.exists() else "none"
    leader, member = _child(SESSION_CHILD, True), _child(SESSION_CHILD)
    assert member == ours  # a process in our session leaves our session's share alone
    assert leader == ("19" if group.exists() else "none")
    assert (group.read_text().split()[-1] if group.exists() else "none") == ours
