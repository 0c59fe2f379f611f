"""Benchmark: the registry under a fleet's heartbeats and watchers (issue #22's table).

One command (`make bench-registry-scale`): a registry process (SQLite by default,
`--postgres` for PostgreSQL on 127.0.0.1; `--replicas N` for N registry processes on
the one PostgreSQL database), N simulated workers — each registered, then
heartbeating every `--interval` seconds (5 s, lease 15 s: the registry's defaults) with
the states of 4 versions, on one StreamHeartbeats stream each (`--heartbeats stream`,
the default, as real workers do now) or one unary Heartbeat call each
(`--heartbeats unary`) — split over `--clients` processes so the simulator is not
what limits the registry (each client's CPU is reported), and W gateway-like `Watch`
streams in this process, which hands every client the revision its watchers saw (the
workers' observed revision). Workers and watchers are spread round-robin over the
replicas. Two phases of `--seconds` each, in the same run:

- quiet: every heartbeat reports what the registry already knows (a fleet at rest);
- changing: every heartbeat flips one of its versions' states (each one a real change,
  published and audited: what every heartbeat cost before quiet ones became renewals).

Per phase: heartbeats answered per second, heartbeat latency p50/p99 (a stream's:
write to its answer), leases lost (a heartbeat answered NOT_FOUND; a streaming worker
then registers again, as a real one does), the registries' CPU (from /proc; summed,
and per replica when there are several), CPU per heartbeat, revisions added and watch
events the watchers received; after the quiet phase, `--rollouts` (3) rollout changes
back to back, each sent once every watcher saw the one before, and for each how long
until every watcher saw it (p99 over watchers). The ratio changing ÷ quiet of CPU per
heartbeat is printed from the same run. Results go to bench/out/registry_scale.json.
`--profile` records the registry (replica 0) with py-spy during the quiet phase to
bench/out/registry_scale.folded (collapsed stacks); `--profile-fanout` during the
rollouts instead.

`--capacity` (bench/scale_capacity.py) instead steps the heartbeat rate up for each
replica count of `--replicas` (e.g. `--postgres --replicas 1,2 --capacity`) and prints
the highest rate with p99 <= `--p99-ms` and no lease lost, and the ratio of the counts'
rates, from one run (bench/out/registry_scale_capacity.json). `--replica-cpus X` caps
every replica at X cores (a cgroup CPU quota, bench/scale_cpucap.py): on a box too
small for two full replicas and the simulator, two replicas of X against one.

Modules: bench/scale_fleet.py (the simulated workers' client processes),
bench/scale_registries.py (the registry processes, replicas on one database),
bench/scale_phase.py (watchers, a phase's measurement, a rollout's fan-out),
bench/scale_capacity.py (capacity mode), bench/scale_common.py (CPU from /proc,
percentiles); this one is the command line and the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import scale_capacity, scale_registries
from bench.scale_common import OUT, cpu_seconds, pct
from bench.scale_fleet import Clients
from bench.scale_phase import Watchers, phase, py_spy, rollout_fanout

__all__ = ["cpu_seconds", "pct"]  # bench/watch_fanout.py imports them from here


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        env = dict(kv.split("=", 1) for kv in args.env)
        replicas = args.replicas[0]
        registries = await scale_registries.start(
            stack, root, replicas, args.postgres, env, args.replica_cpus
        )
        stub, md = registries.stub, registries.md
        watchers = Watchers(registries.stubs, md, args.watchers)
        tasks = [asyncio.create_task(watchers.watch(i)) for i in range(args.watchers)]
        clients = await Clients.start(args, registries.ports, registries.token)
        stack.push_async_callback(clients.stop)
        tasks.append(asyncio.create_task(clients.follow(watchers.revision)))
        quiet = await phase("quiet", clients, registries, watchers, args.seconds, args.profile)
        # Back to back: each rollout is sent once every watcher saw the one before.
        percents = [10 * (i % 9 + 1) for i in range(args.rollouts)]
        profiler = None
        if args.profile_fanout:  # the rollouts' window only, the same output file
            profiler = await py_spy(registries.pids[0], 2 + 0.5 * args.rollouts)
            await asyncio.sleep(1)  # why: py-spy attaching (noqa: sleep-ok)
        fanout = [await rollout_fanout(stub, md, watchers, p) for p in percents]
        if profiler is not None and await profiler.wait():
            print("py-spy failed (exit status", profiler.returncode, ")")
        quiet["rollout_seen_by_all_p99_ms"] = [round(f * 1e3, 1) for f in fanout]
        changing = (
            await phase("changing", clients, registries, watchers, args.seconds)
            if not args.quiet_only
            else {"phase": "changing (skipped)", "cpu_us_per_heartbeat": float("nan")}
        )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "backend": "postgresql" if args.postgres else "sqlite",
            "replicas": replicas,
            "heartbeats": args.heartbeats,
            "workers": args.workers,
            "watchers": args.watchers,
            "clients": args.clients,
            "interval_s": args.interval,
            "phases": [quiet, changing],
            "ratio_cpu_per_heartbeat_changing_over_quiet": round(
                changing["cpu_us_per_heartbeat"] / max(1e-9, quiet["cpu_us_per_heartbeat"]), 2
            ),
        }


def counts(text: str) -> list[int]:
    values = [int(v) for v in text.split(",")]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"replica counts are 1 or more: {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--watchers", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0, help="heartbeat interval, s")
    parser.add_argument("--clients", type=int, default=3, help="client processes for workers")
    parser.add_argument(
        "--heartbeats",
        choices=["stream", "unary"],
        default="stream",
        help="one StreamHeartbeats stream per worker (default) or unary Heartbeat calls",
    )
    parser.add_argument(
        "--replicas",
        type=counts,
        default=[1],
        metavar="N[,N...]",
        help="registry processes on one PostgreSQL database (a list, e.g. 1,2: --capacity)",
    )
    parser.add_argument(
        "--nice-clients",
        type=int,
        default=0,
        metavar="N",
        help="run the client processes at nice N (e.g. 10: the registries first on a full box)",
    )
    parser.add_argument(
        "--replica-cpus",
        type=float,
        default=None,
        metavar="X",
        help="cap every registry at X cores (a cgroup CPU quota; root): e.g. 0.3",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the quiet phase")
    parser.add_argument(
        "--rollouts", type=int, default=3, help="rollout changes timed after the quiet phase"
    )
    parser.add_argument("--profile-fanout", action="store_true", help="py-spy the rollouts instead")
    parser.add_argument(
        "--quiet-only", action="store_true", help="skip the changing phase (it saturates)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL on 127.0.0.1")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="LIVEML_X=VALUE",
        help="a setting of the registry (repeatable), e.g. LIVEML_LEASE_FLUSH_SECONDS=0",
    )
    capacity = parser.add_argument_group("capacity mode (bench/scale_capacity.py)")
    capacity.add_argument(
        "--capacity", action="store_true", help="the highest rate within --p99-ms, per count"
    )
    capacity.add_argument("--p99-ms", type=float, default=100.0, help="heartbeat p99 bound")
    capacity.add_argument("--step-seconds", type=float, default=8.0, help="measured per step")
    capacity.add_argument(
        "--rate-start", type=float, default=1000.0, help="heartbeats/s offered first"
    )
    capacity.add_argument("--rate-factor", type=float, default=1.5, help="offered rate x per step")
    capacity.add_argument("--max-steps", type=int, default=6, help="rising steps at most")
    capacity.add_argument(
        "--retries", type=int, default=1, help="measurements again of a failed step"
    )
    capacity.add_argument(
        "--refine", type=int, default=2, help="steps between the last pass and the first fail"
    )
    return parser


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "grpcio": grpc.__version__,
    }


def report(result: dict[str, Any]) -> None:
    cols = [c for c in result["phases"][0] if c != "errors"]
    print(" | ".join(cols))
    for row in result["phases"]:
        print(" | ".join(str(row.get(c, "")) for c in cols))
    print(
        "CPU per heartbeat, changing / quiet (same run):",
        result["ratio_cpu_per_heartbeat_changing_over_quiet"],
    )
    for row in result["phases"]:
        if row.get("errors"):
            print(row["phase"], "errors:", row["errors"])


def main() -> int:
    cli = parser()
    args = cli.parse_args()
    if max(args.replicas) > 1 and not args.postgres:
        cli.error("--replicas above 1 needs --postgres: the replicas share one database")
    if len(args.replicas) > 1 and not args.capacity:
        cli.error("a list of replica counts is for --capacity; give one count otherwise")
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        measure = scale_capacity.capacity if args.capacity else run
        result = asyncio.run(measure(args, Path(tmp)))
    result["registry_env"] = args.env
    result["machine"] = {**machine(), "load_avg_before": load_before}
    OUT.mkdir(parents=True, exist_ok=True)
    name = "registry_scale_capacity.json" if args.capacity else "registry_scale.json"
    (OUT / name).write_text(json.dumps(result, indent=2))
    (scale_capacity.report if args.capacity else report)(result)
    print("load average:", result["machine"]["load_avg"], "(before:", load_before, ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
