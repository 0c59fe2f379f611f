"""Long-lived streams to the workers, carrying requests as raw bytes.

One stream per worker (a framed connection or a gRPC Forward call,
`services.gateway.links`) carries the gateway's primary requests to it; shadow
copies get a second one, so they never hold a primary back, and the worker runs
what comes on it at low priority. A writer task sends, in one message, every
request that queued up while its previous write was in flight, so under load the
per-message cost is shared by many requests.

Under load the writer also waits, at most `hold`, for as many requests as it has
learned arrive together (`services.dataplane.gather`): with unary clients requests reach
it one at a time, and each message costs both processes far more than the requests
in it, so gathering them multiplies what a gateway and a worker sharing a core can
serve. A lone client is learned to have no company, and its requests go out at once.

Each request travels as a `ForwardedInference` (worker.proto): the client's bytes
unchanged, the chosen version, what remains of the caller's deadline when the message
is written, and the trace context. Requests are numbered; replies come back in the
order they completed, matched by number. When a stream breaks, everything waiting
on it fails with `UpstreamDown` (and may be retried on another worker).

The pool follows membership and health, like Envoy's outlier detection: a worker
whose transport fails is ejected at once (its connections closed, so a restarted
worker is met with fresh ones, not a gRPC channel in reconnect backoff) and
probed in the background with a short backoff; it takes requests again as soon as
it answers a health check. A worker that stops answering while its connection stays
open (a paused process, a stalled disk) is ejected too: a request that waited
`stall` seconds on a stream that answered nothing in that time is sent elsewhere, so
a frozen worker delays requests by `stall` instead of failing them at their deadline.
Workers that left the routing picture are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.dataplane.gather import Gather
from services.gateway.links import Link, LinkError, Links, said

log = logging.getLogger(__name__)

# One message carries at most this many requests, or about this many bytes.
MAX_BATCH = 256
MAX_BATCH_BYTES = 4 << 20
# An ejected worker is probed again after these delays (then every last one).
PROBE_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.5)
# A worker with a request unanswered for longer than this is not answering.
SILENT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One request for a worker, and what the gateway tells it beside the bytes."""

    request: bytes  # the client's serialized ModelInferRequest, unchanged
    version: int  # the version that answers
    deadline: float | None  # monotonic; the worker gets what remains of it
    traceparent: str = ""


class UpstreamDown(Exception):
    """The worker's stream failed before this request was answered."""


class UpstreamStalled(UpstreamDown):
    """The worker answered nothing, to anyone, while this request waited `stall`."""


class _Stream:
    """One open Forward stream: a writer task, a reader task and what waits on them."""

    def __init__(
        self,
        address: str,
        link: Link,
        first_sequence: int,
        hold: float,
        shadow: bool,
        on_fail: Callable[[BaseException | None], None] = lambda _: None,
    ) -> None:
        self.address = address
        self.shadow = shadow
        self.on_fail = on_fail  # the transport failed (not called for our own close)
        self.closing = False
        self.gather = Gather(hold, MAX_BATCH)
        self.link = link
        self.sequence = first_sequence
        self.queue: list[Outgoing] = []
        self.waiting: dict[int, asyncio.Future[wpb.ForwardReply]] = {}
        self.sent_at: dict[int, float] = {}  # monotonic time each waiting request was sent
        self.wake = asyncio.Event()
        self.holding = False  # waiting for more requests to share the next message
        self.broken = False
        self.messages = 0  # ForwardRequest messages written (each carries 1+ requests)
        self.writer = asyncio.create_task(self._write(), name=f"upstream write {address}")
        self.reader = asyncio.create_task(self._read(), name=f"upstream read {address}")

    def send(self, outgoing: Outgoing) -> asyncio.Future[wpb.ForwardReply]:
        future: asyncio.Future[wpb.ForwardReply] = asyncio.get_running_loop().create_future()
        sequence = self.sequence + len(self.queue)
        self.waiting[sequence] = future
        self.sent_at[sequence] = time.monotonic()
        self.queue.append(outgoing)
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
                    for queued in self.queue:
                        size += len(queued.request)
                        if count and (count >= MAX_BATCH or size > MAX_BATCH_BYTES):
                            break
                        count += 1
                    batch, self.queue = self.queue[:count], self.queue[count:]
                    message = _message(self.sequence, batch, self.shadow)
                    self.sequence += count
                    self.messages += 1
                    self.gather.sent(count, timed_out)
                    await self.link.write(message.SerializeToString())
        except Exception as exc:  # any failed write ends the stream; waiters retry elsewhere
            self.fail(said(exc), exc)
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
        reason, cause = "stream closed", None
        try:
            async for raw in self.link.replies():
                self.last_reply = time.monotonic()
                for reply in wpb.ForwardResponse.FromString(raw).replies:
                    future = self.waiting.pop(reply.sequence, None)
                    self.sent_at.pop(reply.sequence, None)
                    if future is not None and not future.done():
                        future.set_result(reply)
        except asyncio.CancelledError:
            reason = "stream cancelled"
        except Exception as exc:  # LinkError, or a reply that does not parse
            reason, cause = str(exc) or type(exc).__name__, exc
        self.fail(reason, cause)

    def fail(self, reason: str, cause: BaseException | None = None) -> None:
        """Everything not yet answered fails; the stream is not used again."""
        first = not self.broken
        self.broken = True
        self.queue.clear()
        self.wake.set()  # a writer gathering requests stops
        waiting, self.waiting = self.waiting, {}
        self.sent_at.clear()
        for future in waiting.values():
            if not future.done():
                future.set_exception(UpstreamDown(f"worker {self.address}: {reason}"))
        if first and not self.closing:
            self.on_fail(cause)

    def forget(self, future: asyncio.Future[wpb.ForwardReply]) -> None:
        """A caller gave up (deadline): its answer, if it comes, is dropped."""
        for sequence, waiting in list(self.waiting.items()):
            if waiting is future:
                del self.waiting[sequence]
                self.sent_at.pop(sequence, None)
                return

    def silent(self, now: float, seconds: float) -> bool:
        """Nothing came back for `seconds`, and something has waited that long."""
        return now - self.last_reply >= seconds and self.oldest_wait(now) >= seconds

    def oldest_wait(self, now: float) -> float:
        """Seconds the longest-waiting request has waited (0 when none waits)."""
        return now - min(self.sent_at.values()) if self.sent_at else 0.0

    async def close(self) -> None:
        self.closing = True
        self.link.cancel()
        for task in (self.writer, self.reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _message(first_sequence: int, batch: list[Outgoing], shadow: bool) -> wpb.ForwardRequest:
    """The stream message for `batch`; each timeout is what remains of its deadline now."""
    message = wpb.ForwardRequest(first_sequence=first_sequence, shadow=shadow)
    add, now = message.inferences.add, time.monotonic()
    for outgoing in batch:
        inference = add(
            request=outgoing.request, version=outgoing.version, traceparent=outgoing.traceparent
        )
        if outgoing.deadline is not None:
            left = max(0, int((outgoing.deadline - now) * 1e9))
            inference.timeout.seconds, inference.timeout.nanos = divmod(left, 1_000_000_000)
    return message


class Upstream:
    def __init__(
        self,
        address: str,
        links: Links,
        hold: float = 0.0,
        on_fail: Callable[[str, BaseException | None], None] = lambda *_: None,
    ) -> None:
        self.address = address
        self.links = links
        self.hold = hold
        self.on_fail = on_fail
        self.closed = False  # ejected or departed: takes no more requests
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
        stream = _Stream(
            self.address,
            self.links.open(),
            first,
            self.hold,
            shadow,
            lambda cause: self.on_fail(self.address, cause),
        )
        self._streams[shadow] = stream
        return stream

    def connected(self) -> bool:
        """Some stream of it is open and unbroken."""
        return any(not s.broken for s in self._streams.values())

    def answering(self, now: float | None = None) -> bool:
        """No request of ours has waited longer than SILENT_SECONDS for an answer."""
        now = time.monotonic() if now is None else now
        return all(
            s.oldest_wait(now) <= SILENT_SECONDS for s in self._streams.values() if not s.broken
        )

    async def send(
        self,
        outgoing: Outgoing,
        within: float | None,
        shadow: bool = False,
        stall: float | None = None,
    ) -> wpb.ForwardReply:
        """One request's reply, waited for at most `within` s. With `stall`,
        raise UpstreamStalled once the request has waited that long on a stream that
        answered nothing meanwhile (a slow answer on a stream that answers others is
        waited for, until `within`)."""
        if self.closed:
            raise UpstreamDown(f"worker {self.address}: its connections were closed")
        stream = self._stream(shadow)
        future = stream.send(outgoing)
        self.outstanding += 1
        try:
            async with asyncio.timeout(within):
                while stall is not None:
                    await asyncio.wait((future,), timeout=stall)
                    if future.done():
                        break
                    if stream.silent(time.monotonic(), stall):
                        stream.forget(future)
                        raise UpstreamStalled(
                            f"worker {self.address}: no answer to anyone for {stall:g} s"
                        )
                return await future
        except TimeoutError:
            stream.forget(future)
            raise
        finally:
            self.outstanding -= 1

    async def close(self) -> None:
        self.closed = True
        for stream in self._streams.values():
            await stream.close()
        await self.links.close()


Probe = Callable[[str], Awaitable[str | None]]  # None when reachable, else why not


class UpstreamPool:
    """Upstreams by address, the least-loaded-of-two choice between them, and ejection."""

    def __init__(
        self, connect: Callable[[str], Links], hold: float = 0.0, probe: Probe | None = None
    ) -> None:
        self._connect = connect
        self.hold = hold
        self._probe = probe
        self._upstreams: dict[str, Upstream] = {}
        self._ejected: dict[str, _Ejection] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.ejections = 0
        self.on_eject: list[Callable[[str], None]] = []

    def get(self, address: str) -> Upstream:
        upstream = self._upstreams.get(address)
        if upstream is None:
            upstream = Upstream(address, self._connect(address), self.hold, self._failed)
            self._upstreams[address] = upstream
        return upstream

    def pick(self, addresses: Sequence[str], exclude: set[str]) -> Upstream | None:
        """Two random choices, the one with fewer requests outstanding; ejected workers
        only when every other one was tried (a fresh connection may still answer)."""
        candidates = [a for a in addresses if a not in exclude]
        healthy = [a for a in candidates if a not in self._ejected]
        candidates = healthy or candidates
        if not candidates:
            return None
        if len(candidates) == 1:
            return self.get(candidates[0])
        a, b = (self.get(x) for x in random.sample(candidates, 2))
        return a if a.outstanding <= b.outstanding else b

    def ejected(self, address: str) -> bool:
        return address in self._ejected

    def answering(self, address: str) -> bool:
        """Connected, and no request waits on it for longer than SILENT_SECONDS."""
        if address in self._ejected:
            return False
        upstream = self._upstreams.get(address)
        return upstream is None or upstream.answering()

    def busy(self) -> set[str]:
        """Addresses with requests outstanding."""
        return {a for a, upstream in self._upstreams.items() if upstream.outstanding}

    def _failed(self, address: str, cause: BaseException | None) -> None:
        if isinstance(cause, LinkError) and cause.fallback:
            return  # no framed listener there: the next stream takes gRPC, nothing is down
        self.eject(address, str(cause) if cause else "stream closed")

    def eject(self, address: str, reason: str) -> None:
        """Stop choosing the worker; close its connections; probe until it answers."""
        if address in self._ejected or self._probe is None:
            return
        upstream = self._upstreams.pop(address, None)
        if upstream is not None:
            self._background(upstream.close())
        self.ejections += 1
        log.warning("worker %s ejected (%s); probing it", address, reason)
        self._ejected[address] = _Ejection(address, self._probe, self._readmit)
        for listener in self.on_eject:
            listener(address)

    def kick(self, addresses: Iterable[str]) -> None:
        """The registry announced these workers again: probe the ejected ones now."""
        for address in addresses:
            ejection = self._ejected.get(address)
            if ejection is not None:
                ejection.kick()

    def _readmit(self, address: str) -> None:
        self._ejected.pop(address, None)
        # A last-resort try may have opened a connection meanwhile: keep it if it works.
        stale = self._upstreams.get(address)
        if stale is not None and not stale.connected():
            del self._upstreams[address]
            self._background(stale.close())
        log.info("worker %s answers again: back in the pool", address)

    def _background(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def release(self, addresses: set[str]) -> None:
        """Let go of workers that left the routing picture: stop probing them, and close
        their connections (in the background; requests waiting on them fail over)."""
        for address in [a for a in self._ejected if a not in addresses]:
            self._background(self._ejected.pop(address).stop())
        for address in [a for a in self._upstreams if a not in addresses]:
            self._background(self._upstreams.pop(address).close())

    async def retain(self, addresses: set[str]) -> None:
        """`release`, and wait until those connections are closed."""
        self.release(addresses)
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task

    async def close(self) -> None:
        await self.retain(set())


class _Ejection:
    """Probes an ejected worker with a short backoff until it is reachable again."""

    def __init__(self, address: str, probe: Probe, readmit: Callable[[str], None]) -> None:
        self.address = address
        self._probe = probe
        self._readmit = readmit
        self._kicked = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"probe {address}")

    def kick(self) -> None:
        self._kicked.set()

    async def _run(self) -> None:
        attempt = 0
        while True:
            delay = PROBE_DELAYS[min(attempt, len(PROBE_DELAYS) - 1)]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._kicked.wait()
            self._kicked.clear()
            attempt += 1
            try:
                why = await self._probe(self.address)
            except Exception as exc:  # a probe that breaks counts as unreachable
                why = said(exc)
            if why is None:
                self._readmit(self.address)
                return

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
