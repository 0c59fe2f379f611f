"""Open the event stream a data-plane process's settings name (`--event-stream`)."""

from __future__ import annotations

from grpc import aio

from services.common.config import EventStreamSettings
from services.common.events import EventStream
from services.common.registry_client import Metadata


def open_stream(
    settings: EventStreamSettings, registry: aio.Channel, metadata: Metadata, name: str
) -> EventStream:
    """`sql`: through the registry's RPCs on `registry`; `nats://...`: JetStream directly."""
    if settings.event_stream == "sql":
        from services.common.events.registry import RegistryEvents

        return RegistryEvents(registry, metadata)
    from services.common.events.jetstream import JetStreamEvents

    return JetStreamEvents(
        settings.event_stream,
        stream=settings.event_stream_name,
        prefix=settings.event_subject_prefix,
        retention_seconds=settings.event_retention_seconds,
        retention_bytes=settings.event_retention_bytes,
        dedup_seconds=settings.event_dedup_seconds,
        name=name,
    )
