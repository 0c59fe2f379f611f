"""Where a run's examples come from when its policy names no file: the model's labelled
examples in the event stream (ingested, imported with `liveml data push`, or a
prediction joined to its feedback), read from the oldest kept.

An example's features are the model's inputs flattened in signature order, so the
policy's feature names map onto them by position; its label is a class index or a
number; its event time (else the time it was recorded) orders the rows. The run
records the sequence range it read, and the data-volume trigger counts examples.
"""

from __future__ import annotations

import math
from typing import Any

from services.common.events import EventStream
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.trainer import data

Start = rpb.ReadEventsRequest.Start


def _label(example: epb.Example) -> Any:
    kind = example.label.WhichOneof("value")
    if kind == "class_index":
        return example.label.class_index
    if kind == "number":
        return example.label.number
    return math.nan  # a text label: not a number the estimators here learn from


class EventSource:
    """Reads a policy's examples from the event stream (and counts them for triggers)."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream

    async def __call__(self, policy: tpb.TrainingPolicy, run: tpb.TrainingRun) -> data.Table:
        model = policy.name.split("/")[1]
        columns = data.wanted_columns(policy)
        out: dict[str, list[Any]] = {c: [] for c in columns}
        width = len(policy.features)
        first = last = 0
        async for batch in self.stream.read(
            0, start=Start.START_OLDEST, model=model, kinds=[epb.EVENT_KIND_EXAMPLE]
        ):
            for event in batch.events:
                example = event.example
                first = first or event.sequence
                last = event.sequence
                values = list(example.features)
                if len(values) != width:  # another width than the policy's: not usable
                    values = [math.nan] * width
                for name, value in zip(policy.features, values, strict=True):
                    out[name].append(value)
                out[policy.label].append(_label(example))
                stamp = example.event_time if example.HasField("event_time") else event.time
                if policy.time_column:
                    out[policy.time_column].append(stamp.ToMicroseconds() / 1e6)
                if policy.gate.slice_column:
                    out[policy.gate.slice_column].append(example.group)
        return data.Table(out, f"events:{model}", first, last)

    async def volume(self, policy: tpb.TrainingPolicy) -> int | None:
        stats = await self.stream.stats(policy.name.split("/")[1])
        return stats.counts.get(epb.EVENT_KIND_EXAMPLE, 0)
