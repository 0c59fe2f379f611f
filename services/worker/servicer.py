"""The worker's V2 inference service (Open Inference Protocol + Triton extensions)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from importlib.metadata import version as dist_version
from typing import Any

import grpc
from opentelemetry import propagate, trace

from services.common import decoding, telemetry
from services.common.errors import (
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
    abort_on_error,
)
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.inference import model_config_pb2 as mc
from services.dataplane import v2
from services.dataplane.streams import OrderedStreams
from services.worker import tensors
from services.worker.executor import Executor
from services.worker.held import Held, State
from services.worker.repository import Repository

log = logging.getLogger(__name__)

Ctx = Any  # grpc.aio.ServicerContext (untyped)

PLATFORM = "onnxruntime_onnx"
STREAM_WINDOW = 128  # requests a stream may have in flight before it stops reading

CONFIG_TYPES = {
    "BOOL": mc.TYPE_BOOL,
    "UINT8": mc.TYPE_UINT8,
    "UINT16": mc.TYPE_UINT16,
    "UINT32": mc.TYPE_UINT32,
    "UINT64": mc.TYPE_UINT64,
    "INT8": mc.TYPE_INT8,
    "INT16": mc.TYPE_INT16,
    "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64,
    "FP16": mc.TYPE_FP16,
    "FP32": mc.TYPE_FP32,
    "FP64": mc.TYPE_FP64,
    "BYTES": mc.TYPE_STRING,
    "BF16": mc.TYPE_BF16,
}
INDEX_STATES = {
    State.READY: "READY",
    State.LOADING: "LOADING",
    State.DRAINING: "UNLOADING",
    State.FAILED: "UNAVAILABLE",
}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, repository: Repository, executor: Executor, name: str = "liveml-worker"
    ) -> None:
        self.repository = repository  # which version answers
        self.executor = executor  # and how it runs
        self.name = name
        self.ready = True
        self.streams = OrderedStreams(STREAM_WINDOW)

    def close_streams(self) -> None:
        """Shutting down: stop reading streams; their answered requests still go out.

        A gateway sees the stream end and sends what it had not been answered to
        another worker, so long-lived streams do not hold the shutdown open.
        """
        self.ready = False
        self.streams.close()

    async def infer(
        self,
        request: pb.ModelInferRequest,
        shadow: bool = False,
        within: float | None = None,
        traceparent: str = "",
    ) -> pb.ModelInferResponse:
        """The one inference path, for the worker's own clients and for gateways alike.

        `within`: seconds the caller still waits (its gRPC deadline, or the timeout a
        gateway forwards); what has not started running by then is not run.
        `traceparent`: a gateway's trace context for this request (its stream is shared
        by many requests, so the context travels with each one)."""
        expires = None if within is None else time.monotonic() + within
        if traceparent and telemetry.tracing_enabled():
            parent = propagate.extract({"traceparent": traceparent})
            with trace.get_tracer("liveml").start_as_current_span(
                "liveml.worker.infer", context=parent
            ):
                return await self._infer(request, shadow, expires)
        return await self._infer(request, shadow, expires)

    async def _infer(
        self, request: pb.ModelInferRequest, shadow: bool, expires: float | None
    ) -> pb.ModelInferResponse:
        held = self.repository.resolve(request.model_name, request.model_version)
        runtime = held.runtime
        assert runtime is not None
        inputs = tensors.decode_inputs(request, runtime.signature)
        names = runtime.output_names
        chosen = tensors.requested_outputs(request, names)
        outputs = await self.executor.infer(held, inputs, shadow, expires)
        return tensors.encode_response(request, held.version, names, chosen, outputs)

    # --- inference ---------------------------------------------------------------------------

    @abort_on_error
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Ctx) -> Any:
        return await self.infer(request, within=context.time_remaining())

    @decoding.per_message
    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest | decoding.Malformed], context: Ctx
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answers in request order; a failed request gets error_message, the stream goes on
        (a message that is not a ModelInferRequest too)."""

        async def answer(
            request: pb.ModelInferRequest | decoding.Malformed,
        ) -> pb.ModelStreamInferResponse:
            if isinstance(request, decoding.Malformed):
                return stream_failure("", InvalidArgument(request.message))
            try:
                return await self.stream_answer(request)
            except Exception as exc:  # one request's failure never ends the client's stream
                log.exception("stream request failed")
                failure = ServiceError(f"internal error: {type(exc).__name__}: {exc}")
                return stream_failure(request.id, failure)

        async for response in self.streams.serve(requests, answer):
            yield response

    async def stream_answer(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        """One request's answer on a stream: a failure is an error_message, not an abort."""
        try:
            response = await self.infer(request)
        except ServiceError as exc:
            return stream_failure(request.id, exc)
        response.parameters["triton_final_response"].bool_param = True
        return pb.ModelStreamInferResponse(infer_response=response)

    # --- health and metadata -------------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Ctx) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Ctx) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request: Any, context: Ctx) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=self.name, version=dist_version("liveml"), extensions=v2.EXTENSIONS
        )

    @abort_on_error
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Ctx) -> Any:
        # As Triton answers it (qa/L0_lifecycle): a model or version not held, or not
        # READY, is `ready: false`, not an error; a version that is no number still is.
        try:
            self.repository.resolve(request.name, request.version)
        except (NotFound, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def _described(self, name: str, version: str) -> tuple[Held, list[str]]:
        held = self.repository.resolve(name, version)
        if version:
            return held, [version]
        versions = self.repository.held.get(name, {})
        ready = sorted(n for n, h in versions.items() if h.state is State.READY)
        return held, [str(n) for n in ready]

    @abort_on_error
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Ctx) -> Any:
        held, versions = self._described(request.name, request.version)
        assert held.runtime is not None
        sig = held.runtime.signature
        T = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=versions,
            platform=PLATFORM,
            inputs=[T(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in sig.inputs],
            outputs=[T(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in sig.outputs],
        )

    @abort_on_error
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Ctx) -> Any:
        held = self.repository.resolve(request.name, request.version)
        assert held.runtime is not None
        sig = held.runtime.signature
        batch = held.max_batch_size
        skip = 1 if batch > 0 else 0
        config = mc.ModelConfig(
            name=request.name,
            platform=PLATFORM,
            backend="onnxruntime",
            max_batch_size=batch,
            input=[
                mc.ModelInput(
                    name=t.name, data_type=CONFIG_TYPES[t.datatype], dims=list(t.shape[skip:])
                )
                for t in sig.inputs
            ],
            output=[
                mc.ModelOutput(
                    name=t.name, data_type=CONFIG_TYPES[t.datatype], dims=list(t.shape[skip:])
                )
                for t in sig.outputs
            ],
            instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
        )
        if batch > 0:
            config.dynamic_batching.max_queue_delay_microseconds = int(
                held.batching.max_queue_delay * 1e6
            )
        return pb.ModelConfigResponse(config=config)

    @abort_on_error
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Ctx) -> Any:
        held_all = self.repository.states()
        if request.name:
            if request.name not in self.repository.held:
                raise NotFound(f"Request for unknown model: '{request.name}' is not found")
            held_all = [h for h in held_all if h.model == request.name]
            if request.version:
                held_all = [self.repository.resolve(request.name, request.version)]
        return pb.ModelStatisticsResponse(model_stats=[h.recorder.stats.proto() for h in held_all])

    @abort_on_error
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Ctx) -> Any:
        rows = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=h.model, version=str(h.version), state=INDEX_STATES[h.state], reason=h.error
            )
            for h in sorted(self.repository.states(), key=lambda h: (h.model, h.version))
            if not request.ready or h.state is State.READY
        ]
        return pb.RepositoryIndexResponse(models=rows)

    # --- not offered: explicit model control and shared memory ------------------------------

    async def _unimplemented(self, request: Any, context: Ctx) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, v2.NOT_OFFERED)


def stream_failure(request_id: str, exc: ServiceError) -> pb.ModelStreamInferResponse:
    failed = pb.ModelInferResponse(id=request_id)
    # The status code, which V2's stream answers have no field for: a client can tell
    # a retryable failure from its own mistake.
    failed.parameters[v2.STATUS].int64_param = exc.code.value[0]
    return pb.ModelStreamInferResponse(error_message=exc.message, infer_response=failed)


# One answer for every Triton method liveml does not offer (the list the gateway uses too).
for _method in v2.NOT_OFFERED_METHODS:
    setattr(InferenceServicer, _method, InferenceServicer._unimplemented)
del _method
