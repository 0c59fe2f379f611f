"""The Python gRPC ceiling: a grpc.aio V2 server that answers every request with a canned reply.

It does no tensor work at all, so it measures what grpc.aio itself costs per request
on one core; liveml's worker is judged against it. It runs on the same event loop as
liveml's servers (uvloop), so the ceiling is the best a Python gRPC server does here.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from grpc import aio

from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc

REPLY = pb.ModelInferResponse(model_name="mlp", model_version="1")
REPLY.outputs.add(name="y", datatype="FP32", shape=[1, 10])
REPLY.raw_output_contents.append(np.zeros(10, np.float32).tobytes())
STREAM_REPLY = pb.ModelStreamInferResponse(infer_response=REPLY)


class Canned(pb_grpc.GRPCInferenceServiceServicer):
    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        return REPLY

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for _ in requests:
            yield STREAM_REPLY

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)


async def main(port: int) -> None:
    server = aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Canned(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
