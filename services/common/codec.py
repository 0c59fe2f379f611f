"""The V2 tensor codec: Open Inference Protocol tensors <-> numpy arrays.

Raw contents are flat, row-major, little-endian bytes; BOOL is one byte per
element; each BYTES element is a uint32 little-endian length followed by its
bytes. Fixed-size tensors decode without a copy (a read-only view of the
request's bytes). Every malformed tensor raises `TensorError` with a message that
names the tensor and says what was expected, for an INVALID_ARGUMENT reply.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

from services.common.gen.inference import grpc_predict_v2_pb2 as pb

# V2 datatype string -> numpy dtype (explicitly little-endian); BYTES is special.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
BYTES = "BYTES"
DATATYPES = frozenset([*DTYPES, BYTES])
_NAMES: dict[np.dtype[Any], str] = {dtype: name for name, dtype in DTYPES.items()}

# Which InferTensorContents field carries each datatype when sent typed.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_LEN = struct.Struct("<I")


class TensorError(ValueError):
    """A tensor that does not match what it claims to be (INVALID_ARGUMENT)."""


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def check_shape(name: str, shape: Sequence[int]) -> None:
    if any(d < 0 for d in shape):
        raise TensorError(f"tensor '{name}': shape {list(shape)} has a negative dimension")


def datatype_of(dtype: npt.DTypeLike) -> str:
    """The V2 datatype string of a numpy dtype (object/str/bytes arrays are BYTES)."""
    dt = np.dtype(dtype)
    known_name = _NAMES.get(dt)  # every answer encodes its outputs: the common case first
    if known_name is not None:
        return known_name
    if dt.kind in "OSU":
        return BYTES
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    for name, known in DTYPES.items():
        if dt == known:
            return name
    raise TensorError(f"numpy dtype {dt} has no V2 datatype")


def numpy_dtype(datatype: str, name: str = "") -> np.dtype[Any]:
    try:
        return DTYPES[datatype]
    except KeyError:
        what = f"tensor '{name}': " if name else ""
        raise TensorError(
            f"{what}unknown datatype {datatype!r}; expected one of {', '.join(sorted(DATATYPES))}"
        ) from None


def decode_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> npt.NDArray[Any]:
    """Raw bytes -> array of `shape`. Fixed-size types are a zero-copy read-only view."""
    check_shape(name, shape)
    count = element_count(shape)
    if datatype == BYTES:
        return _decode_bytes(name, shape, count, raw)
    dtype = numpy_dtype(datatype, name)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            f"tensor '{name}': expected {expected} bytes for shape {list(shape)} of {datatype} "
            f"({count} elements x {dtype.itemsize} bytes), got {len(raw)} bytes"
        )
    array = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise TensorError(f"tensor '{name}': BOOL elements must be bytes 0 or 1")
    return array.reshape(shape)


def _decode_bytes(name: str, shape: Sequence[int], count: int, raw: bytes) -> npt.NDArray[Any]:
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset, n, end = 0, 0, len(raw)
    while offset < end:
        if n == count:
            raise TensorError(
                f"tensor '{name}': BYTES data holds more than the {count} elements of shape "
                f"{list(shape)} ({end - offset} bytes left over)"
            )
        if offset + 4 > end:
            raise TensorError(
                f"tensor '{name}': BYTES element {n} is cut off inside its 4-byte length prefix"
            )
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise TensorError(
                f"tensor '{name}': BYTES element {n} declares {length} bytes but only "
                f"{end - offset} remain"
            )
        out[n] = bytes(view[offset : offset + length])
        offset += length
        n += 1
    if n != count:
        raise TensorError(
            f"tensor '{name}': expected {count} BYTES elements for shape {list(shape)}, got {n}"
        )
    return out.reshape(shape)


def encode_raw(array: npt.NDArray[Any]) -> tuple[str, list[int], bytes]:
    """Array -> (datatype, shape, raw bytes)."""
    datatype = datatype_of(array.dtype)
    shape = list(array.shape)
    if datatype == BYTES:
        return datatype, shape, encode_bytes(array.reshape(-1))
    dtype = DTYPES[datatype]
    return datatype, shape, np.ascontiguousarray(array, dtype=dtype).tobytes()


def encode_bytes(elements: Iterable[Any]) -> bytes:
    """Length-prefix and concatenate BYTES elements (str is encoded as UTF-8)."""
    parts: list[bytes] = []
    for element in elements:
        data = element.encode() if isinstance(element, str) else bytes(element)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_contents(
    name: str, datatype: str, shape: Sequence[int], contents: pb.InferTensorContents
) -> npt.NDArray[Any]:
    """Typed `InferTensorContents` -> array of `shape` (FP16/BF16 have no typed form)."""
    check_shape(name, shape)
    count = element_count(shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        if datatype in DTYPES:
            raise TensorError(
                f"tensor '{name}': {datatype} has no typed contents field; send it as raw bytes"
            )
        numpy_dtype(datatype, name)
    assert field is not None
    values = getattr(contents, field)
    if len(values) != count:
        raise TensorError(
            f"tensor '{name}': expected {count} values in {field} for shape {list(shape)}, "
            f"got {len(values)}"
        )
    if datatype == BYTES:
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    dtype = DTYPES[datatype]
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except OverflowError as exc:
        raise TensorError(f"tensor '{name}': a value does not fit {datatype}: {exc}") from None


def encode_contents(array: npt.NDArray[Any]) -> tuple[str, list[int], pb.InferTensorContents]:
    """Array -> (datatype, shape, typed contents), for clients that want typed data."""
    datatype = datatype_of(array.dtype)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise TensorError(f"{datatype} has no typed contents field; send it as raw bytes")
    flat = array.reshape(-1)
    contents = pb.InferTensorContents()
    values: list[Any]
    if datatype == BYTES:
        values = [e.encode() if isinstance(e, str) else bytes(e) for e in flat]
    else:
        values = flat.tolist()
    getattr(contents, field).extend(values)
    return datatype, list(array.shape), contents
