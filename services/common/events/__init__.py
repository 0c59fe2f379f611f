"""The event stream: one interface over its two backends.

Predictions (sampled), feedback and labelled examples are appended in batches, kept
in order with an increasing sequence, stored once per key, and read back from any
sequence. Two backends implement `EventStream`, chosen by one setting
(`--event-stream`, see `open_stream`):

- `registry` (the embedded default): a table in the registry's database, reached
  through the registry's AppendEvents / ReadEvents RPCs (`events.registry`), so
  gateways and trainers stay stateless and nothing but the registry has to run;
- `nats://HOST:PORT` (at scale): NATS JetStream (`events.jetstream`), subjects per
  kind and model, `Nats-Msg-Id` for dedup, durable pull consumers.

What the backends promise alike (tests/integration/test_event_contract.py runs one
suite on both): order, dedup by key, resumption after a restart with nothing missed
or repeated, retention by age and size, and `OutOfRange` -- never a silent gap --
for a reader that asks for what retention removed. They differ in one way: a SQL
key is unique for ever, JetStream dedups only within its duplicate window.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.common.errors import InvalidArgument
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

KIND_NAMES: dict[int, str] = {
    epb.EVENT_KIND_PREDICTION: "prediction",
    epb.EVENT_KIND_FEEDBACK: "feedback",
    epb.EVENT_KIND_EXAMPLE: "example",
}
KINDS_BY_NAME: dict[str, int] = {name: kind for kind, name in KIND_NAMES.items()}
BODY_OF_KIND: dict[int, str] = {
    epb.EVENT_KIND_PREDICTION: "prediction",
    epb.EVENT_KIND_FEEDBACK: "feedback",
    epb.EVENT_KIND_EXAMPLE: "example",
}
MAX_KEY = 256
DEFAULT_BATCH = 500
Start = rpb.ReadEventsRequest.Start


@dataclass(frozen=True, slots=True)
class Encoded:
    """An event ready to append: what routing and dedup need, beside its bytes.

    `data` is a serialized `Event` without a sequence. Writers on a hot path (the
    gateway) build it directly from bytes they already hold, without a message object.
    """

    kind: int
    model: str
    key: str
    data: bytes


def encode(event: epb.Event) -> Encoded:
    return Encoded(event.kind, event.model, event.key, event.SerializeToString())


def check(event: epb.Event, index: int) -> None:
    """What every appended event needs; InvalidArgument naming the event otherwise."""
    where = f"events[{index}]"
    if event.kind not in KIND_NAMES:
        raise InvalidArgument(
            f"{where}: kind must be EVENT_KIND_PREDICTION, EVENT_KIND_FEEDBACK or "
            "EVENT_KIND_EXAMPLE"
        )
    if not event.model:
        raise InvalidArgument(f"{where}: model is required (the model's short name)")
    if not event.key or len(event.key) > MAX_KEY:
        raise InvalidArgument(f"{where}: key is required, at most {MAX_KEY} characters")
    if event.sequence:
        raise InvalidArgument(f"{where}: sequence is assigned by the stream; leave it 0")
    body = event.WhichOneof("body")
    if body != BODY_OF_KIND[event.kind]:
        raise InvalidArgument(
            f"{where}: a {KIND_NAMES[event.kind]} event carries a {BODY_OF_KIND[event.kind]} "
            f"body, not {body or 'none'}"
        )


@dataclass
class Appended:
    """Per event appended, in order: its sequence, and whether its key was stored before."""

    sequences: list[int] = field(default_factory=list)
    duplicates: list[bool] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return len(self.duplicates) - sum(self.duplicates)

    @property
    def duplicate_count(self) -> int:
        return sum(self.duplicates)


@dataclass
class Batch:
    """Events read, in increasing sequence, and how far the reader has now read.

    `read_through` may be past the last event (events of other models or kinds
    were passed over); resume after it. `last_sequence` is the stream's newest.
    """

    events: list[epb.Event]
    read_through: int
    first_sequence: int
    last_sequence: int


@dataclass
class Stats:
    """What the backend knows of itself (the joiner's numbers are the registry's)."""

    backend: str
    counts: dict[int, int]
    first_sequence: int
    last_sequence: int
    oldest_us: int
    newest_us: int
    bytes: int
    retention_seconds: float
    retention_bytes: int
    consumers: list[tuple[str, int, int]] = field(default_factory=list)  # name, position, pending


class EventStream(Protocol):
    """A backend of the event stream."""

    backend: str

    async def append(self, events: Sequence[Encoded]) -> Appended:
        """Store the events (durably) before returning; duplicates by key stored once.

        Raises ServiceError (Unavailable when the backend cannot be reached)."""
        ...

    def read(
        self,
        after: int = 0,
        *,
        start: int = Start.START_AFTER_SEQUENCE,
        model: str = "",
        kinds: Sequence[int] = (),
        follow: bool = False,
        max_batch: int = DEFAULT_BATCH,
    ) -> AsyncIterator[Batch]:
        """Batches of events after `after` (or from `start`), in order; with `follow`,
        waits for new ones for ever. OutOfRange when retention removed some of them."""
        ...

    async def stats(self, model: str = "") -> Stats: ...

    async def close(self) -> None: ...


def retention_gap(after: int, first: int, start: int) -> str | None:
    """The message for a reader asking for events retention removed, or None.

    `first` is the oldest sequence the stream holds; `after` the reader's last.
    """
    if start in (Start.START_OLDEST, Start.START_LATEST) or after + 1 >= first:
        return None
    return (
        f"events {after + 1} to {first - 1} were removed by retention; the stream now "
        f"starts at sequence {first} (read with START_OLDEST to go on from there)"
    )
