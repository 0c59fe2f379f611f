"""What a worker holds of one model version: its state, its session and batcher, its record.

A version is LOADING, then READY or FAILED; a retired one is DRAINING: routers stop
sending it requests, but it still answers those that reach it for a grace period,
then takes no new one (`closing`), finishes those in flight (`inflight`, `idle`) and
is unloaded (`unloading`). The repository (services/worker/repository.py) moves a
version between these states; the executor (services/worker/executor.py) runs its
requests and keeps `inflight` so a drain knows when the last one is done.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import InitVar, dataclass, field

from services.common.windows import WindowBook
from services.worker.batcher import Batcher
from services.worker.recorder import Recorder
from services.worker.runtime import Runtime


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
    inline: bool = False  # runs on the event loop: cheaper than a thread hand-off
    closing: bool = False  # DRAINING past its grace: no new request is taken
    unloading: bool = False  # past the point of no return: it cannot be revived
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # The windows book of registry mode (None standalone): its recorder feeds it.
    book: InitVar[WindowBook | None] = None
    recorder: Recorder = field(init=False)

    def __post_init__(self, book: WindowBook | None) -> None:
        self.recorder = Recorder(self.model, self.version, book)
        self.idle.set()

    @property
    def max_batch_size(self) -> int:
        if self.runtime is None or not self.runtime.batchable:
            return 0
        return self.batching.max_batch_size


def answers(held: Held) -> bool:
    """READY, or DRAINING within its grace period."""
    return held.state is State.READY or (
        held.state is State.DRAINING and not held.closing and held.runtime is not None
    )
