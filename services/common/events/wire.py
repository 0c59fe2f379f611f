"""Protobuf wire encoding of events from bytes already at hand (no message objects).

The gateway logs predictions on its request path's budget: it holds the client's
request and the worker's answer as bytes, and appending fields to bytes costs a
fraction of building and serializing a message.
"""

from __future__ import annotations

# Field numbers of liveml.events.v1.Event and Prediction.
SEQUENCE, KIND, MODEL, KEY, TIME, PREDICTION = 1, 2, 3, 4, 5, 6
_REQUEST_ID, _VERSION, _REQUEST, _RESPONSE, _GROUP, _SOURCE, _OMITTED = 1, 2, 3, 4, 5, 6, 7
PREDICTION_KIND = 1  # EVENT_KIND_PREDICTION
# google.protobuf.Timestamp
_SECONDS, _NANOS = 1, 2


def varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, as protobuf writes them
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value) if value else b""


def bytes_field(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value if value else b""


def timestamp(number: int, time_ns: int) -> bytes:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return bytes_field(number, varint_field(_SECONDS, seconds) + varint_field(_NANOS, nanos))


def with_sequence(data: bytes, sequence: int) -> bytes:
    """A stored event's bytes with its sequence set (a field appended parses as set)."""
    return data + varint_field(SEQUENCE, sequence)


def prediction_event(
    model: str,
    key: str,
    time_ns: int,
    request_id: str,
    version: int,
    request: bytes,
    response: bytes,
    group: str,
    source: str,
    omitted: bool,
) -> bytes:
    """A serialized Event with a Prediction body."""
    body = b"".join(
        (
            bytes_field(_REQUEST_ID, request_id.encode()),
            varint_field(_VERSION, version),
            bytes_field(_REQUEST, request),
            bytes_field(_RESPONSE, response),
            bytes_field(_GROUP, group.encode()),
            bytes_field(_SOURCE, source.encode()),
            varint_field(_OMITTED, int(omitted)),
        )
    )
    return b"".join(
        (
            varint_field(KIND, PREDICTION_KIND),
            bytes_field(MODEL, model.encode()),
            bytes_field(KEY, key.encode()),
            timestamp(TIME, time_ns),
            varint(PREDICTION << 3 | 2),
            varint(len(body)),
            body,
        )
    )


def repeated(number: int, items: list[bytes]) -> bytes:
    """A message whose field `number` repeats `items` (e.g. AppendEventsRequest.events)."""
    tag = varint(number << 3 | 2)
    return b"".join(tag + varint(len(item)) + item for item in items)
