"""Watchers and measured windows of bench/registry_scale.py: gateway-like `Watch`
streams (counting events, tracking the revision they saw, timing a rollout marker;
watcher i on replica i mod N), one phase's measurement (heartbeats/s, latency
percentiles, leases lost, registry CPU per replica and summed, revisions added, watch
events) and a rollout's fan-out to every watcher (the change made on replica 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale_common import OUT, box_jiffies, pct
from bench.scale_fleet import Clients
from bench.scale_registries import Registries
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc


class Watchers:
    """Gateway-like Watch streams of the whole feed."""

    def __init__(self, stubs: list[rpb_grpc.RegistryServiceStub], md: Any, count: int) -> None:
        self.stubs, self.md, self.count = stubs, md, count
        self.events = 0
        self.revision = [0]
        self.seen_rollout: dict[int, float] = {}  # watcher -> when it saw the marker
        self.marker = -1
        self.all_saw = asyncio.Event()

    async def watch(self, index: int) -> None:
        stub = self.stubs[index % len(self.stubs)]
        call = stub.Watch(rpb.WatchRequest(since_revision=0), metadata=self.md)
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
    registries: Registries,
    watchers: Watchers,
    seconds: float,
    profile: bool = False,
    warm_seconds: float = 120,
) -> dict[str, Any]:
    # Measured once every worker had two heartbeats of this phase's kind answered (the
    # first quiet one after registering, or after a change, still publishes).
    # At saturation some workers never get there (their leases lapse): measure anyway,
    # and say so.
    stub, md = registries.stub, registries.md
    asked = {"phase": name, "warm_seconds": warm_seconds}
    warmed = all(a["warmed"] for a in await clients.ask(asked))
    client_cpu0 = sum(a["cpu"] for a in await clients.ask({"mark": True}))
    events, rev0 = watchers.events, await current_revision(stub, md)
    # Replica 0 only: py-spy records one process.
    profiler = await py_spy(registries.pids[0], seconds) if profile else None
    cpu0, box0, t0 = registries.cpu(), box_jiffies(), time.monotonic()
    throttled0 = registries.throttled_ms()
    await asyncio.sleep(seconds)
    cpu1, box1, t1 = registries.cpu(), box_jiffies(), time.monotonic()
    throttled1 = registries.throttled_ms()
    if profiler is not None and await profiler.wait():
        print("py-spy failed (exit status", profiler.returncode, ")")
    reports = await clients.ask({"report": True})
    rev1 = await current_revision(stub, md)
    latencies = [x for r in reports for x in r["latencies"]]
    beats = len(latencies)
    each = [100 * (b - a) / (t1 - t0) for a, b in zip(cpu0, cpu1, strict=True)]
    used = sum(cpu1) - sum(cpu0)
    row = {
        "phase": name,
        "heartbeats_per_s": round(beats / (t1 - t0), 1),
        "heartbeat_p50_ms": round(pct(latencies, 0.5) * 1e3, 2),
        "heartbeat_p99_ms": round(pct(latencies, 0.99) * 1e3, 2),
        "heartbeat_max_ms": round(max(latencies, default=float("nan")) * 1e3, 1),
        "leases_lost": sum(r["lost"] for r in reports),
        "registry_cpu_pct": round(sum(each), 1),
        "cpu_us_per_heartbeat": round(1e6 * used / max(1, beats), 1),
        "client_cpu_pct_each": round(
            100 * (sum(r["cpu"] for r in reports) - client_cpu0) / (t1 - t0) / len(reports), 1
        ),
        "revisions_added": rev1 - rev0,
        "watch_events": watchers.events - events,
        "warmed": warmed,
        "errors": [e for r in reports for e in r["errors"]][:5],
    }
    # The whole machine, in cores (the registries, the simulator, the database, anything
    # else running): how much of the box there was left.
    busy, every = box1[0] - box0[0], box1[1] - box0[1]
    row["box_cores_busy"] = round((os.cpu_count() or 1) * busy / max(1, every), 2)
    if len(each) > 1:  # one registry's columns stay as they were
        row["registry_cpu_pct_each"] = [round(c, 1) for c in each]
    if throttled1:  # --replica-cpus: the share of the window each replica waited for quota
        row["registry_throttled_pct_each"] = [
            round((b - a) / 10 / (t1 - t0), 1) for a, b in zip(throttled0, throttled1, strict=True)
        ]
    return row


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
