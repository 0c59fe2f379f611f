"""What a response predicted: its first output, decoded, and how to compare it.

Decoded on the request path only by the fairness count (`after.Bookkeeping`, for a
request that names a group); feedback decodes when ground truth arrives, the shadow
process and the registry's joiner off the request path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.common import codec
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb


def first_output(response: bytes) -> np.ndarray[Any, Any] | None:
    parsed = pb.ModelInferResponse.FromString(response)
    if not parsed.outputs or not parsed.raw_output_contents:
        return None
    out = parsed.outputs[0]
    return codec.decode_raw(out.name, out.datatype, list(out.shape), parsed.raw_output_contents[0])


def prediction(array: np.ndarray[Any, Any]) -> int | float | str:
    """A class index (argmax of scores, or an integer label), a number, or a text label."""
    row = array.reshape(array.shape[0], -1)[0] if array.ndim else array.reshape(1)
    if row.dtype == object:
        value = row[0]
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if row.size > 1:
        return int(np.argmax(row))
    if np.issubdtype(row.dtype, np.integer) or row.dtype == np.bool_:
        return int(row[0])
    return float(row[0])


def matches(predicted: int | float | str, truth: gpb.Label) -> bool:
    """Whether a prediction is right: the same class or text, a number within 10%."""
    kind = truth.WhichOneof("value")
    if kind == "class_index":
        return predicted == truth.class_index
    if kind == "number" and isinstance(predicted, int | float):
        return abs(float(predicted) - truth.number) <= 0.1 * max(abs(truth.number), 1e-9)
    return kind == "text" and predicted == truth.text


def is_positive(predicted: int | float | str) -> bool:
    """The positive class for fairness: class 1, a label other than 0, a number above 0.5."""
    if isinstance(predicted, str):
        return predicted not in ("", "0", "false", "no", "negative")
    if isinstance(predicted, int):
        return predicted != 0
    return predicted > 0.5


def agree(
    primary: np.ndarray[Any, Any], mirror: np.ndarray[Any, Any], tolerance: float = 0.01
) -> bool:
    """Argmax equality for scores and labels; relative error within `tolerance` for numbers."""
    if primary.shape != mirror.shape:
        return False
    if primary.dtype == object or np.issubdtype(primary.dtype, np.integer):
        return bool(np.array_equal(primary, mirror))
    if primary.ndim >= 2 and primary.shape[-1] > 1:
        return bool(np.array_equal(primary.argmax(axis=-1), mirror.argmax(axis=-1)))
    scale = np.maximum(np.abs(primary), 1e-9)
    return bool(np.all(np.abs(primary - mirror) / scale <= tolerance))
