"""The V2 tensor codec: every datatype round-trips; malformed tensors are named and explained."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from services.common import codec
from services.common.gen.inference import grpc_predict_v2_pb2 as pb

FIXED = sorted(codec.DTYPES)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def fixed_arrays(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(FIXED))
    shape = draw(shapes)
    dtype = codec.DTYPES[datatype]
    if datatype == "BF16":
        # hypothesis has no bfloat16: draw the 16-bit patterns instead.
        bits = draw(hnp.arrays(np.dtype("<u2"), shape))
        return datatype, bits.view(ml_dtypes.bfloat16)
    return datatype, draw(hnp.arrays(dtype, shape))


@settings(max_examples=300, deadline=None)
@given(fixed_arrays())
def test_fixed_size_round_trip(case: tuple[str, np.ndarray]) -> None:
    datatype, array = case
    got_type, shape, raw = codec.encode_raw(array)
    assert got_type == datatype
    assert len(raw) == array.size * codec.DTYPES[datatype].itemsize
    back = codec.decode_raw("t", datatype, shape, raw)
    assert back.shape == array.shape
    assert back.dtype == codec.DTYPES[datatype]
    # Compare bit patterns so NaNs round-trip too.
    assert back.tobytes() == array.tobytes()


elements = st.binary(max_size=12) | st.sampled_from([b"", b"\xff\xfe\x00", b"\x80"])


@settings(max_examples=200, deadline=None)
@given(
    shapes.flatmap(
        lambda s: st.tuples(
            st.just(s), st.lists(elements, min_size=int(np.prod(s)), max_size=int(np.prod(s)))
        )
    )
)
def test_bytes_round_trip_with_empty_and_non_utf8(
    case: tuple[tuple[int, ...], list[bytes]],
) -> None:
    shape, values = case
    array = np.empty(len(values), dtype=object)
    array[:] = values
    array = array.reshape(shape)
    datatype, got_shape, raw = codec.encode_raw(array)
    assert datatype == "BYTES"
    assert len(raw) == 4 * len(values) + sum(map(len, values))
    back = codec.decode_raw("t", "BYTES", got_shape, raw)
    assert back.shape == shape
    assert list(back.reshape(-1)) == values


def test_raw_layout_is_little_endian_row_major_and_zero_copy() -> None:
    raw = np.array([[1, 2], [3, 4]], dtype="<i4").tobytes()
    array = codec.decode_raw("x", "INT32", [2, 2], raw)
    assert array.tolist() == [[1, 2], [3, 4]]
    assert not array.flags.writeable and not array.flags.owndata  # a view of the request bytes
    assert codec.encode_raw(np.array([1], dtype=">i4"))[2] == b"\x01\x00\x00\x00"
    assert codec.encode_raw(np.array(["hé"]))[2] == b"\x03\x00\x00\x00h\xc3\xa9"


def test_byte_length_mismatch_names_input_expected_and_actual() -> None:
    with pytest.raises(codec.TensorError) as err:
        codec.decode_raw("features", "FP32", [2, 3], b"\x00" * 20)
    assert str(err.value) == (
        "tensor 'features': expected 24 bytes for shape [2, 3] of FP32 "
        "(6 elements x 4 bytes), got 20 bytes"
    )


@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        (b"\x01\x00\x00", [1], "element 0 is cut off inside its 4-byte length prefix"),
        (b"\x05\x00\x00\x00ab", [1], "element 0 declares 5 bytes but only 2 remain"),
        (b"\x00\x00\x00\x00", [2], "expected 2 BYTES elements for shape [2], got 1"),
        (b"\x00\x00\x00\x00" * 2, [1], "holds more than the 1 elements of shape [1]"),
    ],
)
def test_malformed_bytes_tensor(raw: bytes, shape: list[int], message: str) -> None:
    with pytest.raises(codec.TensorError, match="tensor 'words'") as err:
        codec.decode_raw("words", "BYTES", shape, raw)
    assert message in str(err.value)


def test_unknown_datatype_negative_dim_and_bad_bool() -> None:
    with pytest.raises(
        codec.TensorError, match=r"tensor 'x': unknown datatype 'FLOAT'; expected one of BF16, BOOL"
    ):
        codec.decode_raw("x", "FLOAT", [1], b"\x00" * 4)
    with pytest.raises(codec.TensorError, match=r"shape \[-1, 2\] has a negative dimension"):
        codec.decode_raw("x", "FP32", [-1, 2], b"")
    with pytest.raises(codec.TensorError, match="BOOL elements must be bytes 0 or 1"):
        codec.decode_raw("x", "BOOL", [2], b"\x01\x02")


@settings(max_examples=150, deadline=None)
@given(fixed_arrays())
def test_typed_contents_round_trip(case: tuple[str, np.ndarray]) -> None:
    datatype, array = case
    if datatype in ("FP16", "BF16"):
        with pytest.raises(codec.TensorError, match="no typed contents field"):
            codec.encode_contents(array)
        return
    got_type, shape, contents = codec.encode_contents(array)
    wire = pb.InferTensorContents.FromString(contents.SerializeToString())
    back = codec.decode_contents("t", got_type, shape, wire)
    assert back.dtype == codec.DTYPES[datatype]
    assert back.tobytes() == array.tobytes()


def test_typed_contents_errors() -> None:
    contents = pb.InferTensorContents(fp32_contents=[1.0, 2.0])
    with pytest.raises(
        codec.TensorError, match=r"expected 3 values in fp32_contents for shape \[3\], got 2"
    ):
        codec.decode_contents("x", "FP32", [3], contents)
    with pytest.raises(codec.TensorError, match="FP16 has no typed contents field; send it as raw"):
        codec.decode_contents("x", "FP16", [1], contents)
    with pytest.raises(codec.TensorError, match="does not fit UINT8"):
        codec.decode_contents("x", "UINT8", [1], pb.InferTensorContents(uint_contents=[300]))
