"""Small ONNX models the tests build themselves (onnx helper API; no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def linear(path: Path, n_in: int = 4, n_out: int = 3, seed: int = 0, scale: float = 1.0) -> Path:
    """y = x @ W + b with a variable batch dimension: input 'x' FP32 [-1, n_in] -> 'y'."""
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((n_in, n_out)) * scale).astype(np.float32)
    bias = rng.standard_normal(n_out).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


IDENTITY_TYPES = {
    "fp32": (TensorProto.FLOAT, "FP32"),
    "fp16": (TensorProto.FLOAT16, "FP16"),
    "i64": (TensorProto.INT64, "INT64"),
    "u8": (TensorProto.UINT8, "UINT8"),
    "flag": (TensorProto.BOOL, "BOOL"),
    "text": (TensorProto.STRING, "BYTES"),
}


def identity_all(path: Path) -> Path:
    """One input per datatype family, each echoed to `out_<name>`: [-1, -1] shapes."""
    nodes, inputs, outputs = [], [], []
    for name, (elem, _) in IDENTITY_TYPES.items():
        nodes.append(helper.make_node("Identity", [name], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(name, elem, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["batch", "n"]))
    graph = helper.make_graph(nodes, "identity_all", inputs, outputs)
    return _save(graph, path)


def int_bool(path: Path) -> Path:
    """masked = where(mask, x, 0) (INT64) and count = sum of kept values: int64 + bool inputs."""
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Where", ["mask", "x", "zero"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axes"], ["total"], keepdims=1),
        ],
        "int_bool",
        [
            helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("masked", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("total", TensorProto.INT64, ["batch", 1]),
        ],
        initializer=[zero, axes],
    )
    return _save(graph, path)


def warmup_crash(path: Path) -> Path:
    """Loads fine, signature like `linear`, but fails at run time (a reshape that cannot fit)."""
    shape = numpy_helper.from_array(np.array([5, 7], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["r"]),
            helper.make_node("Slice", ["r", "starts", "ends", "axes"], ["y"]),
        ],
        "crash",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            shape,
            numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
            numpy_helper.from_array(np.array([3], dtype=np.int64), "ends"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    return _save(graph, path)


def sklearn_pipeline(path: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """StandardScaler + LogisticRegression via skl2onnx: outputs label (INT64) and probabilities."""
    from skl2onnx import to_onnx
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = make_classification(
        n_samples=300, n_features=6, n_classes=3, n_informative=4, random_state=seed
    )
    x = x.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x, y)
    path.write_bytes(
        to_onnx(pipe, x[:1], options={"zipmap": False}, target_opset=17).SerializeToString()
    )
    return path, x[:20]


def mlp(path: Path, n_in: int = 64, hidden: int = 256, n_out: int = 10, seed: int = 0) -> Path:
    """An MLP n_in -> hidden -> hidden -> n_out (ReLU), FP32, variable batch."""
    rng = np.random.default_rng(seed)
    dims = [n_in, hidden, hidden, n_out]
    nodes, inits, current = [], [], "x"
    for i in range(3):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        b = rng.standard_normal(dims[i + 1]).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}" if i < 2 else "y"]),
        ]
        if i < 2:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        initializer=inits,
    )
    return _save(graph, path)


def deep_mlp(path: Path, n_in: int, hidden: int, n_out: int, repeats: int) -> Path:
    """n_in -> hidden, one hidden x hidden layer (tanh) applied `repeats` times, -> n_out.

    As slow as a much wider model, but its weights (one shared layer) stay in the cache.
    """
    rng = np.random.default_rng(3)

    def weight(rows: int, cols: int, name: str) -> onnx.TensorProto:
        w = (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)
        return numpy_helper.from_array(w, name)

    nodes = [helper.make_node("MatMul", ["x", "W_in"], ["h0"])]
    for i in range(repeats):
        nodes += [
            helper.make_node("MatMul", [f"h{i}", "W"], [f"m{i}"]),
            helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]),
        ]
    nodes.append(helper.make_node("MatMul", [f"h{repeats}", "W_out"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "deep_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        initializer=[
            weight(n_in, hidden, "W_in"),
            weight(hidden, hidden, "W"),
            weight(hidden, n_out, "W_out"),
        ],
    )
    return _save(graph, path)


# --- classifiers for canary analysis ------------------------------------------------------

# The true rule the canary tests' feedback follows: class 1 when x . RULE > 0.
RULE = np.array([1.0, -1.0, 0.5, 0.25], dtype=np.float32)


def _scores(flip: bool) -> np.ndarray:
    """Weights whose argmax is class 1 exactly when x . RULE > 0 (or the reverse: `flip`)."""
    columns = [-RULE, RULE] if not flip else [RULE, -RULE]
    return np.stack(columns, axis=1).astype(np.float32)


def _classifier_graph(name: str, flip: bool, extra: list, extra_init: list, tail: str | None):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["s" if tail else "y"])]
    if tail:
        nodes += extra
        nodes.append(helper.make_node("Add", ["s", tail], ["y"]))
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(_scores(flip), "W"), *extra_init],
    )


def classifier(path: Path, flip: bool = False) -> Path:
    """x FP32 [-1, 4] -> y scores [-1, 2]; argmax follows RULE (or contradicts it: `flip`)."""
    return _save(_classifier_graph("classifier", flip, [], [], None), path)


def slow_classifier(path: Path, rounds: int, width: int = 256) -> Path:
    """The same answers as `classifier`, after `rounds` dense layers whose result is
    multiplied by zero: the same model, only slower."""
    rng = np.random.default_rng(1)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["h_in", "M"], ["hm"]),
            helper.make_node("Tanh", ["hm"], ["h_out"]),
        ],
        "layer",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", width]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", width]),
        ],
        initializer=[
            numpy_helper.from_array(
                (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "M"
            )
        ],
    )
    extra = [
        helper.make_node("MatMul", ["x", "P"], ["h0"]),
        helper.make_node("Loop", ["rounds", "true", "h0"], ["h"], body=body),
        helper.make_node("ReduceSum", ["h", "axis1"], ["r"], keepdims=1),
        helper.make_node("Mul", ["r", "zero"], ["nothing"]),
    ]
    init = [
        numpy_helper.from_array(rng.standard_normal((4, width)).astype(np.float32), "P"),
        numpy_helper.from_array(np.array(rounds, dtype=np.int64), "rounds"),
        numpy_helper.from_array(np.array(True), "true"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    return _save(_classifier_graph("slow_classifier", False, extra, init, "nothing"), path)


def failing_classifier(path: Path, always: bool = False) -> Path:
    """Answers all-zero inputs (so it loads and warms up) and fails at run time on most
    others: it looks up a table at an index computed from the input. `always` fails on
    every input, warm-up included."""
    extra = [
        helper.make_node("ReduceSum", ["x", "axis1"], ["sx"], keepdims=0),
        helper.make_node("Abs", ["sx"], ["ax"]),
        helper.make_node("Mul", ["ax", "thousand"], ["big0"]),
        helper.make_node("Add", ["big0", "offset"], ["big"]),
        helper.make_node("Cast", ["big"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["looked"]),
        helper.make_node("Unsqueeze", ["looked", "axis1"], ["col"]),
        helper.make_node("Mul", ["col", "zero"], ["nothing"]),
    ]
    init = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(1000.0, dtype=np.float32), "thousand"),
        numpy_helper.from_array(np.array(100.0 if always else 0.0, dtype=np.float32), "offset"),
        numpy_helper.from_array(np.zeros(4, dtype=np.float32), "table"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    return _save(_classifier_graph("failing_classifier", False, extra, init, "nothing"), path)


def slow_warmup_linear(path: Path, seed: int = 2, rounds: int = 100_000, width: int = 16) -> Path:
    """`linear`, except that an all-zero input (what a worker's warm-up sends) first runs
    `rounds` loop iterations: a version slow to warm up and fast to serve. Use
    `calibrated_rounds` for a wanted warm-up time on this machine."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((4, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["h_in", "M"], ["h_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", width]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", width]),
        ],
        initializer=[numpy_helper.from_array(np.eye(width, dtype=np.float32), "M")],
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["plain"]),
            helper.make_node("Abs", ["x"], ["ax"]),
            helper.make_node("ReduceSum", ["ax"], ["total"], keepdims=0),
            helper.make_node("Equal", ["total", "zero"], ["all_zero"]),
            helper.make_node("Cast", ["all_zero"], ["one_if_zero"], to=TensorProto.INT64),
            helper.make_node("Mul", ["one_if_zero", "rounds"], ["trips"]),
            helper.make_node("MatMul", ["x", "P"], ["h0"]),
            helper.make_node("Loop", ["trips", "true", "h0"], ["h"], body=body),
            helper.make_node("ReduceSum", ["h", "axis1"], ["r"], keepdims=1),
            helper.make_node("Mul", ["r", "zero"], ["nothing"]),
            helper.make_node("Add", ["plain", "nothing"], ["y"]),
        ],
        "slow_warmup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(bias, "b"),
            numpy_helper.from_array(np.zeros((4, width), dtype=np.float32), "P"),
            numpy_helper.from_array(np.array(rounds, dtype=np.int64), "rounds"),
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ],
    )
    return _save(graph, path)


def calibrated_rounds(folder: Path, seconds: float) -> int:
    """Loop rounds for which one all-zero run of `slow_warmup_linear` takes about
    `seconds` here (a worker's warm-up makes at least two such runs)."""
    import time

    import onnxruntime as ort

    probe = 20_000
    session = ort.InferenceSession(
        str(slow_warmup_linear(folder / "calibrate.onnx", rounds=probe)),
        providers=["CPUExecutionProvider"],
    )
    zeros = {"x": np.zeros((1, 4), np.float32)}
    session.run(None, zeros)
    started = time.perf_counter()
    session.run(None, zeros)
    return max(1, int(probe * seconds / (time.perf_counter() - started)))
