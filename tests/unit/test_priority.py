"""Lowering a process lowers every thread it has, and every thread it starts later."""

from __future__ import annotations

import inspect
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


def _nice() -> str:
    """This process's session share (autogroup nice), or "none" outside autogroups."""
    group = Path("/proc/self/autogroup")
    # Empty when the kernel keeps the process out of autogroups (its own cgroup).
    return (group.read_text().split() or ["none"])[-1] if group.exists() else "none"


SESSION_CHILD = f"""
from pathlib import Path
from services.common import priority
{inspect.getsource(_nice)}
before = _nice()
priority.lower_own_session()
print(before, _nice())
"""


def test_only_the_leader_of_its_own_session_lowers_the_session() -> None:
    ours = _nice()
    leader = _child(SESSION_CHILD, new_session=True).split()
    member = _child(SESSION_CHILD).split()
    assert member == [ours, ours]  # a process in our session leaves our session's share alone
    # A new session has a share of its own only where the kernel groups by session.
    assert leader[1] == ("none" if leader[0] == "none" else "19"), leader
    assert _nice() == ours
