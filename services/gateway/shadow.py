"""Shadow traffic: copies of answered requests sent to mirror versions, off the request path.

A copy is queued only after the primary answered, in a bounded queue: when the
queue is full the copy is dropped and counted, so a slow or failing mirror can
never delay or fail a client's request. Each mirror answer is compared with the
primary's (argmax equality, or relative error for numbers) and timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.gateway import metrics
from services.gateway.outputs import agree, first_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Copy:
    model: str
    version: int
    request: bytes  # the request, already pointed at the mirror version
    primary: bytes  # the primary's serialized answer


# Sends a request to some worker of (model, version); returns the answer or raises.
Sender = Callable[[str, int, bytes], Awaitable[bytes]]


class Shadow:
    def __init__(self, send: Sender, capacity: int, concurrency: int = 4) -> None:
        self._send = send
        self._queue: asyncio.Queue[Copy] = asyncio.Queue(capacity)
        self._tasks = [asyncio.create_task(self._drain()) for _ in range(concurrency)]
        self.agreement: dict[tuple[str, int], tuple[int, int]] = {}
        self.latency: dict[tuple[str, int], float] = {}

    def offer(self, copy: Copy) -> None:
        try:
            self._queue.put_nowait(copy)
        except asyncio.QueueFull:
            metrics.SHADOW_DROPPED.labels(copy.model, str(copy.version)).inc()

    async def _drain(self) -> None:
        while True:
            copy = await self._queue.get()
            started = time.perf_counter()
            labels = (copy.model, str(copy.version))
            try:
                answer = await self._send(copy.model, copy.version, copy.request)
            except Exception as exc:  # a failing mirror is counted, never raised
                metrics.REQUESTS.record(*labels, "shadow", "ERROR", 0.0)
                log.debug("mirror %s v%d failed: %s", copy.model, copy.version, exc)
                continue
            elapsed = time.perf_counter() - started
            metrics.REQUESTS.record(*labels, "shadow", "OK", elapsed)
            mine, theirs = first_output(answer), first_output(copy.primary)
            same = mine is not None and theirs is not None and agree(theirs, mine)
            ok, total = self.agreement.get((copy.model, copy.version), (0, 0))
            self.agreement[(copy.model, copy.version)] = (ok + int(same), total + 1)
            self.latency[(copy.model, copy.version)] = elapsed
            metrics.SHADOW_COMPARED.labels(*labels, "yes" if same else "no").inc()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
