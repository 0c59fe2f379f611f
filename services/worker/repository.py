"""The model versions a worker holds, their states, and which one answers a request.

A version is LOADING, then READY or FAILED; a retired one is DRAINING: routers stop
sending it requests, but it still answers those that reach it for a grace period
(a gateway whose routing table lags a few milliseconds behind loses none), then
takes no new one, finishes those in flight and is unloaded. A draining version that
is wanted again is revived. With no version in the request, the rollout's split
decides among the versions READY here (services/common/serving.py: a target not
READY yet leaves its share with the rollout's fallback); with nothing of it READY,
the newest READY version answers, so a swap never leaves a gap.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy.typing as npt

from services.common import priority, serving, telemetry, weights
from services.common import versions as versions_
from services.common.errors import DeadlineExceeded, NotFound, ServiceError, Unavailable
from services.common.windows import WindowBook
from services.worker.batcher import Batcher, Timing, check_deadline, expired, rows, run_alone
from services.worker.runtime import Arrays, Runtime, Threads
from services.worker.stats import VersionStats

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"
    DRAINING = "DRAINING"


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 32
    max_queue_delay: float = 0.0


@dataclass
class Held:
    """One version of one model on this worker."""

    model: str
    version: int
    state: State = State.LOADING
    error: str = ""
    runtime: Runtime | None = None
    batcher: Batcher | None = None
    batching: Batching = Batching()
    inflight: int = 0
    inline: bool = False
    closing: bool = False  # DRAINING past its grace: no new request is taken
    unloading: bool = False  # past the point of no return: it cannot be revived
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    stats: VersionStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = VersionStats(self.model, self.version)
        self.idle.set()

    @property
    def max_batch_size(self) -> int:
        if self.runtime is None or not self.runtime.batchable:
            return 0
        return self.batching.max_batch_size


class Repository:
    def __init__(
        self,
        threads: Threads = Threads(),
        run_threads: int = 2,
        inline_us: float = 0.0,
        book: WindowBook | None = None,
        shadow_priority: str = "idle",
        shadow_thread: bool = True,
    ) -> None:
        self.threads = threads
        # Per-version windows for the registry (registry mode only): counts, and the
        # histograms of inputs and outputs that drift is computed from.
        self.book = book
        # Versions whose batch-1 run takes less than this run on the event loop itself:
        # handing a 20 us run to a thread costs more than the run, and blocks the loop
        # for no less time than the hand-off's own Python work.
        self.inline_us = inline_us
        self.held: dict[str, dict[int, Held]] = {}
        # Desired traffic per model (version, percent), from the rollout; empty = newest
        # READY. The fallback answers for targets not READY anywhere yet.
        self.targets: dict[str, list[tuple[int, int]]] = {}
        self.fallback: dict[str, list[tuple[int, float]]] = {}
        self.executor = ThreadPoolExecutor(max_workers=run_threads, thread_name_prefix="onnx")
        # Shadow copies run on their own thread at a lower OS priority, so a mirror
        # version, however slow, gets only the CPU time primary requests leave unused.
        self.shadow_executor = ThreadPoolExecutor(
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
        self.on_change: list[Callable[[Held], None]] = []

    # --- choosing a version ----------------------------------------------------------------

    def resolve(self, model: str, version: str) -> Held:
        versions = self.held.get(model)
        if not versions:
            raise NotFound(f"Request for unknown model: '{model}' is not found")
        if version:
            number = versions_.number(version)
            held = versions.get(number)
            if held is None:
                known = ", ".join(str(v) for v in sorted(versions)) or "none"
                raise NotFound(
                    f"Request for unknown model: '{model}' version {number} is not found "
                    f"(versions held: {known})"
                )
            if not _answers(held):
                why = f": {held.error}" if held.error else ""
                raise Unavailable(f"model '{model}' version {number} is {held.state.value}{why}")
            return held
        return self.default(model, versions)

    def default(self, model: str, versions: dict[int, Held]) -> Held:
        ready = {n for n, held in versions.items() if held.state is State.READY}
        shares = serving.split(
            self.targets.get(model, ()), self.fallback.get(model, ()), ready
        ).shares
        if shares:
            return versions[weights.pick(shares, random.random() * 100)]
        for number in sorted(versions, reverse=True):
            if versions[number].state is State.READY:
                return versions[number]
        if any(h.state is State.LOADING for h in versions.values()):
            raise Unavailable(f"model '{model}' has no READY version yet (loading)")
        raise Unavailable(f"model '{model}' has no available versions")

    # --- serving -----------------------------------------------------------------------------

    async def infer(
        self, held: Held, inputs: Arrays, shadow: bool = False, expires: float | None = None
    ) -> list[npt.NDArray[Any]]:
        """Run one request on a READY version (batched when the version batches).

        A shadow copy runs alone on the low-priority shadow thread (on a mirror worker,
        like any request). `expires` (time.monotonic()) is when the caller stops
        waiting: a request still waiting then is answered DEADLINE_EXCEEDED instead of
        being run.
        """
        if not _answers(held):
            raise Unavailable(f"model '{held.model}' version {held.version} is {held.state.value}")
        held.inflight += 1
        held.idle.clear()
        started = time.perf_counter()
        try:
            check_deadline(expires, started)  # a gateway may send it with no time left
            if shadow and self.shadow_thread:
                outputs, timing = await run_alone(
                    lambda x: self._run_shadow(held, x, expires), inputs, held.stats.batch
                )
            elif held.batcher is not None:
                outputs, timing = await held.batcher.submit(inputs, expires)
            else:
                outputs, timing = await run_alone(
                    lambda x: self._run(held, x, expires), inputs, held.stats.batch
                )
            if telemetry.tracing_enabled():
                _spans(held, timing)
        except ServiceError as exc:
            # A copy that aged out unrun says nothing of its version (the gateway counts
            # it as dropped).
            if not (shadow and isinstance(exc, DeadlineExceeded)):
                held.stats.failure(exc.code.name, time.perf_counter() - started)
                if self.book is not None:
                    self.book.request(held.model, held.version, 0.0, exc.code.name)
            raise
        except Exception as exc:
            held.stats.failure("INTERNAL", time.perf_counter() - started)
            if self.book is not None:
                self.book.request(held.model, held.version, 0.0, "INTERNAL")
            raise ServiceError(
                f"model '{held.model}' version {held.version} failed: {exc}"
            ) from exc
        finally:
            held.inflight -= 1
            if held.inflight == 0:
                held.idle.set()
        seconds = time.perf_counter() - started
        held.stats.request(rows(inputs), seconds)
        if self.book is not None:
            self.book.request(held.model, held.version, seconds)
            features = self.book.features.get((held.model, held.version))
            if features is not None and held.runtime is not None:
                features.observe(inputs, dict(zip(held.runtime.output_names, outputs, strict=True)))
        return outputs

    async def _run(
        self, held: Held, inputs: Arrays, expires: float | None = None
    ) -> list[npt.NDArray[Any]]:
        runtime = held.runtime
        assert runtime is not None
        if held.inline:
            # Cheaper than the thread hand-off it would otherwise cost (see `inline_us`).
            return runtime.run(inputs)
        if expires is None:
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, runtime.run, inputs
            )

        def run_unless_expired(queued: float = time.perf_counter()) -> list[npt.NDArray[Any]]:
            check_deadline(expires, queued)  # after its wait for a free run thread
            return runtime.run(inputs)

        return await asyncio.get_running_loop().run_in_executor(self.executor, run_unless_expired)

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
            return await loop.run_in_executor(self.shadow_executor, runtime.run, inputs)
        finally:
            self._shadow_turn.release()

    # --- loading and retiring ---------------------------------------------------------------

    def _set(self, held: Held, state: State, error: str = "") -> None:
        held.state, held.error = state, error
        held.stats.set_state(state.value)
        for listener in self.on_change:
            listener(held)

    async def load(
        self,
        model: str,
        version: int,
        path: Path | bytes,  # a file, or the model's bytes (a sealed artifact: no file)
        batching: Batching,
        check: Callable[[Runtime], None] | None = None,
    ) -> Held:
        """Open, check, warm up and publish a version; FAILED (with why) if any step fails."""
        held = self.held.setdefault(model, {}).get(version)
        # While a failed version is retried, its last failure stays visible.
        retrying = f"retrying; last failure: {held.error}" if held and held.error else ""
        if held is None or held.state in (State.FAILED, State.DRAINING):
            held = Held(model, version, batching=batching)
            self.held[model][version] = held
        elif held.state is State.READY:
            return held
        self._set(held, State.LOADING, retrying)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            runtime = await loop.run_in_executor(self.executor, Runtime, path, self.threads)
            if check is not None:
                check(runtime)
            try:
                warm = await loop.run_in_executor(self.executor, runtime.warm_up)
            except Exception as exc:
                raise ServiceError(
                    f"warm-up failed: {str(exc).strip().splitlines()[0][:300]}"
                ) from exc
        except ServiceError as exc:
            log.warning("%s v%d failed to load: %s", model, version, exc.message)
            self._set(held, State.FAILED, exc.message)
            return held
        held.runtime = runtime
        held.inline = warm * 1e6 < self.inline_us
        # Even a run cheaper than a thread hand-off is worth sharing: served between
        # gRPC's calls it finds onnxruntime's code and weights cold (bench/RESULTS.md).
        if held.max_batch_size > 1:
            held.batcher = Batcher(
                lambda inputs: self._run(held, inputs),
                held.max_batch_size,
                batching.max_queue_delay,
                held.stats.batch,
            )
        held.stats.loaded(time.perf_counter() - started)
        self._set(held, State.READY)
        log.info("%s v%d READY in %.2f s", model, version, time.perf_counter() - started)
        return held

    def revive(self, held: Held) -> bool:
        """A draining version wanted again: READY at once, nothing to reload. False once
        its unload has begun (it is then loaded again after)."""
        if held.state is State.DRAINING and held.runtime is not None and not held.unloading:
            held.closing = False
            self._set(held, State.READY)
            log.info("%s v%d wanted again: revived from DRAINING", held.model, held.version)
            return True
        return False

    def fail(self, model: str, version: int, error: str) -> Held:
        """Record a version that could not even be opened (e.g. its download failed)."""
        held = self.held.setdefault(model, {}).get(version)
        if held is None or held.state is not State.READY:
            held = Held(model, version)
            self.held[model][version] = held
            self._set(held, State.FAILED, error)
        return held

    async def retire(self, model: str, version: int, grace: float) -> None:
        """Stop admitting, let in-flight requests finish, wait `grace`, unload, free memory."""
        held = self.held.get(model, {}).get(version)
        if held is None:
            return
        if held.state is State.FAILED or held.runtime is None:
            self._forget(held)
            return
        self._set(held, State.DRAINING)
        if grace:
            await asyncio.sleep(grace)
        if held.state is not State.DRAINING:  # revived meanwhile
            return
        held.closing = True
        await held.idle.wait()
        if held.state is not State.DRAINING:  # revived meanwhile
            return
        # From here on the unload awaits: a revive now would report READY a version whose
        # runtime is about to go, and its requests would fail.
        held.unloading = True
        if held.batcher is not None:
            await held.batcher.close()
        runtime, held.runtime, held.batcher = held.runtime, None, None
        if runtime is not None:
            runtime.close()
        del runtime
        self._forget(held)
        gc.collect()
        log.info("%s v%d unloaded", model, version)

    def _forget(self, held: Held) -> None:
        versions = self.held.get(held.model, {})
        if versions.get(held.version) is held:
            del versions[held.version]
            if self.book is not None:
                self.book.features.pop((held.model, held.version), None)
        held.stats.forget()
        if not versions:
            self.held.pop(held.model, None)
        for listener in self.on_change:
            listener(held)

    def states(self) -> Sequence[Held]:
        return [h for versions in self.held.values() for h in versions.values()]

    async def close(self) -> None:
        for held in self.states():
            if held.batcher is not None:
                await held.batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.shadow_executor.shutdown(wait=False, cancel_futures=True)


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


def _answers(held: Held) -> bool:
    """READY, or DRAINING within its grace period."""
    return held.state is State.READY or (
        held.state is State.DRAINING and not held.closing and held.runtime is not None
    )
