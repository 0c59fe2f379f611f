"""What this registry process appended last, parsed, served to its own readers.

The joiner follows every prediction and feedback the registry stores, and most of them
were appended through this very process a moment before, as messages (AppendEvents
receives them parsed). Reading them back from the database and parsing them again
cost more registry CPU per event than the append's own insert. So the log keeps its
last appends here, by sequence, and a read takes from here what it would have read
from the database, as long as it is a run of sequences without a hole that starts
right after the reader's position: an append by another registry replica (several
can share one PostgreSQL), one made before this process started or one evicted from
here leaves a hole, and that read goes to the database as before. Only committed
events enter, in the order of their sequences (one writer task appends them); the
stream's bounds are still read from the database at every poll, so retention and
other replicas' appends are seen as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

from services.common.events import Encoded
from services.common.gen.liveml.events.v1 import events_pb2 as epb

RECENT_EVENTS = 20_000  # kept at most (about 40 appends of 500; a few MB)


class Parsed(NamedTuple):
    """An event to append that its writer holds parsed already: `within[at]`, `data`
    its bytes; read as an `Encoded` is (kind, model, key, data). A tuple: a frozen
    dataclass's constructor cost AppendEvents a microsecond per event. The repeated
    field it sits in, not the message: the field is no object the garbage collector
    tracks (a message is), and a cache holding 20,000 messages made the registry's
    collections a sixth of its event loop's CPU."""

    kind: int
    model: str
    key: str
    data: bytes
    within: Any  # a repeated field of events (the request's)
    at: int


Appendable = Encoded | Parsed


class _Run:
    """Events stored by one append: sequences `first`, `first + 1`, ..."""

    __slots__ = ("events", "first", "kinds", "models")

    def __init__(self, first: int, events: Sequence[Appendable]) -> None:
        self.first = first
        self.kinds = [e.kind for e in events]
        self.models = [e.model for e in events]
        # Where the writer held the message parsed, that: (the field, its index); else
        # the bytes, parsed when read. Plain tuples of untracked objects: once the
        # collector has seen them it stops tracking them.
        self.events: list[Any] = [
            (e.within, e.at) if isinstance(e, Parsed) else e.data for e in events
        ]

    def event(self, offset: int) -> epb.Event:
        found = self.events[offset]
        event = epb.Event.FromString(found) if isinstance(found, bytes) else found[0][found[1]]
        event.sequence = self.first + offset
        return event


class Recent:
    def __init__(self, limit: int = RECENT_EVENTS) -> None:
        self.limit = limit
        self._runs: deque[_Run] = deque()
        self._held = 0

    def add(self, first: int, stored: Sequence[Appendable]) -> None:
        """`stored` were committed with sequences `first`, `first + 1`, ... (the
        events of one append that were not duplicates, in order)."""
        if not stored:
            return
        runs = self._runs
        if runs and runs[-1].first + len(runs[-1].events) > first:
            runs.clear()  # sequences seen again (a database restored?): start afresh
            self._held = 0
        runs.append(_Run(first, stored))
        self._held += len(stored)
        while self._held > self.limit and len(runs) > 1:
            self._held -= len(runs.popleft().events)

    def holds(self, sequence: int) -> bool:
        runs = self._runs
        return bool(runs) and runs[0].first <= sequence < runs[-1].first + len(runs[-1].events)

    def take(
        self, after: int, model: str, kinds: Sequence[int], limit: int
    ) -> tuple[list[epb.Event], int] | None:
        """The events after `after` of `model` (any if empty) and `kinds` (any if
        empty), at most `limit`, and the sequence read through: the end of the run
        without a hole that starts at `after + 1`, or the last event taken when
        `limit` were. None when `after + 1` is not here."""
        runs = self._runs
        start = next((i for i, r in enumerate(runs) if r.first + len(r.events) > after + 1), None)
        if start is None or runs[start].first > after + 1:
            return None
        out: list[epb.Event] = []
        through = after
        wanted = set(kinds)
        for i in range(start, len(runs)):
            run = runs[i]
            if i > start and run.first != through + 1:
                break  # a hole: another replica's append, read from the database
            begin = through + 1 - run.first
            if not model and not wanted and len(out) + len(run.events) - begin <= limit:
                out += [run.event(j) for j in range(begin, len(run.events))]
            else:
                kinds_, models = run.kinds, run.models
                for j in range(begin, len(run.events)):
                    if (wanted and kinds_[j] not in wanted) or (model and models[j] != model):
                        continue
                    out.append(run.event(j))
                    if len(out) == limit:
                        return out, run.first + j
            through = run.first + len(run.events) - 1
        return out, through
