"""Errors that carry their gRPC status, raised by domain code and turned into replies.

Domain modules (stores, loaders, routers) raise these instead of importing grpc;
`abort_on_error` converts them into a status code and message at the RPC boundary.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import grpc


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # a status relayed from elsewhere (e.g. a worker's answer)


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class OutOfRange(ServiceError):
    code = grpc.StatusCode.OUT_OF_RANGE


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class DataLoss(ServiceError):
    code = grpc.StatusCode.DATA_LOSS


F = TypeVar("F", bound=Callable[..., Any])


def abort_on_error(method: F) -> F:
    """Wrap a servicer method (coroutine or async generator) so ServiceError aborts the call."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: Any) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except ServiceError as exc:
                await context.abort(exc.code, exc.message)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            await context.abort(exc.code, exc.message)

    return unary  # type: ignore[return-value]
