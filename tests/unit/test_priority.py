"""Lowering a process lowers every thread it has, and every thread it starts later."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require

CHILD = """
import os, threading
from services.dataplane import priority
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
    # Empty in the kernel's default group: no process before it started a session.
    return (group.read_text().split() or ["none"])[-1] if group.exists() else "none"


SESSION_CHILD = f"""
from pathlib import Path
from services.dataplane import priority
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
    # A new session has a share of its own wherever the kernel has autogroups.
    assert leader[1] == ("none" if leader[0] == "none" else "19"), leader
    assert _nice() == ours


UNPRIVILEGED_LEADER = """
import sys
from services.dataplane import priority
print("ready", flush=True)
sys.stdin.readline()
priority.lower_own_session()
print(open("/proc/self/autogroup").read().split()[-1])
"""


def test_an_unprivileged_leader_waits_out_the_kernels_rate_limit() -> None:
    # Root writes another session's share, then drops privileges (CI runs as root).
    require(
        os.geteuid() == 0 and shutil.which("setpriv") is not None,
        "root and setpriv (to write another session's share, then drop privileges)",
    )
    # Without CAP_SYS_ADMIN the kernel refuses (EAGAIN) a write within 100 ms of any
    # other process's: write a child's share ourselves, then let it lower its own.
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    child = subprocess.Popen(
        [*drop, sys.executable, "-c", UNPRIVILEGED_LEADER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "ready"
    Path(f"/proc/{child.pid}/autogroup").write_text("5")
    child.stdin.write("go\n")
    child.stdin.flush()
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0 and out.strip() == "19"
