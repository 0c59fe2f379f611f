"""An online learner's publishing: when a version is due, the light gate and the
guardrails (publish.py), and the version registered with its lineage and rolled out
through the registry (PublishOnlineVersion, under the learner's fencing token).

A mixin of the runner's `Learner` (runner.py), which owns the state it reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np
from grpc import StatusCode, aio

from services.common import drift
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.trainer import gate, pipeline
from services.trainer.online import metrics, publish
from services.trainer.online.learner import OnlineLearner

log = logging.getLogger(__name__)

DEFAULT_PUBLISH_EVERY = 5000
T = TypeVar("T")


class Stopped(Exception):
    """The learner must stop: its lease was lost, or its policy left online mode."""


class Publishing:
    reg: pipeline.Registry
    learner: OnlineLearner | None
    policy: tpb.TrainingPolicy
    model: str
    parent: str
    name: str
    token: int
    last_publish: float
    hold: str
    signature: rpb.Signature | None
    dirty: bool
    retrain_after: int
    _parts: dict[str, float]  # seconds of the overlapped parts of the last publish

    async def commit(self) -> None:
        raise NotImplementedError

    def due(self, by_time: bool = True) -> bool:
        """A publish is due: `publish_every` examples since the last, or (`by_time`)
        `publish_interval` seconds."""
        assert self.learner is not None
        online = self.policy.online
        every = online.publish_every or DEFAULT_PUBLISH_EVERY
        interval = online.publish_interval.ToNanoseconds() / 1e9
        if not self.learner.since_publish:
            return False
        if self.learner.since_publish >= every:
            return True
        return by_time and bool(interval) and time.monotonic() - self.last_publish >= interval

    async def _live(self) -> tuple[int, float | None, int]:
        serving, reply = await asyncio.gather(  # both at once: a publish waits on them
            pipeline.production_of(self.reg, self.model),
            self.reg.call(
                self.reg.registry.GetVersionMetrics,
                rpb.GetVersionMetricsRequest(parent=self.parent),
            ),
        )
        if not serving:
            return 0, None, 0
        for m in reply.metrics:
            if m.version == serving:
                return serving, (m.accuracy if m.feedback_total else None), int(m.feedback_total)
        return serving, None, 0

    async def publish(self) -> None:
        learner = self.learner
        assert learner is not None
        self.last_publish = time.monotonic()
        took: dict[str, float] = {}  # seconds per stage, for the log
        self._parts = {}
        mark = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            took[stage], mark = now - mark, now

        if self.signature is None:
            described = await self.reg.call(
                self.reg.registry.GetModel, rpb.GetModelRequest(name=self.parent)
            )
            self.signature = described.model.signature
        # The export and its reference statistics (CPU, off the loop) while the registry
        # answers: wasted only when the gate holds the publish (and a model it holds may
        # not export: that is not raised).
        answered, exported = await asyncio.gather(
            self._live(), asyncio.to_thread(self._candidate), return_exceptions=True
        )
        if isinstance(answered, BaseException):
            raise answered
        serving, live, feedback = answered
        lap("live+export")
        verdict = publish.judge(
            learner,
            self.policy.online,
            live,
            feedback,
            learner.published_weights,
            learner.published_reservoir,
        )
        if not verdict.passed:
            self.hold = verdict.summary()
            metrics.published(self.model, "stopped" if verdict.stop else "held")
            log.info("learner of %s held a publish: %s", self.model, self.hold)
            await self.commit()
            return
        self.hold = ""
        if isinstance(exported, BaseException):
            raise exported
        onnx_bytes, statistics = exported
        # The checkpoint that covers the version commits while the version is uploaded:
        # both are done before it is published,
        # so a published version always names a committed checkpoint. A checkpoint
        # refused (the lease lost) stops the learner before it publishes anything.
        committed, registered = await asyncio.gather(
            self._timed("commit", self.commit()),
            self._timed("register", self._register(onnx_bytes, statistics, serving)),
            return_exceptions=True,
        )
        for outcome in (committed, registered):
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(registered, rpb.Version)
        created = registered
        lap("commit+register")
        took.update({f"({k})": v for k, v in self._parts.items()})  # overlapped: not summed
        try:
            reply = await self.reg.call(
                self.reg.training.PublishOnlineVersion,
                tpb.PublishOnlineVersionRequest(
                    parent=self.parent,
                    learner=self.name,
                    fencing_token=self.token,
                    version=created.number,
                    checks=verdict.checks,
                ),
            )
        except aio.AioRpcError as exc:
            if exc.code() == StatusCode.ABORTED:
                raise Stopped(exc.details()) from None
            raise
        lap("rollout")
        learner.published(created.number)
        metrics.published(self.model, "published")
        if self.retrain_after:
            await self._request_retrain(self.retrain_after)
            self.retrain_after = 0
        self.dirty = True  # committed with the next checkpoint, within a second
        log.info(
            "learner of %s published v%d in %.2f s (%s): %s",
            self.model,
            created.number,
            sum(v for k, v in took.items() if not k.startswith("(")),
            ", ".join(f"{k} {v:.3f}" for k, v in took.items()),
            reply.decision,
        )

    async def _timed(self, part: str, work: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await work
        finally:
            self._parts[part] = time.perf_counter() - started

    def _candidate(self) -> tuple[bytes, rpb.ReferenceStatistics]:
        """The current model as ONNX, and its reference statistics (on a worker thread)."""
        learner = self.learner
        assert learner is not None and self.signature is not None
        onnx_bytes = publish.export(
            learner.model, learner.settings.width, self.signature, self.policy.task
        )
        return onnx_bytes, self._reference(onnx_bytes)

    async def _register(
        self, onnx_bytes: bytes, statistics: rpb.ReferenceStatistics, serving: int
    ) -> rpb.Version:
        """The candidate as a version (reference statistics, lineage), not yet published."""
        learner = self.learner
        assert learner is not None
        measured = {}
        if learner.prequential_accuracy is not None:
            measured["prequential_accuracy"] = learner.prequential_accuracy
        reservoir = learner.reservoir_accuracy()
        if reservoir is not None:
            measured["reservoir_accuracy"] = reservoir
        version = rpb.Version(
            description=f"published by the online learner after sequence {learner.last_sequence}",
            dataset=rpb.Dataset(uri=f"events:{self.model}", rows=learner.since_publish),
            params={
                "estimator": learner.settings.estimator,
                "first_sequence": str(learner.publish_from),
                "last_sequence": str(learner.last_sequence),
                "applied": str(learner.applied),
                "fencing_token": str(self.token),
            },
            metrics=measured,
            reference_statistics=statistics,
            lineage=rpb.Lineage(parent_version=serving, pipeline_run=f"{self.parent}/learner"),
            tags={"trigger": "online"},
        )
        return await pipeline._upload(self.reg, self.model, onnx_bytes, version)

    async def _request_retrain(self, sequence: int) -> None:
        try:
            await self.reg.call(
                self.reg.training.RequestTrainingRun,
                tpb.RequestTrainingRunRequest(
                    parent=self.parent,
                    trigger=tpb.TRAINING_TRIGGER_ALERT,
                    reason=f"the online learner saw concept drift at sequence {sequence}",
                ),
            )
        except aio.AioRpcError as exc:
            if exc.code() != StatusCode.FAILED_PRECONDITION:  # within the cooldown: fine
                raise

    def _reference(self, onnx_bytes: bytes) -> rpb.ReferenceStatistics:
        assert self.learner is not None
        x, _ = self.learner.reservoir.all()
        if not len(x):
            return rpb.ReferenceStatistics()
        model = gate.Model(onnx_bytes, self.policy.task)
        names = [o.name for o in model.session.get_outputs()]
        sample = x.astype(np.float32)
        return drift.reference_statistics(
            {model.input: sample}, dict(zip(names, model.run(sample), strict=True))
        )
