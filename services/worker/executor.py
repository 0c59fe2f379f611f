"""Running requests on a held version: the run threads, the shadow thread, spans, the record.

A request for a version that batches goes through its batcher; one that does not runs
alone, on a run thread (or on the event loop, for a version cheaper to run than to
hand off). A gateway's shadow copy runs alone on one low-priority thread, taking turns
outside the thread pool's queue so that a copy whose time runs out while it waits is
refused, not run late. Every request that reaches a version is recorded once, by its
recorder (services/worker/recorder.py), and with tracing on leaves spans for its
queue wait, its batch and its run.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy.typing as npt

from services.common import telemetry
from services.common.errors import DeadlineExceeded, ServiceError, Unavailable
from services.dataplane import priority
from services.worker.batcher import Timing, check_deadline, expired, run_alone
from services.worker.held import Held, answers
from services.worker.runtime import Arrays


class Executor:
    def __init__(
        self, run_threads: int = 2, shadow_priority: str = "idle", shadow_thread: bool = True
    ) -> None:
        # Opening and warming up versions uses these threads too (the repository's load).
        self.pool = ThreadPoolExecutor(max_workers=run_threads, thread_name_prefix="onnx")
        # Shadow copies run on their own thread at a lower OS priority, so a mirror
        # version, however slow, gets only the CPU time primary requests leave unused.
        self.shadow_pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="shadow",
            initializer=priority.lower_thread,
            initargs=(shadow_priority,),
        )
        # Copies take turns for it here, not in the executor's queue: a copy whose
        # sender's time runs out while it waits is refused then, and does not run
        # later, when clients' requests have left the core idle for a moment.
        self._shadow_turn = asyncio.Semaphore(1)
        # A mirror worker runs copies like any request, batched: its whole process
        # already runs at the lower priority, and takes no client's request.
        self.shadow_thread = shadow_thread

    async def infer(
        self, held: Held, inputs: Arrays, shadow: bool = False, expires: float | None = None
    ) -> list[npt.NDArray[Any]]:
        """Run one request on a version that answers (batched when the version batches).

        A shadow copy runs alone on the low-priority shadow thread (on a mirror worker,
        like any request). `expires` (time.monotonic()) is when the caller stops
        waiting: a request still waiting then is answered DEADLINE_EXCEEDED instead of
        being run.
        """
        if not answers(held):
            raise Unavailable(f"model '{held.model}' version {held.version} is {held.state.value}")
        runtime = held.runtime
        assert runtime is not None  # a version that answers has its session
        held.inflight += 1
        held.idle.clear()
        started = time.perf_counter()
        try:
            check_deadline(expires, started)  # a gateway may send it with no time left
            if shadow and self.shadow_thread:
                outputs, timing = await run_alone(
                    lambda x: self._run_shadow(held, x, expires), inputs, held.recorder.batch
                )
            elif held.batcher is not None:
                outputs, timing = await held.batcher.submit(inputs, expires)
            else:
                outputs, timing = await run_alone(
                    lambda x: self.run(held, x, expires), inputs, held.recorder.batch
                )
            if telemetry.tracing_enabled():
                _spans(held, timing)
        except ServiceError as exc:
            # A copy that aged out unrun says nothing of its version (the gateway counts
            # it as dropped).
            if not (shadow and isinstance(exc, DeadlineExceeded)):
                held.recorder.failed(exc.code.name, time.perf_counter() - started)
            raise
        except Exception as exc:
            held.recorder.failed("INTERNAL", time.perf_counter() - started)
            raise ServiceError(
                f"model '{held.model}' version {held.version} failed: {exc}"
            ) from exc
        finally:
            held.inflight -= 1
            if held.inflight == 0:
                held.idle.set()
        held.recorder.answered(inputs, runtime.output_names, outputs, time.perf_counter() - started)
        return outputs

    async def run(
        self, held: Held, inputs: Arrays, expires: float | None = None
    ) -> list[npt.NDArray[Any]]:
        """One run of the version's session (a whole batch, from its batcher)."""
        runtime = held.runtime
        assert runtime is not None
        if held.inline:
            # Cheaper than the thread hand-off it would otherwise cost (the repository's
            # `inline_us`).
            return runtime.run(inputs)
        if expires is None:
            return await asyncio.get_running_loop().run_in_executor(self.pool, runtime.run, inputs)

        def run_unless_expired(queued: float = time.perf_counter()) -> list[npt.NDArray[Any]]:
            check_deadline(expires, queued)  # after its wait for a free run thread
            return runtime.run(inputs)

        return await asyncio.get_running_loop().run_in_executor(self.pool, run_unless_expired)

    async def _run_shadow(
        self, held: Held, inputs: Arrays, expires: float | None
    ) -> list[npt.NDArray[Any]]:
        runtime = held.runtime
        assert runtime is not None
        queued = time.perf_counter()
        try:
            async with asyncio.timeout(None if expires is None else expires - time.monotonic()):
                await self._shadow_turn.acquire()
        except TimeoutError:
            raise expired(queued) from None
        try:
            check_deadline(expires, queued)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.shadow_pool, runtime.run, inputs)
        finally:
            self._shadow_turn.release()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.shadow_pool.shutdown(wait=False, cancel_futures=True)


def _spans(held: Held, t: Timing) -> None:
    attributes = {"liveml.model": held.model, "liveml.version": held.version}
    telemetry.record_span("liveml.queue", t.queued, t.batch_start, **attributes)
    telemetry.record_span(
        "liveml.batch",
        t.batch_start,
        t.batch_end,
        **attributes,
        **{"liveml.batch_rows": t.batch_rows},
    )
    telemetry.record_span("liveml.run", t.run_start, t.run_end, **attributes)
