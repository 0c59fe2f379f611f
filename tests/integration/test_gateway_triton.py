"""Unmodified tritonclient through the gateway: it cannot tell the gateway from a worker.

The gateway forwards inference bytes and builds the streaming replies itself (marked
`triton_final_response`, which unary answers do not carry), so a real client checks
what our own stubs would not:
health, metadata, config, unary and streaming inference, and the errors' status and
text, with each answer computed by the version that says it answered.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

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
OUT["ready_unknown"] = c.is_model_ready("nope")
OUT["ready_bad_version"] = status(lambda: c.is_model_ready("lin", "abc"))
meta = c.get_model_metadata("lin", "1")
OUT["meta"] = [meta.name, list(meta.versions), meta.platform,
               [(t.name, t.datatype, list(t.shape)) for t in meta.inputs]]
OUT["versions"] = list(c.get_model_metadata("lin").versions)
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
    final = response.parameters["triton_final_response"].bool_param if (
        "triton_final_response" in response.parameters) else None
    return [response.id, response.model_version, path, final]

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

def stats(client, *args):
    def d(x):
        return [x.count, x.ns]
    return [
        {"model": m.name, "version": m.version, "inference_count": m.inference_count,
         "execution_count": m.execution_count, "last_inference": m.last_inference,
         **{k: d(getattr(m.inference_stats, k)) for k in ("success", "fail", "queue", "compute_infer")},
         "batches": {str(b.batch_size): d(b.compute_infer) for b in m.batch_stats}}
        for m in client.get_inference_statistics(*args).model_stats
    ]

OUT["stats"], OUT["stats_all"] = stats(c, "lin"), stats(c)
OUT["stats_v1"] = stats(c, "lin", "1")
OUT["per_worker"] = [stats(grpcclient.InferenceServerClient(f"127.0.0.1:{p}"), "lin")
                     for p in ARGS["workers"]]
OUT["stats_unknown"] = status(lambda: c.get_inference_statistics("nope"))
OUT["stats_unknown_version"] = status(lambda: c.get_inference_statistics("lin", "7"))
OUT["load"] = status(lambda: c.load_model("lin"))
OUT["shm"] = status(lambda: c.get_system_shared_memory_status())
OUT["extensions"] = list(c.get_server_metadata().extensions)
"""


async def test_tritonclient_cannot_tell_the_gateway_from_a_worker(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        # lin: v1 90%, v2 10%, both pinnable, on two workers
        port = await two_versions(tmp_path, c, workers=2)
        x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        workers = [p for _, p in c.workers.values()]
        out = run_client(
            CLIENT, port=port, x=str(tmp_path / "x.npy"), dir=str(tmp_path), workers=workers
        )

    expected = {
        v: ort.InferenceSession(str(models.linear(tmp_path / f"check{v}.onnx", seed=v))).run(
            None, {"x": x}
        )[0]
        for v in (1, 2)
    }

    def check(answer: list[Any], request_id: str, version: str | None) -> None:
        got_id, got_version, path, final = answer
        assert got_id == request_id and got_version in ("1", "2")
        # Marked final on a stream, as a worker marks it; a unary answer is not.
        assert final is (True if request_id.startswith("s") else None), answer
        assert version is None or got_version == version
        np.testing.assert_allclose(np.load(path), expected[int(got_version)], rtol=1e-6)

    assert out["live"] and out["ready"] and out["model_ready"] == [True, True]
    assert out["ready_unknown"] is False  # not held: not ready (Triton's answer)
    assert out["ready_bad_version"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "positive integer" in out["ready_bad_version"][1]
    assert out["meta"] == ["lin", ["1"], "onnxruntime_onnx", [["x", "FP32", [-1, 4]]]]
    assert out["versions"] == ["1", "2"]  # without a version: all a client can reach
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

    # Statistics: the workers' added up, per version; the six answers above all counted.
    assert [len(rows) for rows in out["per_worker"]] == [2, 2]  # each holds v1 and v2
    expected_stats = add_up(out["per_worker"])
    assert out["stats"] == expected_stats and out["stats_all"] == expected_stats
    assert sum(row["success"][0] for row in out["stats"]) == 6
    assert out["stats_v1"] == [row for row in expected_stats if row["version"] == "1"]
    assert out["stats_unknown"] == [
        "StatusCode.NOT_FOUND",
        "Request for unknown model: 'nope' is not found",
    ]
    assert out["stats_unknown_version"][0] == "StatusCode.NOT_FOUND"
    assert "'lin' version 7 is not found" in out["stats_unknown_version"][1]
    for call in ("load", "shm"):
        assert out[call][0] == "StatusCode.UNIMPLEMENTED"
        assert "models are loaded through the registry's rollouts" in out[call][1]
    assert out["extensions"] == ["model_configuration", "statistics", "model_repository(index)"]


DURATIONS = ("success", "fail", "queue", "compute_infer")


def add_up(per_worker: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Statistics rows of several servers as one server would report them."""
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for row in (row for rows in per_worker for row in rows):
        key = (row["model"], row["version"])
        if key not in totals:
            totals[key] = copy.deepcopy(row)
            continue
        total = totals[key]
        total["last_inference"] = max(total["last_inference"], row["last_inference"])
        for name in ("inference_count", "execution_count"):
            total[name] += row[name]
        for name in DURATIONS:
            total[name] = [a + b for a, b in zip(total[name], row[name], strict=True)]
        for size, duration in row["batches"].items():
            held = total["batches"].get(size, [0, 0])
            total["batches"][size] = [a + b for a, b in zip(held, duration, strict=True)]
    return [totals[key] for key in sorted(totals)]
