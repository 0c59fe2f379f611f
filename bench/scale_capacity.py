"""Capacity mode of bench/registry_scale.py (`--capacity`): for each replica count of
`--replicas` (e.g. `1,2`), in one invocation, the highest heartbeat rate the
registries take with heartbeat p99 <= `--p99-ms` and no lease lost.

How the offered rate is stepped: the worker count stays fixed (`--workers`,
registered once per replica count, on a fresh database) and their interval is
shortened, rate = workers / interval. From `--rate-start` heartbeats/s, x
`--rate-factor` each step, until a step fails or after `--max-steps`; then
`--refine` steps at the geometric midpoint of the last passing and the first failing
rate. A step passes when heartbeat p99 <= `--p99-ms`, no lease was lost and at least
95% of the offered rate was answered (the workers wait for each answer, so a rate
neither the registry nor the simulator keeps up with shows here too); a failed step
is measured again `--retries` times (default 1) and fails only if each one fails.

Each step: the fleet is retimed at once (sleeping workers take their place in the new
interval), measured once every worker had two heartbeats answered at it (waited for
at most two intervals + 3 s; `warmed` says if they did), then for `--step-seconds`:
about 12 s a measurement, about 4 minutes a run at the defaults (500 workers, 1,000 to
7,500 heartbeats/s). Leases stay as registered (3 x `--interval`), longer than 3 x a
step's interval: the p99 bound is what binds. In this mode a worker whose lease
lapsed registers again (unary too), so a failed step leaves no lost workers to the
refining ones. Quiet heartbeats only (a fleet at rest), with `--watchers` watchers
connected. The capacity of a replica count is the answered heartbeats/s of its best
passing step; the ratio last count / first count is printed from the same run (a
count given more than once, e.g. `1,2,1,2`, at the median of its runs).

On a small machine the simulator competes with the registries for the CPU (each
step's `client_cpu_pct_each` and `box_cores_busy` say how much); `--nice-clients 10`
puts it below them, and `--replica-cpus X` caps every replica at X cores so that two
of them and the simulator fit (`registry_throttled_pct_each`: the share of a step
each one waited for its quota).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import scale_registries
from bench.scale_fleet import Clients
from bench.scale_phase import Watchers, phase
from bench.scale_registries import Registries

COLUMNS = [
    "offered_per_s",
    "interval_s",
    "heartbeats_per_s",
    "heartbeat_p50_ms",
    "heartbeat_p99_ms",
    "heartbeat_max_ms",
    "leases_lost",
    "registry_cpu_pct",
    "registry_cpu_pct_each",
    "registry_throttled_pct_each",
    "cpu_us_per_heartbeat",
    "client_cpu_pct_each",
    "box_cores_busy",
    "warmed",
    "attempt",
    "passed",
]


class Ladder:
    """The steps of one replica count, on its running registries and fleet."""

    def __init__(
        self, args: argparse.Namespace, clients: Clients, registries: Registries, watchers: Watchers
    ) -> None:
        self.args, self.clients, self.registries, self.watchers = (
            args,
            clients,
            registries,
            watchers,
        )
        self.steps: list[dict[str, Any]] = []

    async def step(self, rate: float) -> dict[str, Any]:
        """One rate; a failed measurement is taken again `--retries` times, and the rate
        fails only if every one fails (a single stall of ~p99-bound length in a window
        is enough to fail it). Every measurement is kept in `steps`."""
        for attempt in range(1 + self.args.retries):
            row = await self.measure(rate, attempt)
            if row["passed"]:
                break
        return row

    async def measure(self, rate: float, attempt: int) -> dict[str, Any]:
        interval = self.args.workers / rate
        await self.clients.tell({"interval": interval})
        measured = await phase(
            "quiet",
            self.clients,
            self.registries,
            self.watchers,
            self.args.step_seconds,
            warm_seconds=2 * interval + 3,
        )
        row = {"offered_per_s": round(rate, 1), "interval_s": round(interval, 3), **measured}
        row["attempt"] = attempt + 1
        row["passed"] = (
            row["heartbeat_p99_ms"] <= self.args.p99_ms
            and row["leases_lost"] == 0
            and row["heartbeats_per_s"] >= 0.95 * rate
        )
        self.steps.append(row)
        print(
            f"  {len(self.registries.pids)} replica(s), {rate:.0f}/s offered"
            f"{f' (again, {attempt + 1})' if attempt else ''}: "
            f"{row['heartbeats_per_s']}/s answered, p99 {row['heartbeat_p99_ms']} ms, "
            f"{row['leases_lost']} lost, registry CPU {row['registry_cpu_pct']}% "
            f"{row.get('registry_cpu_pct_each', '')}, box {row['box_cores_busy']} cores busy: "
            f"{'pass' if row['passed'] else 'FAIL'}",
            flush=True,
        )
        return row

    async def climb(self) -> dict[str, Any] | None:
        """The best passing step (None if the first failed)."""
        args = self.args
        rate, best, failed = args.rate_start, None, None
        for _ in range(args.max_steps):
            row = await self.step(rate)
            if not row["passed"]:
                failed = rate
                break
            best, rate = row, rate * args.rate_factor
        for _ in range(args.refine if best is not None and failed is not None else 0):
            assert best is not None and failed is not None
            middle = math.sqrt(best["offered_per_s"] * failed)
            row = await self.step(middle)
            if row["passed"]:
                best = row
            else:
                failed = middle
        return best


async def one_count(args: argparse.Namespace, root: Path, replicas: int) -> dict[str, Any]:
    await asyncio.to_thread(root.mkdir, parents=True)
    async with AsyncExitStack() as stack:
        env = dict(kv.split("=", 1) for kv in args.env)
        registries = await scale_registries.start(
            stack, root, replicas, args.postgres, env, args.replica_cpus
        )
        watchers = Watchers(registries.stubs, registries.md, args.watchers)
        tasks = [asyncio.create_task(watchers.watch(i)) for i in range(args.watchers)]
        clients = await Clients.start(args, registries.ports, registries.token, reregister=True)
        stack.push_async_callback(clients.stop)

        async def cancel() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        stack.push_async_callback(cancel)  # before the clients stop: `follow` talks to them
        tasks.append(asyncio.create_task(clients.follow(watchers.revision)))
        # Every worker registered and heartbeating at the first step's interval first.
        await clients.tell({"interval": args.workers / args.rate_start})
        await clients.ask({"phase": "quiet", "warm_seconds": 120})
        ladder = Ladder(args, clients, registries, watchers)
        best = await ladder.climb()
        return {
            "replicas": replicas,
            # No step failed: the capacity is at least this (raise --max-steps).
            "limit_found": any(not row["passed"] for row in ladder.steps),
            "capacity_heartbeats_per_s": best["heartbeats_per_s"] if best else 0.0,
            "capacity_offered_per_s": best["offered_per_s"] if best else 0.0,
            "steps": ladder.steps,
        }


async def capacity(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    runs = []
    for i, replicas in enumerate(args.replicas):
        print(f"capacity, {replicas} replica(s):", flush=True)
        runs.append(await one_count(args, root / f"run{i}-replicas{replicas}", replicas))
    # A count given more than once (e.g. 1,2,1,2: alternated, so that the box's other
    # load falls on both) is taken at its median run.
    by_count: dict[int, list[float]] = {}
    for run in runs:
        by_count.setdefault(run["replicas"], []).append(run["capacity_heartbeats_per_s"])
    medians = {count: round(statistics.median(values), 1) for count, values in by_count.items()}
    first, last = medians[args.replicas[0]], medians[args.replicas[-1]]
    return {
        "backend": "postgresql" if args.postgres else "sqlite",
        "heartbeats": args.heartbeats,
        "replica_cpus": args.replica_cpus,
        "workers": args.workers,
        "watchers": args.watchers,
        "clients": args.clients,
        "p99_ms_bound": args.p99_ms,
        "step_seconds": args.step_seconds,
        "runs": runs,
        "capacity_median_by_replicas": medians,
        "ratio_last_over_first": round(last / first, 2) if first else None,
    }


def report(result: dict[str, Any]) -> None:
    for run in result["runs"]:
        print(f"\n{run['replicas']} replica(s):")
        print(" | ".join(COLUMNS))
        for row in run["steps"]:
            print(" | ".join(str(row.get(c, "")) for c in COLUMNS))
        errors = [e for row in run["steps"] for e in row["errors"]][:5]
        if errors:
            print("errors:", errors)
    print(
        f"\ncapacity (heartbeat p99 <= {result['p99_ms_bound']} ms, 0 leases lost), "
        f"{result['backend']}, {result['heartbeats']} heartbeats, {result['workers']} workers"
        + (
            f", each replica capped at {result['replica_cpus']} cores"
            if result["replica_cpus"]
            else ""
        )
        + ":"
    )
    for run in result["runs"]:
        print(
            f"  {run['replicas']} replica(s): {run['capacity_heartbeats_per_s']} heartbeats/s "
            f"(offered {run['capacity_offered_per_s']})"
            + ("" if run["limit_found"] else ", a lower bound: no step failed")
        )
    medians = result["capacity_median_by_replicas"]
    if len(result["runs"]) > len(medians):
        print("  median by count:", ", ".join(f"{n}: {v}/s" for n, v in medians.items()))
    if len(medians) > 1:
        counts = [r["replicas"] for r in result["runs"]]
        print(
            f"ratio {counts[-1]} / {counts[0]} replicas (same run"
            f"{', medians' if len(result['runs']) > len(medians) else ''}):",
            result["ratio_last_over_first"],
        )
