"""Slow watchers bounded: a Watch whose client stops reading is ended, so it holds
neither memory nor a task for long and never holds up the feed or other watchers.

Each watch pulls from the feed's shared cache at its own pace (`watch.Feed`): a
watcher that falls behind owes nothing to anyone else, and what it has not been
sent stays in the cache, shared, never in a queue of its own. What a stuck client
does hold is HTTP/2 flow control's: once its stream window is full (a few MB at
most) grpc.aio's write of the next message waits, and the handler with it. Once
one write has waited `slow_seconds` the call is ended RESOURCE_EXHAUSTED: the status
goes out after the messages already queued (HTTP/2 keeps a stream's frames in
order), so the client that reads again sees each of them, then the status, and
resumes from the last revision it received, as it does after any interruption (a
snapshot comes only when that revision is older than the feed keeps: Kubernetes'
watch cache and etcd close slow watchers the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import grpc

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

log = logging.getLogger(__name__)

# How long ending a stuck call waits for its status to be queued (it is queued at
# once; its delivery waits on the client, this handler does not).
ABORT_SECONDS = 1.0


class SlowWatchers:
    """Ends watches whose writes wait too long; counts them (for tests and the bench)."""

    def __init__(self, slow_seconds: float) -> None:
        self.slow_seconds = slow_seconds
        self.ended = 0
        self._ending: set[asyncio.Task[None]] = set()

    async def bounded(
        self, responses: AsyncGenerator[rpb.WatchResponse, None], context: Any
    ) -> AsyncGenerator[rpb.WatchResponse, None]:
        """`responses`, each given at most `slow_seconds` to be written."""
        loop = asyncio.get_running_loop()
        # The task iterating this generator is the call's handler: grpc.aio awaits each
        # write in it, so cancelling it ends the wait (and the call).
        handler = asyncio.current_task()
        async with contextlib.aclosing(responses):
            async for response in responses:
                timer = loop.call_later(
                    self.slow_seconds, self._fell_behind, handler, context, response.revision
                )
                try:
                    yield response
                finally:
                    timer.cancel()

    def _fell_behind(self, handler: asyncio.Task[Any] | None, context: Any, revision: int) -> None:
        task = asyncio.ensure_future(self._end(handler, context, revision))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end(self, handler: asyncio.Task[Any] | None, context: Any, revision: int) -> None:
        self.ended += 1
        log.info(
            "ending a watch that went unread for %g s (at revision %d)", self.slow_seconds, revision
        )
        with contextlib.suppress(Exception):  # TimeoutError, or a call already ending
            async with asyncio.timeout(ABORT_SECONDS):
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"watcher fell behind: its stream went unread for {self.slow_seconds:g} s; "
                    f"resume with since_revision = the last revision received (this stream's "
                    f"last message has revision {revision})",
                )
        if handler is not None:
            handler.cancel()
