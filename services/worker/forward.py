"""The worker's end of the gateway transport: the framed listener and the gRPC stream.

Gateways reach a worker through its framed forward listener (`services.dataplane.frames`)
or the `liveml.worker.v1.WorkerService/Forward` gRPC stream; both carry the messages
of `protos/liveml/worker/v1/worker.proto` and are answered by the same code, which
runs each request through the inference path the worker's own clients use, with the
version, the caller's remaining time and the trace context the gateway sent beside
it. Requests arrive several to a message; each is answered as soon as it is done,
and the answers ready at the moment a reply message is written go out together. At
most `window` requests of a stream are in flight; reading pauses beyond that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Gauge

from services.common.auth import RECHECK_SECONDS, AuthError, Principal, Role, bearer_token
from services.common.data_auth import FeedAuthenticator
from services.common.errors import ServiceError
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.common.gen.liveml.worker.v1 import worker_pb2_grpc as wpb_grpc
from services.dataplane import frames

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 4 << 20  # a reply message carries about this many bytes at most
STREAMS = Gauge(
    "liveml_worker_forward_streams", "Open gateway streams, by link (frames or grpc).", ["link"]
)

# (request, is a shadow copy, seconds the caller still waits, traceparent) -> the answer;
# raises ServiceError for a failed request.
Answer = Callable[[pb.ModelInferRequest, bool, float | None, str], Awaitable[pb.ModelInferResponse]]


class ForwardServicer(wpb_grpc.WorkerServiceServicer):
    def __init__(self, answer: Answer, window: int = 256) -> None:
        self.answer = answer
        self.window = window
        self._readers: set[asyncio.Task[None]] = set()

    async def _answer(
        self, sequence: int, inference: wpb.ForwardedInference, shadow: bool
    ) -> wpb.ForwardReply:
        try:
            request = pb.ModelInferRequest.FromString(inference.request)
        except DecodeError as exc:
            return _failure(
                sequence, grpc.StatusCode.INVALID_ARGUMENT, f"malformed ModelInferRequest: {exc}"
            )
        if inference.version:  # the gateway's choice, whatever the client's bytes say
            request.model_version = str(inference.version)
        within = None
        if inference.HasField("timeout"):
            within = inference.timeout.seconds + inference.timeout.nanos / 1e9
        try:
            response = await self.answer(request, shadow, within, inference.traceparent)
        except ServiceError as exc:
            return _failure(sequence, exc.code, exc.message)
        except Exception as exc:  # every request gets an answer, whatever went wrong
            log.exception("forwarded request failed")
            return _failure(sequence, grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return wpb.ForwardReply(sequence=sequence, response=response.SerializeToString())

    def close(self) -> None:
        """Shutting down: stop reading; what was read is still answered, then the stream
        ends and the gateway sends the rest elsewhere."""
        for reader in self._readers:
            reader.cancel()

    async def Forward(
        self, requests: AsyncIterator[wpb.ForwardRequest], context: Any
    ) -> AsyncIterator[wpb.ForwardResponse]:
        async for response in self.serve(requests, "grpc"):
            yield response

    async def serve(
        self, requests: AsyncIterator[wpb.ForwardRequest], link: str
    ) -> AsyncIterator[wpb.ForwardResponse]:
        """Answers to one gateway stream's requests, over `link` (frames or grpc)."""
        STREAMS.labels(link).inc()
        try:
            async for response in self._serve(requests):
                yield response
        finally:
            STREAMS.labels(link).dec()

    async def _serve(
        self, requests: AsyncIterator[wpb.ForwardRequest]
    ) -> AsyncIterator[wpb.ForwardResponse]:
        done: list[wpb.ForwardReply] = []
        wake = asyncio.Event()
        room = asyncio.Semaphore(self.window)
        working: set[asyncio.Task[None]] = set()

        async def one(sequence: int, inference: wpb.ForwardedInference, shadow: bool) -> None:
            try:
                done.append(await self._answer(sequence, inference, shadow))
            finally:
                room.release()
                wake.set()

        def finished(task: asyncio.Task[None]) -> None:
            working.discard(task)
            wake.set()  # after the discard, so the loop below sees the task gone

        async def read() -> None:
            try:
                async for message in requests:
                    for offset, inference in enumerate(message.inferences):
                        await room.acquire()
                        task = asyncio.create_task(
                            one(message.first_sequence + offset, inference, message.shadow)
                        )
                        working.add(task)
                        task.add_done_callback(finished)
            except (frames.FrameError, DecodeError, asyncio.IncompleteReadError) as exc:
                log.warning("forward stream broken by its sender: %s", exc)
            finally:
                wake.set()

        reader = asyncio.create_task(read())
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        try:
            while True:
                await wake.wait()
                wake.clear()
                while done:
                    # Reply messages stay far below the gateway's message limit, however
                    # many large answers completed together.
                    count, size = 0, 0
                    for reply in done:
                        if count and size + len(reply.response) > MAX_REPLY_BYTES:
                            break
                        count, size = count + 1, size + len(reply.response)
                    ready, done[:] = done[:count], done[count:]
                    yield wpb.ForwardResponse(replies=ready)
                if reader.done() and not working and not done:
                    return
        finally:
            reader.cancel()
            for task in list(working):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


class FrameListener:
    """The framed forward listener: each connection is one Forward stream."""

    def __init__(
        self,
        forward: ForwardServicer,
        max_message_bytes: int,
        authenticator: FeedAuthenticator | None = None,
    ) -> None:
        self.forward = forward
        self.authenticator = authenticator
        self.max_message_bytes = max_message_bytes
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        """Listen; the port it listens on."""
        self.server = await asyncio.start_server(self._connection, host, port, ssl=ssl_context)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self, within: float) -> None:
        """Stop accepting; wait (at most `within` s) for open connections to answer what
        they read (`ForwardServicer.close` stops their reading)."""
        if self.server is not None:
            self.server.close()
        if self._connections:
            await asyncio.wait(self._connections, timeout=within)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        frames.tune(writer)
        peer = writer.get_extra_info("peername")
        writer.write(frames.PREAMBLE)  # accepted (after TLS and its client certificate)

        async def requests() -> AsyncIterator[wpb.ForwardRequest]:
            await frames.expect_preamble(reader)
            if self.authenticator is not None:
                data = await frames.read(reader, self.max_message_bytes)
                first = wpb.ForwardRequest.FromString(data or b"")
                principal, refused = self._admit(first.authorization, writer)
                if principal is None:
                    log.warning("forward connection from %s refused: %s", peer, refused)
                    return
                guard = asyncio.create_task(self._guard(principal, writer))
                task.add_done_callback(lambda _: guard.cancel())
            while (data := await frames.read(reader, self.max_message_bytes)) is not None:
                yield wpb.ForwardRequest.FromString(data)

        try:
            async for response in self.forward.serve(requests(), "frames"):
                writer.write(frames.frame(response.SerializeToString()))
                await writer.drain()
        except OSError as exc:
            log.info("forward connection from %s ended: %s", peer, exc)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    def _admit(
        self, authorization: str, writer: asyncio.StreamWriter
    ) -> tuple[Principal | None, str]:
        """Who sent the framed link's first message, or None and why it may not forward."""
        assert self.authenticator is not None
        token = bearer_token([("authorization", authorization)])
        try:
            principal = self.authenticator.check(token, _certificate_name(writer))
        except AuthError as exc:
            return None, str(exc)
        if principal.role not in (Role.GATEWAY, Role.ADMIN):
            role = principal.role.value
            return None, f"{principal.name} (role {role}) may not forward; it needs one of: gateway"
        return principal, ""

    async def _guard(self, principal: Principal, writer: asyncio.StreamWriter) -> None:
        """Close the connection once its credential is revoked or expires (as the
        interceptor ends gRPC streams)."""
        assert self.authenticator is not None
        while (why := self.authenticator.still_valid(principal)) is None:  # noqa: ASYNC110
            # A poll, not a wait for an event: the feed does not tell who holds what.
            await asyncio.sleep(RECHECK_SECONDS)
        log.info("closing a forward connection of %s: %s", principal.name, why)
        writer.close()


def _certificate_name(writer: asyncio.StreamWriter) -> str | None:
    """Common name of the peer's verified client certificate (mutual TLS), if any."""
    cert = writer.get_extra_info("peercert")
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _failure(sequence: int, code: grpc.StatusCode, message: str) -> wpb.ForwardReply:
    return wpb.ForwardReply(sequence=sequence, code=code.value[0], message=message)
