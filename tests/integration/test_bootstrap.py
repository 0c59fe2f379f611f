"""The shared server bootstrap: health, reflection, graceful SIGTERM, TLS, mTLS, auth."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import codec, pki, tls
from services.common.auth import Principal, Role, StaticAuthenticator, hash_secret
from services.common.config import ServerSettings
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.server import RunningServer, start_server
from tests.conftest import free_port, require
from tests.helpers import echo_server
from tests.helpers.procs import ROOT, Proc, python_module, wait_port

BUF = ROOT / "node_modules" / ".bin" / "buf"


def infer_request(request_id: str = "r1", hold_ms: int = 0) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo", id=request_id)
    datatype, shape, raw = codec.encode_raw(np.arange(4, dtype=np.float32))
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    if hold_ms:
        request.parameters["hold_ms"].int64_param = hold_ms
    return request


@pytest.fixture
def echo_proc() -> Iterator[tuple[Proc, int]]:
    port = free_port()
    proc = python_module(
        "tests.helpers.echo_server",
        {"LIVEML_PORT": str(port), "LIVEML_METRICS_PORT": "-1", "LIVEML_SHUTDOWN_GRACE": "20"},
    )
    wait_port(port, proc)
    yield proc, port
    proc.stop()


async def test_health_check_serving(echo_proc: tuple[Proc, int]) -> None:
    _, port = echo_proc
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(aio.AioRpcError) as err:
            await health.Check(health_pb2.HealthCheckRequest(service="no.Such"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_buf_curl_lists_services_through_reflection(echo_proc: tuple[Proc, int]) -> None:
    require(BUF.exists(), "buf (npm install)")
    _, port = echo_proc
    base = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    listed = subprocess.run(
        [*base, "--list-services", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert {"grpc.health.v1.Health", "inference.GRPCInferenceService"} <= set(listed)
    checked = subprocess.run(
        [*base, f"http://127.0.0.1:{port}/grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert json.loads(checked) == {"status": "SERVING"}


async def test_sigterm_lets_in_flight_call_finish_then_exits_zero(
    echo_proc: tuple[Proc, int],
) -> None:
    proc, port = echo_proc
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        in_flight = asyncio.ensure_future(stub.ModelInfer(infer_request("slow", hold_ms=1500)))
        await asyncio.to_thread(proc.expect, "inflight slow")
        proc.popen.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.expect, "refusing new calls")
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.ModelInfer(infer_request("late"), timeout=5)
        # Refused either way: by the closing server, or at a fresh connection attempt.
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        reply = await in_flight
    assert reply.id == "slow"
    assert np.array_equal(
        codec.decode_raw("x", "FP32", [4], reply.raw_output_contents[0]), np.arange(4)
    )
    assert await asyncio.to_thread(proc.popen.wait, 20) == 0
    assert "inflight late" not in "".join(proc.output)


# --- TLS, mutual TLS and auth, on in-process servers -------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pki.Issued]:
    folder = tmp_path_factory.mktemp("pki")
    ca = pki.create_ca(folder)
    issued = {"ca": ca}
    for name in ("server", "client", "stranger"):
        issued[name] = pki.issue(ca, name, folder)
    other_ca = pki.create_ca(folder / "other")
    issued["foreign"] = pki.issue(other_ca, "client", folder / "other")
    return issued


async def _serve(settings: ServerSettings, **kwargs: object) -> RunningServer:
    return await start_server("test", settings, echo_server.register, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def tls_server(certs: dict[str, pki.Issued]) -> AsyncIterator[RunningServer]:
    settings = ServerSettings(
        port=0, metrics_port=-1, tls_cert=certs["server"].cert, tls_key=certs["server"].key
    )
    running = await _serve(settings)
    yield running
    await running.stop(0)


@pytest.fixture
async def mtls_server(certs: dict[str, pki.Issued]) -> AsyncIterator[RunningServer]:
    settings = ServerSettings(
        port=0,
        metrics_port=-1,
        tls_cert=certs["server"].cert,
        tls_key=certs["server"].key,
        tls_client_ca=certs["ca"].cert,
    )
    authenticator = StaticAuthenticator(certificates={"client": Role.CLIENT})
    policy = {"inference.GRPCInferenceService": {Role.CLIENT}}
    running = await _serve(settings, authenticator=authenticator, policy=policy)
    yield running
    await running.stop(0)


def _channel(port: int, creds: grpc.ChannelCredentials) -> aio.Channel:
    return aio.secure_channel(
        f"localhost:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


async def test_tls_serves_a_client_that_trusts_the_ca(
    tls_server: RunningServer, certs: dict[str, pki.Issued]
) -> None:
    async with _channel(tls_server.port, tls.channel_credentials(certs["ca"].cert)) as channel:
        reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request())
    assert reply.id == "r1"


async def test_tls_refuses_plaintext_client(tls_server: RunningServer) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{tls_server.port}") as channel:
        with pytest.raises(aio.AioRpcError) as err:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_accepts_certified_client_and_names_it(
    mtls_server: RunningServer, certs: dict[str, pki.Issued]
) -> None:
    creds = tls.channel_credentials(certs["ca"].cert, certs["client"].cert, certs["client"].key)
    async with _channel(mtls_server.port, creds) as channel:
        reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request())
    assert reply.id == "r1"


@pytest.mark.parametrize("who", ["none", "foreign"])
async def test_mtls_refuses_client_without_valid_certificate(
    mtls_server: RunningServer, certs: dict[str, pki.Issued], who: str
) -> None:
    if who == "none":
        creds = tls.channel_credentials(certs["ca"].cert)
    else:
        foreign = certs["foreign"]
        creds = tls.channel_credentials(certs["ca"].cert, foreign.cert, foreign.key)
    async with _channel(mtls_server.port, creds) as channel:
        with pytest.raises(aio.AioRpcError) as err:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_certificate_without_a_role_is_unauthenticated(
    mtls_server: RunningServer, certs: dict[str, pki.Issued]
) -> None:
    stranger = certs["stranger"]
    creds = tls.channel_credentials(certs["ca"].cert, stranger.cert, stranger.key)
    async with _channel(mtls_server.port, creds) as channel:
        with pytest.raises(aio.AioRpcError) as err:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request())
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "client certificate 'stranger' is not allowed" in str(err.value.details())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def auth_server() -> AsyncIterator[RunningServer]:
    tokens = {
        hash_secret("client-secret"): Principal("app", Role.CLIENT),
        hash_secret("viewer-secret"): Principal("dashboard", Role.VIEWER),
    }
    policy = {
        "/inference.GRPCInferenceService/ModelInfer": {Role.CLIENT},
        "/inference.GRPCInferenceService/ModelStreamInfer": {Role.CLIENT},
    }
    running = await _serve(
        ServerSettings(port=0, metrics_port=-1),
        authenticator=StaticAuthenticator(tokens),
        policy=policy,
    )
    yield running
    await running.stop(0)


@pytest.mark.parametrize(
    ("token", "code", "message"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED, "missing credentials"),
        ("wrong", grpc.StatusCode.UNAUTHENTICATED, "bearer token is not valid"),
        (
            "viewer-secret",
            grpc.StatusCode.PERMISSION_DENIED,
            "dashboard (role viewer) may not call /inference.GRPCInferenceService/ModelInfer; "
            "it needs one of: client",
        ),
    ],
)
async def test_auth_rejects_with_status_and_reason(
    auth_server: RunningServer, token: str | None, code: grpc.StatusCode, message: str
) -> None:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as err:
            await stub.ModelInfer(infer_request(), metadata=metadata)
        assert err.value.code() == code
        assert message in str(err.value.details())
        # A method no policy names is closed to everyone but admins.
        with pytest.raises(aio.AioRpcError) as closed:
            await stub.ServerLive(pb.ServerLiveRequest(), metadata=metadata)
        assert closed.value.code() in (code, grpc.StatusCode.PERMISSION_DENIED)


async def test_auth_admits_the_right_role_on_unary_and_stream(auth_server: RunningServer) -> None:
    metadata = (("authorization", "Bearer client-secret"),)
    async with aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ModelInfer(infer_request(), metadata=metadata)).id == "r1"
        stream = stub.ModelStreamInfer(metadata=metadata)
        for i in range(3):
            await stream.write(infer_request(f"s{i}"))
        await stream.done_writing()
        ids = [r.infer_response.id async for r in stream]
        assert ids == ["s0", "s1", "s2"]
        # Health stays open for probes.
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_port_in_use_is_a_clear_error() -> None:
    first = await _serve(ServerSettings(port=0, metrics_port=-1))
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await _serve(ServerSettings(port=first.port, metrics_port=-1))
    finally:
        await first.stop(0)


def test_tls_half_configured_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key must be given together"):
        tls.server_credentials(tmp_path / "cert.pem", None)
    with pytest.raises(ValueError, match="mutual TLS is TLS first"):
        tls.server_credentials(None, None, tmp_path / "ca.pem")
