"""Reading serialized V2 requests, and wrapping V2 answers, without decoding tensors.

The gateway forwards request bytes untouched: it reads only the routing fields
(model name, version, id, parameters) by walking the top-level protobuf fields. A
worker's answer (a serialized ModelInferResponse) goes back to a unary caller as it
is, and to a streaming one inside the stream's envelope, which is built here around
the bytes. Tensors are never decoded or copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ModelInferRequest / ModelInferResponse field numbers (the public V2 definition).
MODEL_NAME, MODEL_VERSION, ID, PARAMETERS = 1, 2, 3, 4
# ModelStreamInferResponse.
INFER_RESPONSE = 2
# InferParameter oneof.
BOOL_PARAM, INT64_PARAM, STRING_PARAM, DOUBLE_PARAM, UINT64_PARAM = 1, 2, 3, 4, 5


class WireError(ValueError):
    pass


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def fields(data: bytes | memoryview) -> list[tuple[int, int, int | memoryview]]:
    """Top-level (field number, wire type, value) of a message; bytes values are views."""
    view = memoryview(data)
    out: list[tuple[int, int, int | memoryview]] = []
    pos, end = 0, len(view)
    while pos < end:
        key, pos = _varint(view, pos)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if kind == 0:
            value, pos = _varint(view, pos)
            out.append((number, kind, value))
        elif kind == 2:
            length, pos = _varint(view, pos)
            if pos + length > end:
                raise WireError("truncated field")
            out.append((number, kind, view[pos : pos + length]))
            pos += length
        elif kind in (1, 5):
            size = 8 if kind == 1 else 4
            if pos + size > end:
                raise WireError("truncated field")
            out.append((number, kind, int.from_bytes(view[pos : pos + size], "little")))
            pos += size
        else:
            raise WireError(f"unsupported wire type {kind}")
    return out


@dataclass
class Routing:
    """The fields of a ModelInferRequest the gateway routes by."""

    model_name: str = ""
    model_version: str = ""
    id: str = ""
    parameters: dict[str, str] = field(default_factory=dict)


def _parameter_text(data: memoryview) -> str:
    """An InferParameter's value as text (the sticky key may be a string or a number)."""
    for number, _, value in fields(data):
        if number == STRING_PARAM and isinstance(value, memoryview):
            return bytes(value).decode(errors="replace")
        if number in (INT64_PARAM, UINT64_PARAM, BOOL_PARAM) and isinstance(value, int):
            if number == INT64_PARAM and value >= 1 << 63:
                value -= 1 << 64
            return str(value)
    return ""


def _text(value: memoryview, what: str) -> str:
    """A string field, which protobuf requires to be UTF-8 (the worker would refuse it)."""
    try:
        return bytes(value).decode()
    except UnicodeDecodeError:
        raise WireError(f"{what} is not valid UTF-8") from None


def routing(data: bytes) -> Routing:
    found = Routing()
    for number, _, value in fields(data):
        if not isinstance(value, memoryview):
            continue
        if number == MODEL_NAME:
            found.model_name = _text(value, "model_name")
        elif number == MODEL_VERSION:
            found.model_version = _text(value, "model_version")
        elif number == ID:
            found.id = _text(value, "id")
        elif number == PARAMETERS:
            key, param = "", None
            for entry_number, _, entry_value in fields(value):
                if entry_number == 1 and isinstance(entry_value, memoryview):
                    key = _text(entry_value, "a parameter's name")
                elif entry_number == 2 and isinstance(entry_value, memoryview):
                    param = entry_value
            if param is not None:
                found.parameters[key] = _parameter_text(param)
    return found


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


# A response's `parameters` entry triton_final_response = true: the last (here, the
# only) answer to a request on a stream, as a worker and Triton mark it.
_FINAL = length_delimited(
    PARAMETERS,
    length_delimited(1, b"triton_final_response")
    + length_delimited(2, bytes([BOOL_PARAM << 3, 1])),
)


def final_stream_response(response: bytes) -> bytes:
    """A serialized ModelStreamInferResponse carrying `response` (a serialized
    ModelInferResponse), marked final. A map entry appended to a message is one more
    entry of the map, so the response's bytes are not decoded."""
    return length_delimited(INFER_RESPONSE, response + _FINAL)
