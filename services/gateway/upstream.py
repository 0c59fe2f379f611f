"""Long-lived streams to the workers, carrying requests as raw bytes.

One `ModelStreamInfer` stream per worker carries every request the gateway sends
it. A worker answers a stream in request order, so replies are matched to
requests first-in first-out and no request id needs rewriting. When a stream
breaks, everything waiting on it fails with `UpstreamDown` (and may be retried on
another worker) and the next request opens a new stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Callable, Sequence

from grpc import aio

log = logging.getLogger(__name__)

STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


class UpstreamDown(Exception):
    """The worker's stream failed before this request was answered."""


class Upstream:
    def __init__(self, address: str, channel: aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.outstanding = 0
        self._call: aio.StreamStreamCall | None = None
        self._pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._write = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    def _open(self) -> aio.StreamStreamCall:
        call = self.channel.stream_stream(
            STREAM_METHOD, request_serializer=None, response_deserializer=None
        )()
        self._call = call
        self._reader = asyncio.create_task(self._read(call), name=f"upstream {self.address}")
        return call

    async def _read(self, call: aio.StreamStreamCall) -> None:
        error: BaseException | None = None
        try:
            async for reply in call:
                future = self._pending.popleft()
                if not future.done():
                    future.set_result(reply)
        except (aio.AioRpcError, asyncio.CancelledError) as exc:
            error = exc
        finally:
            if self._call is call:
                self._call = None
            reason = (
                f"{error.code().name}: {error.details()}"
                if isinstance(error, aio.AioRpcError)
                else "stream closed"
            )
            while self._pending:
                future = self._pending.popleft()
                if not future.done():
                    future.set_exception(UpstreamDown(f"worker {self.address}: {reason}"))

    async def send(self, data: bytes, within: float | None) -> bytes:
        """One request's reply (a serialized ModelStreamInferResponse)."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.outstanding += 1
        try:
            async with self._write:
                call = self._call or self._open()
                self._pending.append(future)
                try:
                    await call.write(data)
                except (aio.AioRpcError, asyncio.InvalidStateError) as exc:
                    raise UpstreamDown(f"worker {self.address}: {exc}") from None
            async with asyncio.timeout(within):
                return await asyncio.shield(future)
        finally:
            self.outstanding -= 1

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.channel.close()


class UpstreamPool:
    """Upstreams by address, and the least-loaded-of-two choice between them."""

    def __init__(self, connect: Callable[[str], aio.Channel]) -> None:
        self._connect = connect
        self._upstreams: dict[str, Upstream] = {}

    def get(self, address: str) -> Upstream:
        upstream = self._upstreams.get(address)
        if upstream is None:
            upstream = Upstream(address, self._connect(address))
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

    async def retain(self, addresses: set[str]) -> None:
        """Close upstreams of workers that left the routing picture."""
        for address in [a for a in self._upstreams if a not in addresses]:
            await self._upstreams.pop(address).close()

    async def close(self) -> None:
        await self.retain(set())


def channel_options(max_message_bytes: int) -> list[tuple[str, object]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
    ]
