"""A model's online learner at work: claim, resume, learn from the stream, checkpoint,
publish — until the lease is lost or the policy leaves online mode.

Exactly once: the learner's position in the stream lives inside its checkpoint, so
state and position commit together in one (fenced) registry transaction; after a
restart it reads the stream after the checkpoint's last sequence and cuts the same
batches (B examples in stream order; a shorter one only when it has read all there
is), so the same stream makes the same weights however often it was stopped. Only
batches whose every example was scored and learned are ever committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.duration_pb2 import Duration
from grpc import StatusCode, aio

from services.common.events import EventStream
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.trainer import pipeline
from services.trainer.online import metrics, seal
from services.trainer.online.learner import OnlineLearner, OnlineSettings, StepReport
from services.trainer.online.publishing import Publishing, Stopped

__all__ = ["DEFAULT_BATCH", "Learner", "Stopped", "settings_of"]
from services.trainer.online.state import DriftState

log = logging.getLogger(__name__)

DEFAULT_BATCH = 256
DEFAULT_CHECKPOINT_SECONDS = 1.0
DEFAULT_RESERVOIR = 500
DEFAULT_WINDOW = 1000
DEFAULT_REPLAY = 0.2
POLICY_SECONDS = 5.0  # how often the learner rereads its policy


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def settings_of(policy: tpb.TrainingPolicy) -> OnlineSettings:
    online = policy.online
    classification = policy.task == tpb.TRAINING_TASK_CLASSIFICATION
    replay = online.replay_ratio
    params = tuple(sorted(pipeline_params(policy).items()))
    return OnlineSettings(
        classification=classification,
        classes=tuple(online.classes) or (0, 1),
        width=len(policy.features),
        estimator=policy.estimator.class_path,
        params=params,
        replay_ratio=0.0 if replay < 0 else (replay or DEFAULT_REPLAY),
        reservoir_per_class=online.reservoir_per_class or DEFAULT_RESERVOIR,
        window=online.window or DEFAULT_WINDOW,
    )


def pipeline_params(policy: tpb.TrainingPolicy) -> dict[str, Any]:
    import json

    return {k: json.loads(v) for k, v in policy.estimator.params.items()}


@dataclass
class Example:
    sequence: int
    features: list[float]
    label: Any


class Learner(Publishing):
    """One model's online learner in this trainer."""

    def __init__(
        self,
        reg: pipeline.Registry,
        stream: EventStream,
        name: str,
        policy: tpb.TrainingPolicy,
        key: bytes,
        lease_seconds: float,
    ) -> None:
        self.reg = reg
        self.stream = stream
        self.name = name  # this trainer: trainers/...
        self.policy = policy
        self.model = policy.name.split("/")[1]
        self.parent = f"models/{self.model}"
        self.key = key
        self.lease_seconds = lease_seconds
        self.token = 0
        self.learner: OnlineLearner | None = None
        self.last_sequence_seen = 0  # the stream's newest, for the lag
        self.read_through = 0  # read (and learned) all of this model's examples up to here
        self.last_commit = 0.0
        self.last_publish = time.monotonic()
        self.dirty = False
        self.rate = 0.0
        self.drift_reported: set[int] = set()
        self.retrain_after = 0  # a drift at this sequence asks for a retrain at the next publish
        self.hold = ""  # why the last publish was held, if it was
        self.signature: rpb.Signature | None = None  # the model's, read again with the policy

    # --- the registry ---------------------------------------------------------------------

    async def claim(self) -> bool:
        reply = await self.reg.call(
            self.reg.training.ClaimLearner,
            tpb.ClaimLearnerRequest(
                parent=self.parent, learner=self.name, lease_duration=_duration(self.lease_seconds)
            ),
        )
        if not reply.granted:
            return False
        self.token = reply.fencing_token
        if reply.checkpoint:
            self.learner = OnlineLearner.restore(seal.unseal(self.key, reply.checkpoint))
            log.info(
                "learner of %s resumed after sequence %d (token %d)",
                self.model,
                self.learner.last_sequence,
                self.token,
            )
        else:
            self.learner = OnlineLearner(settings_of(self.policy))
            log.info("learner of %s started (token %d)", self.model, self.token)
        return True

    def status(self) -> tpb.LearnerStatus:
        learner = self.learner
        assert learner is not None
        status = tpb.LearnerStatus(
            last_sequence=learner.last_sequence,
            applied=learner.applied,
            sequence_sum=learner.sequence_sum,
            lag=self.lag,
            drift_state=learner.drift_state.value,
            drift_sequences=[s for s, _ in learner.drifts],
            quarantined=learner.quarantined,
            examples_per_second=self.rate,
            publish_decision=f"held: {self.hold}" if self.hold else "",
        )
        if learner.prequential_accuracy is not None:
            status.prequential_accuracy = learner.prequential_accuracy
        if learner.prequential_rmse is not None:
            status.prequential_rmse = learner.prequential_rmse
        if self.hold:  # held until a publish passes again
            status.publishing_stopped = True
            status.stopped_reason = self.hold
        return status

    @property
    def lag(self) -> int:
        """Sequences of the stream not yet applied (other models' events count until read)."""
        assert self.learner is not None
        applied = max(self.learner.last_sequence, self.read_through)
        return max(0, self.last_sequence_seen - applied)

    async def commit(self) -> None:
        assert self.learner is not None
        blob = seal.seal(self.key, await asyncio.to_thread(self.learner.checkpoint))
        try:
            await self.reg.call(
                self.reg.training.CommitLearnerCheckpoint,
                tpb.CommitLearnerCheckpointRequest(
                    parent=self.parent,
                    learner=self.name,
                    fencing_token=self.token,
                    checkpoint=blob,
                    status=self.status(),
                    lease_duration=_duration(self.lease_seconds),
                ),
            )
        except aio.AioRpcError as exc:
            if exc.code() in (StatusCode.ABORTED, StatusCode.FAILED_PRECONDITION):
                raise Stopped(exc.details()) from None
            raise
        self.last_commit = time.monotonic()
        self.dirty = False

    # --- learning -------------------------------------------------------------------------

    def _examples(self, events: list[epb.Event]) -> list[Example]:
        """The usable examples of a chunk; the others are quarantined with the reason."""
        assert self.learner is not None
        width = self.learner.settings.width
        out = []
        for event in events:
            example = event.example
            kind = example.label.WhichOneof("value")
            label: Any = (
                example.label.class_index if kind == "class_index" else example.label.number
            )
            if kind not in ("class_index", "number"):
                self.learner.quarantine("unknown label")
                continue
            if len(example.features) != width:
                self.learner.quarantine("wrong feature count")
                continue
            out.append(Example(event.sequence, list(example.features), label))
        return out

    async def learn(self, chunk: list[epb.Event]) -> StepReport:
        """One chunk of the stream, in order: quarantine, score, learn (off the loop)."""
        assert self.learner is not None
        learner = self.learner
        before = dict(learner.quarantined)
        batch = self._examples(chunk)
        width = learner.settings.width
        seqs = np.array([e.sequence for e in batch], dtype=np.int64)
        x = np.array([e.features for e in batch], dtype=np.float64).reshape(len(batch), width)
        y = np.array([e.label for e in batch])
        started = time.perf_counter()
        report = await asyncio.to_thread(learner.step, seqs, x, y, chunk[-1].sequence)
        took = time.perf_counter() - started
        self.rate = len(chunk) / took if took > 0 else self.rate
        self.dirty = True
        added = {k: v - before.get(k, 0) for k, v in learner.quarantined.items()}
        metrics.learned(self.model, report.applied, added)
        metrics.observe(self.model, learner, self.lag)
        return report

    async def after_drift(self, report: StepReport) -> None:
        assert self.learner is not None
        if report.drift is not DriftState.DRIFT:
            return
        sequence = max((s for s, state in self.learner.drifts if state == "drift"), default=0)
        if sequence in self.drift_reported:
            return
        self.drift_reported.add(sequence)
        # Asked for once a version after it passes the gate: a stream that only looks
        # like a new concept (labels collapsed to one class, a flip storm) stops
        # publishing, and must not be learned by a batch retrain either.
        self.retrain_after = sequence

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Learn until told to stop; raises Stopped when the lease or the policy is lost."""
        assert self.learner is not None
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)

        async def read() -> None:
            assert self.learner is not None
            async for batch in self.stream.read(
                self.learner.last_sequence,
                model=self.model,
                kinds=[epb.EVENT_KIND_EXAMPLE],
                follow=True,
                max_batch=2000,
            ):
                await queue.put(batch)

        reader = asyncio.create_task(read(), name=f"learner read {self.model}")
        size = self.policy.online.batch_size or DEFAULT_BATCH
        every = self.policy.online.checkpoint_interval.ToNanoseconds() / 1e9
        every = every or DEFAULT_CHECKPOINT_SECONDS
        pending: list[epb.Event] = []
        policy_read = time.monotonic()
        metrics.started(self.model)
        metrics.observe(self.model, self.learner, self.lag)
        try:
            while True:
                batch = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(every, self.lease_seconds / 3)):
                        batch = await queue.get()
                if reader.done() and reader.exception() is not None:
                    raise reader.exception()  # type: ignore[misc]
                while batch is not None:
                    self.last_sequence_seen = max(self.last_sequence_seen, batch.last_sequence)
                    metrics.observe(self.model, self.learner, self.lag)
                    pending += batch.events
                    caught_up = batch.read_through >= batch.last_sequence
                    while len(pending) >= size or (caught_up and pending):
                        chunk, pending = pending[:size], pending[size:]
                        report = await self.learn(chunk)
                        await self.after_drift(report)
                        # By count only here: a publish takes a while, and what was read
                        # meanwhile is learned before the next one is due by time.
                        if self.due(by_time=False):
                            await self.publish()
                    if caught_up and not pending:
                        self.read_through = batch.read_through
                        metrics.observe(self.model, self.learner, self.lag)
                    if time.monotonic() - self.last_commit >= every:
                        break  # commit (and renew the lease) before reading on
                    batch = None if queue.empty() else queue.get_nowait()
                now = time.monotonic()
                if self.due() and not pending:
                    await self.publish()
                if now - self.last_commit >= every:  # pending events are not in the state
                    await self.commit()
                if now - policy_read >= POLICY_SECONDS:
                    policy_read = now
                    await self._reread_policy()
        finally:
            metrics.stopped(self.model)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _reread_policy(self) -> None:
        try:
            reply = await self.reg.call(
                self.reg.training.GetTrainingPolicy,
                tpb.GetTrainingPolicyRequest(name=f"{self.parent}/trainingPolicy"),
            )
        except aio.AioRpcError as exc:
            if exc.code() == StatusCode.NOT_FOUND:
                raise Stopped("the training policy was deleted") from None
            raise
        if reply.policy.mode != tpb.TRAINING_MODE_ONLINE:
            raise Stopped("the training policy left online mode")
        self.policy = reply.policy
        self.signature = None
