"""The gateway's fronts: the V2 inference service and the feedback/ingest service.

`InferenceFront` is the data path (raw bytes in and out, unary and streaming, each
request handed to the `Router`); `ControlFront` the rest of the V2 API (health and the
index from the routing table, metadata and config from a worker, statistics added up
over the workers); `GatewayServicer` takes feedback and ingested examples; and
`inference_handler` is the table that maps the V2 service's methods onto them.
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

from services.common.errors import ServiceError, abort_on_error
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from services.dataplane import v2
from services.dataplane.streams import OrderedStreams
from services.gateway import metrics, statistics, wire
from services.gateway.data import DataPlaneEvents
from services.gateway.feedback import FeedbackBook
from services.gateway.router import Router
from services.gateway.routing import RoutingTable

log = logging.getLogger(__name__)

Ctx = Any  # grpc.aio.ServicerContext (untyped)
SERVICE = "inference.GRPCInferenceService"
STREAM_WINDOW = 128
STATISTICS_SECONDS = 5.0  # longest wait for one worker's statistics


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
            return wire.final_stream_response(reply)

        async for response in self.streams.serve(requests, answer):
            yield response


def _stream_failure(data: bytes, message: str, code: grpc.StatusCode) -> bytes:
    """One request's error on a stream, with its status code (as a worker sends it)."""
    request_id = ""
    with contextlib.suppress(wire.WireError):
        request_id = wire.routing(data).id
    failed = pb.ModelInferResponse(id=request_id)
    failed.parameters[v2.STATUS].int64_param = code.value[0]
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
        self,
        method: str,
        request: Any,
        context: Ctx,
        table: RoutingTable | None = None,
        not_held: Any = None,
    ) -> Any:
        """Ask one worker serving the model; `not_held`, when given, is the answer for a
        model or version no worker here holds READY (instead of that error)."""
        table = table or self.router.table()
        try:
            choice = table.choose(request.name, request.version, None)
        except ServiceError as exc:
            held = exc.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
            if not_held is not None and not held:
                return not_held
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
        # `ready: false` for what no worker holds READY here (as a worker and Triton
        # answer it); a malformed version stays INVALID_ARGUMENT.
        not_ready = pb.ModelReadyResponse(ready=False)
        return await self._forward("ModelReady", request, context, not_held=not_ready)

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
    """Feedback (answered from this gateway's own book) and ingested examples."""

    def __init__(self, feedback: FeedbackBook, data: DataPlaneEvents) -> None:
        self.feedback = feedback
        self.data = data

    @abort_on_error
    async def SubmitFeedback(self, request: gpb.SubmitFeedbackRequest, context: Ctx) -> Any:
        await self.data.feedback(request)  # durable before the answer
        return self.feedback.join(request)

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
