"""The data plane authenticates its callers: tokens from the registry's feed, by role.

Real processes: a registry, a worker and a gateway with authentication on (the
default; tests/conftest.py opens it for the other tests). Every data-plane RPC is
called with a token of every role and with none; a revoked token is refused by the
gateway and the worker within 2 s, and the open streams it opened are ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.common.gen.liveml.worker.v1 import worker_pb2_grpc as wpb_grpc
from tests.helpers import models
from tests.helpers.cluster import Cluster, cluster, infer_request
from tests.helpers.registry import auth
from tests.helpers.triton import run_client
from tests.helpers.wait import async_wait_until, wait_until

ROLES = {
    "admin": rpb.ROLE_ADMIN,
    "deployer": rpb.ROLE_DEPLOYER,
    "publisher": rpb.ROLE_PUBLISHER,
    "viewer": rpb.ROLE_VIEWER,
    "worker": rpb.ROLE_WORKER,
    "client": rpb.ROLE_CLIENT,
    "ingest": rpb.ROLE_INGEST,
    "gateway": rpb.ROLE_GATEWAY,
    "trainer": rpb.ROLE_TRAINER,
}
X = np.ones((1, 4), dtype=np.float32)
Call = Callable[[aio.Channel, Any], Awaitable[None]]


async def _read(call: aio.StreamStreamCall) -> Any:
    """The first answer, or the call's final status as the server sent it."""
    try:
        return await call.read()
    except aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.INTERNAL:
            raise
    code, details = await call.code(), await call.details()
    raise aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details)


async def gateway_infer(channel: aio.Channel, md: Any) -> None:
    await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
        infer_request("lin", X, "r1"), metadata=md
    )


async def stream_infer(channel: aio.Channel, md: Any) -> None:
    # Requests from an iterator (as tritonclient sends them): a refused call's status
    # is then the server's, not a failed write's.
    call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
        iter([infer_request("lin", X, "s1")]), metadata=md
    )
    reply = await _read(call)
    assert reply is not aio.EOF and not reply.error_message, reply


async def feedback(channel: aio.Channel, md: Any) -> None:
    request = gpb.SubmitFeedbackRequest(model_name="lin", request_id="r1")
    request.ground_truth.class_index = 1
    try:
        await gpb_grpc.GatewayServiceStub(channel).SubmitFeedback(request, metadata=md)
    except aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise
        # Past authorization: what the servicer says of the feedback itself.


async def ingest(channel: aio.Channel, md: Any) -> None:
    try:
        await gpb_grpc.GatewayServiceStub(channel).IngestExamples(
            gpb.IngestExamplesRequest(model_name="lin"), metadata=md
        )
    except aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise


async def forward(channel: aio.Channel, md: Any) -> None:
    request = wpb.ForwardRequest(first_sequence=1)
    request.inferences.add(request=infer_request("lin", X, "f1").SerializeToString())
    call = wpb_grpc.WorkerServiceStub(channel).Forward(iter([request]), metadata=md)
    reply = await _read(call)
    assert reply is not aio.EOF and reply.replies, reply


def opened(method: str) -> Call:
    """Open a stream and send nothing: a refused call's status then comes from the
    server alone (a message in flight while the server refuses can end the client's
    side with a local INTERNAL instead)."""

    async def call(channel: aio.Channel, md: Any) -> None:
        stream = channel.stream_stream(method)(iter([]), metadata=md)
        async for _ in stream:
            pass

    return call


REFUSAL_PROBE = {
    "ModelStreamInfer": opened("/inference.GRPCInferenceService/ModelStreamInfer"),
    "Forward": opened("/liveml.worker.v1.WorkerService/Forward"),
}


GATEWAY_RPCS: dict[str, tuple[Call, set[str]]] = {
    "ModelInfer": (gateway_infer, {"admin", "client"}),
    "ModelStreamInfer": (stream_infer, {"admin", "client"}),
    "SubmitFeedback": (feedback, {"admin", "client"}),
    "IngestExamples": (ingest, {"admin", "ingest"}),
}
WORKER_RPCS: dict[str, tuple[Call, set[str]]] = {
    "ModelInfer": (gateway_infer, {"admin", "gateway"}),
    "ModelStreamInfer": (stream_infer, {"admin", "gateway"}),
    "Forward": (forward, {"admin", "gateway"}),
}


async def serve_lin(c: Cluster, tmp_path: Path) -> tuple[int, int]:
    await c.create_model("lin")
    await c.push("lin", models.linear(tmp_path / "v1.onnx", seed=1))
    await c.route("lin", (1, 100))
    worker_port = c.start_worker("w0")
    await c.wait_state("w0", "lin", 1, "READY")
    gateway_port = c.start_gateway()
    client = c.mint("warm-up client", rpb.ROLE_CLIENT)

    async def answers() -> bool:
        async with aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
            try:
                await gateway_infer(channel, auth(client))
            except aio.AioRpcError:
                return False
            return True

    await async_wait_until(answers, 30, "the gateway to answer with a client token")
    return worker_port, gateway_port


async def expect_refused(call: Call, channel: aio.Channel, md: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as err:
        await call(channel, md)
    return err.value


async def test_every_data_plane_rpc_by_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEML_ALLOW_ANONYMOUS", "false")
    async with cluster(tmp_path) as c:
        worker_port, gateway_port = await serve_lin(c, tmp_path)
        tokens = {role: c.mint(f"a {role}", value) for role, value in ROLES.items()}
        for port, rpcs in ((gateway_port, GATEWAY_RPCS), (worker_port, WORKER_RPCS)):
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for rpc, (call, allowed) in rpcs.items():
                    probe = REFUSAL_PROBE.get(rpc, call)
                    err = await expect_refused(probe, channel, ())
                    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (port, rpc)
                    assert "missing credentials" in str(err.details())
                    err = await expect_refused(probe, channel, auth("lml_nope_" + "x" * 43))
                    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (port, rpc)
                    assert "not valid" in str(err.details())
                    for role, secret in tokens.items():
                        if role in allowed:
                            await call(channel, auth(secret))
                            continue
                        err = await expect_refused(probe, channel, auth(secret))
                        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (port, rpc, role)
                        needs = ", ".join(sorted(allowed - {"admin"})) or "admin"
                        assert f"(role {role}) may not call" in str(err.details())
                        assert f"it needs one of: {needs}" in str(err.details()), err.details()
                # Health stays open.
                from grpc_health.v1 import health_pb2, health_pb2_grpc

                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest()
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING


async def _refused_within(call: Call, address: str, md: Any, what: str, since: float) -> float:
    async with aio.insecure_channel(address) as channel:

        async def refused() -> bool:
            try:
                await call(channel, md)
            except aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
                return True
            return False

        await async_wait_until(refused, 10, what)
    return time.monotonic() - since


async def _ended(call: aio.StreamStreamCall | aio.UnaryStreamCall, since: float) -> float:
    """Read an open stream until it ends; its status must be UNAUTHENTICATED."""
    with pytest.raises(aio.AioRpcError) as err:
        async with asyncio.timeout(10):
            while await call.read() is not aio.EOF:
                pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
    assert "revoked" in str(err.value.details())
    return time.monotonic() - since


async def test_a_revoked_token_is_refused_within_2_s_and_ends_its_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEML_ALLOW_ANONYMOUS", "false")
    async with cluster(tmp_path) as c:
        worker_port, gateway_port = await serve_lin(c, tmp_path)
        client = c.mint("app", rpb.ROLE_CLIENT)
        upstream = c.mint("a second gateway", rpb.ROLE_GATEWAY)
        watcher = c.mint("a watcher", rpb.ROLE_WORKER)
        gateway, worker = f"127.0.0.1:{gateway_port}", f"127.0.0.1:{worker_port}"
        async with (
            aio.insecure_channel(gateway) as g,
            aio.insecure_channel(worker) as w,
            aio.insecure_channel(f"127.0.0.1:{c.registry_port}") as r,
        ):
            g_stream = pb_grpc.GRPCInferenceServiceStub(g).ModelStreamInfer(metadata=auth(client))
            w_stream = pb_grpc.GRPCInferenceServiceStub(w).ModelStreamInfer(metadata=auth(upstream))
            for call in (g_stream, w_stream):
                await call.write(infer_request("lin", X, "open"))
                assert not (await call.read()).error_message
            watch = rpb_grpc.RegistryServiceStub(r).Watch(
                rpb.WatchRequest(), metadata=auth(watcher)
            )
            assert (await watch.read()).kind == rpb.WatchResponse.KIND_SNAPSHOT
            await gateway_infer(g, auth(client))
            await gateway_infer(w, auth(upstream))

            since = time.monotonic()
            for secret in (client, upstream, watcher):
                name = f"tokens/{secret.split('_')[1]}"
                await c.stub.RevokeToken(rpb.RevokeTokenRequest(name=name), metadata=c.md)
            took = {
                "gateway": await _refused_within(
                    gateway_infer, gateway, auth(client), "gateway refusal", since
                ),
                "worker": await _refused_within(
                    gateway_infer, worker, auth(upstream), "worker refusal", since
                ),
                "gateway stream": await _ended(g_stream, since),
                "worker stream": await _ended(w_stream, since),
                "watch": await _ended(watch, since),
            }
        print("revocation took (s):", took)
        assert max(took.values()) < 2.0, took


TRITON = """
c = grpcclient.InferenceServerClient(f"127.0.0.1:{ARGS['port']}")
x = np.ones((1, 4), dtype=np.float32)
inp = grpcclient.InferInput("x", [1, 4], "FP32")
inp.set_data_from_numpy(x)
headers = {"authorization": f"Bearer {ARGS['token']}"}
result = c.infer("lin", [inp], headers=headers)
OUT["with_token"] = result.as_numpy(result.get_response().outputs[0].name).tolist()
OUT["ready"] = c.is_model_ready("lin", headers=headers)
OUT["without"] = status(lambda: c.infer("lin", [inp]))
"""


async def test_stock_tritonclient_with_a_token_through_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEML_ALLOW_ANONYMOUS", "false")
    async with cluster(tmp_path) as c:
        _, gateway_port = await serve_lin(c, tmp_path)
        token = c.mint("triton app", rpb.ROLE_CLIENT)
        out = run_client(TRITON, port=gateway_port, token=token)
    assert len(out["with_token"][0]) == 3 and out["ready"] is True
    assert out["without"][0] == "StatusCode.UNAUTHENTICATED"
    assert "missing credentials" in out["without"][1]


async def test_allow_anonymous_serves_anyone_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEML_ALLOW_ANONYMOUS", "true")
    async with cluster(tmp_path) as c:
        worker_port, gateway_port = await serve_lin(c, tmp_path)
        async with aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
            await gateway_infer(channel, ())
        async with aio.insecure_channel(f"127.0.0.1:{worker_port}") as channel:
            await gateway_infer(channel, ())
        for proc in (c.workers["w0"][0], c.gateways[0]):
            wait_until(
                lambda p=proc: any("--allow-anonymous" in line for line in p.output),
                10,
                "the warning",
            )
            line = next(line for line in proc.output if "--allow-anonymous" in line)
            assert "WARNING" in line and "ANY caller" in line


async def test_an_expired_token_is_refused_and_ends_its_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expiry is enforced by the data plane itself (no feed event marks it)."""
    monkeypatch.setenv("LIVEML_ALLOW_ANONYMOUS", "false")
    async with cluster(tmp_path) as c:
        _, gateway_port = await serve_lin(c, tmp_path)
        request = rpb.CreateTokenRequest(display_name="short-lived app", role=rpb.ROLE_CLIENT)
        request.ttl.FromSeconds(3)
        made = await c.stub.CreateToken(request, metadata=c.md)
        expires = made.token.expire_time.ToMicroseconds() / 1e6
        async with aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
            md = auth(made.secret)

            async def known() -> bool:
                try:
                    await gateway_infer(channel, md)
                except aio.AioRpcError:
                    return False
                return True

            await async_wait_until(known, 10, "the gateway to know the new token")
            stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(metadata=md)
            await stream.write(infer_request("lin", X, "open"))
            assert not (await stream.read()).error_message
            with pytest.raises(aio.AioRpcError) as err:
                async with asyncio.timeout(15):
                    while await stream.read() is not aio.EOF:
                        pass
            ended = time.time() - expires
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "has expired" in str(err.value.details())
            refused = await expect_refused(gateway_infer, channel, md)
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
            assert f"token {made.token.name} (short-lived app) has expired" in str(
                refused.details()
            )
        assert ended < 2.0, ended


async def test_certificates_are_identities_on_workers_and_gateways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutual TLS on a worker and a gateway: a certificate --cert-roles names gets its
    role; one the same CA signed but no entry names (CN `intruder`, or the stock
    `client` certificate on a worker) is refused, as by the registry."""
    from services.common import pki, tls

    monkeypatch.setenv("LIVEML_ALLOW_ANONYMOUS", "false")
    ca = pki.create_ca(tmp_path / "pki")
    issued = {
        n: pki.issue(ca, n, tmp_path / "pki") for n in ("worker", "gateway", "app", "intruder")
    }
    issued["client"] = pki.issue(ca, "client", tmp_path / "pki")

    def serving(name: str, roles: str) -> tuple[str, ...]:
        return (
            "--tls-cert", str(issued[name].cert), "--tls-key", str(issued[name].key),
            "--tls-client-ca", str(ca.cert), "--cert-roles", roles,
            "--allow-plaintext-upstream",  # the registry of this test speaks plaintext
        )  # fmt: skip

    async with cluster(tmp_path) as c:
        await c.create_model("lin")
        await c.push("lin", models.linear(tmp_path / "v1.onnx", seed=1))
        await c.route("lin", (1, 100))
        worker = c.start_worker("w0", *serving("worker", "gateway=gateway"))
        gateway = c.start_gateway(
            *serving("gateway", "app=client,gateway=gateway"),
            "--worker-ca", str(ca.cert),
            "--worker-cert", str(issued["gateway"].cert),
            "--worker-key", str(issued["gateway"].key),
        )  # fmt: skip
        options = [("grpc.ssl_target_name_override", "localhost")]

        async def call(port: int, who: str) -> aio.AioRpcError | None:
            creds = tls.channel_credentials(ca.cert, issued[who].cert, issued[who].key)
            async with aio.secure_channel(f"127.0.0.1:{port}", creds, options) as channel:
                try:
                    await gateway_infer(channel, ())
                except aio.AioRpcError as exc:
                    return exc
            return None

        await async_wait_until(
            lambda: _answers(call(worker, "gateway")), 30, "the worker to answer the gateway"
        )
        for who in ("intruder", "client", "app"):
            refused = await call(worker, who)
            assert refused is not None and refused.code() == grpc.StatusCode.UNAUTHENTICATED
            assert f"client certificate {who!r} has no role here" in str(refused.details())
        await async_wait_until(
            lambda: _answers(call(gateway, "app")), 30, "the gateway to answer the app"
        )
        refused = await call(gateway, "intruder")
        assert refused is not None and refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "client certificate 'intruder' has no role here" in str(refused.details())
        # A role the method does not take: the gateway's identity is not a client.
        denied = await call(gateway, "gateway")
        assert denied is not None and denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "cert:gateway (role gateway) may not call" in str(denied.details())


async def _answers(outcome: Awaitable[aio.AioRpcError | None]) -> bool:
    return await outcome is None
