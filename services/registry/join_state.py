"""What the joiner holds between commits: predictions and feedback waiting for their
partner (by model and request id, in event-time order, for the join window), the
joins since the last commit as examples to append, and the accuracy tallies that
become the answering version's live-accuracy windows. Pure state, no I/O: the
joiner (joiner.py) feeds it events in stream order and commits what it produced."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, TypeVar

from services.common import examples
from services.common.events import Encoded, encode
from services.common.events import metrics as event_metrics
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.outputs import first_output, is_positive, matches, prediction
from services.registry.store import now_us

NAME = "joiner"  # the reporter of its windows, its lease's and its position's name
Key = tuple[str, str]  # model, request id


@dataclass
class _Prediction:
    sequence: int
    time_us: int
    body: epb.Prediction


@dataclass
class _Feedback:
    sequence: int
    time_us: int
    body: epb.Feedback


@dataclass
class _Tally:
    correct: int = 0
    total: int = 0
    groups: dict[str, list[int]] = field(default_factory=dict)  # pred, positive, ok, total


def _time_us(event: epb.Event) -> int:
    # Timestamp.ToMicroseconds without its checks (an unset time reads as 0 s, 0 ns):
    # the joiner takes every prediction's time, and the library call was a fifth of it.
    time = event.time
    return time.seconds * 1_000_000 + time.nanos // 1000


_Body = TypeVar("_Body", epb.Prediction, epb.Feedback)


def _own(body: _Body) -> _Body:
    """A copy of its own of what waits for its partner: the event may be part of the
    whole request it was appended in (the log's memory hands the request's messages
    on), and one body held would keep all of that request alive for the join window
    (~0.7 µs per body)."""
    copy = type(body)()
    copy.CopyFrom(body)
    return copy


class JoinState:
    """What waits for a partner, and what the joins since the last commit produced."""

    def __init__(self, window_seconds: float, max_pending: int) -> None:
        self.window_us = int(window_seconds * 1e6)
        self.max_pending = max_pending
        self.predictions: OrderedDict[Key, _Prediction] = OrderedDict()
        self.feedback: OrderedDict[Key, _Feedback] = OrderedDict()
        self.joined: OrderedDict[Key, int] = OrderedDict()  # recent joins: repeats ignored
        self.clock_us = 0
        # model -> [joined, feedback unmatched, predictions expired]
        self.counters: dict[str, list[int]] = {}
        self.tallies: dict[tuple[str, int], _Tally] = {}
        self.out: list[Encoded] = []
        self.signatures: dict[str, rpb.Signature] = {}
        self.not_found: dict[str, float] = {}  # model -> when its signature was not found
        self._unmatched_counters: dict[tuple[str, int], Any] = {}
        self._unmatched_due: dict[tuple[str, int], int] = {}

    def low_water(self, position: int) -> int:
        """The oldest sequence still held: a restart reads again from there."""
        held = [p.sequence for p in self.predictions.values()]
        held += [f.sequence for f in self.feedback.values()]
        return min(held, default=position + 1)

    def _unmatched(self, model: str, index: int, live: bool) -> None:
        """Count what found no partner (index 1: feedback, 2: a prediction)."""
        if live:
            self.counters.setdefault(model, [0, 0, 0])[index] += 1
            # The metric is moved once per batch (`flush_metrics`): an increment per
            # event, each taking the counter's lock, cost more than the count.
            key = (model, index)
            self._unmatched_due[key] = self._unmatched_due.get(key, 0) + 1

    def flush_metrics(self) -> None:
        """Move the unmatched counters' metric by what was counted since the last call."""
        for (model, index), n in self._unmatched_due.items():
            counter = self._unmatched_counters.get((model, index))
            if counter is None:
                kind = "feedback" if index == 1 else "prediction"
                counter = self._unmatched_counters[(model, index)] = event_metrics.UNMATCHED.labels(
                    model, kind
                )
            counter.inc(n)
        self._unmatched_due.clear()

    def _expire(self, live: bool) -> None:
        horizon = self.clock_us - self.window_us
        if self._nothing_due(horizon):
            return
        queues: tuple[tuple[OrderedDict[Key, Any], int], ...] = (
            (self.predictions, 2),
            (self.feedback, 1),
        )
        for pending, index in queues:
            while pending:
                key, first = next(iter(pending.items()))
                if first.time_us >= horizon and len(pending) <= self.max_pending:
                    break
                del pending[key]
                self._unmatched(key[0], index, live)
        while self.joined:
            key, at = next(iter(self.joined.items()))
            if at >= horizon and len(self.joined) <= self.max_pending:
                break
            del self.joined[key]

    def _nothing_due(self, horizon: int) -> bool:
        """Whether no queue's oldest entry has expired nor any queue overflowed (the
        usual case, checked per event without walking the queues)."""
        limit = self.max_pending
        queues: tuple[OrderedDict[Key, Any], ...] = (self.predictions, self.feedback)
        for pending in queues:
            if pending and (len(pending) > limit or next(iter(pending.values())).time_us < horizon):
                return False
        joined = self.joined
        return not joined or (len(joined) <= limit and next(iter(joined.values())) >= horizon)

    def apply(self, event: epb.Event, live: bool) -> None:
        time_us = _time_us(event)
        if time_us > self.clock_us:
            self.clock_us = time_us
        if event.kind == epb.EVENT_KIND_PREDICTION:
            body_p = event.prediction
            if body_p.request_id:
                key = (event.model, body_p.request_id)
                waiting = self.feedback.pop(key, None)
                held = _Prediction(event.sequence, time_us, body_p)
                if waiting is not None:
                    self._join(event.model, held, waiting, live)
                else:
                    replaced = self.predictions.pop(key, None)
                    if replaced is not None:
                        self._unmatched(event.model, 2, live)
                    held.body = _own(body_p)
                    self.predictions[key] = held
        elif event.kind == epb.EVENT_KIND_FEEDBACK:
            body_f = event.feedback
            key = (event.model, body_f.request_id)
            if key not in self.joined and key not in self.feedback:
                held_f = _Feedback(event.sequence, time_us, body_f)
                found = self.predictions.pop(key, None)
                if found is not None:
                    self._join(event.model, found, held_f, live)
                else:
                    held_f.body = _own(body_f)
                    self.feedback[key] = held_f
        self._expire(live)

    def _join(self, model: str, p: _Prediction, f: _Feedback, live: bool) -> None:
        key = (model, p.body.request_id)
        self.joined[key] = max(p.time_us, f.time_us)
        if not live:
            return
        output = first_output(p.body.response) if p.body.response else None
        predicted = prediction(output) if output is not None else None
        truth = f.body.ground_truth
        correct = predicted is not None and matches(predicted, truth)
        self.counters.setdefault(model, [0, 0, 0])[0] += 1
        event_metrics.JOINED.labels(model, str(p.body.version)).inc()
        tally = self.tallies.setdefault((model, p.body.version), _Tally())
        tally.correct += int(correct)
        tally.total += 1
        group = p.body.group or f.body.group
        if group:
            row = tally.groups.setdefault(group, [0, 0, 0, 0])
            if not p.body.group:  # its prediction was not counted in a group when made
                row[0] += 1
                row[1] += int(predicted is not None and is_positive(predicted))
            row[2] += int(correct)
            row[3] += 1
        features: list[float] = []
        signature = self.signatures.get(model)
        if signature is not None and p.body.request and not p.body.request_omitted:
            features = examples.request_row(p.body.request, signature) or []
        joined = epb.Event(
            kind=epb.EVENT_KIND_EXAMPLE,
            model=model,
            key=f"join:{model}:{p.sequence}",
            example=epb.Example(
                features=features,
                label=truth,
                origin=epb.EXAMPLE_ORIGIN_JOINED,
                request_id=p.body.request_id,
                version=p.body.version,
                correct=correct,
                prediction_sequence=p.sequence,
                feedback_sequence=f.sequence,
                group=group,
            ),
        )
        joined.time.FromMicroseconds(max(p.time_us, f.time_us) or now_us())
        if f.body.HasField("observe_time"):
            joined.example.event_time.CopyFrom(f.body.observe_time)
        self.out.append(encode(joined))

    def windows(self, start_s: float, end_s: float) -> list[rpb.Window]:
        out = []
        for (model, version), t in sorted(self.tallies.items()):
            window = rpb.Window(
                model=model,
                version=version,
                source=rpb.WINDOW_SOURCE_JOINER,
                reporter=NAME,
                feedback_correct=t.correct,
                feedback_total=t.total,
            )
            window.start_time.FromNanoseconds(int(start_s * 1e9))
            window.end_time.FromNanoseconds(int(end_s * 1e9))
            for group, (n, positive, ok, total) in sorted(t.groups.items()):
                window.groups.add(
                    group=group,
                    predictions=n,
                    positive=positive,
                    feedback_correct=ok,
                    feedback_total=total,
                )
            out.append(window)
        return out
