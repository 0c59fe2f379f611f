"""The gateway's shadow process: sends mirror copies to workers at idle CPU priority.

Started by `services.gateway.shadow` with one end of a socket pair as its only
argument. It reads its `ShadowConfig`, then copies, and writes back a `Tally` of
what it counted every `REPORT_SECONDS`. Each copy goes to the least loaded of the
workers the gateway named (over the same framed or gRPC links as the gateway's own
requests, on the workers' shadow streams), and its answer is compared with the
primary's. A copy no worker has started within `max_wait` of its offer is dropped
and counted: when clients' requests keep a core busy, copies for it are not kept
until a quiet moment (they would then take it from later requests). It exits when
the gateway closes its end, or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import socket
import sys
import time
from pathlib import Path

import grpc

from services.common.outputs import agree, first_output
from services.common.server import configure_logging
from services.dataplane import frames, priority
from services.gateway.links import Connector
from services.gateway.metrics import Requests
from services.gateway.shadow import REPORT_SECONDS, Copy, ShadowConfig, Tally
from services.gateway.upstream import Outgoing, UpstreamPool

log = logging.getLogger(__name__)

DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
# Copies in flight to workers at once: a flushed batch travels to a worker in one
# message, and a mirror worker runs it as one batch.
CONCURRENCY = 64
# A worker named in no copy for this long has left, or no longer holds a mirror
# version: its connection is closed (workers come and go with every redeployment).
IDLE_SECONDS = 60.0


class Recent:
    """When each worker was last named in a copy, and its framed listener's address."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.forward: dict[str, str] = {}  # worker address -> its framed listener's

    def note(self, copy: Copy, now: float) -> None:
        for address, forward in copy.workers:
            self.seen[address] = now
            if forward:
                self.forward[address] = forward

    async def prune(self, pool: UpstreamPool, now: float) -> None:
        """Forget workers not named for `IDLE_SECONDS`; close their idle connections."""
        self.seen = {a: t for a, t in self.seen.items() if now - t < IDLE_SECONDS}
        keep = set(self.seen) | pool.busy()  # a copy still on its way is let finish
        self.forward = {a: f for a, f in self.forward.items() if a in keep}
        await pool.retain(keep)


class Counting:
    """The running tally; `take` hands it over and starts a new one."""

    def __init__(self) -> None:
        self.requests = Requests()
        self.compared: dict[tuple[str, str, str], int] = {}
        self.dropped: dict[tuple[str, str], int] = {}

    def drop(self, labels: tuple[str, str]) -> None:
        self.dropped[labels] = self.dropped.get(labels, 0) + 1

    def take(self) -> Tally | None:
        if not (self.requests.counts or self.dropped):
            return None
        tally = Tally(self.requests.counts, self.requests.latency, self.compared, self.dropped)
        self.requests, self.compared, self.dropped = Requests(), {}, {}
        return tally


async def run(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    head = await frames.read(reader, 1 << 16)
    if head is None:
        return
    config = ShadowConfig(**json.loads(head))
    configure_logging(config.log_level)
    priority.lower_process(config.priority)
    if config.priority != "normal":
        priority.lower_own_session()  # the gateway started it in a session of its own
    recent = Recent()
    ca, cert, key = (
        Path(f) if f else None for f in (config.worker_ca, config.worker_cert, config.worker_key)
    )
    connector = Connector(
        ca,
        cert,
        key,
        config.max_message_bytes,
        lambda address: recent.forward.get(address),
        config.worker_token,
        config.worker_tls_name,
    )
    pool = UpstreamPool(connector.links)
    counting = Counting()
    queue: asyncio.Queue[Copy] = asyncio.Queue(config.capacity)
    tasks = [asyncio.create_task(_drain(queue, pool, counting, config)) for _ in range(CONCURRENCY)]
    tasks.append(asyncio.create_task(_report(writer, counting, recent, pool)))
    # Two copies of the request and the answer, each within the message limit.
    limit = 2 * config.max_message_bytes
    try:
        while (data := await frames.read(reader, limit)) is not None:
            copy: Copy = pickle.loads(data)
            recent.note(copy, time.monotonic())
            try:
                queue.put_nowait(copy)
            except asyncio.QueueFull:
                counting.drop((copy.model, str(copy.version)))
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.close()


async def _drain(
    queue: asyncio.Queue[Copy], pool: UpstreamPool, counting: Counting, config: ShadowConfig
) -> None:
    while True:
        copy = await queue.get()
        labels = (copy.model, str(copy.version))
        # A copy waits for a worker to start it until `max_wait` after its offer; one
        # that waited longer is dropped, here or by the worker.
        wait_until = copy.offered + config.max_wait
        if wait_until <= time.monotonic():
            counting.drop(labels)
            continue
        started = time.perf_counter()
        upstream = pool.pick([address for address, _ in copy.workers], set())
        assert upstream is not None  # the gateway sends no copy without a worker
        outgoing = Outgoing(copy.request, copy.version, wait_until)
        try:
            reply = await upstream.send(outgoing, config.timeout, shadow=True)
            if reply.code == DEADLINE_EXCEEDED:
                counting.drop(labels)
                continue
            if reply.code:
                raise RuntimeError(reply.message)
            elapsed = time.perf_counter() - started
            mine, theirs = first_output(reply.response), first_output(copy.primary)
        except Exception as exc:  # a failing mirror is counted, never raised
            counting.requests.record(*labels, "shadow", "ERROR", 0.0)
            log.debug("mirror %s v%d failed: %s", copy.model, copy.version, exc)
            continue
        counting.requests.record(*labels, "shadow", "OK", elapsed)
        same = mine is not None and theirs is not None and agree(theirs, mine)
        key = (*labels, "yes" if same else "no")
        counting.compared[key] = counting.compared.get(key, 0) + 1


async def _report(
    writer: asyncio.StreamWriter, counting: Counting, recent: Recent, pool: UpstreamPool
) -> None:
    while True:
        await asyncio.sleep(REPORT_SECONDS)
        await recent.prune(pool, time.monotonic())
        tally = counting.take()
        if tally is not None:
            writer.write(frames.frame(pickle.dumps(tally, pickle.HIGHEST_PROTOCOL)))
            await writer.drain()


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(sock))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
