"""The worker's end of the gateway transport (`liveml.worker.v1.WorkerService/Forward`).

Requests arrive several to a message; each is answered as soon as it is done, and
the answers ready at the moment a reply message is written go out together. At most
`window` requests of a stream are in flight; reading pauses beyond that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.common.gen.liveml.worker.v1 import worker_pb2_grpc as wpb_grpc

# (request, is a shadow copy) -> the stream answer
Answer = Callable[[pb.ModelInferRequest, bool], Awaitable[pb.ModelStreamInferResponse]]


class ForwardServicer(wpb_grpc.WorkerServiceServicer):
    def __init__(self, answer: Answer, window: int = 256) -> None:
        self.answer = answer
        self.window = window
        self._readers: set[asyncio.Task[None]] = set()

    async def _answer(self, data: bytes, shadow: bool) -> pb.ModelStreamInferResponse:
        try:
            request = pb.ModelInferRequest.FromString(data)
        except DecodeError as exc:
            return _failure(grpc.StatusCode.INVALID_ARGUMENT, f"malformed ModelInferRequest: {exc}")
        try:
            return await self.answer(request, shadow)
        except Exception as exc:  # every request gets an answer, whatever went wrong
            return _failure(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Shutting down: stop reading; what was read is still answered, then the stream
        ends and the gateway sends the rest elsewhere."""
        for reader in self._readers:
            reader.cancel()

    async def Forward(
        self, requests: AsyncIterator[wpb.ForwardRequest], context: Any
    ) -> AsyncIterator[wpb.ForwardResponse]:
        done: list[wpb.ForwardReply] = []
        wake = asyncio.Event()
        room = asyncio.Semaphore(self.window)
        working: set[asyncio.Task[None]] = set()

        async def one(sequence: int, data: bytes, shadow: bool) -> None:
            try:
                response = await self._answer(data, shadow)
                done.append(
                    wpb.ForwardReply(sequence=sequence, response=response.SerializeToString())
                )
            finally:
                room.release()
                wake.set()

        def finished(task: asyncio.Task[None]) -> None:
            working.discard(task)
            wake.set()  # after the discard, so the loop below sees the task gone

        async def read() -> None:
            try:
                async for message in requests:
                    for offset, data in enumerate(message.requests):
                        await room.acquire()
                        task = asyncio.create_task(
                            one(message.first_sequence + offset, data, message.shadow)
                        )
                        working.add(task)
                        task.add_done_callback(finished)
            finally:
                wake.set()

        reader = asyncio.create_task(read())
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        try:
            while True:
                await wake.wait()
                wake.clear()
                if done:
                    ready, done[:] = list(done), []
                    yield wpb.ForwardResponse(replies=ready)
                if reader.done() and not working and not done:
                    return
        finally:
            reader.cancel()
            for task in list(working):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


def _failure(code: grpc.StatusCode, message: str) -> pb.ModelStreamInferResponse:
    failed = pb.ModelInferResponse()
    failed.parameters["liveml_status"].int64_param = code.value[0]
    return pb.ModelStreamInferResponse(error_message=message, infer_response=failed)
