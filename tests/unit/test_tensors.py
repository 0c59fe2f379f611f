"""Input decoding: the short path for common requests agrees with the fully checked one,
and leaves everything unusual to it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from services.common import codec, onnxsig
from services.common.errors import InvalidArgument
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.worker import tensors

SIGNATURE = onnxsig.Signature(
    inputs=(
        onnxsig.Tensor("x", "FP32", (-1, 3)),
        onnxsig.Tensor("k", "INT64", (-1,)),
    ),
    outputs=(onnxsig.Tensor("y", "FP32", (-1, 2)),),
)


def request(*arrays: tuple[str, np.ndarray], **parameters: str) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="m", id="r1")
    for name, array in arrays:
        datatype, shape, raw = codec.encode_raw(array)
        r.inputs.add(name=name, datatype=datatype, shape=shape)
        r.raw_input_contents.append(raw)
    for key, value in parameters.items():
        r.parameters[key].string_param = value
    return r


X = ("x", np.arange(6, dtype=np.float32).reshape(2, 3))
K = ("k", np.array([4, 5], dtype=np.int64))


def test_a_common_request_takes_the_short_path_and_decodes_the_same() -> None:
    r = request(X, K)
    short = tensors._decode_plain(r, SIGNATURE)
    assert short is not None
    checked = tensors._decode_checked(r, SIGNATURE)
    assert short.keys() == checked.keys()
    for name in short:
        np.testing.assert_array_equal(short[name], checked[name])
        assert short[name].dtype == checked[name].dtype


@pytest.mark.parametrize(
    ("arrays", "parameters", "message"),
    [
        ((K, X), {}, None),  # another order: fine, but for the full path
        ((X,), {}, "missing input(s) ['k']"),
        ((X, K, ("z", np.zeros(1, np.float32))), {}, "unexpected input(s) ['z']"),
        ((("x", np.zeros((2, 3), np.float64)), K), {}, "expected datatype FP32, got FP64"),
        ((("x", np.zeros((2, 4), np.float32)), K), {}, "expected shape [-1, 3]"),
        ((X, K), {"triton_x": "1"}, "parameter 'triton_x' is reserved"),
    ],
)
def test_anything_unusual_goes_to_the_checked_path(
    arrays: tuple[tuple[str, np.ndarray], ...], parameters: dict[str, str], message: str | None
) -> None:
    r = request(*arrays, **parameters)
    assert tensors._decode_plain(r, SIGNATURE) is None
    if message is None:
        assert set(tensors.decode_inputs(r, SIGNATURE)) == {"x", "k"}
    else:
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            tensors.decode_inputs(r, SIGNATURE)


def test_a_short_raw_buffer_is_refused_with_its_byte_count() -> None:
    r = request(X, K)
    r.raw_input_contents[0] = r.raw_input_contents[0][:-4]
    assert tensors._decode_plain(r, SIGNATURE) is None
    with pytest.raises(InvalidArgument, match=r"expected 24 bytes .* got 20 bytes"):
        tensors.decode_inputs(r, SIGNATURE)
