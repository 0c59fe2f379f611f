"""The simulated workers of bench/registry_scale.py: client processes, each holding a
slice of the fleet (registered as real workers register, then heartbeating every
interval), and `Clients`, the bench's side of them.

A client process is `python bench/scale_fleet.py PORTS TOKEN INTERVAL FIRST COUNT TOTAL
MODE REREGISTER`; it is driven by JSON lines on stdin (`observed`, `interval`, `phase`,
`mark`, `report`, `stop`) and answers on stdout, so the simulator is spread over
processes and is not what limits the registry (each one's CPU is reported). Worker i
talks to registry replica i mod len(PORTS) (round-robin), always the same one.

MODE `stream`: each worker heartbeats on one StreamHeartbeats call kept open, through
the worker's own client (services.worker.heartbeats.Heartbeats: reopened after any
error); a heartbeat answered NOT_FOUND is a lease lost, and the worker registers
again at once under its name and opens a new stream, as a real worker does. MODE
`unary`: one Heartbeat call per heartbeat; NOT_FOUND is a lease lost and, unless
REREGISTER is 1 (capacity mode), the worker keeps heartbeating its lost name (the
bench's behaviour before streams). Latency is write (or call) to its answer.
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
from services.worker.heartbeats import Heartbeats

ANSWER_SECONDS = 30.0  # a heartbeat unanswered this long failed (DEADLINE_EXCEEDED)


class Fleet:
    """Simulated workers, in one client process."""

    def __init__(
        self,
        stubs: list[rpb_grpc.RegistryServiceStub],
        md: Any,
        interval: float,
        indices: range,
        total: int,
        stream: bool,
        reregister: bool,
    ) -> None:
        self.stubs, self.md, self.interval, self.indices = stubs, md, interval, indices
        self.total = total  # workers in all the client processes
        self.stream, self.reregister = stream, reregister or stream
        self.lease = Duration()  # kept when the interval changes
        self.lease.FromNanoseconds(int(interval * 3e9))
        self.changing = False
        self.observed = 0  # the revision the parent's watchers saw
        self.latencies: list[float] = []
        self.lost = 0
        self.errors: list[str] = []
        self.stop = asyncio.Event()
        self.answered: dict[int, int] = {}  # heartbeats answered per worker, this phase
        self.warmed = asyncio.Event()  # every worker had two answered this phase
        self.registering = asyncio.Semaphore(4)
        self.retimed_at = 0.0  # when the interval last changed
        self._naps: set[asyncio.Future[None]] = set()

    async def register(self, stub: rpb_grpc.RegistryServiceStub, index: int, name: str) -> str:
        # Registered as real workers do (what they hold and the revision they saw), a few
        # at a time: the registry takes them at its own pace, no lease runs out queued.
        async with self.registering:
            registered = await stub.RegisterWorker(
                rpb.RegisterWorkerRequest(
                    worker=rpb.Worker(
                        name=name,
                        address=f"10.{index // 62500}.{index // 250 % 250}.{index % 250}:9001",
                        versions=states(0),
                        observed_revision=self.observed,
                    ),
                    lease_duration=self.lease,
                ),
                metadata=self.md,
                timeout=ANSWER_SECONDS,
            )
        return str(registered.worker.name)

    def retime(self, interval: float) -> None:
        """A new interval, at once: sleeping workers wake and take their place in it."""
        self.interval, self.retimed_at = interval, time.monotonic()
        for nap in list(self._naps):
            if not nap.done():
                nap.set_result(None)

    async def pace(self, index: int, started: float | None) -> None:
        """Sleep until this worker's next heartbeat: `interval` after the last one began,
        or (first, or after a retime) at its place in the interval, the fleet spread over
        it as real workers started at different times."""
        # Evenly over the interval: no burst, and a window that is not a whole number of
        # intervals still sees the offered rate.
        place = index / self.total
        deadline = (
            time.monotonic() + self.interval * place if started is None else started + self.interval
        )
        while (delay := deadline - time.monotonic()) > 0 and not self.stop.is_set():
            retimed_at = self.retimed_at
            nap = asyncio.get_running_loop().create_future()
            handle = asyncio.get_running_loop().call_later(
                delay, lambda n=nap: n.done() or n.set_result(None)
            )
            self._naps.add(nap)
            try:
                await nap
            finally:
                handle.cancel()
                self._naps.discard(nap)
            if self.retimed_at != retimed_at:
                deadline = self.retimed_at + self.interval * place
        await asyncio.sleep(0)  # why: yields, as a 0 s wait did before (noqa: sleep-ok)

    async def worker(self, index: int) -> None:
        stub = self.stubs[index % len(self.stubs)]
        name = await self.register(stub, index, "")
        beats = Heartbeats(stub, self.md, ANSWER_SECONDS) if self.stream else None
        flip, registered = 0, True
        await self.pace(index, None)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    if not registered:
                        name, registered = await self.register(stub, index, name), True
                    if self.changing:
                        flip += 1
                    await self.beat(stub, beats, name, flip)
                    self.latencies.append(time.monotonic() - started)
                    self.answered[index] = self.answered.get(index, 0) + 1
                    if len(self.answered) == len(self.indices) and min(self.answered.values()) >= 2:
                        self.warmed.set()
                except aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        self.lost += 1
                        if self.reregister:
                            registered = False  # our lease ran out: register again at once
                            continue
                    else:
                        self.errors.append(f"{exc.code().name}: {exc.details()}")
                await self.pace(index, started)
        finally:
            if beats is not None:
                beats.close()

    async def beat(
        self, stub: rpb_grpc.RegistryServiceStub, beats: Heartbeats | None, name: str, flip: int
    ) -> None:
        request = rpb.HeartbeatRequest(
            name=name, versions=states(flip), observed_revision=self.observed
        )
        if beats is None:
            await stub.Heartbeat(request, metadata=self.md, timeout=ANSWER_SECONDS)
            return
        await beats.send(request)
        if beats.unary and not any(e.startswith("stream:") for e in self.errors):
            # The registry answered UNIMPLEMENTED (an earlier release): say so, once.
            self.errors.insert(0, "stream: registry has no StreamHeartbeats, sent unary")


async def child(
    ports: list[int],
    token: str,
    interval: float,
    first: int,
    count: int,
    total: int,
    mode: str,
    rereg: bool,
) -> None:
    """One client process: its workers, driven by JSON lines on stdin, answered on stdout."""
    md = (("authorization", f"Bearer {token}"),)
    channels = [aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    stubs = [rpb_grpc.RegistryServiceStub(channel) for channel in channels]
    fleet = Fleet(stubs, md, interval, range(first, first + count), total, mode == "stream", rereg)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = [asyncio.create_task(fleet.worker(i)) for i in fleet.indices]

    def say(**what: Any) -> None:
        sys.stdout.write(json.dumps(what) + "\n")
        sys.stdout.flush()

    async def warm(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fleet.warmed.wait(), seconds)
        say(warmed=fleet.warmed.is_set())

    say(started=True)
    while line := await reader.readline():
        command = json.loads(line)
        if "observed" in command:
            fleet.observed = command["observed"]
        elif "interval" in command:
            fleet.retime(command["interval"])
        elif command.get("phase") is not None:
            fleet.changing = command["phase"] == "changing"
            fleet.answered.clear()
            fleet.warmed.clear()
            # Answered from a task: revisions keep arriving meanwhile.
            tasks.append(asyncio.create_task(warm(command.get("warm_seconds", 120))))
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
    fleet.retime(fleet.interval)  # wakes the sleepers, which see the stop
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()


class Clients:
    """The client processes, commanded together."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs
        self.observed = 0

    @classmethod
    async def start(
        cls, args: argparse.Namespace, ports: list[int], token: str, reregister: bool = False
    ) -> Clients:
        per = -(-args.workers // args.clients)
        procs = []
        for first in range(0, args.workers, per):
            procs.append(
                await asyncio.create_subprocess_exec(
                    # --nice-clients: the registries get the CPU first when the box is full
                    # (nice(1), not a preexec_fn: this process's gRPC threads and fork()).
                    *(["nice", "-n", str(args.nice_clients)] if args.nice_clients else []),
                    sys.executable,
                    __file__,
                    ",".join(map(str, ports)),
                    token,
                    str(args.interval),
                    str(first),
                    str(min(per, args.workers - first)),
                    str(args.workers),
                    args.heartbeats,
                    str(int(reregister)),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 26,
                )
            )
        clients = cls(procs)
        await clients.ask({})  # nothing: wait for every client's "started"
        return clients

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

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
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"client process {proc.pid} ended: {await proc.wait()}")
            answers.append(json.loads(line))
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
    ports, token, interval, first, count, total, mode, rereg = sys.argv[1:9]
    asyncio.run(
        child(
            [int(p) for p in ports.split(",")],
            token,
            float(interval),
            int(first),
            int(count),
            int(total),
            mode,
            rereg == "1",
        )
    )
