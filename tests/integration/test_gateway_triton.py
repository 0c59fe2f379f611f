"""Unmodified tritonclient through the gateway: it cannot tell the gateway from a worker.

The gateway forwards inference bytes and builds the streaming replies itself
(`triton_final_response`), so a real client checks what our own stubs would not:
health, metadata, config, unary and streaming inference, and the errors' status and
text, with each answer computed by the version that says it answered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from tests.helpers import models
from tests.helpers.cluster import cluster
from tests.helpers.triton import run_client
from tests.integration.test_gateway import two_versions

CLIENT = """
c = grpcclient.InferenceServerClient(f"127.0.0.1:{ARGS['port']}")
OUT["live"], OUT["ready"] = c.is_server_live(), c.is_server_ready()
OUT["model_ready"] = [c.is_model_ready("lin"), c.is_model_ready("lin", "1")]
OUT["ready_unknown"] = status(lambda: c.is_model_ready("nope"))
meta = c.get_model_metadata("lin", "1")
OUT["meta"] = [meta.name, list(meta.versions), meta.platform,
               [(t.name, t.datatype, list(t.shape)) for t in meta.inputs]]
OUT["config"] = c.get_model_config("lin", "2").config.name
index = c.get_model_repository_index()
OUT["index"] = sorted((m.name, m.version, m.state) for m in index.models)

x = np.load(ARGS["x"])
def tensor(array, name="x", dtype="FP32"):
    t = grpcclient.InferInput(name, list(array.shape), dtype)
    t.set_data_from_numpy(array)
    return t

def answer(result, key):
    path = f"{ARGS['dir']}/{key}.npy"
    np.save(path, result.as_numpy("y"))
    response = result.get_response()
    return [response.id, response.model_version, path]

OUT["unary"] = [answer(c.infer("lin", [tensor(x)], model_version=v, request_id=f"u{v}"), f"u{v}")
                for v in ("", "1", "2")]
OUT["unknown_model"] = status(lambda: c.infer("nope", [tensor(x)]))
OUT["unknown_version"] = status(lambda: c.infer("lin", [tensor(x)], model_version="7"))
OUT["wrong_dtype"] = status(lambda: c.infer("lin", [tensor(x.astype(np.float64), dtype="FP64")]))
OUT["wrong_name"] = status(lambda: c.infer("lin", [tensor(x, name="z")]))

import queue
results = queue.Queue()
c.start_stream(callback=lambda result, error: results.put((result, error)))
for i, v in enumerate(("", "1", "7", "2")):
    c.async_stream_infer("lin", [tensor(x)], model_version=v, request_id=f"s{i}")
OUT["stream"] = []
for i in range(4):
    result, error = results.get(timeout=60)
    OUT["stream"].append(answer(result, f"s{i}") if error is None else ["error", error.message()])
c.stop_stream()
"""


async def test_tritonclient_cannot_tell_the_gateway_from_a_worker(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        port = await two_versions(tmp_path, c)  # lin: v1 90%, v2 10%, both pinnable
        x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        out = run_client(CLIENT, port=port, x=str(tmp_path / "x.npy"), dir=str(tmp_path))

    expected = {
        v: ort.InferenceSession(str(models.linear(tmp_path / f"check{v}.onnx", seed=v))).run(
            None, {"x": x}
        )[0]
        for v in (1, 2)
    }

    def check(answer: list[str], request_id: str, version: str | None) -> None:
        got_id, got_version, path = answer
        assert got_id == request_id and got_version in ("1", "2")
        assert version is None or got_version == version
        np.testing.assert_allclose(np.load(path), expected[int(got_version)], rtol=1e-6)

    assert out["live"] and out["ready"] and out["model_ready"] == [True, True]
    assert out["ready_unknown"] == [
        "StatusCode.NOT_FOUND",
        "Request for unknown model: 'nope' is not found",
    ]
    assert out["meta"] == ["lin", ["1"], "onnxruntime_onnx", [["x", "FP32", [-1, 4]]]]
    assert out["config"] == "lin"
    assert out["index"] == [["lin", "1", "READY"], ["lin", "2", "READY"]]
    for answer, (request_id, version) in zip(
        out["unary"], [("u", None), ("u1", "1"), ("u2", "2")], strict=True
    ):
        check(answer, request_id, version)
    assert out["unknown_model"] == [
        "StatusCode.NOT_FOUND",
        "Request for unknown model: 'nope' is not found",
    ]
    assert out["unknown_version"][0] == "StatusCode.NOT_FOUND"
    assert "'lin' version 7 is not found" in out["unknown_version"][1]
    assert out["wrong_dtype"] == [
        "StatusCode.INVALID_ARGUMENT",
        "input 'x': expected datatype FP32, got FP64",
    ]
    assert out["wrong_name"] == [
        "StatusCode.INVALID_ARGUMENT",
        "missing input(s) ['x']; the model expects ['x']",
    ]
    # A failed request on a stream is an error for that request; the stream goes on.
    check(out["stream"][0], "s0", None)
    check(out["stream"][1], "s1", "1")
    assert out["stream"][2][0] == "error" and "'lin' version 7 is not found" in out["stream"][2][1]
    check(out["stream"][3], "s3", "2")
