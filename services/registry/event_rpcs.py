"""The registry's event-stream RPCs: append, read (following), import a file's
examples, and stats — over whichever backend the registry was started with."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

from services.common import events, examples
from services.common.auth import Role, current_principal
from services.common.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    abort_on_error,
)
from services.common.events import BODY_OF_KIND, MAX_KEY, EventStream, Stats
from services.common.events.metrics import append_counted
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import catalog, names
from services.registry.event_log import SqlEventLog
from services.registry.event_recent import Parsed
from services.registry.joiner import joiner_stats
from services.registry.store import Store, now_us

Ctx = Any
MAX_READ_BATCH = 10_000
MAX_GROUP = 200  # an imported example's group


def _model_short(name: str) -> str:
    return names.check_id("model", name) if name else ""


class EventService:
    """RPC handlers mixed into the RegistryServicer (they share its store)."""

    store: Store
    events: EventStream
    import_max_bytes: int

    @abort_on_error
    async def AppendEvents(self, request: rpb.AppendEventsRequest, context: Ctx) -> Any:
        principal = current_principal()
        ingest_only = bool(principal and principal.role == Role.INGEST)
        models: set[str] = set()  # checked already (a batch is mostly one model's)
        # The SQL log keeps the parsed events for its own readers (the joiner).
        keep = isinstance(self.events, SqlEventLog)
        encoded: list[Any] = []
        given = request.events
        for i, event in enumerate(given):
            kind, model, key = event.kind, event.model, event.key
            # What events.check asks, cheaply; it says what is wrong when anything is.
            body = BODY_OF_KIND.get(kind)
            if (
                body is None
                or not model
                or not key
                or len(key) > MAX_KEY
                or event.sequence
                or event.WhichOneof("body") != body
            ):
                events.check(event, i)
            if model not in models:
                names.check_id("model", model)
                models.add(model)
            if ingest_only and kind != epb.EVENT_KIND_EXAMPLE:
                raise PermissionDenied(
                    f"events[{i}]: role ingest may append EVENT_KIND_EXAMPLE events only"
                )
            data = event.SerializeToString()
            encoded.append(
                Parsed(kind, model, key, data, given, i)
                if keep
                else events.Encoded(kind, model, key, data)
            )
        appended = await append_counted(self.events, encoded)
        return rpb.AppendEventsResponse(
            sequences=appended.sequences,
            duplicates=appended.duplicates,
            stored=appended.stored,
            duplicate_count=appended.duplicate_count,
        )

    @abort_on_error
    async def ReadEvents(
        self, request: rpb.ReadEventsRequest, context: Ctx
    ) -> AsyncIterator[rpb.ReadEventsResponse]:
        if request.after_sequence < 0:
            raise InvalidArgument("after_sequence must not be negative")
        if request.start not in rpb.ReadEventsRequest.Start.values():
            raise InvalidArgument(
                "start must be START_AFTER_SEQUENCE, START_OLDEST or START_LATEST"
            )
        if not 0 <= request.max_batch <= MAX_READ_BATCH:
            raise InvalidArgument(f"max_batch must be between 0 and {MAX_READ_BATCH}")
        for kind in request.kinds:
            if kind not in events.KIND_NAMES:
                raise InvalidArgument(
                    "kinds may hold EVENT_KIND_PREDICTION, EVENT_KIND_FEEDBACK, EVENT_KIND_EXAMPLE"
                )
        batches = self.events.read(
            request.after_sequence,
            start=request.start or rpb.ReadEventsRequest.START_AFTER_SEQUENCE,
            model=_model_short(request.model),
            kinds=list(request.kinds),
            follow=request.follow,
            max_batch=request.max_batch or events.DEFAULT_BATCH,
        )
        async for batch in batches:
            yield rpb.ReadEventsResponse(
                events=batch.events,
                first_sequence=batch.first_sequence,
                last_sequence=batch.last_sequence,
                read_through=batch.read_through,
            )

    @abort_on_error
    async def ImportExamples(
        self, requests: AsyncIterator[rpb.ImportExamplesRequest], context: Ctx
    ) -> Any:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("the first ImportExamples message must carry the header")
        header = first.header
        model = names.model(header.model)
        if len(header.digest) != 64:
            raise InvalidArgument("header.digest must be the file's sha256 (64 hex digits)")
        if header.examples < 1:
            raise InvalidArgument(
                "header.examples must be the number of examples the stream carries (1 or more)"
            )
        async with self.store.read() as session:
            signature = catalog.model_proto(await catalog.model_row(session, model)).signature
        specs = examples.features(model, signature)
        expected = [s.name for s in specs]
        given = list(header.features)
        if given != expected:
            missing = [n for n in expected if n not in given]
            extra = [n for n in given if n not in expected]
            why = "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"not inputs of the model: {', '.join(extra)}" if extra else "",
                    "" if missing or extra else "in another order",
                )
                if part
            )
            raise InvalidArgument(
                f"features must be model '{model}''s inputs {', '.join(expected)} in that "
                f"order: {why}"
            )
        # The stream's keys hold MAX_KEY characters; an imported key is prefixed.
        key_room = events.MAX_KEY - len(f"import:{model}:")
        received = first.ByteSize()
        encoded: list[events.Encoded] = []
        time_us = now_us()
        async for message in requests:
            received += message.ByteSize()
            if received > self.import_max_bytes:
                raise ResourceExhausted(
                    f"the import is over the registry's limit of {self.import_max_bytes} bytes "
                    "(--import-max-bytes); split the file"
                )
            if message.WhichOneof("part") != "rows":
                raise InvalidArgument("only the first ImportExamples message may carry a header")
            rows = message.rows
            if len(encoded) + len(rows.examples) > header.examples:
                raise InvalidArgument(
                    f"more examples than the header announced ({header.examples}): nothing "
                    "was stored"
                )
            if len(rows.lines) != len(rows.examples):
                raise InvalidArgument("rows need one line number per example")
            if rows.groups and len(rows.groups) != len(rows.examples):
                raise InvalidArgument("rows need one group per example, or none")
            groups = rows.groups or [""] * len(rows.examples)
            for example, line, group in zip(rows.examples, rows.lines, groups, strict=True):
                where = f"line {line}"
                problem = examples.check_row(list(example.features), specs, where, example.label)
                if problem is None and len(example.key) > key_room:
                    problem = f"{where}: the key is longer than {key_room} characters"
                if problem is None and len(group) > MAX_GROUP:
                    problem = f"{where}: the group is longer than {MAX_GROUP} characters"
                if problem is not None:
                    raise InvalidArgument(problem)
                event = epb.Event(
                    kind=epb.EVENT_KIND_EXAMPLE,
                    model=model,
                    key=f"import:{model}:{example.key}"
                    if example.key
                    else f"import:{model}:{header.digest}:{line}",
                    example=epb.Example(
                        features=example.features,
                        label=example.label,
                        origin=epb.EXAMPLE_ORIGIN_IMPORTED,
                        source=header.source,
                        line=line,
                        group=group,
                    ),
                )
                event.time.FromMicroseconds(time_us)
                if example.HasField("event_time"):
                    event.example.event_time.CopyFrom(example.event_time)
                encoded.append(events.encode(event))
        if len(encoded) != header.examples:
            # A client stopped mid-file can look like the end of its stream here.
            raise InvalidArgument(
                f"the stream ended after {len(encoded)} of the {header.examples} examples its "
                "header announced: nothing was stored"
            )
        appended = await append_counted(self.events, encoded)
        new = [s for s, d in zip(appended.sequences, appended.duplicates, strict=True) if not d]
        return rpb.ImportExamplesResponse(
            received=len(encoded),
            stored=appended.stored,
            duplicates=appended.duplicate_count,
            first_sequence=new[0] if new else 0,
            last_sequence=new[-1] if new else 0,
        )

    @abort_on_error
    async def GetEventStats(self, request: rpb.GetEventStatsRequest, context: Ctx) -> Any:
        model = names.model(request.model) if request.model else ""
        if model:
            async with self.store.read() as session:
                await catalog.model_row(session, model)
        stats: Stats = await self.events.stats(model)
        joined, unmatched, expired, position = await joiner_stats(self.store, model)
        reply = rpb.GetEventStatsResponse(
            backend=stats.backend,
            counts=[
                rpb.EventKindCount(kind=k, count=n)  # type: ignore[arg-type]
                for k, n in sorted(stats.counts.items())
            ],
            first_sequence=stats.first_sequence,
            last_sequence=stats.last_sequence,
            bytes=stats.bytes,
            retention_bytes=stats.retention_bytes,
            joined=joined,
            feedback_unmatched=unmatched,
            predictions_expired=expired,
            joined_fraction=joined / (joined + unmatched) if joined + unmatched else 0.0,
        )
        if stats.oldest_us:
            reply.oldest_time.FromMicroseconds(stats.oldest_us)
            reply.newest_time.FromMicroseconds(stats.newest_us)
        if math.isfinite(stats.retention_seconds):
            reply.retention_age.FromNanoseconds(int(stats.retention_seconds * 1e9))
        reply.consumers.add(
            name="joiner", position=position, pending=max(0, stats.last_sequence - position)
        )
        for name, at, pending in stats.consumers:
            reply.consumers.add(name=name, position=at, pending=pending)
        return reply
