"""Which held version answers a request, and loading, reviving and retiring versions.

A request naming a version gets exactly that one: NOT_FOUND if it is not held here,
UNAVAILABLE while it loads, once it failed, or once its drain grace is over. A version
is opened, checked and warmed up off the event loop, then published READY; a retired
one drains (services/worker/held.py) and is unloaded; a draining version wanted again
is revived, not reloaded.

A request naming no version is given one by the rollout's split among the versions
READY here (services/common/serving.py: a target not READY yet leaves its share with
the rollout's fallback); with nothing of it READY, the newest READY version answers,
so a swap never leaves a gap.

Decided on purpose: only a caller that comes straight to a worker names no version
(the gateway always names one, picked by the same split across workers): a standalone
worker's clients, or a registry-backed one's with --allow-client-direct. Such a
caller is still given a version by the rollout's weights, not just the newest READY,
because a registry-backed worker holds more than the versions that take traffic:
mirror versions that only receive copies, pinned ones kept for callers that ask by
number. "Newest" would hand a direct caller a version the
rollout gives no share (an unvetted mirror), and turn a canary's 10 % into 100 %.
Standalone, with no rollout, the newest READY is the whole rule.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from services.common import serving
from services.common.errors import NotFound, ServiceError, Unavailable
from services.common.windows import WindowBook
from services.dataplane import versions as versions_
from services.dataplane import weights
from services.worker.batcher import Batcher
from services.worker.executor import Executor
from services.worker.held import Batching, Held, State, answers
from services.worker.runtime import Runtime, Threads

log = logging.getLogger(__name__)


class Repository:
    def __init__(
        self,
        executor: Executor,
        threads: Threads = Threads(),
        inline_us: float = 0.0,
        book: WindowBook | None = None,
    ) -> None:
        self.executor = executor
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
            if not answers(held):
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

    # --- loading and retiring ---------------------------------------------------------------

    def _set(self, held: Held, state: State, error: str = "") -> None:
        held.state, held.error = state, error
        held.recorder.stats.set_state(state.value)
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
            held = Held(model, version, batching=batching, book=self.book)
            self.held[model][version] = held
        elif held.state is State.READY:
            return held
        self._set(held, State.LOADING, retrying)
        started = time.perf_counter()
        loop, pool = asyncio.get_running_loop(), self.executor.pool
        try:
            runtime = await loop.run_in_executor(pool, Runtime, path, self.threads)
            if check is not None:
                check(runtime)
            try:
                warm = await loop.run_in_executor(pool, runtime.warm_up)
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
                lambda inputs: self.executor.run(held, inputs),
                held.max_batch_size,
                batching.max_queue_delay,
                held.recorder.batch,
            )
        held.recorder.stats.loaded(time.perf_counter() - started)
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
            held = Held(model, version, book=self.book)
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
        current = versions.get(held.version) is held
        if current:
            del versions[held.version]
        held.recorder.forget(current)
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
        # Last: a batcher's final runs use the executor's threads.
        self.executor.close()
