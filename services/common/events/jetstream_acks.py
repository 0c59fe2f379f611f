"""Publish acks off the wire: the fast path of JetStream appends.

nats-py makes each delivery a `Msg` (decoding its subject, parsing its headers),
queues it and hands it to the subscription's task; with one PubAck per event that was
half of an appender's CPU. `AckClient` takes the acks of the publish inbox straight
off nats-py's parser (`_AckParser`: runs of them in one loop, one regex match and a
slice each) and hands them to `on_ack`; `pub_ack` reads one without a JSON parser;
`AckChunk` gathers a chunk of publishes' acks. Everything else is nats-py's.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from nats.aio.client import Client as NATS
from nats.protocol.parser import AWAITING_MSG_PAYLOAD, CRLF_SIZE, Parser

from services.common.errors import ServiceError, Unavailable

_SEQ = re.compile(rb'"seq":\s*(\d+)')
_DUPLICATE = re.compile(rb'"duplicate":\s*true')
# What nats-server writes for a stored event (or a duplicate): stream, domain, seq.
_ACK = re.compile(
    rb'\{"stream":"[^"\\]*",\s*(?:"domain":"[^"\\]*",\s*)?"seq":\s*(\d+)(,\s*"duplicate":\s*true)?\}'
)


# A PubAck as nats-server delivers it to the publish inbox: no headers, no reply.
_ACK_MSG = re.compile(rb"MSG ([^ \r\n]+) (\d+) +(\d+)\r\n")  # "MSG <subject> <sid>  <size>"


class _AckParser(Parser):
    """nats-py's parser, with runs of PubAcks to the publish inbox read in one loop
    (one regex match and a slice each, no awaits), the rest left to nats-py."""

    nc: AckClient

    async def parse(self, data: bytes = b"") -> None:
        nc = self.nc
        if nc.on_ack is None:
            await super().parse(data)
            return
        if self.state == AWAITING_MSG_PAYLOAD:
            # A message split across reads: nats-py finishes it, then the rest comes here.
            need = self.needed + CRLF_SIZE - len(self.buf)
            if len(data) < need:
                await super().parse(data)
                return
            await super().parse(data[:need])
            data = data[need:]
        if self.buf:  # the start of a control line, kept from the last read
            data = bytes(self.buf) + data
            self.buf.clear()
        sid, on_ack, pos, end = str(nc.ack_sid).encode(), nc.on_ack, 0, len(data)
        match = _ACK_MSG.match
        while pos < end:
            found = match(data, pos)
            if found is None or found[2] != sid:
                break
            start = found.end()
            stop = start + int(found[3])
            if stop + CRLF_SIZE > end:
                break  # its payload is not all here yet
            on_ack(found[1], data[start:stop], b"")
            pos = stop + CRLF_SIZE
        if pos < end:
            await super().parse(data[pos:])


class AckClient(NATS):
    """nats-py's client, with the acks of this stream's publishes taken off the
    parser directly: nats-py makes each delivery a `Msg` (decoding its subject, parsing
    its headers), queues it and hands it to the subscription's task; for one PubAck per
    event that was half of an appender's CPU."""

    ack_sid = -1
    on_ack: Any = None  # (subject, data, headers) -> None

    def __init__(self) -> None:
        super().__init__()
        self._ps = _AckParser(self)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        if sid == self.ack_sid and self.on_ack is not None:
            self.on_ack(subject, data, headers)
            return
        await super()._process_msg(sid, subject, reply, data, headers)


class AckChunk:
    """The acks of one chunk of publishes: each event's (sequence, duplicate)."""

    __slots__ = ("acks", "done", "left")

    def __init__(self, size: int) -> None:
        self.acks: list[tuple[int, bool]] = [(0, False)] * size
        self.left = size
        self.done: asyncio.Future[list[tuple[int, bool]]] = (
            asyncio.get_running_loop().create_future()
        )

    def acked(self, index: int, ack: tuple[int, bool]) -> None:
        if not 0 <= index < len(self.acks) or self.acks[index][0]:
            return  # not one of ours, or a second answer to the same publish
        self.acks[index] = ack
        self.left -= 1
        if not self.left:
            self.done.set_result(self.acks)

    def fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)


def pub_ack(data: bytes) -> tuple[int, bool] | Exception:
    """A PubAck's (sequence, duplicate), as the server writes it (`{"stream":"S",
    "seq":7,"duplicate": true}`), read without a JSON parser (there is one per event);
    an error answer as an exception."""
    found = _ACK.fullmatch(data)  # the usual shape, in one match
    if found is not None:
        return int(found[1]), found[2] is not None
    found = _SEQ.search(data)
    if found is not None and b'"error"' not in data:
        return int(found[1]), _DUPLICATE.search(data) is not None
    try:
        reply = json.loads(data)
    except ValueError:
        return Unavailable("JetStream answered a publish with no ack")
    error = reply.get("error") if isinstance(reply, dict) else None
    return ServiceError(f"JetStream refused an event: {error or reply}")
