"""The simulated workers of bench/registry_scale.py: client processes, each holding a
slice of the fleet (registered as real workers register, then heartbeating every
interval), and `Clients`, the bench's side of them.

A client process is `python bench/scale_fleet.py PORT TOKEN INTERVAL FIRST COUNT`; it
is driven by JSON lines on stdin (`observed`, `phase`, `mark`, `report`, `stop`) and
answers on stdout, so the simulator is spread over processes and is not what limits
the registry (each one's CPU is reported).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc import aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale_common import cpu_seconds, states
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc


class Fleet:
    """Simulated workers, in one client process."""

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

    async def worker(self, index: int, registering: asyncio.Semaphore) -> None:
        # Registered as real workers do (what they hold and the revision they saw), a few
        # at a time: the registry takes them at its own pace, no lease runs out queued.
        async with registering:
            registered = await self.stub.RegisterWorker(
                rpb.RegisterWorkerRequest(
                    worker=rpb.Worker(
                        address=f"10.{index // 62500}.{index // 250 % 250}.{index % 250}:9001",
                        versions=states(0),
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
            started = time.monotonic()
            try:
                await self.stub.Heartbeat(
                    rpb.HeartbeatRequest(
                        name=name, versions=states(flip), observed_revision=self.observed
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


if __name__ == "__main__":
    port, token, interval, first, count = sys.argv[1:6]
    asyncio.run(child(int(port), token, float(interval), int(first), int(count)))
