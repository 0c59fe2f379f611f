"""The input/output signature of an ONNX model, read by opening it with onnxruntime.

Opening the model is also the validity check: a file onnxruntime cannot load is
not a model we can serve. Types are reported as V2 datatype strings and symbolic
or unknown dimensions as -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from services.common.errors import InvalidArgument
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

ONNX_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def _tensor(arg: Any, kind: str) -> Tensor:
    datatype = ONNX_TO_V2.get(arg.type)
    if datatype is None:
        hint = " (for scikit-learn classifiers convert with options={'zipmap': False})"
        raise InvalidArgument(
            f"{kind} '{arg.name}' has type {arg.type}; liveml serves tensors only"
            + (hint if arg.type.startswith("seq(map") else "")
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return Tensor(arg.name, datatype, shape)


def signature_of(session: ort.InferenceSession) -> Signature:
    return Signature(
        tuple(_tensor(a, "input") for a in session.get_inputs()),
        tuple(_tensor(a, "output") for a in session.get_outputs()),
    )


def inspect_model(path: Path) -> Signature:
    """Open the model (CPU, one thread) and return its signature; INVALID_ARGUMENT if broken."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(
            f"artifact is not a loadable ONNX model: {first_line[:400]}"
        ) from None
    return signature_of(session)


def compatible(a: Tensor, b: Tensor) -> bool:
    """Same name, datatype and rank, and every dimension equal or variable (-1) on either side."""
    return (
        a.name == b.name
        and a.datatype == b.datatype
        and len(a.shape) == len(b.shape)
        and all(x == y or -1 in (x, y) for x, y in zip(a.shape, b.shape, strict=True))
    )


def mismatch(expected: Signature, actual: Signature) -> str | None:
    """Why `actual` cannot stand in for `expected`, or None when it can."""
    for kind, want, have in (
        ("input", expected.inputs, actual.inputs),
        ("output", expected.outputs, actual.outputs),
    ):
        have_by_name = {t.name: t for t in have}
        if {t.name for t in want} != set(have_by_name):
            return (
                f"{kind}s differ: expected {sorted(t.name for t in want)}, "
                f"got {sorted(have_by_name)}"
            )
        for tensor in want:
            other = have_by_name[tensor.name]
            if not compatible(tensor, other):
                return (
                    f"{kind} '{tensor.name}': expected {tensor.datatype} {list(tensor.shape)}, "
                    f"got {other.datatype} {list(other.shape)}"
                )
    return None


def to_proto(sig: Signature) -> rpb.Signature:
    def spec(t: Tensor) -> rpb.TensorSpec:
        return rpb.TensorSpec(name=t.name, datatype=t.datatype, shape=list(t.shape))

    return rpb.Signature(
        inputs=[spec(t) for t in sig.inputs], outputs=[spec(t) for t in sig.outputs]
    )


def from_proto(sig: rpb.Signature) -> Signature:
    def tensor(s: rpb.TensorSpec) -> Tensor:
        return Tensor(s.name, s.datatype, tuple(s.shape))

    return Signature(tuple(tensor(s) for s in sig.inputs), tuple(tensor(s) for s in sig.outputs))
