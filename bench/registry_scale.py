"""Benchmark: one registry under a fleet's heartbeats and watchers (issue #22's table).

One command (`make bench-registry-scale`): a registry process (SQLite by default,
`--postgres` for PostgreSQL on 127.0.0.1), N simulated workers — each registered, then
heartbeating every `--interval` seconds with the states of 4 versions — and W
gateway-like `Watch` streams, all from this process. Two phases of `--seconds` each, in
the same run:

- quiet: every heartbeat reports what the registry already knows (a fleet at rest);
- changing: every heartbeat flips one of its versions' states (each one a real change,
  published and audited: what every heartbeat cost before quiet ones became renewals).

Per phase: heartbeats answered per second, heartbeat latency p50/p99, leases lost
(a heartbeat answered NOT_FOUND), the registry's CPU (from /proc), CPU per heartbeat,
revisions added and watch events the watchers received; after the quiet phase, one
rollout change and how long until every watcher saw it (p99 over watchers). The
ratio changing ÷ quiet of CPU per heartbeat is printed from the same run. Results go
to bench/out/registry_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc import aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.helpers.models import linear
from tests.helpers.procs import registry_process
from tests.helpers.registry import database, stream, upload

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TICK = os.sysconf("SC_CLK_TCK")
READY, LOADING = rpb.VERSION_LOAD_STATE_READY, rpb.VERSION_LOAD_STATE_LOADING


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Fleet:
    def __init__(
        self, stub: rpb_grpc.RegistryServiceStub, md: Any, interval: float, workers: int
    ) -> None:
        self.stub, self.md, self.interval, self.workers = stub, md, interval, workers
        self.changing = False
        self.latencies: list[float] = []
        self.lost = 0
        self.errors: list[str] = []
        self.stop = asyncio.Event()
        self.answered: dict[int, int] = {}  # heartbeats answered per worker, this phase
        self.warmed = asyncio.Event()  # every worker had two answered this phase

    async def worker(self, index: int, observed: list[int]) -> None:
        registered = await self.stub.RegisterWorker(
            rpb.RegisterWorkerRequest(
                worker=rpb.Worker(address=f"10.0.{index // 250}.{index % 250}:9001"),
                lease_duration=Duration(seconds=int(self.interval * 3 + 2)),
            ),
            metadata=self.md,
        )
        name = registered.worker.name
        flip = 0
        # Spread the fleet over the interval, as real workers started at different times.
        await asyncio.sleep(self.interval * (index % 997) / 997)
        while not self.stop.is_set():
            if self.changing:
                flip += 1
            states = [
                rpb.WorkerVersionState(
                    model="m", version=v, state=LOADING if (v == 1 and flip % 2) else READY
                )
                for v in range(1, 5)
            ]
            started = time.monotonic()
            try:
                await self.stub.Heartbeat(
                    rpb.HeartbeatRequest(name=name, versions=states, observed_revision=observed[0]),
                    metadata=self.md,
                    timeout=30,
                )
                self.latencies.append(time.monotonic() - started)
                self.answered[index] = self.answered.get(index, 0) + 1
                if len(self.answered) == self.workers and min(self.answered.values()) >= 2:
                    self.warmed.set()
            except aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    self.lost += 1
                else:
                    self.errors.append(f"{exc.code().name}: {exc.details()}")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))


class Watchers:
    def __init__(self, stub: rpb_grpc.RegistryServiceStub, md: Any, count: int) -> None:
        self.stub, self.md, self.count = stub, md, count
        self.events = 0
        self.revision = [0]
        self.seen_rollout: dict[int, float] = {}  # watcher -> when it saw the marker
        self.marker = -1
        self.all_saw = asyncio.Event()

    async def watch(self, index: int) -> None:
        call = self.stub.Watch(rpb.WatchRequest(since_revision=0), metadata=self.md)
        async for response in call:
            if response.kind == rpb.WatchResponse.KIND_EVENTS:
                self.events += len(response.events)
                for event in response.events:
                    if event.HasField("rollout") and any(
                        t.percent == self.marker for t in event.rollout.targets
                    ):
                        self.seen_rollout.setdefault(index, time.monotonic())
                        if len(self.seen_rollout) == self.count:
                            self.all_saw.set()
            if response.revision:
                self.revision[0] = max(self.revision[0], response.revision)


async def current_revision(stub: rpb_grpc.RegistryServiceStub, md: Any) -> int:
    call = stub.Watch(rpb.WatchRequest(since_revision=0), metadata=md)
    first = await call.read()
    call.cancel()
    return int(first.revision)


async def phase(
    name: str, fleet: Fleet, watchers: Watchers, pid: int, seconds: float, changing: bool
) -> dict[str, Any]:
    fleet.changing = changing
    fleet.answered.clear()
    fleet.warmed.clear()
    # Measured once every worker had two heartbeats of this phase's kind answered (the
    # first quiet one after registering, or after a change, still publishes).
    # At saturation some workers never get there (their leases lapse): measure anyway,
    # and say so.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fleet.warmed.wait(), 120)
    warmed = fleet.warmed.is_set()
    del fleet.latencies[:]
    fleet.lost = 0
    events, rev0 = watchers.events, await current_revision(fleet.stub, fleet.md)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    rev1 = await current_revision(fleet.stub, fleet.md)
    beats = len(fleet.latencies)
    return {
        "phase": name,
        "heartbeats_per_s": round(beats / (t1 - t0), 1),
        "heartbeat_p50_ms": round(pct(fleet.latencies, 0.5) * 1e3, 2),
        "heartbeat_p99_ms": round(pct(fleet.latencies, 0.99) * 1e3, 2),
        "leases_lost": fleet.lost,
        "registry_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "cpu_us_per_heartbeat": round(1e6 * (cpu1 - cpu0) / max(1, beats), 1),
        "revisions_added": rev1 - rev0,
        "watch_events": watchers.events - events,
        "warmed": warmed,
    }


async def rollout_fanout(
    stub: rpb_grpc.RegistryServiceStub, md: Any, watchers: Watchers, percent: int
) -> float:
    watchers.marker = percent
    watchers.seen_rollout.clear()
    watchers.all_saw.clear()
    sent = time.monotonic()
    await stub.UpdateRollout(
        rpb.UpdateRolloutRequest(
            rollout=rpb.Rollout(
                name="models/m/rollout",
                targets=[
                    rpb.TrafficTarget(version=1, percent=100 - percent),
                    rpb.TrafficTarget(version=2, percent=percent),
                ],
            )
        ),
        metadata=md,
    )
    # Watchers that never see it count as infinitely late.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watchers.all_saw.wait(), 30)
    delays = [t - sent for t in watchers.seen_rollout.values()]
    delays += [float("inf")] * (watchers.count - len(delays))
    return pct(delays, 0.99)


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        env = {"LIVEML_LOG_LEVEL": "WARNING", **dict(kv.split("=", 1) for kv in args.env)}
        if args.postgres:
            env["LIVEML_DATABASE_URL"] = await stack.enter_async_context(database("postgres", root))
        proc, port = registry_process(root, **env)
        stack.callback(proc.stop)
        md = (("authorization", f"Bearer {(root / 'admin.token').read_text().strip()}"),)
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        stack.push_async_callback(channel.close)
        stub = rpb_grpc.RegistryServiceStub(channel)
        await stub.CreateModel(rpb.CreateModelRequest(model_id="m"), metadata=md)
        for seed in (1, 2):
            data = linear(root / f"v{seed}.onnx", seed=seed).read_bytes()
            await stub.CreateVersion(stream(upload("models/m", data)), metadata=md)
        fleet = Fleet(stub, md, args.interval, args.workers)
        watchers = Watchers(stub, md, args.watchers)
        tasks = [asyncio.create_task(watchers.watch(i)) for i in range(args.watchers)]
        observed = watchers.revision
        for start in range(0, args.workers, 100):
            tasks += [
                asyncio.create_task(fleet.worker(i, observed))
                for i in range(start, min(args.workers, start + 100))
            ]
            await asyncio.sleep(0.05)
        quiet = await phase("quiet", fleet, watchers, proc.popen.pid, args.seconds, False)
        fanout = [await rollout_fanout(stub, md, watchers, p) for p in (10, 20, 30)]
        quiet["rollout_seen_by_all_p99_ms"] = round(max(fanout) * 1e3, 1)
        changing = await phase("changing", fleet, watchers, proc.popen.pid, args.seconds, True)
        fleet.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "backend": "postgresql" if args.postgres else "sqlite",
            "workers": args.workers,
            "watchers": args.watchers,
            "interval_s": args.interval,
            "phases": [quiet, changing],
            "errors": fleet.errors[:5],
            "ratio_cpu_per_heartbeat_changing_over_quiet": round(
                changing["cpu_us_per_heartbeat"] / max(1e-9, quiet["cpu_us_per_heartbeat"]), 2
            ),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--watchers", type=int, default=20)
    parser.add_argument("--interval", type=float, default=2.0, help="heartbeat interval, s")
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
    cols = list(result["phases"][0])
    print(" | ".join(cols))
    for row in result["phases"]:
        print(" | ".join(str(row.get(c, "")) for c in cols))
    print(
        "CPU per heartbeat, changing / quiet (same run):",
        result["ratio_cpu_per_heartbeat_changing_over_quiet"],
    )
    if result["errors"]:
        print("errors:", result["errors"])
    print("load average:", result["machine"]["load_avg"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
