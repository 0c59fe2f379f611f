"""Dynamic batching of one model version: queue requests, merge them, split the answers.

Requests are merged along the batch axis (dimension 0) up to `max_batch_size`
rows. A batch starts when the runner is free, with whatever is queued then, and
waits for more, at most `max_queue_delay`, only as long as waiting has lately
brought company (`services.dataplane.gather`): a lone client's request runs at once,
while concurrent unary requests, which arrive one at a time, share one run.
Requests whose other dimensions or dtypes differ are not merged, and a request
larger than the maximum runs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.errors import DeadlineExceeded
from services.dataplane.gather import Gather
from services.worker.runtime import Arrays

Run = Callable[[Arrays], Awaitable[list[npt.NDArray[Any]]]]
# (rows in the batch, seconds its oldest request queued, seconds the run took)
Observer = Callable[[int, float, float], None]


def _key(inputs: Arrays) -> tuple[Any, ...]:
    """Requests with equal keys can be merged: same inputs, dtypes and non-batch dims."""
    return tuple((name, a.dtype, a.shape[1:]) for name, a in sorted(inputs.items()))


def rows(inputs: Arrays) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0


@dataclass
class Timing:
    """perf_counter() marks of one request's trip: queued, batch formed, run, batch split."""

    queued: float
    batch_start: float = 0.0
    run_start: float = 0.0
    run_end: float = 0.0
    batch_end: float = 0.0
    batch_rows: int = 0


Result = tuple[list[npt.NDArray[Any]], Timing]


@dataclass
class _Pending:
    inputs: Arrays
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[Result]
    expires: float | None = None  # time.monotonic() when its caller stops waiting
    timing: Timing = field(default_factory=lambda: Timing(time.perf_counter()))


def check_deadline(expires: float | None, queued: float) -> None:
    """Refuse to start work whose caller has stopped waiting (`queued`: perf_counter())."""
    if expires is not None and time.monotonic() > expires:
        raise expired(queued)


def expired(queued: float) -> DeadlineExceeded:
    """The refusal of a request queued at `queued` (perf_counter()) past its deadline."""
    waited = (time.perf_counter() - queued) * 1000
    return DeadlineExceeded(
        f"the caller's deadline passed while the request waited {waited:.0f} ms on the "
        "worker; it was not run"
    )


class Batcher:
    def __init__(
        self,
        run: Run,
        max_batch_size: int,
        max_queue_delay: float = 0.0,
        observe: Observer | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self._observe = observe
        self._gather = Gather(max_queue_delay, max_batch_size)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._carry: _Pending | None = None
        self._task: asyncio.Task[None] | None = None
        self._free = asyncio.Event()  # no batch is forming or running
        self._free.set()

    def alone(self) -> bool:
        """Whether a request arriving now has nobody to share a run with and should not
        wait for anybody; if so it is counted as sent alone."""
        if (
            self._free.is_set()
            and self._queue.empty()
            and self._carry is None
            and not self._gather.waits()
        ):
            self._gather.wanted()
            self._gather.sent(1, timed_out=False)
            return True
        return False

    async def submit(self, inputs: Arrays, expires: float | None = None) -> Result:
        n = rows(inputs)
        if n > self.max_batch_size or n == 0:
            return await run_alone(self._run, inputs, self._observe)
        if self.alone():
            # Run now, without the hop through the queue and the batcher's task; the
            # batcher waits for this run before it starts another batch.
            self._free.clear()
            try:
                return await run_alone(self._run, inputs, self._observe)
            finally:
                self._free.set()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="batcher")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(inputs, n, _key(inputs), future, expires))
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _next(self, within: float | None) -> _Pending | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if within is None:
            return await self._queue.get()
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if within <= 0:
                return None
        try:
            async with asyncio.timeout(within):
                return await self._queue.get()
        except TimeoutError:
            return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            assert first is not None
            await self._free.wait()  # a request run at once may still be running
            self._free.clear()
            try:
                await self._batch(loop, first)
            finally:
                self._free.set()

    async def _batch(self, loop: asyncio.AbstractEventLoop, first: _Pending) -> None:
        batch, size = [first], first.rows
        wanted = self._gather.wanted()
        deadline = loop.time() + self.max_queue_delay
        timed_out = False
        while size < self.max_batch_size:
            # What is queued joins at once; more is waited for only up to `wanted`.
            within = max(0.0, deadline - loop.time()) if size < wanted else 0.0
            item = await self._next(within)
            if item is None:
                timed_out = size < wanted
                break
            if item.key != first.key or size + item.rows > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            size += item.rows
        self._gather.sent(size, timed_out)
        await self._execute(batch, size)

    async def _execute(self, batch: list[_Pending], size: int) -> None:
        live = []
        for p in batch:
            if p.future.cancelled():
                continue
            try:
                check_deadline(p.expires, p.timing.queued)
            except DeadlineExceeded as exc:
                p.future.set_exception(exc)
                continue
            live.append(p)
        if not live:
            return
        size = sum(p.rows for p in live)
        batch_start = time.perf_counter()
        if len(live) == 1:
            merged = live[0].inputs
        else:
            merged = {
                name: np.concatenate([p.inputs[name] for p in live]) for name in live[0].inputs
            }
        run_start = time.perf_counter()
        try:
            outputs = await self._run(merged)
        except Exception as exc:
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        run_end = time.perf_counter()
        if self._observe:
            self._observe(size, batch_start - batch[0].timing.queued, run_end - run_start)
        total = sum(p.rows for p in live)
        kept = len(live) == 1 or all(o.shape[:1] == (total,) for o in outputs)
        start = 0
        for p in live:
            end = start + p.rows
            if not p.future.done():
                t = p.timing
                t.batch_start, t.run_start, t.run_end = batch_start, run_start, run_end
                t.batch_rows, t.batch_end = total, time.perf_counter()
                if len(live) == 1:
                    p.future.set_result((outputs, t))
                elif kept:
                    p.future.set_result(([o[start:end] for o in outputs], t))
                else:
                    p.future.set_exception(
                        RuntimeError("the model's outputs do not keep the batch dimension")
                    )
            start = end


async def run_alone(run: Run, inputs: Arrays, observe: Observer | None = None) -> Result:
    """One request as its own batch (no batching, or larger than the maximum)."""
    timing = Timing(time.perf_counter())
    timing.batch_start = timing.run_start = timing.queued
    outputs = await run(inputs)
    timing.run_end = timing.batch_end = time.perf_counter()
    timing.batch_rows = rows(inputs)
    if observe:
        observe(timing.batch_rows, 0.0, timing.run_end - timing.run_start)
    return outputs, timing
