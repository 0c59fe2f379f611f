"""V2 requests against a model's signature: checked and decoded inputs, encoded outputs.

Every check happens before the model runs, and each failure names the tensor and
says what was expected, for an INVALID_ARGUMENT reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common import codec, onnxsig
from services.common.errors import InvalidArgument
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.worker.runtime import Arrays

# Request parameters Triton reserves; only this one may be sent.
_ALLOWED_TRITON = {"triton_enable_empty_final_response"}


def _label(request: pb.ModelInferRequest) -> str:
    return f"[request id: {request.id}] " if request.id else ""


def check_parameters(request: pb.ModelInferRequest) -> None:
    for key in request.parameters:
        if key.startswith("triton_") and key not in _ALLOWED_TRITON:
            raise InvalidArgument(
                f"{_label(request)}parameter '{key}' is reserved (keys starting with 'triton_')"
            )


# Fixed-size datatypes whose raw bytes need no check beyond their length (BOOL bytes
# must be 0 or 1, BYTES elements have length prefixes: those take the full path).
_PLAIN = {name: dtype for name, dtype in codec.DTYPES.items() if name not in ("BOOL", "BF16")}


def decode_inputs(request: pb.ModelInferRequest, signature: onnxsig.Signature) -> Arrays:
    """Check names, datatypes, shapes and byte lengths; decode (zero-copy for raw data)."""
    arrays = _decode_plain(request, signature)
    return arrays if arrays is not None else _decode_checked(request, signature)


def _decode_plain(request: pb.ModelInferRequest, signature: onnxsig.Signature) -> Arrays | None:
    """The common request, decoded with the fewest steps: every input once, in raw bytes
    of a fixed-size type, matching the signature; None for anything else, which the full
    path then checks and names precisely."""
    tensors, raw, specs = request.inputs, request.raw_input_contents, signature.inputs
    if len(tensors) != len(specs) or len(raw) != len(tensors) or request.parameters:
        return None
    arrays: Arrays = {}
    for tensor, data, spec in zip(tensors, raw, specs, strict=True):
        dtype = _PLAIN.get(tensor.datatype)
        shape = tuple(tensor.shape)
        if (
            tensor.name != spec.name  # in the signature's order (others: the full path)
            or tensor.datatype != spec.datatype
            or dtype is None
            or len(shape) != len(spec.shape)
            or tensor.HasField("contents")
        ):
            return None
        count = 1
        for want, got in zip(spec.shape, shape, strict=True):
            if got < 0 or (want != -1 and want != got):
                return None
            count *= got
        if count * dtype.itemsize != len(data):
            return None
        arrays[tensor.name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return arrays


def _decode_checked(request: pb.ModelInferRequest, signature: onnxsig.Signature) -> Arrays:
    label = _label(request)
    check_parameters(request)
    expected = {t.name: t for t in signature.inputs}
    given = [t.name for t in request.inputs]
    missing = [name for name in expected if name not in given]
    if missing:
        raise InvalidArgument(
            f"{label}missing input(s) {missing}; the model expects {list(expected)}"
        )
    extra = [name for name in given if name not in expected]
    if extra:
        raise InvalidArgument(
            f"{label}unexpected input(s) {extra}; the model expects {list(expected)}"
        )
    if len(set(given)) != len(given):
        raise InvalidArgument(f"{label}an input is given more than once: {given}")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"{label}{len(raw)} raw_input_contents for {len(request.inputs)} inputs; "
            "send one per input, in order"
        )
    arrays: Arrays = {}
    for index, tensor in enumerate(request.inputs):
        spec = expected[tensor.name]
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"{label}input '{tensor.name}': expected datatype {spec.datatype}, "
                f"got {tensor.datatype}"
            )
        shape = list(tensor.shape)
        if len(shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
        ):
            raise InvalidArgument(
                f"{label}input '{tensor.name}': expected shape {list(spec.shape)} "
                f"(-1 = any), got {shape}"
            )
        has_contents = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
        try:
            if raw:
                if has_contents:
                    raise InvalidArgument(
                        f"{label}input '{tensor.name}': contents and raw_input_contents are "
                        "both set; send one or the other"
                    )
                arrays[tensor.name] = codec.decode_raw(
                    tensor.name, tensor.datatype, shape, raw[index]
                )
            else:
                arrays[tensor.name] = codec.decode_contents(
                    tensor.name, tensor.datatype, shape, tensor.contents
                )
        except codec.TensorError as exc:
            raise InvalidArgument(f"{label}{exc}") from None
        if tensor.datatype == codec.BYTES:
            arrays[tensor.name] = _as_text(label, tensor.name, arrays[tensor.name])
    return arrays


def _as_text(label: str, name: str, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """onnxruntime string tensors hold UTF-8 text, so BYTES elements must decode as UTF-8."""
    flat = array.reshape(-1)
    text = np.empty(flat.shape, dtype=object)
    for i, element in enumerate(flat):
        try:
            text[i] = element.decode()
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"{label}input '{name}': BYTES element {i} is not valid UTF-8, and onnxruntime "
                "string tensors hold UTF-8 text"
            ) from None
    return text.reshape(array.shape)


def requested_outputs(request: pb.ModelInferRequest, names: Sequence[str]) -> list[int]:
    """Indexes of the outputs to return, in the order asked (all when none are named)."""
    if not request.outputs:
        return list(range(len(names)))
    index = {name: i for i, name in enumerate(names)}
    chosen = []
    for output in request.outputs:
        if output.name not in index:
            raise InvalidArgument(
                f"{_label(request)}unknown output '{output.name}'; the model has {list(names)}"
            )
        chosen.append(index[output.name])
    return chosen


def encode_response(
    request: pb.ModelInferRequest,
    version: int,
    names: Sequence[str],
    chosen: Sequence[int],
    outputs: Sequence[npt.NDArray[Any]],
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=str(version), id=request.id
    )
    for i in chosen:
        datatype, shape, data = codec.encode_raw(outputs[i])
        response.outputs.add(name=names[i], datatype=datatype, shape=shape)
        response.raw_output_contents.append(data)
    return response
