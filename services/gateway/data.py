"""What the gateway stores in the event stream on a client's behalf: feedback and
ingested examples, each durable before the client is answered."""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Callable

from services.common import examples
from services.common.errors import InvalidArgument, NotFound, ServiceError
from services.common.events import Encoded, EventStream, encode
from services.common.events.metrics import append_counted
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

MAX_ID = 200  # request ids and example keys (the stream's keys hold 256 characters)
MAX_EXAMPLES = 10_000  # per IngestExamples call


class DataPlaneEvents:
    def __init__(
        self,
        sink: EventStream,
        source: str,
        models: Callable[[], dict[str, rpb.Model]],
        group_key: str = "group",
    ) -> None:
        self.sink = sink
        self.source = source
        self.models = models
        self.group_key = group_key

    def _model(self, name: str) -> rpb.Model:
        if not name:
            raise InvalidArgument("model_name is required")
        model = self.models().get(name)
        if model is None:
            raise NotFound(f"model '{name}' not found")
        return model

    async def _append(self, events: list[Encoded], what: str) -> tuple[int, int]:
        try:
            appended = await append_counted(self.sink, events)
        except ServiceError as exc:
            raise ServiceError(
                f"{what} not stored: the event stream did not take it ({exc.message}); "
                "nothing was stored, send it again",
                exc.code,
            ) from None
        return appended.stored, appended.duplicate_count

    async def feedback(self, request: gpb.SubmitFeedbackRequest) -> None:
        if not request.model_name or not request.request_id:
            raise InvalidArgument("model_name and request_id are required")
        if len(request.request_id) > MAX_ID:
            raise InvalidArgument(f"request_id is longer than {MAX_ID} characters")
        truth = request.ground_truth
        kind = truth.WhichOneof("value")
        if kind is None:
            raise InvalidArgument("ground_truth needs a class_index, a number or a text label")
        if kind == "number" and not math.isfinite(truth.number):
            raise InvalidArgument(f"ground_truth number must be finite, got {truth.number}")
        self._model(request.model_name)
        body = epb.Feedback(
            request_id=request.request_id,
            ground_truth=truth,
            groups=request.groups,
            source=self.source,
            group=request.groups.get(self.group_key, ""),
        )
        if request.HasField("observe_time"):
            body.observe_time.CopyFrom(request.observe_time)
        # The same feedback sent again (a retry after a lost answer) is stored once.
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()[:40]
        event = epb.Event(
            kind=epb.EVENT_KIND_FEEDBACK,
            model=request.model_name,
            key=f"feedback:{request.model_name}:{digest}",
            feedback=body,
        )
        event.time.FromNanoseconds(time.time_ns())
        await self._append([encode(event)], "feedback")

    async def examples(self, request: gpb.IngestExamplesRequest) -> tuple[int, int]:
        model = self._model(request.model_name)
        if not request.examples:
            raise InvalidArgument("examples is empty: send at least one")
        if len(request.examples) > MAX_EXAMPLES:
            raise InvalidArgument(f"at most {MAX_EXAMPLES} examples per call")
        specs = examples.features(request.model_name, model.signature)
        now_ns = time.time_ns()
        out = []
        for i, example in enumerate(request.examples):
            if len(example.key) > MAX_ID:
                raise InvalidArgument(f"examples[{i}]: key is longer than {MAX_ID} characters")
            problem = examples.check_row(
                list(example.features), specs, f"examples[{i}]", example.label
            )
            if problem is not None:
                raise InvalidArgument(problem)
            key = example.key or uuid.uuid4().hex
            event = epb.Event(
                kind=epb.EVENT_KIND_EXAMPLE,
                model=request.model_name,
                key=f"ingest:{request.model_name}:{key}",
                example=epb.Example(
                    features=example.features,
                    label=example.label,
                    origin=epb.EXAMPLE_ORIGIN_INGESTED,
                ),
            )
            event.time.FromNanoseconds(now_ns)
            if example.HasField("event_time"):
                event.example.event_time.CopyFrom(example.event_time)
            out.append(encode(event))
        return await self._append(out, "examples")
