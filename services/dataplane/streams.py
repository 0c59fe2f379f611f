"""Answering a request stream in request order while requests are worked on concurrently."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class OrderedStreams:
    """Serves bidirectional streams: up to `window` requests of a stream in flight at once,
    answers yielded in request order; `close()` stops reading every stream (shutdown) while
    the requests already read are still answered."""

    def __init__(self, window: int = 128) -> None:
        self.window = window
        self._readers: set[asyncio.Future[None]] = set()

    def close(self) -> None:
        for reader in self._readers:
            reader.cancel()

    async def serve(
        self, requests: AsyncIterator[Req], answer: Callable[[Req], Awaitable[Resp]]
    ) -> AsyncIterator[Resp]:
        pending: asyncio.Queue[asyncio.Future[Resp] | None] = asyncio.Queue(self.window)

        async def read() -> None:
            try:
                async for request in requests:
                    await pending.put(asyncio.ensure_future(answer(request)))
            finally:
                await pending.put(None)

        reader = asyncio.ensure_future(read())
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        try:
            while (task := await pending.get()) is not None:
                yield await task
            if not reader.cancelled():
                await reader  # surfaces a broken request stream
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
