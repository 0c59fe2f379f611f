"""Labelled examples against a model's signature: feature names, checks, and a
request's inputs flattened into one row.

A model's inputs become features as drift statistics name them: an input `x` of
shape [-1] or [-1, 1] is the feature `x`, one of shape [-1, F] the features `x[0]`
... `x[F-1]`, inputs in signature order. An example's features are that row of
numbers; integer and boolean inputs cannot hold NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common import codec
from services.common.errors import FailedPrecondition
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

FLOATS = {"FP16", "FP32", "FP64", "BF16"}
INTEGERS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


@dataclass(frozen=True)
class Feature:
    name: str
    datatype: str

    @property
    def integral(self) -> bool:
        """Whether values must be whole numbers (and so never NaN)."""
        return self.datatype in INTEGERS or self.datatype == "BOOL"


def features(model: str, signature: rpb.Signature) -> list[Feature]:
    """The model's input features, in order; FailedPrecondition when they have no
    fixed row of numbers (text inputs, unknown widths) or no signature is known yet."""
    if not signature.inputs:
        raise FailedPrecondition(
            f"model '{model}' has no input signature yet: push a version first"
        )
    out: list[Feature] = []
    for spec in signature.inputs:
        if spec.datatype not in FLOATS | INTEGERS | {"BOOL"}:
            raise FailedPrecondition(
                f"model '{model}' input '{spec.name}' is {spec.datatype}: examples are rows "
                "of numbers, so only numeric inputs can be stored as examples"
            )
        inner = list(spec.shape[1:])
        if any(d < 0 for d in inner):
            raise FailedPrecondition(
                f"model '{model}' input '{spec.name}' has a variable width "
                f"{list(spec.shape)}: examples need a fixed number of features"
            )
        width = math.prod(inner) if inner else 1
        if width == 1:
            out.append(Feature(spec.name, spec.datatype))
        else:
            out.extend(Feature(f"{spec.name}[{j}]", spec.datatype) for j in range(width))
    return out


def check_row(
    row: Sequence[float], specs: Sequence[Feature], where: str, label: gpb.Label | None
) -> str | None:
    """What is wrong with one example, or None."""
    if len(row) != len(specs):
        return f"{where}: {len(row)} features, the model takes {len(specs)}"
    for value, spec in zip(row, specs, strict=True):
        if spec.integral:
            if math.isnan(value):
                return (
                    f"{where}: feature '{spec.name}' is NaN, but the model's input is "
                    f"{spec.datatype}, which has no NaN"
                )
            if not float(value).is_integer():
                return (
                    f"{where}: feature '{spec.name}' is {value}, not a whole number "
                    f"({spec.datatype})"
                )
    if label is not None:
        kind = label.WhichOneof("value")
        if kind is None:
            return f"{where}: no label (a class_index, a number or a text)"
        if kind == "number" and not math.isfinite(label.number):
            return f"{where}: the label is {label.number}, not a finite number"
    return None


def request_row(request: bytes, signature: rpb.Signature) -> list[float] | None:
    """A one-row request's inputs flattened in signature order, or None when the
    request is not one row of the signature's numeric inputs."""
    parsed = pb.ModelInferRequest.FromString(request)
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for i, tensor in enumerate(parsed.inputs):
        if i >= len(parsed.raw_input_contents):
            return None  # typed contents: not what gateways forward, left out
        try:
            arrays[tensor.name] = codec.decode_raw(
                tensor.name, tensor.datatype, list(tensor.shape), parsed.raw_input_contents[i]
            )
        except Exception:  # a request the worker refused: not a row
            return None
    row: list[float] = []
    for spec in signature.inputs:
        array = arrays.get(spec.name)
        if array is None or array.dtype == object or array.ndim == 0 or array.shape[0] != 1:
            return None
        row.extend(float(v) for v in array.reshape(-1))
    return row
