"""The joiner: a prediction and its later feedback, matched by (model, request id),
become a labelled example and count towards the answering version's live accuracy.

It reads the event stream in order (predictions and feedback, whichever gateway
logged each), holds what waits for its partner for `--join-window-seconds` of
event time (the writers' clocks, so a replay decides exactly as the first run did)
and counts what found none. One registry replica runs it at a time (a lease).

Exactly once: every `--join-commit-seconds` it appends the joined examples (keys
`join:<model>:<prediction sequence>`, stored once), then commits in one transaction
the accuracy windows (source WINDOW_SOURCE_JOINER, which GetVersionMetrics and the
rollout controller read), its counters and its position, compare-and-set on the
position it started from. After a restart it reads again from the oldest event it
still held (`low_water`) and replays up to its committed position without effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select, update

from services.common import examples
from services.common.errors import OutOfRange
from services.common.events import Batch, Encoded, EventStream, Start, encode
from services.common.events import metrics as event_metrics
from services.common.events.metrics import append_counted
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.outputs import first_output, is_positive, matches, prediction
from services.registry import catalog, windows
from services.registry.db import ConsumerRow
from services.registry.leader import Lease
from services.registry.store import Store, now_us

log = logging.getLogger(__name__)

NAME = "joiner"
KINDS = (epb.EVENT_KIND_PREDICTION, epb.EVENT_KIND_FEEDBACK)
READ_BATCH = 2000
MISSING_SECONDS = 30.0  # how long a model not found stays so before it is looked up again
Key = tuple[str, str]  # model, request id


class LostPosition(Exception):
    """Another joiner committed since this one started (it lost its lease)."""


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


class Joiner:
    def __init__(
        self,
        store: Store,
        stream: EventStream,
        holder: str,
        *,
        window_seconds: float,
        max_pending: int,
        commit_seconds: float,
        lease_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.stream = stream
        self.window_seconds = window_seconds
        self.max_pending = max_pending
        self.commit_seconds = commit_seconds
        self.lease = Lease(store, NAME, holder, lease_seconds)
        self.position = 0
        self.committed = asyncio.Event()  # set at each commit (tests wait on positions)
        self._from_oldest = False

    async def run(self) -> None:
        while True:
            try:
                if await self.lease.hold():
                    await self._session()
            except asyncio.CancelledError:
                raise
            except LostPosition:
                log.info("joiner: another replica took over")
            except OutOfRange as exc:
                # What it still had to join is gone: go on from the oldest event kept.
                log.warning("joiner: %s; going on from the oldest event kept", exc.message)
                self._from_oldest = True
            except Exception as exc:  # the stream away, the database busy: start again
                log.warning("joiner stopped (%s); resuming from its last commit", exc)
            await asyncio.sleep(min(1.0, self.lease.seconds / 2))

    async def stop(self) -> None:
        await self.lease.release()

    async def _load(self) -> tuple[int, dict[str, Any]]:
        async with self.store.write_unversioned() as session:
            row = await session.get(ConsumerRow, NAME)
            if row is None:
                row = ConsumerRow(name=NAME, position=0, state="{}")
                session.add(row)
            return int(row.position), json.loads(row.state)

    async def _signatures(self, state: JoinState, models: set[str]) -> None:
        missing = models - state.signatures.keys()
        if not missing:
            return
        now = time.monotonic()
        # A model not found is asked for again only after a while, not at every batch.
        missing = {
            m for m in missing if state.not_found.get(m, -MISSING_SECONDS) + MISSING_SECONDS <= now
        }
        if not missing:
            return
        async with self.store.read() as session:
            for model in missing:
                try:
                    row = await catalog.model_row(session, model)
                except Exception:  # a model deleted since: its examples carry no features
                    state.not_found[model] = now
                    continue
                state.not_found.pop(model, None)
                state.signatures[model] = catalog.model_proto(row).signature

    async def _session(self) -> None:
        position, saved = await self._load()
        self.position = position
        state = JoinState(self.window_seconds, self.max_pending)
        state.counters = {m: list(c) for m, c in saved.get("counters", {}).items()}
        replay_through = position
        after = int(saved.get("low_water", position + 1)) - 1
        last_commit = time.time()
        event_metrics.JOINER_POSITION.set(position)
        start = Start.START_OLDEST if self._from_oldest else Start.START_AFTER_SEQUENCE
        self._from_oldest = False
        # Batches larger than the writers' (500): a read that fills its batch is
        # followed at once by another, usually empty, one.
        batches = self.stream.read(
            after, start=start, kinds=KINDS, follow=True, max_batch=READ_BATCH
        )
        queue: asyncio.Queue[Batch | BaseException] = asyncio.Queue(maxsize=8)
        pump = asyncio.create_task(_pump(batches, queue), name="joiner-read")
        through = position
        try:
            while True:
                item: Batch | BaseException | None = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.commit_seconds):
                        item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is not None:
                    await self._signatures(state, {e.model for e in item.events})
                    for event in item.events:
                        state.apply(event, live=event.sequence > replay_through)
                    state.flush_metrics()
                    through = max(through, item.read_through)
                    event_metrics.JOINER_LAG.set(max(0, item.last_sequence - item.read_through))
                    event_metrics.STREAM_LAST.set(item.last_sequence)
                now = time.time()
                if now - last_commit >= self.commit_seconds and through > self.position:
                    await self._commit(state, through, last_commit, now)
                    last_commit = now
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _commit(self, state: JoinState, through: int, start_s: float, end_s: float) -> None:
        if not await self.lease.hold():
            raise LostPosition()
        if state.out:
            await append_counted(self.stream, state.out)
        saved = {"counters": state.counters, "low_water": state.low_water(through)}
        found = state.windows(start_s, end_s)
        async with self.store.write_unversioned() as session:
            result = await session.execute(
                update(ConsumerRow)
                .where(ConsumerRow.name == NAME, ConsumerRow.position == self.position)
                .values(position=through, state=json.dumps(saved, separators=(",", ":")))
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise LostPosition()
            if found:
                await windows.store(session, found)
        state.out = []
        state.tallies = {}
        self.position = through
        event_metrics.JOINER_POSITION.set(through)
        self.committed.set()
        self.committed = asyncio.Event()


async def _pump(batches: AsyncIterator[Batch], queue: asyncio.Queue[Batch | BaseException]) -> None:
    try:
        async for batch in batches:
            await queue.put(batch)
    except Exception as exc:  # raised in the session that reads the queue
        await queue.put(exc)


async def joiner_stats(store: Store, model: str) -> tuple[int, int, int, int]:
    """(joined, feedback unmatched, predictions expired, position) for a model or all."""
    async with store.read() as session:
        row = (
            await session.execute(select(ConsumerRow).where(ConsumerRow.name == NAME))
        ).scalar_one_or_none()
    if row is None:
        return 0, 0, 0, 0
    counters: dict[str, list[int]] = json.loads(row.state).get("counters", {})
    chosen = [counters.get(model, [0, 0, 0])] if model else list(counters.values())
    joined, unmatched, expired = (sum(c[i] for c in chosen) for i in range(3))
    return joined, unmatched, expired, int(row.position)
