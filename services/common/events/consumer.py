"""Consumers of the event stream: in order, idempotent by sequence, acked after commit.

A consumer keeps its position (the last sequence whose effects it committed) with
its own state and starts from there; whatever the backend delivers again at or
below it -- a redelivery after a crash between commit and ack, or a late ack that
applied to a redelivery -- is skipped, so each event takes effect once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from services.common.events import Batch
from services.common.gen.liveml.events.v1 import events_pb2 as epb


class Consumer(Protocol):
    name: str
    position: int

    async def fetch(self, max_events: int = 500, wait: float = 1.0) -> list[epb.Event]:
        """The next events after everything fetched so far ([] when none came in time)."""
        ...

    async def ack(self, sequence: int) -> None:
        """The consumer's state is committed through `sequence`."""
        ...

    async def close(self) -> None: ...


class ReadConsumer:
    """A consumer over a following read: its position lives only with its owner's state
    (the embedded backend keeps none for it)."""

    def __init__(self, name: str, batches: AsyncIterator[Batch], after: int) -> None:
        self.name = name
        self.position = after
        self._delivered = after
        self._queue: asyncio.Queue[Batch | BaseException] = asyncio.Queue(maxsize=4)
        self._pump = asyncio.create_task(self._run(batches), name=f"consumer-{name}")
        self._held: list[epb.Event] = []

    async def _run(self, batches: AsyncIterator[Batch]) -> None:
        try:
            async for batch in batches:
                await self._queue.put(batch)
        except Exception as exc:  # handed to the next fetch
            await self._queue.put(exc)

    async def fetch(self, max_events: int = 500, wait: float = 1.0) -> list[epb.Event]:
        if not self._held:
            try:
                async with asyncio.timeout(wait):
                    item = await self._queue.get()
            except TimeoutError:
                return []
            if isinstance(item, BaseException):
                raise item
            self._held = [e for e in item.events if e.sequence > self._delivered]
        out, self._held = self._held[:max_events], self._held[max_events:]
        if out:
            self._delivered = out[-1].sequence
        return out

    async def ack(self, sequence: int) -> None:
        self.position = max(self.position, sequence)

    async def close(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump


def wanted(event: epb.Event, model: str, kinds: Sequence[int]) -> bool:
    return (not model or event.model == model) and (not kinds or event.kind in kinds)
