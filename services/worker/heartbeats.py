"""A worker's heartbeats to the registry, on one long-lived StreamHeartbeats call.

A streamed heartbeat costs the registry about half of a unary one (no per-call setup:
no new HTTP/2 stream, no metadata, no credential check), which is what lets one
registry hold thousands of workers. The stream is opened at the first heartbeat and
again after any error; each heartbeat waits for its own answer (the stream answers in
order), so a registry that stopped answering is noticed within `answer_seconds` as it
was with unary calls. A registry of an earlier release answers UNIMPLEMENTED: for the
next UNARY_SECONDS this worker sends unary Heartbeat calls, as it did before, then
tries the stream again (the registry may have been upgraded meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import grpc
from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str]]
UNARY_SECONDS = 600.0  # how long unary calls are used after the stream was UNIMPLEMENTED


def _failed(code: grpc.StatusCode, details: str) -> aio.AioRpcError:
    """The error a unary call would have raised, so callers handle one kind."""
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details=details)


class Heartbeats:
    """Sends heartbeats on one stream, reopened after an error; unary if the registry
    does not know the stream."""

    def __init__(
        self, stub: rpb_grpc.RegistryServiceStub, metadata: Metadata, answer_seconds: float = 10.0
    ) -> None:
        self.stub = stub
        self.metadata = metadata
        self.answer_seconds = answer_seconds  # a heartbeat unanswered this long failed
        self._unary_until = 0.0  # the stream answered UNIMPLEMENTED: unary until then
        self.opened = 0  # streams opened (for tests and logs)
        self._call: aio.StreamStreamCall | None = None

    @property
    def unary(self) -> bool:
        """Whether heartbeats go as unary calls now (a registry of an earlier release)."""
        return time.monotonic() < self._unary_until

    async def send(self, request: rpb.HeartbeatRequest) -> rpb.HeartbeatResponse:
        """One heartbeat and its answer; raises the registry's error as AioRpcError
        (NOT_FOUND: register again), DEADLINE_EXCEEDED after `answer_seconds`."""
        if self.unary:
            reply: rpb.HeartbeatResponse = await self.stub.Heartbeat(
                request, metadata=self.metadata, timeout=self.answer_seconds
            )
            return reply
        try:
            return await self._streamed(request)
        except aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            log.warning(
                "the registry does not take StreamHeartbeats (an earlier release?): "
                "heartbeats are sent as unary calls for %.0f s",
                UNARY_SECONDS,
            )
            self._unary_until = time.monotonic() + UNARY_SECONDS
            return await self.send(request)

    async def _streamed(self, request: rpb.HeartbeatRequest) -> rpb.HeartbeatResponse:
        if self._call is None:
            self._call = self.stub.StreamHeartbeats(metadata=self.metadata)
            self.opened += 1
        call = self._call
        try:
            async with asyncio.timeout(self.answer_seconds):
                await call.write(rpb.StreamHeartbeatsRequest(heartbeat=request))
                reply = await call.read()
                if reply is aio.EOF:  # ended without an answer: read its status
                    code, details = await call.code(), await call.details()
                    if code == grpc.StatusCode.OK:
                        code, details = grpc.StatusCode.UNAVAILABLE, "heartbeat stream closed"
                    raise _failed(code, details)
        except TimeoutError:
            self.close()
            waited = f"no answer to a heartbeat within {self.answer_seconds} s"
            raise _failed(grpc.StatusCode.DEADLINE_EXCEEDED, waited) from None
        except aio.AioRpcError:
            self.close()
            raise
        except asyncio.InvalidStateError as exc:
            # Written to a stream that had already ended: its status says why.
            self.close()
            code = await call.code()
            if code == grpc.StatusCode.OK:
                code = grpc.StatusCode.UNAVAILABLE
            raise _failed(code, await call.details() or str(exc)) from None
        answer: rpb.HeartbeatResponse = reply.heartbeat
        return answer

    def close(self) -> None:
        """End the stream (the next heartbeat opens another)."""
        call, self._call = self._call, None
        if call is not None:
            with contextlib.suppress(Exception):
                call.cancel()
