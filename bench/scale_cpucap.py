"""CPU caps for the registry processes of bench/registry_scale.py (`--replica-cpus X`):
each replica in a cgroup of its own whose CFS quota gives it at most X cores.

Why: on a 2-core box the simulated fleet needs about a core of its own, so two
uncapped replicas and the simulator share the same two cores and a second replica
can only halve each one's share. Capping every replica at the same X (e.g. 0.3)
leaves the rest of the box to the simulator and the database, and asks the question
of #22 at a smaller unit: do two replicas of X cores take ~2x the heartbeats of one?

The period is short (10 ms) so that a replica that spent its quota waits at most
~10 ms for the next, not the kernel's default 100 ms. Needs root and the cgroup cpu
controller: v1 (`/sys/fs/cgroup/cpu`) or v2 (`cpu.max`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

PERIOD_US = 10_000
V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")


@dataclass
class Cap:
    """One process's cgroup; `release` moves it back out and removes the group."""

    group: Path
    parent: Path
    v2: bool

    def throttled_ms(self) -> float:
        """Time the process waited for its next quota so far (cpu.stat)."""
        stat = dict(
            line.split() for line in (self.group / "cpu.stat").read_text().splitlines() if line
        )
        if self.v2:
            return int(stat.get("throttled_usec", 0)) / 1e3
        return int(stat.get("throttled_time", 0)) / 1e6

    def release(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # exited: the group is empty already
            (self.parent / "cgroup.procs").write_text(str(pid))
        self.group.rmdir()


def cap(pid: int, cpus: float) -> Cap:
    """Put process `pid` (all its threads, and those it starts later) under a quota of
    `cpus` cores. SystemExit with the reason where the machine does not allow it."""
    if not 0.01 <= cpus <= 64:
        raise SystemExit(f"--replica-cpus is a number of cores from 0.01 to 64, not {cpus}")
    quota = max(1_000, int(cpus * PERIOD_US))  # the kernel's smallest quota is 1 ms
    v1 = (V1 / "cpu.cfs_quota_us").exists()
    parent = V1 if v1 else V2
    if not v1 and "cpu" not in _text(V2 / "cgroup.subtree_control"):
        raise SystemExit(
            "--replica-cpus needs the cgroup cpu controller: neither /sys/fs/cgroup/cpu (v1) "
            "nor cpu in /sys/fs/cgroup/cgroup.subtree_control (v2) is there"
        )
    group = parent / f"liveml-bench-{pid}"
    try:
        group.mkdir()
        if v1:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        (group / "cgroup.procs").write_text(str(pid))
    except PermissionError as exc:
        raise SystemExit(
            f"--replica-cpus needs root to make a cgroup under {parent}: {exc}"
        ) from None
    return Cap(group, parent, v2=not v1)


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
