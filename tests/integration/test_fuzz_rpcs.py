"""Property-based fuzzing of every RPC of the registry (incl. TrainingService), the worker
and the gateway, on real servers: random bytes as the request body, and random field
values of the right types built from each request's descriptor, sent with an admin
token. Whatever the input, the status is never UNKNOWN or INTERNAL (a caller's mistake
is never the server's failure), a stream's per-request errors neither, and a refused
call changes nothing in the registry (change-feed revision, tables, ListModels)."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from tests.helpers.stack import Stack, serving_stack

SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
FAULT_NUMBERS = {c.value[0] for c in SERVER_FAULTS}
# Tables a call could change and nothing else does (windows of `lin` are the servers'
# own reports, alerts the controller's).
TABLES = (
    "models",
    "versions",
    "rollouts",
    "rollout_history",
    "tokens",
    "training_policies",
    "training_runs",
)
# Strings a server reads as names, tokens or numbers: random text rarely finds them.
WORDS = [
    "",
    " ",
    "fz",
    "lin",
    "models/fz",
    "models/fz/versions/1",
    "models/fz/versions/999999999999999999999999999999",
    "models/fz/aliases/champion",
    "models/fz/rollout",
    "models/fz/trainingRuns/1",
    "models/fz/trainingRuns/99999999999999999999",
    "workers/w0",
    "tokens/x",
    "%%%",
    base64.urlsafe_b64encode(b"abc").decode(),
    base64.urlsafe_b64encode(b"99999999999999999999999").decode(),
    "1",
    "-1",
    "99999999999999999999",
    "x" * 300,
    "sklearn.linear_model.LogisticRegression",
]
INT_RANGES = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
WATCH = 0.5  # seconds a server stream has to answer or refuse
# Keep the whole file within about a minute on two busy cores.
FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _integers(field: d.FieldDescriptor) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[field.type]
    edges = [v for v in (low, high, -1, 0, 1, 2, 100, 10**9) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _scalar(field: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type in INT_RANGES:
        return _integers(field)
    if field.type in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        width = 32 if field.type == d.FieldDescriptor.TYPE_FLOAT else 64
        return st.floats(width=width)  # NaN and the infinities included
    if field.type == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == d.FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(WORDS), st.text(max_size=12))
    if field.type == d.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=48)
    if field.type == d.FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-5, 50))
    raise AssertionError(f"unhandled field type {field.type}")


@st.composite
def messages(draw: st.DrawFn, descriptor: d.Descriptor, depth: int = 0) -> Any:
    """A message of `descriptor` with random fields set to random values of their types."""
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            entries = draw(st.integers(0, 2))
            target = getattr(message, field.name)
            for _ in range(entries):
                key = draw(_scalar(key_field))
                if value_field.message_type is not None:
                    if depth < 2:
                        target[key].CopyFrom(draw(messages(value_field.message_type, depth + 1)))
                else:
                    target[key] = draw(_scalar(value_field))
            continue
        repeated = field.label == d.FieldDescriptor.LABEL_REPEATED
        count = draw(st.integers(0, 3)) if repeated else 1
        for _ in range(count):
            if field.message_type is not None:
                if depth >= 2:
                    break
                value = draw(messages(field.message_type, depth + 1))
                if repeated:
                    getattr(message, field.name).add().CopyFrom(value)
                else:
                    getattr(message, field.name).CopyFrom(value)
            elif repeated:
                getattr(message, field.name).append(draw(_scalar(field)))
            else:
                setattr(message, field.name, draw(_scalar(field)))
    return message


def bodies(descriptor: d.Descriptor) -> st.SearchStrategy[bytes]:
    """Request bodies: random bytes (mostly not protobuf), or a random valid message."""
    return st.one_of(
        st.binary(max_size=64),
        messages(descriptor).map(lambda m: m.SerializeToString()),
    )


def _methods(*services: d.ServiceDescriptor) -> list[d.MethodDescriptor]:
    return [m for s in services for m in s.methods]


REGISTRY = _methods(
    rpb.DESCRIPTOR.services_by_name["RegistryService"],
    tpb.DESCRIPTOR.services_by_name["TrainingService"],
)
V2 = _methods(pb.DESCRIPTOR.services_by_name["GRPCInferenceService"])
WORKER = V2 + _methods(wpb.DESCRIPTOR.services_by_name["WorkerService"])
GATEWAY = V2 + _methods(gpb.DESCRIPTOR.services_by_name["GatewayService"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    root = tmp_path_factory.mktemp("fuzz")
    with serving_stack(root) as running:
        with grpc.insecure_channel(f"127.0.0.1:{running.registry_port}") as channel:
            # A second model for the fuzzer's names to find (`lin` keeps serving).
            channel.unary_unary(
                "/liveml.registry.v1.RegistryService/CreateModel",
                request_serializer=rpb.CreateModelRequest.SerializeToString,
                response_deserializer=rpb.CreateModelResponse.FromString,
            )(rpb.CreateModelRequest(model_id="fz"), metadata=running.md)
        yield running, root / "registry.db"


@pytest.fixture(scope="module")
def channels(stack: tuple[Stack, Path]) -> Iterator[dict[str, grpc.Channel]]:
    running, _ = stack
    opened = {
        "registry": grpc.insecure_channel(f"127.0.0.1:{running.registry_port}"),
        "worker": grpc.insecure_channel(f"127.0.0.1:{running.worker_port}"),
        "gateway": grpc.insecure_channel(f"127.0.0.1:{running.gateway_port}"),
    }
    yield opened
    for channel in opened.values():
        channel.close()


def registry_state(db: Path, channel: grpc.Channel, md: Any) -> tuple[Any, ...]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        # The change feed's last revision (a heartbeat takes a revision and changes
        # nothing), but for workers: a worker the fuzzer registered expires on its own.
        revision = conn.execute(
            "SELECT max(revision), count(*) FROM changes WHERE kind != 'worker'"
        ).fetchall()
        # Every write a caller makes is audited under its name ("registry" is our own).
        audited = conn.execute(
            "SELECT count(*) FROM audit_events WHERE actor != 'registry'"
        ).fetchone()
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES]
        windows = conn.execute("SELECT count(*) FROM windows WHERE model != 'lin'").fetchone()
    listed = channel.unary_unary(
        "/liveml.registry.v1.RegistryService/ListModels",
        request_serializer=rpb.ListModelsRequest.SerializeToString,
        response_deserializer=rpb.ListModelsResponse.FromString,
    )(rpb.ListModelsRequest(page_size=1000), metadata=md, timeout=10)
    return revision, audited, counts, windows, listed.SerializeToString(deterministic=True)


def _stream_errors(method: d.MethodDescriptor, replies: list[bytes]) -> list[str]:
    """Per-request errors a stream reported with a server-fault status."""
    faults = []
    for data in replies:
        if method.output_type.full_name == pb.ModelStreamInferResponse.DESCRIPTOR.full_name:
            reply = pb.ModelStreamInferResponse.FromString(data)
            status = reply.infer_response.parameters["liveml_status"].int64_param
            if reply.error_message and status in FAULT_NUMBERS:
                faults.append(reply.error_message)
        elif method.output_type.full_name == wpb.ForwardResponse.DESCRIPTOR.full_name:
            for forwarded in wpb.ForwardResponse.FromString(data).replies:
                if forwarded.code in FAULT_NUMBERS:
                    faults.append(forwarded.message)
    return faults


def call(channel: grpc.Channel, method: d.MethodDescriptor, body: bytes, md: Any) -> Any:
    """Send `body` as the request (or a stream's one message); the status code, or OK."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    raw = {"request_serializer": None, "response_deserializer": None}
    try:
        if not method.client_streaming and not method.server_streaming:
            channel.unary_unary(path, **raw)(body, metadata=md, timeout=10)
        elif not method.client_streaming:
            # A watch never ends: its first message, or its refusal, is the answer; one
            # with nothing to send yet is still waiting at its (short) deadline.
            replies = channel.unary_stream(path, **raw)(body, metadata=md, timeout=WATCH)
            next(replies, None)
            replies.cancel()
        elif not method.server_streaming:
            channel.stream_unary(path, **raw)(iter([body]), metadata=md, timeout=10)
        else:
            answers = list(
                channel.stream_stream(path, **raw)(iter([body]), metadata=md, timeout=10)
            )
            faults = _stream_errors(method, answers)
            assert not faults, (
                f"{method.name}: a request on the stream failed as the server's: {faults}"
            )
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        if method.server_streaming and code in (
            grpc.StatusCode.CANCELLED,  # the watch we cancelled ourselves
            grpc.StatusCode.DEADLINE_EXCEEDED,  # a watch accepted, with nothing to say yet
        ):
            return grpc.StatusCode.OK
        assert code not in SERVER_FAULTS, f"{method.name}: {code.name}: {exc.details()}"  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", REGISTRY, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_registry(
    method: d.MethodDescriptor, stack: tuple[Stack, Path], channels: dict[str, grpc.Channel]
) -> None:
    running, db = stack
    channel = channels["registry"]

    @FUZZ
    @given(body=bodies(method.input_type))
    def refused_changes_nothing(body: bytes) -> None:
        before = registry_state(db, channel, running.md)
        code = call(channel, method, body, running.md)
        if code is not grpc.StatusCode.OK:
            assert registry_state(db, channel, running.md) == before, (
                f"{method.name} was refused ({code.name}) yet changed the registry"
            )

    refused_changes_nothing()


@pytest.mark.parametrize("method", WORKER, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_worker(
    method: d.MethodDescriptor, stack: tuple[Stack, Path], channels: dict[str, grpc.Channel]
) -> None:
    running, _ = stack

    @FUZZ
    @given(body=bodies(method.input_type))
    def never_the_servers_fault(body: bytes) -> None:
        call(channels["worker"], method, body, running.md)

    never_the_servers_fault()


@pytest.mark.parametrize("method", GATEWAY, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_gateway(
    method: d.MethodDescriptor, stack: tuple[Stack, Path], channels: dict[str, grpc.Channel]
) -> None:
    running, _ = stack

    @FUZZ
    @given(body=bodies(method.input_type))
    def never_the_servers_fault(body: bytes) -> None:
        call(channels["gateway"], method, body, running.md)

    never_the_servers_fault()
