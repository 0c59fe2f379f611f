"""Small pieces shared by the registry-at-scale benches (bench/registry_scale.py and its
modules, bench/watch_fanout.py): a process's and the machine's CPU from /proc, a
percentile, the version states a simulated worker reports."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TICK = os.sysconf("SC_CLK_TCK")
READY, LOADING = rpb.VERSION_LOAD_STATE_READY, rpb.VERSION_LOAD_STATE_LOADING


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def box_jiffies() -> tuple[int, int]:
    """(busy, all) CPU time of the whole machine so far, in ticks (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def states(flip: int) -> list[rpb.WorkerVersionState]:
    """A simulated worker's 4 versions of model "m"; an odd `flip` makes version 1 LOADING
    (the changing phase flips it every heartbeat: each one a real change)."""
    return [
        rpb.WorkerVersionState(
            model="m", version=v, state=LOADING if (v == 1 and flip % 2) else READY
        )
        for v in range(1, 5)
    ]
