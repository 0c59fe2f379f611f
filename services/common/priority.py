"""OS CPU priority for shadow work: one thread's, or a whole process's.

A worker's shadow thread, a mirror worker and the gateway's shadow process run at
a lower priority, so shadow copies only get CPU time clients' requests leave unused.
Linux schedules threads, not processes, so lowering a process means lowering each of
its threads; threads started later inherit the policy of the thread that starts them.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Literal

log = logging.getLogger(__name__)

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
