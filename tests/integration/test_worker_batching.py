"""Dynamic batching merges concurrent requests, answers each correctly, and is observable;
a propagated trace context makes the worker's spans children of the caller's trace."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
from grpc import aio

from services.common import codec
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.helpers import models
from tests.helpers.cluster import infer_request
from tests.helpers.procs import ROOT, python_module, wait_port
from tests.helpers.wait import wait_until


def batch_histogram(metrics_port: int, model: str) -> tuple[float, float]:
    """(batches of one row, all batches) from the worker's Prometheus endpoint."""
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    labels = f'model="{model}",version="1"'
    ones = re.search(
        rf'liveml_worker_batch_size_bucket\{{le="1.0",{labels}\}} (\S+)', text
    ) or re.search(rf'liveml_worker_batch_size_bucket\{{{labels},le="1.0"\}} (\S+)', text)
    total = re.search(rf"liveml_worker_batch_size_count\{{{labels}\}} (\S+)", text)
    assert ones and total, text[:2000]
    return float(ones.group(1)), float(total.group(1))


async def test_64_concurrent_clients_are_batched_and_answered_correctly(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "mlp" / "1").mkdir(parents=True)
    path = models.mlp(root / "mlp" / "1" / "model.onnx", n_in=64, hidden=1024, n_out=10)
    port, metrics = free_port(), free_port()
    proc = python_module(
        "services.cli.main",
        None,
        "worker",
        "serve",
        "--model-dir",
        str(root),
        "--port",
        str(port),
        "--metrics-port",
        str(metrics),
        "--max-batch-size",
        "64",
        "--inline-us",
        "0",  # always batch, however fast this machine runs the model
    )
    try:
        wait_port(port, proc)
        wait_until(lambda: "mlp v1 READY" in "".join(proc.output), 30, "model to load")
        rng = np.random.default_rng(0)
        inputs = rng.standard_normal((64, 20, 1, 64)).astype(np.float32)
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def client(i: int) -> list[np.ndarray]:
                answers = []
                for j in range(20):
                    reply = await stub.ModelInfer(infer_request("mlp", inputs[i, j], f"{i}-{j}"))
                    assert reply.id == f"{i}-{j}"
                    answers.append(
                        codec.decode_raw("y", "FP32", [1, 10], reply.raw_output_contents[0])
                    )
                return answers

            results = await asyncio.gather(*(client(i) for i in range(64)))
        ones, total = batch_histogram(metrics, "mlp")
        assert total < 64 * 20, "some requests were merged"
        assert ones < total, f"every batch had one row ({ones} of {total})"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        expected = session.run(None, {"x": inputs.reshape(-1, 64)})[0].reshape(64, 20, 1, 10)
        np.testing.assert_allclose(np.array(results), expected, rtol=1e-5, atol=1e-6)
    finally:
        assert proc.stop() == 0


TRACE_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from grpc import aio
from opentelemetry import trace, propagate
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from services.common import telemetry
from services.worker import app
from services.worker.settings import WorkerSettings
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.helpers.cluster import infer_request
import numpy as np

exporter = InMemorySpanExporter()
telemetry.setup_tracing("test", exporter=exporter)

async def main():
    worker = await app.start(WorkerSettings(port=0, metrics_port=-1, model_dir=Path(sys.argv[1])))
    tracer = trace.get_tracer("client")
    with tracer.start_as_current_span("client-call") as span:
        carrier = {}
        propagate.inject(carrier)
        async with aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer_request("linear", np.ones((1, 4), np.float32)), metadata=tuple(carrier.items()))
        client_trace = span.get_span_context().trace_id
    await worker.stop()
    spans = [{"name": s.name, "trace": s.context.trace_id, "parent": s.parent.span_id if s.parent else None,
              "id": s.context.span_id} for s in exporter.get_finished_spans()]
    print(json.dumps({"client_trace": client_trace, "spans": spans}))

asyncio.run(main())
"""


def test_worker_spans_join_the_callers_trace(tmp_path: Path) -> None:
    (tmp_path / "linear" / "1").mkdir(parents=True)
    models.linear(tmp_path / "linear" / "1" / "model.onnx")
    done = subprocess.run(
        [sys.executable, "-c", TRACE_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    spans = {s["name"]: s for s in result["spans"]}
    assert {"liveml.queue", "liveml.batch", "liveml.run"} <= set(spans)
    server = next(s for s in result["spans"] if s["name"].endswith("ModelInfer"))
    for name in ("liveml.queue", "liveml.batch", "liveml.run", server["name"]):
        assert spans[name]["trace"] == result["client_trace"], name
    for name in ("liveml.queue", "liveml.batch", "liveml.run"):
        assert spans[name]["parent"] == server["id"]
