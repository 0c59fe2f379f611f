"""OS CPU priority for shadow work: one thread's, or a whole process's.

A worker's shadow thread, a mirror worker and the gateway's shadow process run at
a lower priority, so shadow copies only get CPU time clients' requests leave unused.
Linux schedules threads, not processes, so lowering a process means lowering each of
its threads; threads started later inherit the policy of the thread that starts them.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import Literal

log = logging.getLogger(__name__)
AUTOGROUP_TRIES = 10  # at 0.11 s apart: past other processes' writes

Priority = Literal["idle", "low", "normal"]


def lower_thread(priority: str, tid: int | None = None) -> None:
    """Lower a thread's priority (default: the calling thread's); see `shadow_priority`."""
    tid = threading.get_native_id() if tid is None else tid
    try:
        if priority == "idle":
            # Runs only on a core nothing else wants, and yields to any other thread.
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        elif priority == "low":
            os.setpriority(os.PRIO_PROCESS, tid, 19)
    except (OSError, AttributeError) as exc:  # not Linux, or not allowed: normal priority
        log.warning("thread %d keeps normal priority: %s", tid, exc)


def lower_process(priority: str) -> None:
    """Lower every thread of this process, and so every thread it starts from now on."""
    if priority == "normal":
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no procfs: the calling thread, which starts the rest
        tids = [threading.get_native_id()]
    for tid in tids:
        lower_thread(priority, tid)
    log.info("this process runs at %s CPU priority", priority)


def lower_own_session() -> None:
    """Lower the CPU share of this process's session, when the process leads it.

    Outside containers the kernel schedules each session as one group (autogroups), and
    a thread's priority ranks it only within its group: against other sessions, an idle
    process in a session of its own gets a fair share of a core. Its group's weight
    goes to the lowest (nice 19) to keep it from clients' requests. Only for a session
    this program started, with nothing else in it: the nice applies to the whole group.
    """
    if os.getsid(0) != os.getpid():
        return
    for attempt in range(AUTOGROUP_TRIES):
        try:
            with open("/proc/self/autogroup", "w") as group:
                group.write("19")
            return
        except OSError as exc:
            # Without CAP_SYS_ADMIN the kernel takes one such write per 100 ms on the
            # whole machine (EAGAIN): another process's write, so try again shortly.
            if exc.errno == errno.EAGAIN and attempt + 1 < AUTOGROUP_TRIES:
                time.sleep(0.11)
                continue
            # No autogroups (a container, another kernel): nothing to do.
            log.debug("session priority unchanged: %s", exc)
            return
