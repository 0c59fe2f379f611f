"""The worker speaks V2 to unmodified tritonclient: parity with onnxruntime, and the
conformance checklist of shared/reference/v2-protocol.md (standalone --model-dir mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import free_port
from tests.helpers import models
from tests.helpers.procs import Proc, python_module, wait_port
from tests.helpers.triton import run_client
from tests.helpers.wait import wait_until


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name, build in {
        "linear": models.linear,
        "identity": models.identity_all,
        "int_bool": models.int_bool,
        "mlp": models.mlp,
    }.items():
        (root / name / "1").mkdir(parents=True)
        build(root / name / "1" / "model.onnx")
    (root / "pipeline" / "1").mkdir(parents=True)
    models.sklearn_pipeline(root / "pipeline" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def worker(model_dir: Path) -> Iterator[tuple[Proc, int]]:
    port = free_port()
    proc = python_module(
        "services.cli.main",
        None,
        "worker",
        "serve",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--metrics-port",
        "-1",
        "--scan-seconds",
        "0.2",
    )
    wait_port(port, proc)
    wait_until(lambda: "pipeline v1 READY" in "".join(proc.output), 30, "models to load")
    yield proc, port
    assert proc.stop() == 0


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_parity_with_onnxruntime(worker: tuple[Proc, int], model_dir: Path, tmp_path: Path) -> None:
    _, port = worker
    rng = np.random.default_rng(3)
    cases = {
        "pipeline": {"X": models.sklearn_pipeline(tmp_path / "p.onnx")[1]},
        "mlp": {"x": rng.standard_normal((7, 64)).astype(np.float32)},
        "int_bool": {
            "x": rng.integers(-5, 5, (4, 3)).astype(np.int64),
            "mask": rng.integers(0, 2, (4, 3)).astype(bool),
        },
        "linear": {"x": rng.standard_normal((3, 4)).astype(np.float32)},
    }
    args = {}
    for model, feeds in cases.items():
        args[model] = {}
        for name, array in feeds.items():
            np.save(tmp_path / f"{model}-{name}.npy", array)
            args[model][name] = str(tmp_path / f"{model}-{name}.npy")
    out = run_client(
        """
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ARGS['port']}")
        for model, feeds in ARGS["cases"].items():
            meta = client.get_model_metadata(model)
            inputs = []
            for name, path in feeds.items():
                array = np.load(path)
                tensor = grpcclient.InferInput(name, list(array.shape),
                                               next(i.datatype for i in meta.inputs if i.name == name))
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            result = client.infer(model, inputs)
            response = result.get_response()
            OUT[model] = []
            for output in meta.outputs:
                path = f"{ARGS['dir']}/{model}-out-{output.name}.npy"
                np.save(path, result.as_numpy(output.name))
                OUT[model].append(path)
            OUT[model + ':version'] = response.model_version
        """,
        port=port,
        cases=args,
        dir=str(tmp_path),
    )
    for model, feeds in cases.items():
        expected = ort_run(model_dir / model / "1" / "model.onnx", feeds)
        got = [np.load(p) for p in out[model]]
        assert len(got) == len(expected) >= 1
        for want, have in zip(expected, got, strict=True):
            assert have.dtype == want.dtype and have.shape == want.shape
            np.testing.assert_array_equal(have, want)
        assert out[model + ":version"] == "1"
    assert len(out["pipeline"]) == 2  # label and probabilities


def test_health_metadata_config_and_errors(worker: tuple[Proc, int]) -> None:
    _, port = worker
    out = run_client(
        """
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{ARGS['port']}")
        OUT["live"], OUT["ready"] = c.is_server_live(), c.is_server_ready()
        OUT["model_ready"] = c.is_model_ready("linear")
        OUT["model_ready_1"] = c.is_model_ready("linear", "1")
        OUT["unknown_model"] = c.is_model_ready("nope")
        OUT["bad_version"] = status(lambda: c.is_model_ready("linear", "abc"))
        OUT["unknown_version"] = c.is_model_ready("linear", "7")
        OUT["unknown_model_meta"] = status(lambda: c.get_model_metadata("nope"))
        server = c.get_server_metadata()
        OUT["extensions"] = list(server.extensions)
        meta = c.get_model_metadata("linear")
        OUT["meta"] = [meta.name, list(meta.versions), meta.platform,
                       [(t.name, t.datatype, list(t.shape)) for t in meta.inputs]]
        config = c.get_model_config("mlp").config
        OUT["config"] = [config.name, config.max_batch_size,
                         [(t.name, t.data_type, list(t.dims)) for t in config.input],
                         [(t.name, list(t.dims)) for t in config.output],
                         config.HasField("dynamic_batching")]
        OUT["load"] = status(lambda: c.load_model("linear"))
        OUT["shm"] = status(lambda: c.get_system_shared_memory_status())
        index = c.get_model_repository_index()
        OUT["index"] = sorted((m.name, m.version, m.state) for m in index.models)
        """,
        port=port,
    )
    assert out["live"] and out["ready"] and out["model_ready"] and out["model_ready_1"]
    # As Triton (qa/L0_lifecycle): a model or version not held is not ready, not an error.
    assert out["unknown_model"] is False
    assert out["unknown_version"] is False
    assert out["bad_version"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "positive integer" in out["bad_version"][1]
    assert out["unknown_model_meta"] == [
        "StatusCode.NOT_FOUND",
        "Request for unknown model: 'nope' is not found",
    ]
    assert "statistics" in out["extensions"] and "model_configuration" in out["extensions"]
    assert out["meta"] == ["linear", ["1"], "onnxruntime_onnx", [["x", "FP32", [-1, 4]]]]
    assert out["config"] == ["mlp", 32, [["x", 11, [64]]], [["y", [10]]], True]
    assert out["load"][0] == "StatusCode.UNIMPLEMENTED" and "registry" in out["load"][1]
    assert out["shm"][0] == "StatusCode.UNIMPLEMENTED"
    assert ["linear", "1", "READY"] in out["index"] and len(out["index"]) == 5


def test_datatypes_outputs_and_input_errors(worker: tuple[Proc, int]) -> None:
    _, port = worker
    out = run_client(
        """
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{ARGS['port']}")
        data = {
            "fp32": (np.array([[1.5, -2.0]], np.float32), "FP32"),
            "fp16": (np.array([[0.5, 65504]], np.float16), "FP16"),
            "i64": (np.array([[2**40, -3]], np.int64), "INT64"),
            "u8": (np.array([[0, 255]], np.uint8), "UINT8"),
            "flag": (np.array([[True, False]]), "BOOL"),
            "text": (np.array([[b"", "héllo".encode()]], dtype=object), "BYTES"),
        }
        def inputs(override=None):
            tensors = []
            for name, (array, dtype) in {**data, **(override or {})}.items():
                t = grpcclient.InferInput(name, list(array.shape), dtype)
                t.set_data_from_numpy(array)
                tensors.append(t)
            return tensors
        result = c.infer("identity", inputs(), request_id="req-42")
        response = result.get_response()
        OUT["id"], OUT["version"] = response.id, response.model_version
        OUT["raw_count"] = len(response.raw_output_contents)
        OUT["roundtrip"] = {}
        for name, (array, dtype) in data.items():
            got = result.as_numpy("out_" + name)
            OUT["roundtrip"][name] = [str(got.dtype), got.tolist() == array.tolist(),
                                      got.shape == array.shape]
        picked = c.infer("identity", inputs(), outputs=[
            grpcclient.InferRequestedOutput("out_u8"), grpcclient.InferRequestedOutput("out_fp32")])
        OUT["picked"] = [o.name for o in picked.get_response().outputs]
        OUT["unknown_output"] = status(lambda: c.infer(
            "identity", inputs(), outputs=[grpcclient.InferRequestedOutput("nope")]))
        bad = np.array([[b"\\xff"]], dtype=object)
        OUT["non_utf8"] = status(lambda: c.infer("identity", inputs({"text": (bad, "BYTES")})))
        x = np.ones((2, 4), np.float32)
        def one(name, array, dtype, shape=None):
            t = grpcclient.InferInput(name, shape or list(array.shape), dtype)
            t.set_data_from_numpy(array)
            return t
        OUT["wrong_dtype"] = status(lambda: c.infer("linear", [one("x", x.astype(np.float64), "FP64")]))
        OUT["wrong_shape"] = status(lambda: c.infer("linear", [one("x", np.ones((2, 5), np.float32), "FP32")]))
        OUT["wrong_name"] = status(lambda: c.infer("linear", [one("z", x, "FP32")]))
        OUT["extra_input"] = status(lambda: c.infer("linear", [one("x", x, "FP32"), one("z", x, "FP32")]))
        OUT["unknown_model"] = status(lambda: c.infer("nope", [one("x", x, "FP32")]))
        ok = c.infer("linear", [one("x", x, "FP32")], parameters={"my_param": "v"}, priority=3,
                     request_id="p")
        OUT["custom_params"] = ok.get_response().id
        big = np.random.default_rng(0).standard_normal((4 * 1024 * 1024, 4)).astype(np.float32)
        y = c.infer("linear", [one("x", big, "FP32")]).as_numpy("y")
        OUT["big"] = [list(y.shape), big.nbytes]
        small = c.infer("linear", [one("x", x, "FP32")], compression_algorithm="gzip")
        OUT["gzip"] = list(small.as_numpy("y").shape)
        """,
        port=port,
    )
    assert out["id"] == "req-42" and out["version"] == "1" and out["raw_count"] == 6
    assert out["roundtrip"] == {
        "fp32": ["float32", True, True],
        "fp16": ["float16", True, True],
        "i64": ["int64", True, True],
        "u8": ["uint8", True, True],
        "flag": ["bool", True, True],
        "text": ["object", True, True],
    }
    assert out["picked"] == ["out_u8", "out_fp32"]
    assert out["unknown_output"] == [
        "StatusCode.INVALID_ARGUMENT",
        "unknown output 'nope'; the model has ['out_fp32', 'out_fp16', 'out_i64', 'out_u8', "
        "'out_flag', 'out_text']",
    ]
    assert out["non_utf8"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "input 'text': BYTES element 0 is not valid UTF-8" in out["non_utf8"][1]
    assert out["wrong_dtype"] == [
        "StatusCode.INVALID_ARGUMENT",
        "input 'x': expected datatype FP32, got FP64",
    ]
    assert out["wrong_shape"] == [
        "StatusCode.INVALID_ARGUMENT",
        "input 'x': expected shape [-1, 4] (-1 = any), got [2, 5]",
    ]
    assert out["wrong_name"] == [
        "StatusCode.INVALID_ARGUMENT",
        "missing input(s) ['x']; the model expects ['x']",
    ]
    assert out["extra_input"] == [
        "StatusCode.INVALID_ARGUMENT",
        "unexpected input(s) ['z']; the model expects ['x']",
    ]
    assert out["unknown_model"] == [
        "StatusCode.NOT_FOUND",
        "Request for unknown model: 'nope' is not found",
    ]
    assert out["custom_params"] == "p"
    assert out["big"] == [[4 * 1024 * 1024, 3], 64 * 1024 * 1024]
    assert out["gzip"] == [2, 3]


def test_typed_contents_and_mixing(worker: tuple[Proc, int]) -> None:
    """kserve's client sends typed `contents` for list data; mixing with raw is refused."""
    _, port = worker
    out = run_client(
        """
        import grpc
        from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pbg
        stub = pbg.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{ARGS['port']}"))
        def request(typed, raw):
            r = pb.ModelInferRequest(model_name="linear")
            t = r.inputs.add(name="x", datatype="FP32", shape=[1, 4])
            if typed:
                t.contents.fp32_contents.extend([1, 2, 3, 4])
            if raw:
                r.raw_input_contents.append(np.array([1, 2, 3, 4], np.float32).tobytes())
            return r
        typed = stub.ModelInfer(request(True, False))
        raw = stub.ModelInfer(request(False, True))
        OUT["same"] = typed.raw_output_contents[0] == raw.raw_output_contents[0]
        try:
            stub.ModelInfer(request(True, True))
        except grpc.RpcError as exc:
            OUT["mixed"] = [exc.code().name, exc.details()]
        short = request(False, False)
        short.raw_input_contents.append(b"\\0" * 12)  # 12 bytes for [1, 4] FP32
        try:
            stub.ModelInfer(short)
        except grpc.RpcError as exc:
            OUT["byte_size"] = [exc.code().name, exc.details()]
        reserved = request(False, True)
        reserved.id = "r9"
        reserved.parameters["triton_foo"].int64_param = 1
        try:
            stub.ModelInfer(reserved)
        except grpc.RpcError as exc:
            OUT["reserved"] = [exc.code().name, exc.details()]
        """,
        port=port,
    )
    assert out["same"]
    assert out["mixed"] == [
        "INVALID_ARGUMENT",
        "input 'x': contents and raw_input_contents are both set; send one or the other",
    ]
    assert out["byte_size"] == [
        "INVALID_ARGUMENT",
        "tensor 'x': expected 16 bytes for shape [1, 4] of FP32 (4 elements x 4 bytes), "
        "got 12 bytes",
    ]
    assert out["reserved"] == [
        "INVALID_ARGUMENT",
        "[request id: r9] parameter 'triton_foo' is reserved (keys starting with 'triton_')",
    ]


def test_stream_orders_responses_and_survives_a_bad_request(worker: tuple[Proc, int]) -> None:
    _, port = worker
    out = run_client(
        """
        import queue, time
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{ARGS['port']}")
        results = queue.Queue()
        c.start_stream(callback=lambda result, error: results.put((result, error)))
        for i in range(100):
            n = 5 if i == 37 else 4  # request 37 has the wrong shape
            t = grpcclient.InferInput("x", [1, n], "FP32")
            t.set_data_from_numpy(np.full((1, n), i, np.float32))
            c.async_stream_infer("linear", [t], request_id=str(i))
        got = [results.get(timeout=30) for _ in range(100)]
        started = time.monotonic()
        c.stop_stream()
        OUT["stop_seconds"] = time.monotonic() - started
        OUT["ids"] = [(r.get_response().id if r else None) for r, e in got]
        OUT["errors"] = [(i, str(e)) for i, (r, e) in enumerate(got) if e is not None]
        OUT["final"] = all(
            r.get_response().parameters["triton_final_response"].bool_param for r, e in got if r)
        stats = c.get_inference_statistics("linear")
        s = stats.model_stats[0]
        OUT["stats"] = [s.name, s.version, s.inference_stats.success.count > 0,
                        s.inference_stats.queue.count > 0, len(s.batch_stats) > 0]
        """,
        port=port,
    )
    expected_ids = [str(i) for i in range(100)]
    expected_ids[37] = None  # type: ignore[call-overload]
    assert out["ids"] == expected_ids
    assert len(out["errors"]) == 1 and out["errors"][0][0] == 37
    assert "input 'x': expected shape [-1, 4] (-1 = any), got [1, 5]" in out["errors"][0][1]
    assert out["final"] and out["stop_seconds"] < 5
    assert out["stats"] == ["linear", "1", True, True, True]
