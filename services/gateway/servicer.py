"""The gateway's front door: the V2 inference API, routed; and feedback and ingest.

Inference requests arrive as bytes and leave as bytes: the gateway reads the routing
fields, points the request at the chosen version by appending that field, sends it
down a worker's long-lived stream and hands the worker's answer back unchanged. A
request whose worker died or is draining is retried on another worker of the same
version within the caller's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from importlib.metadata import version as dist_version
from typing import Any

import grpc
from grpc import aio
from opentelemetry import propagate

from services.common import decoding, parameters, telemetry, v2
from services.common.errors import InvalidArgument, ServiceError, Unavailable, abort_on_error
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from services.common.streams import OrderedStreams
from services.common.windows import WindowBook
from services.gateway import metrics, statistics, wire
from services.gateway.data import DataPlaneEvents
from services.gateway.feedback import FeedbackBook
from services.gateway.outputs import first_output, is_positive, prediction
from services.gateway.predictions import PredictionLog
from services.gateway.routing import RoutingTable
from services.gateway.shadow import Shadow
from services.gateway.upstream import UpstreamDown, UpstreamPool, UpstreamStalled

log = logging.getLogger(__name__)

Ctx = Any  # grpc.aio.ServicerContext (untyped)
SERVICE = "inference.GRPCInferenceService"
# A worker's answer that says "not here" (draining, loading, or a version it no longer
# or not yet holds, which the table believed READY there): another worker may have it.
ELSEWHERE = {grpc.StatusCode.UNAVAILABLE.value[0], grpc.StatusCode.NOT_FOUND.value[0]}
CODES = {code.value[0]: code for code in grpc.StatusCode}
STREAM_WINDOW = 128
INFER_REQUEST = pb.ModelInferRequest.DESCRIPTOR.full_name
# Longest a request waits for a newer routing table when its version was just retired.
TABLE_WAIT = 2.0
# Longest a request waits for the first routing table of a gateway that just started.
FIRST_TABLE_WAIT = 10.0
STATISTICS_SECONDS = 5.0  # longest wait for one worker's statistics


class Router:
    """Chooses, sends, retries; shared by the unary and streaming front doors."""

    def __init__(
        self,
        table: Callable[[], RoutingTable],
        pool: UpstreamPool,
        feedback: FeedbackBook,
        route_key_header: str,
        default_timeout: float,
        shadow: Shadow,
        book: WindowBook,
        group_key: str = "group",
        predictions: PredictionLog | None = None,
        stall: float = 1.0,
    ) -> None:
        self.table = table
        self.stall = stall
        self.pool = pool
        self.feedback = feedback
        self.route_key_header = route_key_header
        self.default_timeout = default_timeout
        self.shadow = shadow
        self.book = book
        self.group_key = group_key
        self.predictions = predictions
        self._changed = asyncio.Event()
        self._first = asyncio.Event()

    async def _first_table(self, deadline: float | None) -> None:
        """A gateway that just started has no routing table: wait for it rather than
        tell the caller its model does not exist."""
        if self._first.is_set():
            return
        wait = FIRST_TABLE_WAIT
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._first.wait()
        if not self._first.is_set():
            raise Unavailable(
                "the gateway has no routing table yet: the registry has not been reached"
            )

    async def _send(
        self, model: str, version: int, data: bytes, deadline: float
    ) -> wire.StreamReply:
        tried: set[str] = set()
        broken: set[str] = set()  # their stream failed: the next send opens a new one
        retried: set[str] = set()  # each worker gets at most one such second try
        last = "no READY worker"
        while True:
            workers = self.table().workers(model, version)
            upstream = self.pool.pick(workers, tried)
            if upstream is None and broken:
                # Every worker was tried; those whose stream broke (a reset connection, a
                # framed listener out of reach: the next stream may take gRPC) get one
                # more try each, which matters most when there is only one.
                upstream = self.pool.pick([w for w in workers if w in broken], set())
                broken.clear()
            remaining = deadline - time.monotonic()
            if upstream is None or remaining <= 0:
                raise Unavailable(
                    f"model '{model}' version {version}: no worker could answer ({last})"
                )
            tried.add(upstream.address)
            # Waiting out a frozen worker pays only when another one could answer.
            others = any(w not in tried for w in workers)
            try:
                reply = wire.stream_reply(
                    await upstream.send(data, remaining, stall=self.stall if others else None)
                )
            except UpstreamStalled as exc:
                last = str(exc)
                self.pool.eject(upstream.address, last)
                metrics.RETRIES.labels(model).inc()
                continue
            except UpstreamDown as exc:
                last = str(exc)
                if upstream.address not in retried:
                    broken.add(upstream.address)
                retried.add(upstream.address)
                metrics.RETRIES.labels(model).inc()
                continue
            except TimeoutError:
                raise ServiceError(
                    "deadline exceeded waiting for the worker", grpc.StatusCode.DEADLINE_EXCEEDED
                ) from None
            if reply.error and reply.status in ELSEWHERE:
                last = reply.error
                metrics.RETRIES.labels(model).inc()
                continue
            return reply

    def table_changed(self) -> None:
        """A new routing table is in place: wake requests waiting for one."""
        self._first.set()
        self._changed.set()
        self._changed = asyncio.Event()

    async def _newer_table(self, seen: RoutingTable, deadline: float) -> bool:
        if self.table() is not seen:
            return True
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(TABLE_WAIT, max(0.0, deadline - time.monotonic()))):
                await changed.wait()
        return self.table() is not seen

    async def infer(self, data: bytes, metadata: Any, deadline: float | None) -> tuple[bytes, str]:
        """Route one request; return (reply bytes, answering version) or raise ServiceError."""
        try:
            routing = wire.routing(data)
        except wire.WireError as exc:
            raise InvalidArgument(decoding.Malformed(INFER_REQUEST, str(exc)).message) from None
        await self._first_table(deadline)
        table = self.table()
        route = table.route(routing.model_name)
        sticky = routing.parameters.get(route.sticky_key) if route.sticky_key else None
        where = f"parameter {route.sticky_key!r}"
        if sticky is None and metadata:
            sticky = next((v for k, v in metadata if k == self.route_key_header), None)
            where = f"metadata {self.route_key_header!r}"
        if sticky and not sticky.strip():
            # Every blank key would hash to the same side: refused rather than pinned there.
            raise InvalidArgument(
                f"sticky key ({where}) is blank: send a value that identifies the client, or none"
            )
        traceparent = ""
        if telemetry.tracing_enabled():
            # The worker stream is shared, so the trace context travels in the request.
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            traceparent = carrier.get("traceparent", "")  # the W3C propagator's key
        started = time.perf_counter()
        model = routing.model_name
        deadline = deadline or time.monotonic() + self.default_timeout
        version = 0
        metrics.REQUESTS.in_flight += 1
        try:
            while True:
                choice = table.choose(model, routing.model_version, sticky)
                version = choice.version
                if choice.redistributed:
                    metrics.REDISTRIBUTED.labels(model).inc()
                # One copy of the request, whatever is appended: the chosen version, the
                # trace context, and how long the caller still waits (the worker does
                # not start what it can no longer answer in time).
                remaining_us = int((deadline - time.monotonic()) * 1e6)
                suffix = wire.int64_parameter(parameters.TIMEOUT, remaining_us)
                if not routing.model_version:
                    suffix += wire.version_field(version)
                if traceparent:
                    suffix += wire.string_parameter(parameters.TRACEPARENT, traceparent)
                request = data + suffix
                try:
                    reply = await self._send(model, version, request, deadline)
                    break
                except Unavailable:
                    # Every worker of the chosen version is draining or gone: the rollout
                    # moved on and this gateway's table has not caught up yet. A request
                    # the rollout routes (not one pinned by the caller) waits for the new
                    # table and is routed again.
                    if routing.model_version or not await self._newer_table(table, deadline):
                        raise
                    table = self.table()
        except ServiceError as exc:
            if version:  # failures before a version was chosen belong to no version
                self.book.request(model, version, 0.0, exc.code.name)
            raise
        finally:
            metrics.REQUESTS.in_flight -= 1
        if reply.error:
            code = CODES.get(reply.status, grpc.StatusCode.UNKNOWN)
            metrics.REQUESTS.record(model, str(version), "primary", code.name, 0.0)
            self.book.request(model, version, 0.0, code.name)
            raise ServiceError(reply.error, code)
        seconds = time.perf_counter() - started
        metrics.REQUESTS.record(model, str(version), "primary", "OK", seconds)
        self.book.request(model, version, seconds)
        answer = bytes(reply.response)
        group = routing.parameters.get(self.group_key, "") if routing.parameters else ""
        if group:
            self._count_group(model, version, group, answer)
        if routing.id:
            self.feedback.remember(model, routing.id, str(version), answer, group)
        if self.predictions is not None:
            self.predictions.offer(model, version, routing.id, data, answer, group)
        for mirror, percent in route.mirrors:
            if percent >= 100 or random.random() * 100 < percent:
                workers = table.workers(model, mirror, shadow=True)
                self.shadow.offer(model, mirror, wire.with_version(data, mirror), answer, workers)
        return answer, str(version)

    def _count_group(self, model: str, version: int, group: str, answer: bytes) -> None:
        """Fairness: what each group was predicted (decoded only for requests in a group)."""
        output = first_output(answer)
        if output is None:
            return
        positive = is_positive(prediction(output))
        row = self.book.tally(model, version).group(group)
        row[0] += 1
        row[1] += int(positive)
        outcome = "positive" if positive else "negative"
        metrics.GROUP_PREDICTIONS.labels(model, str(version), group, outcome).inc()


def _deadline(context: Ctx) -> float | None:
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None


class InferenceFront:
    """Raw-bytes handlers for the inference service's data path."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.streams = OrderedStreams(STREAM_WINDOW)

    def close_streams(self) -> None:
        """Shutting down: stop reading client streams; answered requests still go out."""
        self.streams.close()

    async def model_infer(self, data: bytes, context: Ctx) -> bytes:
        try:
            answer, _ = await self.router.infer(
                data, context.invocation_metadata(), _deadline(context)
            )
        except ServiceError as exc:
            await context.abort(exc.code, exc.message)
        return answer

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: Ctx
    ) -> AsyncIterator[bytes]:
        metadata = context.invocation_metadata()

        async def answer(data: bytes) -> bytes:
            try:
                reply, _ = await self.router.infer(data, metadata, None)
            except ServiceError as exc:
                return _stream_failure(data, exc.message, exc.code)
            except Exception as exc:  # one request's failure never ends the client's stream
                log.exception("stream request failed")
                message = f"internal error: {type(exc).__name__}: {exc}"
                return _stream_failure(data, message, grpc.StatusCode.INTERNAL)
            final = wire.length_delimited(1, b"triton_final_response") + wire.length_delimited(
                2, b"\x08\x01"
            )
            return wire.length_delimited(
                wire.INFER_RESPONSE, reply + wire.length_delimited(wire.PARAMETERS, final)
            )

        async for response in self.streams.serve(requests, answer):
            yield response


def _stream_failure(data: bytes, message: str, code: grpc.StatusCode) -> bytes:
    """One request's error on a stream, with its status code (as a worker sends it)."""
    request_id = ""
    with contextlib.suppress(wire.WireError):
        request_id = wire.routing(data).id
    failed = pb.ModelInferResponse(id=request_id)
    failed.parameters[parameters.STATUS].int64_param = code.value[0]
    return pb.ModelStreamInferResponse(
        error_message=message, infer_response=failed
    ).SerializeToString()


class ControlFront:
    """The rest of the inference service: health and the index from the routing table,
    metadata and config from a worker, statistics added up over the workers."""

    def __init__(self, router: Router, channel_for: Callable[[str], aio.Channel]) -> None:
        self.router = router
        self.channel_for = channel_for
        self.ready = asyncio.Event()

    async def ServerLive(self, request: Any, context: Ctx) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Ctx) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready.is_set())

    async def ServerMetadata(self, request: Any, context: Ctx) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="liveml-gateway",
            version=dist_version("liveml"),
            extensions=v2.EXTENSIONS,
        )

    async def _forward(
        self, method: str, request: Any, context: Ctx, table: RoutingTable | None = None
    ) -> Any:
        table = table or self.router.table()
        try:
            choice = table.choose(request.name, request.version, None)
        except ServiceError as exc:
            await context.abort(exc.code, exc.message)
        workers = table.workers(request.name, choice.version)
        if not request.version:
            request.version = str(choice.version)
        channel = self.channel_for(random.choice(workers))
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            return await getattr(stub, method)(request, timeout=10)
        except aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Ctx) -> Any:
        return await self._forward("ModelReady", request, context)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Ctx) -> Any:
        asked, table = request.version, self.router.table()
        reply = await self._forward("ModelMetadata", request, context, table)
        if not asked:  # as a worker answers: every version a client can reach here
            del reply.versions[:]
            reply.versions.extend(str(v) for v in table.reachable(request.name))
        return reply

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Ctx) -> Any:
        return await self._forward("ModelConfig", request, context)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Ctx) -> Any:
        remaining = context.time_remaining()
        timeout = STATISTICS_SECONDS if remaining is None else min(STATISTICS_SECONDS, remaining)

        async def ask(
            address: str, question: pb.ModelStatisticsRequest
        ) -> pb.ModelStatisticsResponse:
            stub = pb_grpc.GRPCInferenceServiceStub(self.channel_for(address))  # type: ignore[no-untyped-call]
            reply: pb.ModelStatisticsResponse = await stub.ModelStatistics(
                question, timeout=timeout
            )
            return reply

        try:
            return await statistics.gather(self.router.table(), request, ask)
        except ServiceError as exc:
            await context.abort(exc.code, exc.message)

    async def not_offered(self, request: bytes, context: Ctx) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, v2.NOT_OFFERED)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Ctx) -> Any:
        rows = []
        for model, route in sorted(self.router.table().models.items()):
            versions = {v for v, _ in route.targets} | {v for v, _ in route.mirrors} | route.pinned
            for number in sorted(versions):
                ready = bool(route.ready.get(number))
                if request.ready and not ready:
                    continue
                rows.append(
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=model, version=str(number), state="READY" if ready else "UNAVAILABLE"
                    )
                )
        return pb.RepositoryIndexResponse(models=rows)


class GatewayServicer(gpb_grpc.GatewayServiceServicer):
    def __init__(self, router: Router, data: DataPlaneEvents) -> None:
        self.router = router
        self.data = data

    @abort_on_error
    async def SubmitFeedback(self, request: gpb.SubmitFeedbackRequest, context: Ctx) -> Any:
        await self.data.feedback(request)  # durable before the answer
        return self.router.feedback.join(request)

    @abort_on_error
    async def IngestExamples(self, request: gpb.IngestExamplesRequest, context: Ctx) -> Any:
        stored, duplicates = await self.data.examples(request)
        metrics.INGESTED.labels(request.model_name).inc(stored)
        return gpb.IngestExamplesResponse(accepted=stored + duplicates, duplicates=duplicates)


def inference_handler(front: InferenceFront, control: ControlFront) -> grpc.GenericRpcHandler:
    """The whole inference service: raw bytes for inference, typed messages for the rest.

    Methods not listed here answer UNIMPLEMENTED.
    """

    def typed(method: Callable[..., Any], request: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method,
            request_deserializer=request.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(front.model_infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(front.model_stream_infer),
            "ServerLive": typed(control.ServerLive, pb.ServerLiveRequest),
            "ServerReady": typed(control.ServerReady, pb.ServerReadyRequest),
            "ServerMetadata": typed(control.ServerMetadata, pb.ServerMetadataRequest),
            "ModelReady": typed(control.ModelReady, pb.ModelReadyRequest),
            "ModelMetadata": typed(control.ModelMetadata, pb.ModelMetadataRequest),
            "ModelConfig": typed(control.ModelConfig, pb.ModelConfigRequest),
            "RepositoryIndex": typed(control.RepositoryIndex, pb.RepositoryIndexRequest),
            "ModelStatistics": typed(control.ModelStatistics, pb.ModelStatisticsRequest),
            **{
                method: grpc.unary_unary_rpc_method_handler(control.not_offered)
                for method in v2.NOT_OFFERED_METHODS
            },
        },
    )
