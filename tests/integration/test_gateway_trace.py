"""One trace per request across gateway and worker, and shadow traffic that never hurts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.procs import ROOT

SCRIPT = r"""
import asyncio, hashlib, json, sys
from pathlib import Path
import numpy as np
from grpc import aio
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from services.common import telemetry
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.gateway import app as gateway_app
from services.gateway.settings import GatewaySettings
from services.worker import app as worker_app
from services.worker.settings import WorkerSettings
from tests.helpers.cluster import infer_request
from tests.helpers.models import linear
from tests.helpers.registry import registry_settings, running_registry, stream, upload

exporter = InMemorySpanExporter()
telemetry.setup_tracing("test", exporter=exporter)
root = Path(sys.argv[1])

async def main():
    async with running_registry(registry_settings(f"sqlite+aiosqlite:///{root}/r.db", root)) as reg:
        client = reg.client()
        await client.CreateModel(rpb.CreateModelRequest(model_id="lin"))
        await client.CreateVersion(stream(upload("models/lin", linear(root / "v1.onnx").read_bytes())))
        await client.UpdateRollout(rpb.UpdateRolloutRequest(rollout=rpb.Rollout(
            name="models/lin/rollout", targets=[rpb.TrafficTarget(version=1, percent=100)])))
        address = f"127.0.0.1:{reg.port}"
        worker = await worker_app.start(WorkerSettings(
            port=0, metrics_port=-1, registry=address, registry_token=reg.admin_token,
            cache_dir=root / "cache", heartbeat_seconds=0.3))
        gateway = await gateway_app.start(GatewaySettings(
            port=0, metrics_port=-1, registry=address, registry_token=reg.admin_token))
        x = np.ones((1, 4), np.float32)
        async with aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(300):
                try:
                    await stub.ModelInfer(infer_request("lin", x))
                    break
                except aio.AioRpcError:
                    await asyncio.sleep(0.1)  # polling for readiness (noqa: sleep-ok)
            exporter.clear()
            with trace.get_tracer("client").start_as_current_span("client-call") as span:
                carrier = {}
                propagate.inject(carrier)
                await stub.ModelInfer(infer_request("lin", x), metadata=tuple(carrier.items()))
                client_trace = span.get_span_context().trace_id
        await gateway.stop()
        await worker.stop()
    spans = [{"name": s.name, "trace": s.context.trace_id,
              "parent": s.parent.span_id if s.parent else None, "id": s.context.span_id}
             for s in exporter.get_finished_spans()]
    print(json.dumps({"client_trace": client_trace, "spans": spans}))

asyncio.run(main())
"""


def test_gateway_and_worker_spans_share_one_trace(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    in_trace = [s for s in result["spans"] if s["trace"] == result["client_trace"]]
    names = {s["name"] for s in in_trace}
    assert "/inference.GRPCInferenceService/ModelInfer" in names  # the gateway's server span
    assert {"liveml.worker.infer", "liveml.queue", "liveml.batch", "liveml.run"} <= names
    by_id = {s["id"]: s for s in in_trace}
    worker = next(s for s in in_trace if s["name"] == "liveml.worker.infer")
    assert by_id[worker["parent"]]["name"] == "/inference.GRPCInferenceService/ModelInfer"
