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
    """Simulated workers, in one client process (`--child`)."""

    def __init__(
        self, stub: rpb_grpc.RegistryServiceStub, md: Any, interval: float, indices: range
    ) -> None:
        self.stub, self.md, self.interval, self.indices = stub, md, interval, indices
        self.changing = False
        self.observed = 0  # the revision the parent's watchers saw
        self.latencies: list[float] = []
        self.lost = 0
        self.errors: list[str] = []
        self.stop = asyncio.Event()
        self.answered: dict[int, int] = {}  # heartbeats answered per worker, this phase
        self.warmed = asyncio.Event()  # every worker had two answered this phase

    def states(self, flip: int) -> list[rpb.WorkerVersionState]:
        return [
            rpb.WorkerVersionState(
                model="m", version=v, state=LOADING if (v == 1 and flip % 2) else READY
            )
            for v in range(1, 5)
        ]

    async def worker(self, index: int, registering: asyncio.Semaphore) -> None:
        # Registered as real workers do (what they hold and the revision they saw), a few
        # at a time: the registry takes them at its own pace, no lease runs out queued.
        async with registering:
            registered = await self.stub.RegisterWorker(
                rpb.RegisterWorkerRequest(
                    worker=rpb.Worker(
                        address=f"10.{index // 62500}.{index // 250 % 250}.{index % 250}:9001",
                        versions=self.states(0),
                        observed_revision=self.observed,
                    ),
                    lease_duration=Duration(seconds=int(self.interval * 3)),
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
            states = self.states(flip)
            started = time.monotonic()
            try:
                await self.stub.Heartbeat(
                    rpb.HeartbeatRequest(
                        name=name, versions=states, observed_revision=self.observed
                    ),
                    metadata=self.md,
                    timeout=30,
                )
                self.latencies.append(time.monotonic() - started)
                self.answered[index] = self.answered.get(index, 0) + 1
                if len(self.answered) == len(self.indices) and min(self.answered.values()) >= 2:
                    self.warmed.set()
            except aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    self.lost += 1
                else:
                    self.errors.append(f"{exc.code().name}: {exc.details()}")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))


async def child(port: int, token: str, interval: float, first: int, count: int) -> None:
    """One client process: its workers, driven by JSON lines on stdin, answered on stdout."""
    md = (("authorization", f"Bearer {token}"),)
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    fleet = Fleet(rpb_grpc.RegistryServiceStub(channel), md, interval, range(first, first + count))
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    registering = asyncio.Semaphore(4)
    tasks = [asyncio.create_task(fleet.worker(i, registering)) for i in fleet.indices]

    def say(**what: Any) -> None:
        sys.stdout.write(json.dumps(what) + "\n")
        sys.stdout.flush()

    async def warm() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fleet.warmed.wait(), 120)
        say(warmed=fleet.warmed.is_set())

    say(started=True)
    while line := await reader.readline():
        command = json.loads(line)
        if "observed" in command:
            fleet.observed = command["observed"]
        elif command.get("phase") is not None:
            fleet.changing = command["phase"] == "changing"
            fleet.answered.clear()
            fleet.warmed.clear()
            # Answered from a task: revisions keep arriving meanwhile.
            tasks.append(asyncio.create_task(warm()))
        elif command.get("mark"):
            del fleet.latencies[:]
            fleet.lost = 0
            say(cpu=cpu_seconds(os.getpid()))
        elif command.get("report"):
            say(
                latencies=fleet.latencies,
                lost=fleet.lost,
                errors=fleet.errors[:5],
                cpu=cpu_seconds(os.getpid()),
            )
        elif command.get("stop"):
            break
    fleet.stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await channel.close()


class Clients:
    """The client processes, commanded together."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs
        self.observed = 0

    @classmethod
    async def start(cls, args: argparse.Namespace, port: int, token: str) -> Clients:
        per = -(-args.workers // args.clients)
        procs = []
        for first in range(0, args.workers, per):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--child",
                    str(port),
                    token,
                    str(args.interval),
                    str(first),
                    str(min(per, args.workers - first)),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 26,
                )
            )
        clients = cls(procs)
        await clients.ask({})  # nothing: wait for every client's "started"
        return clients

    async def tell(self, command: dict[str, Any]) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(command) + "\n").encode())
            await proc.stdin.drain()

    async def ask(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        if command:
            await self.tell(command)
        answers = []
        for proc in self.procs:
            assert proc.stdout is not None
            answers.append(json.loads(await proc.stdout.readline()))
        return answers

    async def follow(self, revision: list[int]) -> None:
        """Hand the clients every revision the watchers saw (the workers' observed one)."""
        while True:
            if revision[0] != self.observed:
                self.observed = revision[0]
                await self.tell({"observed": self.observed})
            await asyncio.sleep(0.01)  # why: polls a plain int (noqa: sleep-ok)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.tell({"stop": True})
        for proc in self.procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()


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


async def py_spy(pid: int, seconds: float) -> asyncio.subprocess.Process:
    OUT.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "py-spy"),
        "record",
        "--nonblocking",  # --native pauses the registry for each sample
        "--format",
        "raw",
        "-p",
        str(pid),
        "-d",
        str(int(seconds)),
        "-o",
        str(OUT / "registry_scale.folded"),
        stdout=asyncio.subprocess.DEVNULL,
    )


async def phase(
    name: str,
    clients: Clients,
    stub: rpb_grpc.RegistryServiceStub,
    md: Any,
    watchers: Watchers,
    pid: int,
    seconds: float,
    profile: bool = False,
) -> dict[str, Any]:
    # Measured once every worker had two heartbeats of this phase's kind answered (the
    # first quiet one after registering, or after a change, still publishes).
    # At saturation some workers never get there (their leases lapse): measure anyway,
    # and say so.
    warmed = all(a["warmed"] for a in await clients.ask({"phase": name}))
    client_cpu0 = sum(a["cpu"] for a in await clients.ask({"mark": True}))
    events, rev0 = watchers.events, await current_revision(stub, md)
    profiler = await py_spy(pid, seconds) if profile else None
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    if profiler is not None and await profiler.wait():
        print("py-spy failed (exit status", profiler.returncode, ")")
    reports = await clients.ask({"report": True})
    rev1 = await current_revision(stub, md)
    latencies = [x for r in reports for x in r["latencies"]]
    beats = len(latencies)
    return {
        "phase": name,
        "heartbeats_per_s": round(beats / (t1 - t0), 1),
        "heartbeat_p50_ms": round(pct(latencies, 0.5) * 1e3, 2),
        "heartbeat_p99_ms": round(pct(latencies, 0.99) * 1e3, 2),
        "heartbeat_max_ms": round(max(latencies, default=float("nan")) * 1e3, 1),
        "leases_lost": sum(r["lost"] for r in reports),
        "registry_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "cpu_us_per_heartbeat": round(1e6 * (cpu1 - cpu0) / max(1, beats), 1),
        "client_cpu_pct_each": round(
            100 * (sum(r["cpu"] for r in reports) - client_cpu0) / (t1 - t0) / len(reports), 1
        ),
        "revisions_added": rev1 - rev0,
        "watch_events": watchers.events - events,
        "warmed": warmed,
        "errors": [e for r in reports for e in r["errors"]][:5],
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
    if sys.argv[1:2] == ["--child"]:
        port, token, interval, first, count = sys.argv[2:7]
        asyncio.run(child(int(port), token, float(interval), int(first), int(count)))
        return 0
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
