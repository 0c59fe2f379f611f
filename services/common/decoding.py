"""Decoding requests ourselves, so a message that is not valid protobuf is the caller's
mistake (INVALID_ARGUMENT naming the message expected), never grpc's UNKNOWN.

grpc calls a method's request deserializer before the servicer sees anything, and an
exception there ends the call with `UNKNOWN: Unexpected <class 'DecodeError'>` (on a
stream, it aborts the whole stream). `start_server` registers every service through
`Guarded`, which wraps each method's deserializer so that it returns a `Malformed`
instead of raising, and each method's behaviour so that a `Malformed` request aborts
the call with INVALID_ARGUMENT. A bidirectional method marked `per_message` receives
the `Malformed` items itself and answers each with its own error, so one bad message
does not end the stream (the V2 protocol's ModelStreamInfer does this).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

F = TypeVar("F", bound=Callable[..., Any])
PER_MESSAGE = "_liveml_per_message"


@dataclass(frozen=True)
class Malformed:
    """A request that could not be decoded: what was expected, and what went wrong."""

    expected: str  # the message type's full name
    problem: str

    @property
    def message(self) -> str:
        if self.problem.startswith("Error parsing message"):  # protobuf's, says no more
            return (
                f"the request is not a valid {self.expected} message: expected its protobuf "
                "encoding, with strings in UTF-8"
            )
        return f"the request is not a valid {self.expected} message ({self.problem})"


def per_message(method: F) -> F:
    """Mark a stream method that answers `Malformed` requests one by one itself."""
    setattr(method, PER_MESSAGE, True)
    return method


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    kind = getattr(deserializer, "__self__", None)  # generated code passes Message.FromString
    expected = kind.DESCRIPTOR.full_name if kind is not None else "request"

    def safe(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return Malformed(expected, str(exc) or type(exc).__name__)

    return safe


async def _checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        yield request


def _unary_request(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> Any:
            if isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async for item in behavior(request, context):
                yield item

        return stream

    async def unary(request: Any, context: Any) -> Any:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return unary


def _stream_request(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(behavior, PER_MESSAGE, False):
        return behavior
    if inspect.isasyncgenfunction(behavior):

        async def stream(requests: AsyncIterator[Any], context: Any) -> Any:
            async for item in behavior(_checked(requests, context), context):
                yield item

        return stream

    @functools.wraps(behavior)
    async def unary(requests: AsyncIterator[Any], context: Any) -> Any:
        return await behavior(_checked(requests, context), context)

    return unary


def guard(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same method, with undecodable requests refused as INVALID_ARGUMENT."""
    deserializer = handler.request_deserializer
    if deserializer is None:  # a raw-bytes method decodes (and refuses) by itself
        return handler
    behavior = next(
        getattr(handler, kind)
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        if getattr(handler, kind) is not None
    )
    if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
        return handler  # a synchronous one (grpc's reflection): grpc runs it its own way
    changes: dict[str, Any] = {"request_deserializer": _safe(deserializer)}
    for kind in ("unary_unary", "unary_stream"):
        if getattr(handler, kind) is not None:
            changes[kind] = _unary_request(getattr(handler, kind))
    for kind in ("stream_unary", "stream_stream"):
        if getattr(handler, kind) is not None:
            changes[kind] = _stream_request(getattr(handler, kind))
    return handler._replace(**changes)


class _GuardedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler's methods, each guarded once (not once per call)."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self.inner = inner
        self._guarded: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self.inner.service(handler_call_details)
        if handler is None:
            return None
        known = self._guarded.get(id(handler))
        if known is None or known[0] is not handler:
            known = self._guarded[id(handler)] = (handler, guard(handler))
        return known[1]


class Guarded:
    """Stands in for a server while services register: every handler added is guarded."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGeneric(h) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service, {method: guard(h) for method, h in handlers.items()}
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
