"""A test server on the shared bootstrap: V2 ModelInfer that echoes its inputs.

Run as a process (`python -m tests.helpers.echo_server`), configured by LIVEML_*
variables. Each call prints `inflight <id>` when it arrives so a test can act
while it is in flight; the request parameter `hold_ms` keeps it running that long.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from grpc import aio

from services.common import codec, server
from services.common.config import ServerSettings
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc


class EchoInference(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        print(f"inflight {request.id}", flush=True)
        hold = request.parameters["hold_ms"].int64_param if "hold_ms" in request.parameters else 0
        if hold:
            await asyncio.sleep(hold / 1000)  # simulated work (noqa: sleep-ok)
        return echo(request)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in requests:
            yield pb.ModelStreamInferResponse(infer_response=echo(request))


def echo(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version="1", id=request.id
    )
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=False):
        array = codec.decode_raw(tensor.name, tensor.datatype, tensor.shape, raw)
        datatype, shape, data = codec.encode_raw(array)
        response.outputs.add(name=tensor.name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(data)
    return response


def register(grpc_server: aio.Server) -> Sequence[str]:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(EchoInference(), grpc_server)
    return [pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name]


def main() -> int:
    settings = ServerSettings()

    async def build() -> server.RunningServer:
        return await server.start_server("echo", settings, register)

    return server.run("echo", settings, build)


if __name__ == "__main__":
    sys.exit(main())
