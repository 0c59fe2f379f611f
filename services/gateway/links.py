"""How a gateway's stream to one worker travels: framed TCP, or a gRPC Forward call.

Both carry serialized `ForwardRequest` messages out and `ForwardResponse` messages
back. The framed link (`services.dataplane.frames`) is the fast path: Python's gRPC
costs each side several hundred microseconds of CPU per message, a framed message
one system call. Workers that offer no framed listener get the gRPC stream.

A framed listener that cannot be reached is told apart from a worker that is down by
the worker's gRPC port: if that still accepts connections, the framed path is
blocked (a firewall, say) and the gRPC stream takes over for a while; if it does not
either, the worker is down and the upstream pool ejects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import addresses, tls
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.dataplane import frames

log = logging.getLogger(__name__)

FORWARD_METHOD = "/liveml.worker.v1.WorkerService/Forward"
CONNECT_SECONDS = 3.0  # a framed connect that takes longer counts as unreachable
PROBE_SECONDS = 1.0  # a TCP connect or a health check that takes longer fails
FALLBACK_SECONDS = 30.0


class LinkError(Exception):
    """The link failed; the message says how. `fallback`: only the framed listener is
    out of reach (the worker's gRPC port answers), so nothing is down."""

    def __init__(self, message: str, fallback: bool = False) -> None:
        super().__init__(message)
        self.fallback = fallback


async def reachable(address: str) -> str | None:
    """None when something accepts TCP connections at host:port, else why not."""
    host, port = addresses.split(address)
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        return str(exc) or f"no answer within {PROBE_SECONDS:g} s"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


class Link(Protocol):
    async def write(self, data: bytes) -> None: ...

    def replies(self) -> AsyncIterator[bytes]: ...

    def cancel(self) -> None: ...


def said(exc: BaseException) -> str:
    """Why a call to a worker failed, in a line (an AioRpcError's repr is several)."""
    if not isinstance(exc, aio.AioRpcError):
        return f"{type(exc).__name__}: {exc}"
    details = str(exc.details())
    if "Hostname Verification" in details:
        details += (
            " (the worker's certificate does not name the address it advertises: give "
            "--worker-tls-name a name every worker's certificate carries)"
        )
    return f"{exc.code().name}: {details}"


class GrpcLink:
    def __init__(self, channel: aio.Channel) -> None:
        self.call = channel.stream_stream(
            FORWARD_METHOD, request_serializer=None, response_deserializer=None
        )()

    async def write(self, data: bytes) -> None:
        await self.call.write(data)

    async def replies(self) -> AsyncIterator[bytes]:
        try:
            async for raw in self.call:
                yield raw
        except aio.AioRpcError as exc:
            raise LinkError(said(exc)) from exc

    def cancel(self) -> None:
        self.call.cancel()


class FrameLink:
    def __init__(
        self,
        address: str,
        ssl_context: ssl.SSLContext | None,
        limit: int,
        unreachable: Callable[[], None] = lambda: None,
        grpc_address: str = "",
        token: str | None = None,
        tls_name: str | None = None,
    ) -> None:
        self.address = address
        self._token = token
        self._tls_name = tls_name
        self.limit = limit
        self._unreachable = unreachable
        self._grpc_address = grpc_address
        self._connected = asyncio.ensure_future(self._connect(ssl_context))

    async def _connect(
        self, ssl_context: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = addresses.split(self.address)
        try:
            async with asyncio.timeout(CONNECT_SECONDS):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=(self._tls_name or host) if ssl_context else None,
                )
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or f"no answer within {CONNECT_SECONDS:g} s"
            if self._grpc_address and await reachable(self._grpc_address) is not None:
                raise LinkError(
                    f"worker down: neither its framed listener {self.address} ({reason}) "
                    f"nor its gRPC port {self._grpc_address} accepts connections"
                ) from exc
            self._unreachable()
            raise LinkError(f"cannot connect to {self.address}: {reason}", fallback=True) from exc
        frames.tune(writer)
        writer.write(frames.PREAMBLE)
        if self._token:
            # The framed link's own handshake: its first message carries the credential.
            hello = wpb.ForwardRequest(authorization=f"Bearer {self._token}")
            writer.write(frames.frame(hello.SerializeToString()))
        try:
            async with asyncio.timeout(CONNECT_SECONDS):
                await frames.expect_preamble(reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, frames.FrameError) as exc:
            writer.close()
            self._unreachable()
            raise LinkError(
                f"{self.address} did not accept the connection (with TLS: does the worker "
                f"trust this gateway's client certificate?): {type(exc).__name__}: {exc}",
                fallback=True,
            ) from exc
        return reader, writer

    async def write(self, data: bytes) -> None:
        _, writer = await self._connected
        writer.write(frames.frame(data))
        await writer.drain()

    async def replies(self) -> AsyncIterator[bytes]:
        reader, _ = await self._connected
        try:
            while (data := await frames.read(reader, self.limit)) is not None:
                yield data
        except (OSError, asyncio.IncompleteReadError, frames.FrameError) as exc:
            raise LinkError(f"{type(exc).__name__}: {exc}") from exc

    def cancel(self) -> None:
        if not self._connected.done():
            self._connected.cancel()
        elif not self._connected.cancelled() and self._connected.exception() is None:
            self._connected.result()[1].close()


class Links:
    """Opens streams to one worker: framed when it offers a forward address, else gRPC.

    When the framed listener cannot be reached (a firewall that lets only the gRPC port
    through, say), the worker is reached over gRPC for `FALLBACK_SECONDS`, then the
    framed listener is tried again: degraded, not down, and said in the log.
    """

    def __init__(
        self,
        connect: Callable[[], aio.Channel],
        forward_address: Callable[[], str | None] = lambda: None,
        ssl_context: ssl.SSLContext | None = None,
        limit: int = 256 << 20,
        grpc_address: str = "",
        token: str | None = None,
        tls_name: str | None = None,
    ) -> None:
        self._connect = connect
        self._token = token
        self._tls_name = tls_name
        self._grpc_address = grpc_address
        self._forward_address = forward_address
        self._ssl = ssl_context
        self._limit = limit
        self._channel: aio.Channel | None = None
        self._grpc_until = 0.0  # after a failed framed connect: gRPC until then

    def open(self) -> Link:
        # Asked on every open, so a worker that restarts on a new port is found again.
        address = self._forward_address()
        if address and time.monotonic() >= self._grpc_until:
            return FrameLink(
                address,
                self._ssl,
                self._limit,
                lambda: self._fall_back(address),
                self._grpc_address,
                self._token,
                self._tls_name,
            )
        if self._channel is None:
            self._channel = self._connect()
        return GrpcLink(self._channel)

    def _fall_back(self, address: str) -> None:
        self._grpc_until = time.monotonic() + FALLBACK_SECONDS
        log.warning(
            "framed forward listener %s unreachable; using the gRPC Forward stream for %g s",
            address,
            FALLBACK_SECONDS,
        )

    async def close(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()


class Connector:
    """How this gateway reaches workers: gRPC channels and Links, with its TLS files.

    Shared by the gateway and its shadow process, which builds its own from the same
    settings (an SSL context or a gRPC channel cannot cross a process boundary).
    """

    def __init__(
        self,
        ca: Path | None,
        cert: Path | None,
        key: Path | None,
        max_message_bytes: int,
        forward_address: Callable[[str], str | None],
        token: str | None = None,
        tls_name: str | None = None,
    ) -> None:
        self._files = (ca, cert, key)
        self._token = token
        # Workers advertise addresses (a pod's IP) their certificates need not name: the
        # name to check instead, one every worker's certificate carries.
        self._tls_name = tls_name
        # Every call to a worker carries the gateway's token (a metadata interceptor:
        # one per call or stream, and the Forward stream is long-lived).
        self._interceptors = [Bearer(token)] if token else None
        self._options = channel_options(max_message_bytes)
        if tls_name:
            self._options.append(("grpc.ssl_target_name_override", tls_name))
        self._limit = max_message_bytes
        self._forward_address = forward_address
        self._ssl = tls.client_context(ca, cert, key) if ca or cert else None

    def channel(self, address: str) -> aio.Channel:
        ca, cert, key = self._files
        if ca or cert:
            return aio.secure_channel(
                address,
                tls.channel_credentials(ca, cert, key),
                self._options,
                interceptors=self._interceptors,
            )
        return aio.insecure_channel(address, self._options, interceptors=self._interceptors)

    async def healthy(self, address: str) -> str | None:
        """None when the worker's health service says SERVING, else why not. A paused
        process still accepts TCP connections (the kernel does), so a connect is not
        enough to readmit a worker the pool ejected for not answering."""
        channel = self.channel(address)
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=PROBE_SECONDS
            )
        except aio.AioRpcError as exc:
            return f"health check: {exc.code().name}: {exc.details()}"
        finally:
            await channel.close()
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return f"health check: {status}"
        return None

    def links(self, address: str) -> Links:
        return Links(
            lambda: self.channel(address),
            lambda: self._forward_address(address),
            self._ssl,
            self._limit,
            address,
            self._token,
            self._tls_name,
        )


class Bearer(
    aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
    aio.StreamUnaryClientInterceptor,  # type: ignore[misc]
    aio.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds `authorization: Bearer <token>` to every call on a channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = aio.Metadata(*(details.metadata or ()), self._header)
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def channel_options(max_message_bytes: int) -> list[tuple[str, object]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
    ]
