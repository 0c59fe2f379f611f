"""Long-lived streams to the workers, carrying requests as raw bytes.

One stream per worker (a framed connection or a gRPC Forward call,
`services.gateway.links`) carries the gateway's primary requests to it; shadow
copies get a second one, so they never hold a primary back, and the worker runs
what comes on it at low priority. A writer task sends, in one message, every
request that queued up while its previous write was in flight, so under load the
per-message cost is shared by many requests.

Under load the writer also waits, at most `hold`, for as many requests as it has
learned arrive together (`services.common.gather`): with unary clients requests reach
it one at a time, and each message costs both processes far more than the requests
in it, so gathering them multiplies what a gateway and a worker sharing a core can
serve. A lone client is learned to have no company, and its requests go out at once.

Requests are numbered; replies come back in the order they completed, matched by
number. When a stream breaks, everything waiting on it fails with `UpstreamDown`
(and may be retried on another worker) and the next request opens a new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence

from services.common.gather import Gather
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.gateway.links import Link, Links

log = logging.getLogger(__name__)

# One message carries at most this many requests, or about this many bytes.
MAX_BATCH = 256
MAX_BATCH_BYTES = 4 << 20


class UpstreamDown(Exception):
    """The worker's stream failed before this request was answered."""


class _Stream:
    """One open Forward stream: a writer task, a reader task and what waits on them."""

    def __init__(
        self, address: str, link: Link, first_sequence: int, hold: float, shadow: bool
    ) -> None:
        self.address = address
        self.shadow = shadow
        self.gather = Gather(hold, MAX_BATCH)
        self.link = link
        self.sequence = first_sequence
        self.queue: list[bytes] = []
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.wake = asyncio.Event()
        self.holding = False  # waiting for more requests to share the next message
        self.broken = False
        self.messages = 0  # ForwardRequest messages written (each carries 1+ requests)
        self.writer = asyncio.create_task(self._write(), name=f"upstream write {address}")
        self.reader = asyncio.create_task(self._read(), name=f"upstream read {address}")

    def send(self, data: bytes) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[self.sequence + len(self.queue)] = future
        self.queue.append(data)
        self.wake.set()
        return future

    async def _write(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.queue:
                    wanted = self.gather.wanted()
                    timed_out = len(self.queue) < wanted and await self._gather(wanted)
                    if self.broken:
                        return
                    count, size = 0, 0
                    for data in self.queue:
                        if count and (count >= MAX_BATCH or size + len(data) > MAX_BATCH_BYTES):
                            break
                        count, size = count + 1, size + len(data)
                    batch, self.queue = self.queue[:count], self.queue[count:]
                    message = wpb.ForwardRequest(
                        first_sequence=self.sequence, requests=batch, shadow=self.shadow
                    )
                    self.sequence += count
                    self.messages += 1
                    self.gather.sent(count, timed_out)
                    await self.link.write(message.SerializeToString())
        except Exception as exc:  # any failed write ends the stream; waiters retry elsewhere
            self.fail(f"{type(exc).__name__}: {exc}")
            self.link.cancel()

    async def _gather(self, wanted: int) -> bool:
        """Wait until `wanted` requests queued; True if the hold ran out first."""
        self.holding = True
        try:
            async with asyncio.timeout(self.gather.hold):
                while len(self.queue) < wanted and not self.broken:
                    self.wake.clear()
                    await self.wake.wait()
            return False
        except TimeoutError:
            return True
        finally:
            self.holding = False

    async def _read(self) -> None:
        reason = "stream closed"
        try:
            async for raw in self.link.replies():
                for reply in wpb.ForwardResponse.FromString(raw).replies:
                    future = self.waiting.pop(reply.sequence, None)
                    if future is not None and not future.done():
                        future.set_result(reply.response)
        except asyncio.CancelledError:
            reason = "stream cancelled"
        except Exception as exc:  # LinkError, or a reply that does not parse
            reason = str(exc) or type(exc).__name__
        self.fail(reason)

    def fail(self, reason: str) -> None:
        """Everything not yet answered fails; the stream is not used again."""
        self.broken = True
        self.queue.clear()
        self.wake.set()  # a writer gathering requests stops
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(UpstreamDown(f"worker {self.address}: {reason}"))

    def forget(self, future: asyncio.Future[bytes]) -> None:
        """A caller gave up (deadline): its answer, if it comes, is dropped."""
        for sequence, waiting in list(self.waiting.items()):
            if waiting is future:
                del self.waiting[sequence]
                return

    async def close(self) -> None:
        self.link.cancel()
        for task in (self.writer, self.reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Upstream:
    def __init__(self, address: str, links: Links, hold: float = 0.0) -> None:
        self.address = address
        self.links = links
        self.hold = hold
        self.outstanding = 0
        self._streams: dict[bool, _Stream] = {}  # by "carries shadow copies"
        self._closing: set[asyncio.Task[None]] = set()  # streams being closed in the background

    def _stream(self, shadow: bool) -> _Stream:
        stream = self._streams.get(shadow)
        if stream is not None and not stream.broken:
            return stream
        first = 0
        if stream is not None:
            first = stream.sequence + len(stream.queue)
            closing = asyncio.get_running_loop().create_task(stream.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        stream = _Stream(self.address, self.links.open(), first, self.hold, shadow)
        self._streams[shadow] = stream
        return stream

    async def send(self, data: bytes, within: float | None, shadow: bool = False) -> bytes:
        """One request's reply (a serialized ModelStreamInferResponse)."""
        stream = self._stream(shadow)
        future = stream.send(data)
        self.outstanding += 1
        try:
            async with asyncio.timeout(within):
                return await future
        except TimeoutError:
            stream.forget(future)
            raise
        finally:
            self.outstanding -= 1

    async def close(self) -> None:
        for stream in self._streams.values():
            await stream.close()
        await self.links.close()


class UpstreamPool:
    """Upstreams by address, and the least-loaded-of-two choice between them."""

    def __init__(self, connect: Callable[[str], Links], hold: float = 0.0) -> None:
        self._connect = connect
        self.hold = hold
        self._upstreams: dict[str, Upstream] = {}

    def get(self, address: str) -> Upstream:
        upstream = self._upstreams.get(address)
        if upstream is None:
            upstream = Upstream(address, self._connect(address), self.hold)
            self._upstreams[address] = upstream
        return upstream

    def pick(self, addresses: Sequence[str], exclude: set[str]) -> Upstream | None:
        """Two random choices, the one with fewer requests outstanding."""
        candidates = [a for a in addresses if a not in exclude]
        if not candidates:
            return None
        if len(candidates) == 1:
            return self.get(candidates[0])
        a, b = (self.get(x) for x in random.sample(candidates, 2))
        return a if a.outstanding <= b.outstanding else b

    def busy(self) -> set[str]:
        """Addresses with requests outstanding."""
        return {a for a, upstream in self._upstreams.items() if upstream.outstanding}

    async def retain(self, addresses: set[str]) -> None:
        """Close upstreams of workers that left the routing picture."""
        for address in [a for a in self._upstreams if a not in addresses]:
            await self._upstreams.pop(address).close()

    async def close(self) -> None:
        await self.retain(set())
