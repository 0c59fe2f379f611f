"""Reading and amending serialized V2 messages without decoding them.

The gateway forwards request bytes untouched: it reads only the routing fields
(model name, version, id, parameters) by walking the top-level protobuf fields,
and sets the chosen version by appending one field, which protobuf parsers take
over any earlier value of a singular field. Tensors are never decoded or copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.dataplane import parameters

# ModelInferRequest / ModelInferResponse field numbers (the public V2 definition).
MODEL_NAME, MODEL_VERSION, ID, PARAMETERS = 1, 2, 3, 4
# ModelStreamInferResponse.
ERROR_MESSAGE, INFER_RESPONSE = 1, 2
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


def version_field(version: int) -> bytes:
    """A model_version field: appended to a request, it wins over any earlier one."""
    return length_delimited(MODEL_VERSION, str(version).encode())


def with_version(data: bytes, version: int) -> bytes:
    """The request with model_version set (appended; the last value wins)."""
    return data + version_field(version)


def _parameter(key: str, value: bytes) -> bytes:
    entry = length_delimited(1, key.encode()) + length_delimited(2, value)
    return length_delimited(PARAMETERS, entry)


def string_parameter(key: str, value: str) -> bytes:
    """One more `parameters` entry (a string), to append to a request."""
    return _parameter(key, length_delimited(STRING_PARAM, value.encode()))


def int64_parameter(key: str, value: int) -> bytes:
    """One more `parameters` entry (an int64), to append to a request."""
    return _parameter(key, _encode_varint(INT64_PARAM << 3) + _encode_varint(value % 2**64))


@dataclass
class StreamReply:
    """A worker's ModelStreamInferResponse, split without decoding the response."""

    error: str
    response: memoryview
    status: int  # the worker's gRPC status code for an error (liveml_status), else 0


def stream_reply(data: bytes) -> StreamReply:
    error, response = "", memoryview(b"")
    for number, _, value in fields(data):
        if number == ERROR_MESSAGE and isinstance(value, memoryview):
            error = bytes(value).decode(errors="replace")
        elif number == INFER_RESPONSE and isinstance(value, memoryview):
            response = value
    status = 0
    if error and response.nbytes:  # only errors are read further: for their status code
        parsed = routing(bytes(response))
        if parsed.parameters.get(parameters.STATUS, "").isdigit():
            status = int(parsed.parameters[parameters.STATUS])
    return StreamReply(error, response, status)
