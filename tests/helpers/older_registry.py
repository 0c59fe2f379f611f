"""A registry of an earlier release, for skew tests: a gRPC proxy in front of a real
registry that forwards every method of RegistryService as raw bytes except those it
is told the earlier release did not have (they answer UNIMPLEMENTED, as grpc does)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

import grpc
from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

SERVICE = rpb.DESCRIPTOR.services_by_name["RegistryService"]


def _handler(channel: aio.Channel, path: str, method: Any) -> grpc.RpcMethodHandler:
    def metadata(context: aio.ServicerContext[Any, Any]) -> tuple[tuple[str, Any], ...]:
        return tuple((k, v) for k, v in context.invocation_metadata() or ())

    async def relay(call: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await call
        except aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")

    if method.client_streaming and method.server_streaming:

        async def bidi(requests: Any, context: Any) -> AsyncIterator[bytes]:
            call = channel.stream_stream(path)(requests, metadata=metadata(context))
            async for reply in call:
                yield reply

        return grpc.stream_stream_rpc_method_handler(bidi)
    if method.server_streaming:

        async def out(request: bytes, context: Any) -> AsyncIterator[bytes]:
            try:
                async for reply in channel.unary_stream(path)(request, metadata=metadata(context)):
                    yield reply
            except aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")

        return grpc.unary_stream_rpc_method_handler(out)
    if method.client_streaming:

        async def up(requests: Any, context: Any) -> bytes:
            return await relay(
                channel.stream_unary(path)(requests, metadata=metadata(context)), context
            )  # type: ignore[no-any-return]

        return grpc.stream_unary_rpc_method_handler(up)

    async def unary(request: bytes, context: Any) -> bytes:
        return await relay(channel.unary_unary(path)(request, metadata=metadata(context)), context)  # type: ignore[no-any-return]

    return grpc.unary_unary_rpc_method_handler(unary)


@asynccontextmanager
async def older_registry(port: int, without: Collection[str]) -> AsyncIterator[int]:
    """A proxy to the registry on `port` lacking the methods `without`; its port."""
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    handlers = {
        m.name: _handler(channel, f"/{SERVICE.full_name}/{m.name}", m)
        for m in SERVICE.methods
        if m.name not in without
    }
    server = aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)]
    )
    proxy_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield proxy_port
    finally:
        await server.stop(0)
        await channel.close()
