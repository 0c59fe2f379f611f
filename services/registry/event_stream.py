"""The registry's side of the event stream: its backend, retention and the joiner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from services.common.events import EventStream
from services.common.events.jetstream import JetStreamEvents
from services.registry.event_log import SqlEventLog
from services.registry.joiner import Joiner
from services.registry.settings import RegistrySettings
from services.registry.store import Store

log = logging.getLogger(__name__)


def backend(settings: RegistrySettings, store: Store) -> EventStream:
    if settings.event_stream == "sql":
        return SqlEventLog(
            store,
            retention_seconds=settings.event_retention_seconds,
            retention_bytes=settings.event_retention_bytes,
            poll_seconds=settings.watch_poll_seconds,
        )
    return JetStreamEvents(
        settings.event_stream,
        stream=settings.event_stream_name,
        prefix=settings.event_subject_prefix,
        retention_seconds=settings.event_retention_seconds,
        retention_bytes=settings.event_retention_bytes,
        dedup_seconds=settings.event_dedup_seconds,
        name="liveml-registry",
    )


@dataclass
class EventParts:
    stream: EventStream
    joiner: Joiner
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, settings: RegistrySettings) -> list[asyncio.Task[None]]:
        self.tasks = [asyncio.create_task(self.joiner.run(), name="joiner")]
        if isinstance(self.stream, SqlEventLog):
            self.tasks.append(
                asyncio.create_task(
                    _retain(self.stream, settings.event_retain_seconds), name="event-retention"
                )
            )
        return self.tasks

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.joiner.stop()
        await self.stream.close()


def parts(settings: RegistrySettings, store: Store, holder: str) -> EventParts:
    stream = backend(settings, store)
    joiner = Joiner(
        store,
        stream,
        holder,
        window_seconds=settings.join_window_seconds,
        max_pending=settings.join_max_pending,
        commit_seconds=settings.join_commit_seconds,
        lease_seconds=settings.leader_lease_seconds,
    )
    return EventParts(stream, joiner)


async def _retain(log_: SqlEventLog, seconds: float) -> None:
    while True:
        try:
            await log_.retain()
        except Exception as exc:  # retried at the next tick
            log.warning("event retention failed: %s", exc)
        await asyncio.sleep(seconds)
