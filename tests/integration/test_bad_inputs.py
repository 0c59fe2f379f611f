"""A caller's mistake is INVALID_ARGUMENT naming what was expected, never UNKNOWN, and
changes nothing: undecodable requests (worker, gateway, registry), a model_name that is
not UTF-8, one bad message on a stream (answered on its own, the stream goes on), page
tokens, version numbers, durations, reported counts and sticky keys."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.gateway import wire
from tests.helpers.cluster import infer_request
from tests.helpers.models import linear
from tests.helpers.registry import RunningRegistry, auth, stream, upload
from tests.helpers.stack import Stack, serving_stack

INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_TOKEN = (
    "page_token is not one this server issued: pass the next_page_token of the previous "
    "page, or none for the first"
)
NOT_UTF8 = (
    "the request is not a valid inference.ModelInferRequest message (model_name is not valid UTF-8)"
)
NOT_PROTOBUF = (
    "the request is not a valid inference.ModelInferRequest message: expected its protobuf "
    "encoding, with strings in UTF-8"
)
GARBAGE = b"\xff\xff\xff"  # a field key that never ends: not protobuf


# --- worker and gateway ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with serving_stack(tmp_path_factory.mktemp("inputs")) as running:
        yield running


def good(request_id: str) -> bytes:
    request = infer_request("lin", np.ones((1, 4), np.float32), request_id)
    return request.SerializeToString()


def not_utf8_model(request_id: str) -> bytes:
    """A ModelInferRequest whose model_name is the bytes ff fe (protobuf wants UTF-8)."""
    return wire.length_delimited(wire.MODEL_NAME, b"\xff\xfe") + wire.length_delimited(
        wire.ID, request_id.encode()
    )


def raw_unary(port: int, body: bytes, **kwargs: Any) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            infer(body, timeout=10, **kwargs)
    return caught.value


def raw_stream(port: int, bodies: list[bytes]) -> list[pb.ModelStreamInferResponse]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        return [pb.ModelStreamInferResponse.FromString(r) for r in call(iter(bodies), timeout=10)]


def status(response: pb.ModelStreamInferResponse) -> int:
    return int(response.infer_response.parameters["liveml_status"].int64_param)


def test_worker_refuses_a_request_that_is_not_protobuf(stack: Stack) -> None:
    error = raw_unary(stack.worker_port, GARBAGE)
    assert error.code() == INVALID  # type: ignore[attr-defined]
    assert error.details() == NOT_PROTOBUF  # type: ignore[attr-defined]


def test_worker_stream_answers_a_bad_message_and_goes_on(stack: Stack) -> None:
    answers = raw_stream(stack.worker_port, [good("a"), GARBAGE, good("c")])
    assert [a.error_message for a in answers] == ["", NOT_PROTOBUF, ""]
    assert status(answers[1]) == INVALID.value[0]
    assert [answers[0].infer_response.id, answers[2].infer_response.id] == ["a", "c"]
    assert answers[2].infer_response.outputs[0].shape == [1, 3]


def test_gateway_refuses_a_model_name_that_is_not_utf8(stack: Stack) -> None:
    error = raw_unary(stack.gateway_port, not_utf8_model("x"))
    assert error.code() == INVALID  # type: ignore[attr-defined]
    assert error.details() == NOT_UTF8  # type: ignore[attr-defined]


def test_gateway_stream_answers_a_bad_message_and_goes_on(stack: Stack) -> None:
    answers = raw_stream(stack.gateway_port, [good("a"), not_utf8_model("b"), good("c")])
    assert [a.error_message for a in answers] == ["", NOT_UTF8, ""]
    assert status(answers[1]) == INVALID.value[0]
    assert answers[1].infer_response.id == ""  # unreadable: the id cannot be trusted either
    assert [answers[0].infer_response.id, answers[2].infer_response.id] == ["a", "c"]


def test_gateway_refuses_a_request_that_is_not_protobuf(stack: Stack) -> None:
    error = raw_unary(stack.gateway_port, GARBAGE)
    assert error.code() == INVALID  # type: ignore[attr-defined]
    assert error.details() == (  # type: ignore[attr-defined]
        "the request is not a valid inference.ModelInferRequest message (truncated varint)"
    )


def test_gateway_refuses_a_blank_sticky_key(stack: Stack) -> None:
    error = raw_unary(stack.gateway_port, good("s"), metadata=(("x-liveml-route-key", "   "),))
    assert error.code() == INVALID  # type: ignore[attr-defined]
    assert error.details() == (  # type: ignore[attr-defined]
        "sticky key (metadata 'x-liveml-route-key') is blank: send a value that identifies "
        "the client, or none"
    )


def test_gateway_typed_methods_refuse_bodies_that_are_not_protobuf(stack: Stack) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
        metadata = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata")
        with pytest.raises(grpc.RpcError) as caught:
            metadata(GARBAGE, timeout=10)
    assert caught.value.code() == INVALID  # type: ignore[attr-defined]
    assert caught.value.details() == (  # type: ignore[attr-defined]
        "the request is not a valid inference.ModelMetadataRequest message: expected its "
        "protobuf encoding, with strings in UTF-8"
    )


# --- registry ------------------------------------------------------------------------------


@pytest.fixture
async def lin(registry: RunningRegistry, tmp_path: Path) -> RunningRegistry:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="m"))
    data = linear(tmp_path / "v1.onnx").read_bytes()
    await client.CreateVersion(stream(upload("models/m", data)))
    rollout = rpb.Rollout(
        name="models/m/rollout", targets=[rpb.TrafficTarget(version=1, percent=100)]
    )
    await client.UpdateRollout(rpb.UpdateRolloutRequest(rollout=rollout))
    return registry


async def refused(call: Any, request: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call(request)
    return caught.value


async def revision(registry: RunningRegistry) -> int:
    reply = await registry.client().GetRollout(rpb.GetRolloutRequest(name="models/m/rollout"))
    return int(reply.rollout.revision)


async def store_revision(registry: RunningRegistry) -> int:
    current, _ = await registry.registry.store.revision()
    return current


def token_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


async def test_page_tokens_that_are_not_ours(lin: RunningRegistry) -> None:
    client = lin.client()
    for token in (token_of("abc"), "%%%", token_of("9" * 30), token_of("-3")):
        calls = [
            (client.ListVersions, rpb.ListVersionsRequest(parent="models/m", page_token=token)),
            (client.ListAuditEvents, rpb.ListAuditEventsRequest(page_token=token)),
            (
                client.ListRolloutHistory,
                rpb.ListRolloutHistoryRequest(name="models/m/rollout", page_token=token),
            ),
            (client.ListAlerts, rpb.ListAlertsRequest(page_token=token)),
        ]
        for call, request in calls:
            error = await refused(call, request)
            what = f"{type(request).__name__} {token!r}"
            assert (error.code(), error.details()) == (INVALID, BAD_TOKEN), what


async def test_version_number_beyond_64_bits(lin: RunningRegistry) -> None:
    error = await refused(
        lin.client().GetVersion, rpb.GetVersionRequest(name="models/m/versions/" + "9" * 30)
    )
    assert error.code() == INVALID
    assert error.details() == (
        f"version number must be a positive integer (at most {2**63 - 1}), got '{'9' * 30}'"
    )


async def test_undecodable_registry_request(lin: RunningRegistry) -> None:
    get = lin.channel.unary_unary("/liveml.registry.v1.RegistryService/GetModel")
    with pytest.raises(aio.AioRpcError) as caught:
        await get(GARBAGE, metadata=auth(lin.admin_token))
    assert caught.value.code() == INVALID
    assert caught.value.details() == (
        "the request is not a valid liveml.registry.v1.GetModelRequest message: expected "
        "its protobuf encoding, with strings in UTF-8"
    )


def window(**fields: Any) -> rpb.Window:
    w = rpb.Window(model="m", version=1, source=rpb.WINDOW_SOURCE_GATEWAY, **fields)
    w.end_time.FromNanoseconds(time.time_ns())
    w.start_time.FromNanoseconds(time.time_ns() - 1_000_000_000)
    return w


WINDOW_MISTAKES = [
    ({"requests": -45}, "window.requests must not be negative, got -45"),
    (
        {"requests": 10, "feedback_correct": 30, "feedback_total": 10},
        "window.feedback_correct must be within [0, window.feedback_total (10)], got 30",
    ),
    (
        {"requests": 10, "feedback_correct": -1, "feedback_total": 10},
        "window.feedback_correct must be within [0, window.feedback_total (10)], got -1",
    ),
    (
        {"requests": 10, "errors": {"INTERNAL": -3}},
        "window.errors['INTERNAL'] must not be negative, got -3",
    ),
    (
        {"requests": 2, "errors": {"INTERNAL": 3}},
        "window.errors add up to 3, more than window.requests (2)",
    ),
    (
        {"requests": 5, "groups": [rpb.GroupOutcomes(group="a", predictions=2, positive=4)]},
        "window.groups['a'].positive must be within [0, predictions (2)], got 4",
    ),
    (
        {"requests": 5, "latency": rpb.Histogram(bounds=[0.1], counts=[3, -1])},
        "window.latency.counts must not be negative, got -1",
    ),
    (
        {"requests": 5, "latency": rpb.Histogram(bounds=[0.2, 0.1], counts=[1, 1, 1])},
        "window.latency.bounds must be finite and strictly ascending",
    ),
]


async def test_windows_whose_counts_cannot_be(lin: RunningRegistry) -> None:
    client = lin.client()
    for fields, message in WINDOW_MISTAKES:
        # One good window alongside: the whole report is refused, nothing stored.
        request = rpb.ReportWindowsRequest(windows=[window(requests=5), window(**fields)])
        error = await refused(client.ReportWindows, request)
        assert (error.code(), error.details()) == (INVALID, message)
    late = window(requests=1)
    late.end_time.seconds = 2**62
    error = await refused(client.ReportWindows, rpb.ReportWindowsRequest(windows=[late]))
    assert (error.code(), error.details()) == (
        INVALID,
        "window.end_time must be a valid timestamp (years 1-9999, nanos 0-999999999)",
    )
    reply = await client.GetVersionMetrics(rpb.GetVersionMetricsRequest(parent="models/m"))
    assert [m.requests for m in reply.metrics] == []


async def test_negative_token_ttl(lin: RunningRegistry) -> None:
    client = lin.client()
    before = (await client.ListTokens(rpb.ListTokensRequest())).tokens
    revision_before = await store_revision(lin)
    request = rpb.CreateTokenRequest(display_name="t", role=rpb.ROLE_VIEWER)
    request.ttl.FromSeconds(-60)
    error = await refused(client.CreateToken, request)
    assert (error.code(), error.details()) == (
        INVALID,
        "ttl must be within [0, 316224000] s, got -60 s",
    )
    assert (await client.ListTokens(rpb.ListTokensRequest())).tokens == before
    assert await store_revision(lin) == revision_before


async def test_negative_worker_lease(lin: RunningRegistry) -> None:
    client = lin.client(await lin.token(rpb.ROLE_WORKER, "w"))
    revision_before = await store_revision(lin)
    worker = rpb.Worker(name="workers/w1", address="127.0.0.1:1")
    request = rpb.RegisterWorkerRequest(worker=worker)
    request.lease_duration.FromSeconds(-5)
    error = await refused(client.RegisterWorker, request)
    assert (error.code(), error.details()) == (
        INVALID,
        "lease_duration must be within [0, 86400] s, got -5 s",
    )
    assert list((await lin.client().ListWorkers(rpb.ListWorkersRequest())).workers) == []
    assert await store_revision(lin) == revision_before


async def test_sticky_key_with_whitespace(lin: RunningRegistry) -> None:
    before = await revision(lin)
    for key in ("   ", " user"):
        rollout = rpb.Rollout(
            name="models/m/rollout",
            targets=[rpb.TrafficTarget(version=1, percent=100)],
            sticky_key=key,
        )
        request = rpb.UpdateRolloutRequest(rollout=rollout)
        error = await refused(lin.client().UpdateRollout, request)
        assert (error.code(), error.details()) == (
            INVALID,
            "sticky_key must name a request parameter or metadata key, with no surrounding "
            f"whitespace (or be empty for none), got {key!r}",
        )
    assert await revision(lin) == before


def test_health_refuses_garbage_and_reflection_still_answers(stack: Stack) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{stack.worker_port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as caught:
            check(GARBAGE, timeout=10)
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[no-untyped-call]
        asked = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = list(stub.ServerReflectionInfo(iter([asked]), timeout=10))
    assert caught.value.code() == INVALID  # type: ignore[attr-defined]
    assert caught.value.details() == (  # type: ignore[attr-defined]
        "the request is not a valid grpc.health.v1.HealthCheckRequest message: expected its "
        "protobuf encoding, with strings in UTF-8"
    )
    listed = {s.name for s in replies[0].list_services_response.service}
    assert "inference.GRPCInferenceService" in listed
