"""The trainer process: evaluates every training policy's triggers, claims queued runs
and carries them out, one at a time; a gRPC health service for probes.

Stateless: policies, runs and leases live in the registry, so any number of trainers
can run side by side (each run is claimed by one, and a model has one run at a time)
and a trainer killed mid-run costs only that attempt (the registry fails it when the
lease runs out and queues a retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.duration_pb2 import Duration
from grpc import StatusCode, aio

from services.common import registry_client, server
from services.common.events import EventStream
from services.common.events.open import open_stream
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc
from services.trainer import metrics, pipeline, sources, triggers
from services.trainer.online import seal
from services.trainer.online.runner import Learner, Stopped
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

LEARNER_RETRY_SECONDS = 5.0


@dataclass
class Trainer:
    settings: TrainerSettings
    running: server.RunningServer
    reg: pipeline.Registry
    name: str
    channel: aio.Channel
    events: pipeline.Source | None = None
    volumes: dict[str, triggers.Volume] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    finished: list[tpb.TrainingRun] = field(default_factory=list)  # recent runs, newest last
    stream: EventStream | None = None
    checkpoint_key: bytes = b""
    learners: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # by model
    learner_retry: dict[str, float] = field(default_factory=dict)  # not before (monotonic)

    @property
    def port(self) -> int:
        return self.running.port

    async def loop(self) -> None:
        file_volume = triggers.FileVolume()
        while True:
            started = time.monotonic()
            try:
                await self.evaluate(file_volume)
                claimed = await self.reg.call(
                    self.reg.training.ClaimTrainingRun,
                    tpb.ClaimTrainingRunRequest(
                        trainer=self.name, lease_duration=_duration(self.settings.lease_seconds)
                    ),
                )
                if claimed.run.name:
                    await self.carry(claimed.run, claimed.policy)
                    continue  # there may be more waiting
            except aio.AioRpcError as exc:
                log.warning("the registry did not answer: %s: %s", exc.code().name, exc.details())
            except Exception:  # one bad pass must not end the trainer
                log.exception("trainer loop failed")
            await asyncio.sleep(max(0.0, self.settings.poll_seconds - (time.monotonic() - started)))

    async def carry(self, run: tpb.TrainingRun, policy: tpb.TrainingPolicy) -> None:
        log.info("claimed %s (%s)", run.name, "; ".join(run.reasons))
        try:
            done = await pipeline.execute(
                self.reg, run, policy, self.settings.lease_seconds, self.events
            )
        except pipeline.LeaseLost as exc:
            log.warning("lost %s: %s", run.name, exc)
            return
        state = tpb.TrainingRun.State.Name(done.state).removeprefix("STATE_")
        log.info(
            "%s %s%s%s",
            done.name,
            state,
            f": v{done.version}" if done.version else "",
            f": {done.error}" if done.error else "",
        )
        metrics.run_ended(done)
        self.finished = [*self.finished[-19:], done]

    async def evaluate(self, file_volume: triggers.FileVolume) -> None:
        """Ask for a run wherever a trigger fired."""
        reply = await self.reg.call(
            self.reg.training.ListTrainingPolicies, tpb.ListTrainingPoliciesRequest()
        )
        now = time.time()
        metrics.LAST_POLL.set(now)
        metrics.POLICIES.set(len(reply.policies))
        for policy in reply.policies:
            model = policy.name.split("/")[1]
            if policy.mode == tpb.TRAINING_MODE_ONLINE:
                await self.learn_online(model, policy)
            runs = await self.reg.call(
                self.reg.training.ListTrainingRuns,
                tpb.ListTrainingRunsRequest(parent=f"models/{model}", page_size=1),
            )
            last = runs.runs[0] if runs.runs else None
            fired = [triggers.schedule(policy, last, now)]
            if policy.triggers.min_new_examples:
                volume = self.volumes.get("events") if not policy.dataset_uri else file_volume
                rows = await volume(policy) if volume is not None else None
                fired.append(triggers.volume(policy, last, rows))
            if policy.triggers.on_alert:
                alerts = await self.reg.call(
                    self.reg.registry.ListAlerts,
                    rpb.ListAlertsRequest(model=model, firing_only=True),
                )
                serving = await pipeline.production_of(self.reg, model)
                fired.append(triggers.alerted(policy, last, list(alerts.alerts), serving))
            for trigger in fired:
                if trigger is not None:
                    await self.request(model, trigger)

    async def learn_online(self, model: str, policy: tpb.TrainingPolicy) -> None:
        """Become the model's online learner if nobody is (one per model, by lease)."""
        running = self.learners.get(model)
        if (running is not None and not running.done()) or self.stream is None:
            return
        if time.monotonic() < self.learner_retry.get(model, 0.0):
            return  # it failed a moment ago: not in a tight loop
        learner = Learner(
            self.reg,
            self.stream,
            self.name,
            policy,
            self.checkpoint_key,
            self.settings.lease_seconds,
        )
        if not await learner.claim():
            return

        async def work() -> None:
            try:
                await learner.run()
            except Stopped as exc:
                log.warning("the learner of %s stopped: %s", model, exc)
            except Exception:
                log.exception("the learner of %s failed; it is claimed again in a while", model)
                self.learner_retry[model] = time.monotonic() + LEARNER_RETRY_SECONDS

        self.learners[model] = asyncio.create_task(work(), name=f"learner {model}")

    async def request(self, model: str, fired: triggers.Fired) -> None:
        counted = metrics.TRIGGERS.labels(model, metrics.trigger_name(fired.trigger), "refused")
        try:
            reply = await self.reg.call(
                self.reg.training.RequestTrainingRun,
                tpb.RequestTrainingRunRequest(
                    parent=f"models/{model}",
                    trigger=fired.trigger,  # type: ignore[arg-type]
                    reason=fired.reason,
                ),
            )
        except aio.AioRpcError as exc:
            if exc.code() == StatusCode.FAILED_PRECONDITION:  # cooldown, or policy gone
                log.debug("not now for %s: %s", model, exc.details())
                counted.inc()
                return
            raise
        outcome = "created" if reply.created else "absorbed"
        metrics.TRIGGERS.labels(model, metrics.trigger_name(fired.trigger), outcome).inc()
        if reply.created:
            log.info("asked for %s: %s", reply.run.name, fired.reason)

    async def stop(self) -> None:
        for task in [*self.tasks, *self.learners.values()]:
            task.cancel()
        for task in self.learners.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.stream is not None:
            await self.stream.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.channel.close()


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


async def start(settings: TrainerSettings) -> Trainer:
    channel, stub = registry_client.connect(
        settings.registry,
        ca=settings.registry_ca,
        cert=settings.registry_cert,
        key=settings.registry_key,
        max_message_bytes=settings.max_message_bytes,
    )
    metadata = registry_client.auth_metadata(
        registry_client.read_token(settings.registry_token, settings.registry_token_file)
    )
    reg = pipeline.Registry(stub, tpb_grpc.TrainingServiceStub(channel), metadata)  # type: ignore[no-untyped-call]

    def register(grpc_server: aio.Server) -> Sequence[str]:
        return []  # health and reflection only: the trainer serves no API of its own

    running = await server.start_server("trainer", settings, register)
    name = f"trainers/{settings.trainer_id or f'{socket.gethostname()}-{os.getpid()}'}"
    stream = open_stream(settings, channel, metadata, name)
    source = sources.EventSource(stream)
    trainer = Trainer(settings, running, reg, name, channel, source, {"events": source.volume})
    trainer.stream = stream
    trainer.checkpoint_key = _checkpoint_key(settings)
    trainer.tasks.append(asyncio.create_task(trainer.loop(), name="trainer"))
    log.info("trainer %s working for %s", name, settings.registry)
    return trainer


def _checkpoint_key(settings: TrainerSettings) -> bytes:
    if settings.checkpoint_key is not None:
        return seal.derive_key(settings.checkpoint_key.get_secret_value())
    if settings.checkpoint_key_file is not None:
        return seal.derive_key(settings.checkpoint_key_file.read_text().strip())
    token = registry_client.read_token(settings.registry_token, settings.registry_token_file)
    if token is None:
        log.warning(
            "no --checkpoint-key and no registry token: online learners' checkpoints are "
            "sealed with a fixed key anyone can know"
        )
        return seal.derive_key("liveml without a key")
    return seal.derive_key(token)


def serve(settings: TrainerSettings) -> int:
    async def build() -> server.RunningServer:
        trainer = await start(settings)
        trainer.running.on_stop.append(trainer.stop)
        return trainer.running

    return server.run("trainer", settings, build)
