"""Framed messages over a TCP (or TLS) connection: the gateway-to-worker fast path.

Each side opens a connection by sending `PREAMBLE` (the worker's tells the gateway it
accepted it: a refused TLS client certificate shows as no preamble rather than a
broken stream later); after it each message is a 4-byte big-endian length and that
many bytes. It carries the same `ForwardRequest` and
`ForwardResponse` messages as the gRPC Forward stream, so it changes what a message
costs (Python's gRPC pays several hundred microseconds of CPU per message and
round trip on each side; a framed read or write is one system call), not what the
gateway and worker say to each other.
"""

from __future__ import annotations

import asyncio
import socket

PREAMBLE = b"liveml-forward/1\n"
_LENGTH = 4
# A frame may exceed the message limit by this much (the ForwardRequest envelope
# around one request of the largest size the front door accepts).
ENVELOPE_BYTES = 64 << 10


class FrameError(Exception):
    """The peer broke the framing (wrong preamble, a frame over the limit)."""


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(_LENGTH, "big") + data


async def read(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """The next frame's bytes; None when the peer closed between frames."""
    try:
        head = await reader.readexactly(_LENGTH)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    size = int.from_bytes(head, "big")
    if size > limit + ENVELOPE_BYTES:
        raise FrameError(f"frame of {size} bytes is over the limit of {limit + ENVELOPE_BYTES}")
    return await reader.readexactly(size)


async def expect_preamble(reader: asyncio.StreamReader) -> None:
    got = await reader.readexactly(len(PREAMBLE))
    if got != PREAMBLE:
        raise FrameError(f"expected the preamble {PREAMBLE!r}, got {got!r}")


def tune(writer: asyncio.StreamWriter) -> None:
    """No Nagle delay on small frames; keepalive probes find a vanished peer in ~20 s."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 2)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
