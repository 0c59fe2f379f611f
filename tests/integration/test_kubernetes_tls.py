"""What the Kubernetes deployment's mutual TLS rests on, run for real: a worker that
wants a client certificate on its service port answers kubelet-style plaintext probes
on a port serving health alone; and a gateway that reaches workers by address (pod IPs)
checks every worker's certificate for one name instead (`--worker-tls-name`).

The worker's certificate names only `liveml-worker`, not the 127.0.0.1 it is reached at,
as a pod's certificate names no pod IP.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import pki
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.helpers import models
from tests.helpers.cluster import cluster, infer_request
from tests.helpers.wait import async_wait_until
from tests.integration.test_cli import liveml

X = np.ones((1, 4), dtype=np.float32)


async def _health(address: str) -> aio.AioRpcError | int:
    async with aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except aio.AioRpcError as exc:
            return exc
    return int(reply.status)


async def _infer(port: int) -> aio.AioRpcError | None:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer_request("lin", X), timeout=10
            )
        except aio.AioRpcError as exc:
            return exc
    return None


async def test_a_mutual_tls_worker_is_probed_in_plaintext_and_checked_by_one_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = pki.create_ca(tmp_path / "pki")
    worker_cert = pki.issue(ca, "worker", tmp_path / "pki", hosts=("liveml-worker",))
    gateway_cert = pki.issue(ca, "gateway", tmp_path / "pki")
    health_port = free_port()
    async with cluster(tmp_path) as c:
        await c.create_model("lin")
        await c.push("lin", models.linear(tmp_path / "v1.onnx", seed=1))
        await c.route("lin", (1, 100))
        worker = c.start_worker(
            "w0",
            "--tls-cert", str(worker_cert.cert), "--tls-key", str(worker_cert.key),
            "--tls-client-ca", str(ca.cert), "--cert-roles", "gateway=gateway",
            "--health-port", str(health_port),
            "--allow-plaintext-upstream",  # the registry of this test speaks plaintext
        )  # fmt: skip
        await c.wait_state("w0", "lin", 1, "READY")

        # The probe's view: plaintext, no certificate, health alone.
        assert await _health(f"127.0.0.1:{health_port}") == health_pb2.HealthCheckResponse.SERVING
        # The service port itself takes no plaintext ...
        refused = await _health(f"127.0.0.1:{worker}")
        assert isinstance(refused, aio.AioRpcError)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        # ... and the health port serves nothing but health.
        async with aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            with pytest.raises(aio.AioRpcError) as info:
                await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    infer_request("lin", X), timeout=5
                )
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

        client_side = (
            "--worker-ca", str(ca.cert),
            "--worker-cert", str(gateway_cert.cert),
            "--worker-key", str(gateway_cert.key),
        )  # fmt: skip
        # Checking the worker for the name it is reached at (127.0.0.1) fails: its
        # certificate does not hold it.
        unnamed = c.start_gateway(*client_side)
        # By the name every worker certificate carries, it is reached.
        named = c.start_gateway(*client_side, "--worker-tls-name", "liveml-worker")

        async def answers() -> bool:
            return await _infer(named) is None

        await async_wait_until(answers, 30, "the gateway to reach the worker by its name")
        failed = await _infer(unnamed)
        assert failed is not None and failed.code() == grpc.StatusCode.UNAVAILABLE
        assert "model 'lin' version 1: no worker could answer" in str(failed.details())
        assert "give --worker-tls-name a name every worker's certificate carries" in str(
            failed.details()
        )


def test_a_bad_setting_is_named_with_what_was_expected(tmp_path: Path) -> None:
    """A mistaken flag or variable stops the server before it starts, with exit 2 and
    one line per setting, not a traceback; a secret's value is not repeated."""
    name = liveml({}, "gateway", "serve", "--worker-tls-name", "not a name", ok=False)
    assert name.returncode == 2
    assert (
        "error: --worker-tls-name (LIVEML_WORKER_TLS_NAME): expected a host name, such as "
        "liveml-worker (given: 'not a name')" in name.stderr
    )
    assert "Traceback" not in name.stderr
    # A worker whose --models the registry would refuse stops here, not retrying its
    # watch forever.
    models = liveml({"LIVEML_MODELS": "iris,models/churn"}, "worker", "serve", ok=False)
    assert models.returncode == 2
    assert (
        "error: --models (LIVEML_MODELS): expected comma-separated model ids such as "
        "iris,churn (1-128 letters, digits, '_', '.', '-'); 'models/churn' is not one"
    ) in models.stderr, models.stderr
    assert "Traceback" not in models.stderr
    port = liveml({"LIVEML_HEALTH_PORT": "70000"}, "worker", "serve", ok=False)
    assert port.returncode == 2
    assert (
        "error: --health-port (LIVEML_HEALTH_PORT): Input should be less than or equal to "
        "65535 (given: '70000')" in port.stderr
    )
    # Key settings are never echoed (as their defaults are never shown in --help).
    key = liveml({}, "registry", "serve", "--audit-key-id", "k" * 40, ok=False)
    assert key.returncode == 2
    assert "--audit-key-id (LIVEML_AUDIT_KEY_ID): String should have at most 32" in key.stderr
    assert "k" * 40 not in key.stderr
