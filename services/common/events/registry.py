"""The embedded event stream as its clients see it: the registry's event RPCs.

Appends travel as bytes (the events' serialized forms concatenated into an
AppendEventsRequest, no message objects); a following read resumes after its last
position when the registry goes away and comes back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import grpc
from grpc import aio

from services.common.errors import OutOfRange, ServiceError
from services.common.events import (
    DEFAULT_BATCH,
    Appended,
    Batch,
    Encoded,
    Start,
    Stats,
    retention_gap,
    wire,
)
from services.common.events.consumer import ReadConsumer
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.common.registry_client import Metadata

log = logging.getLogger(__name__)

APPEND = "/liveml.registry.v1.RegistryService/AppendEvents"
_EVENTS_FIELD = 1  # AppendEventsRequest.events


def service_error(exc: aio.AioRpcError) -> ServiceError:
    if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
        return OutOfRange(exc.details() or "")
    return ServiceError(f"registry: {exc.details()}", exc.code())


class RegistryEvents:
    backend = "sql"

    def __init__(self, channel: aio.Channel, metadata: Metadata, timeout: float = 10.0) -> None:
        self.stub = rpb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        self.metadata = metadata
        self.timeout = timeout
        self._append = channel.unary_unary(
            APPEND,
            request_serializer=None,
            response_deserializer=rpb.AppendEventsResponse.FromString,
        )

    async def append(self, events: Sequence[Encoded]) -> Appended:
        if not events:
            return Appended()
        request = wire.repeated(_EVENTS_FIELD, [e.data for e in events])
        try:
            reply = await self._append(request, metadata=self.metadata, timeout=self.timeout)
        except aio.AioRpcError as exc:
            raise service_error(exc) from None
        return Appended(list(reply.sequences), list(reply.duplicates))

    async def read(
        self,
        after: int = 0,
        *,
        start: int = Start.START_AFTER_SEQUENCE,
        model: str = "",
        kinds: Sequence[int] = (),
        follow: bool = False,
        max_batch: int = DEFAULT_BATCH,
    ) -> AsyncIterator[Batch]:
        delay = 0.2
        while True:
            request = rpb.ReadEventsRequest(
                after_sequence=after,
                start=start,  # type: ignore[arg-type]
                model=model,
                kinds=kinds,  # type: ignore[arg-type]
                follow=follow,
                max_batch=max_batch,
            )
            try:
                async for reply in self.stub.ReadEvents(request, metadata=self.metadata):
                    delay = 0.2
                    after = reply.read_through
                    start = Start.START_AFTER_SEQUENCE  # resumed after what was read
                    yield Batch(
                        list(reply.events),
                        reply.read_through,
                        reply.first_sequence,
                        reply.last_sequence,
                    )
                if not follow:
                    return
            except aio.AioRpcError as exc:
                if not follow or exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise service_error(exc) from None
                log.warning("event stream read interrupted (%s); resuming after %d", exc, after)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def consumer(
        self, name: str, after: int, model: str = "", kinds: Sequence[int] = ()
    ) -> ReadConsumer:
        gap = retention_gap(after, (await self.stats()).first_sequence, Start.START_AFTER_SEQUENCE)
        if gap is not None:
            raise OutOfRange(gap)
        return ReadConsumer(name, self.read(after, model=model, kinds=kinds, follow=True), after)

    async def stats(self, model: str = "") -> Stats:
        try:
            reply = await self.stub.GetEventStats(
                rpb.GetEventStatsRequest(model=f"models/{model}" if model else ""),
                metadata=self.metadata,
                timeout=self.timeout,
            )
        except aio.AioRpcError as exc:
            raise service_error(exc) from None
        return Stats(
            backend=reply.backend,
            counts={c.kind: c.count for c in reply.counts},
            first_sequence=reply.first_sequence,
            last_sequence=reply.last_sequence,
            oldest_us=reply.oldest_time.ToMicroseconds(),
            newest_us=reply.newest_time.ToMicroseconds(),
            bytes=reply.bytes,
            retention_seconds=reply.retention_age.ToTimedelta().total_seconds(),
            retention_bytes=reply.retention_bytes,
            consumers=[(c.name, c.position, c.pending) for c in reply.consumers],
        )

    async def close(self) -> None:
        return None
