"""Benchmark: one registry under a fleet's heartbeats and watchers (issue #22's table).

One command (`make bench-registry-scale`): a registry process (SQLite by default,
`--postgres` for PostgreSQL on 127.0.0.1), N simulated workers — each registered, then
heartbeating every `--interval` seconds (5 s, lease 15 s: the registry's defaults) with
the states of 4 versions — split over `--clients` processes so the simulator is not
what limits the registry (each client's CPU is reported), and W gateway-like `Watch`
streams in this process, which hands every client the revision its watchers saw (the
workers' observed revision). Two phases of `--seconds` each, in the same run:

- quiet: every heartbeat reports what the registry already knows (a fleet at rest);
- changing: every heartbeat flips one of its versions' states (each one a real change,
  published and audited: what every heartbeat cost before quiet ones became renewals).

Per phase: heartbeats answered per second, heartbeat latency p50/p99, leases lost
(a heartbeat answered NOT_FOUND), the registry's CPU (from /proc), CPU per heartbeat,
revisions added and watch events the watchers received; after the quiet phase, one
rollout change and how long until every watcher saw it (p99 over watchers). The
ratio changing ÷ quiet of CPU per heartbeat is printed from the same run. Results go
to bench/out/registry_scale.json. `--profile` records the registry with py-spy
during the quiet phase to bench/out/registry_scale.folded (collapsed stacks).

Modules: bench/scale_fleet.py (the simulated workers' client processes),
bench/scale_phase.py (watchers, a phase's measurement, a rollout's fan-out),
bench/scale_common.py (CPU from /proc, percentiles); this one is the command line
and the report.
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
from grpc import aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale_common import OUT, cpu_seconds, pct
from bench.scale_fleet import Clients
from bench.scale_phase import Watchers, phase, rollout_fanout
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.helpers.models import linear
from tests.helpers.procs import registry_process
from tests.helpers.registry import database, stream, upload

__all__ = ["cpu_seconds", "pct"]  # bench/watch_fanout.py imports them from here


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        env = {"LIVEML_LOG_LEVEL": "WARNING", **dict(kv.split("=", 1) for kv in args.env)}
        if args.postgres:
            env["LIVEML_DATABASE_URL"] = await stack.enter_async_context(database("postgres", root))
        proc, port = registry_process(root, **env)
        stack.callback(proc.stop)
        token = (root / "admin.token").read_text().strip()
        md = (("authorization", f"Bearer {token}"),)
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        stack.push_async_callback(channel.close)
        stub = rpb_grpc.RegistryServiceStub(channel)
        await stub.CreateModel(rpb.CreateModelRequest(model_id="m"), metadata=md)
        for seed in (1, 2):
            data = linear(root / f"v{seed}.onnx", seed=seed).read_bytes()
            await stub.CreateVersion(stream(upload("models/m", data)), metadata=md)
        watchers = Watchers(stub, md, args.watchers)
        tasks = [asyncio.create_task(watchers.watch(i)) for i in range(args.watchers)]
        clients = await Clients.start(args, port, token)
        stack.push_async_callback(clients.stop)
        tasks.append(asyncio.create_task(clients.follow(watchers.revision)))
        pid = proc.popen.pid
        quiet = await phase("quiet", clients, stub, md, watchers, pid, args.seconds, args.profile)
        fanout = [await rollout_fanout(stub, md, watchers, p) for p in (10, 20, 30)]
        quiet["rollout_seen_by_all_p99_ms"] = [round(f * 1e3, 1) for f in fanout]
        changing = (
            await phase("changing", clients, stub, md, watchers, pid, args.seconds)
            if not args.quiet_only
            else {"phase": "changing (skipped)", "cpu_us_per_heartbeat": float("nan")}
        )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "backend": "postgresql" if args.postgres else "sqlite",
            "workers": args.workers,
            "watchers": args.watchers,
            "clients": args.clients,
            "interval_s": args.interval,
            "phases": [quiet, changing],
            "ratio_cpu_per_heartbeat_changing_over_quiet": round(
                changing["cpu_us_per_heartbeat"] / max(1e-9, quiet["cpu_us_per_heartbeat"]), 2
            ),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--watchers", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0, help="heartbeat interval, s")
    parser.add_argument("--clients", type=int, default=3, help="client processes for workers")
    parser.add_argument("--profile", action="store_true", help="py-spy the quiet phase")
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    result["registry_env"] = args.env
    result["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "grpcio": grpc.__version__,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "registry_scale.json").write_text(json.dumps(result, indent=2))
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
    print("load average:", result["machine"]["load_avg"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
