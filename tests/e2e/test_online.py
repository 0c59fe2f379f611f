"""The online learner as trainer processes against a registry process: it learns the
stream and publishes through its light gate; SIGKILLed again and again it ends with the
weights an uninterrupted learner would have (nothing skipped, nothing applied twice);
one learner per model; bad examples quarantined; a collapsed label rate stops it."""

from __future__ import annotations

import asyncio
import pickle
import random
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc
from services.trainer.online import seal
from services.trainer.online.learner import OnlineLearner
from services.trainer.online.runner import settings_of
from tests.helpers import training
from tests.helpers.cluster import Cluster, cluster
from tests.helpers.wait import async_wait_until

pytestmark = pytest.mark.timeout(300)

SGD = "sklearn.linear_model.SGDClassifier"
PARAMS = {"loss": "log_loss", "learning_rate": "constant", "eta0": 0.01}


def online_policy(**online: object) -> tpb.TrainingPolicy:
    policy = training.policy("clf", Path("/unused.csv"), SGD, params=PARAMS)
    policy.dataset_uri = ""
    policy.mode = tpb.TRAINING_MODE_ONLINE
    policy.online.CopyFrom(tpb.OnlinePolicy(**online))  # type: ignore[arg-type]
    return policy


def examples(
    rows: int, seed: int, start: int = 0, flip: bool = False, positive: float | None = None
) -> list[epb.Event]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    y = (x @ training.RULE > 0).astype(int)
    if flip:
        y = 1 - y
    if positive is not None:  # a collapsed label stream: (nearly) one class
        y = (rng.random(rows) < positive).astype(int)
    out = []
    for i in range(rows):
        when = Timestamp()
        when.FromSeconds(1_700_000_000 + start + i)
        out.append(
            epb.Event(
                kind=epb.EVENT_KIND_EXAMPLE,
                model="clf",
                key=f"e{seed}-{start + i}",
                example=epb.Example(
                    features=x[i].tolist(),
                    label=gpb.Label(class_index=int(y[i])),
                    event_time=when,
                    origin=epb.EXAMPLE_ORIGIN_INGESTED,
                ),
            )
        )
    return out


class Online:
    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.training = tpb_grpc.TrainingServiceStub(c.channel)

    async def setup(self, policy: tpb.TrainingPolicy) -> None:
        await self.c.create_model("clf")
        ingest = await self.c.stub.CreateToken(
            rpb.CreateTokenRequest(display_name="ingest", role=rpb.ROLE_INGEST), metadata=self.c.md
        )
        self.ingest = (("authorization", f"Bearer {ingest.secret}"),)
        await self.training.SetTrainingPolicy(
            tpb.SetTrainingPolicyRequest(policy=policy), metadata=self.c.md
        )

    async def append(self, events: list[epb.Event]) -> None:
        for i in range(0, len(events), 5000):
            await self.c.stub.AppendEvents(
                rpb.AppendEventsRequest(events=events[i : i + 5000]), metadata=self.ingest
            )

    async def status(self) -> tpb.LearnerStatus | None:
        try:
            reply = await self.training.GetLearnerStatus(
                tpb.GetLearnerStatusRequest(parent="models/clf"), metadata=self.c.md
            )
        except Exception:
            return None
        return reply.status  # type: ignore[no-any-return]

    async def applied(self, count: int, within: float = 60) -> tpb.LearnerStatus:
        async def reached() -> tpb.LearnerStatus | None:
            status = await self.status()
            return status if status is not None and status.applied >= count else None

        return await async_wait_until(reached, within, f"{count} examples applied")


def checkpoint(root: Path, key: bytes) -> OnlineLearner:
    with sqlite3.connect(root / "registry.db") as db:
        (blob,) = db.execute("SELECT checkpoint FROM learners").fetchone()
    return OnlineLearner.restore(seal.unseal(key, blob))


async def test_the_learner_learns_the_stream_and_publishes(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        o = Online(c)
        await o.setup(online_policy(publish_every=2000, rollout=tpb.ONLINE_ROLLOUT_DIRECT))
        await o.append(examples(5000, seed=1))
        await c.start_trainer("t1")
        try:
            status = await o.applied(5000)
        except TimeoutError:
            print("".join(c.trainers["t1"].output)[-5000:], await o.status())
            raise
        assert status.last_sequence == 5000 and status.quarantined == {}
        assert status.prequential_accuracy > 0.9

        async def published() -> tpb.LearnerStatus | None:
            s = await o.status()
            return s if s is not None and s.published_version >= 2 else None

        try:
            shown = await async_wait_until(published, 60, "two published versions")
        except TimeoutError:
            print("".join(c.trainers["t1"].output)[-5000:], await o.status())
            raise
        assert (
            shown.publish_decision == f"v{shown.published_version} takes all the traffic (direct)"
        )
        rollout = await c.stub.GetRollout(
            rpb.GetRolloutRequest(name="models/clf/rollout"), metadata=c.md
        )
        assert [t.version for t in rollout.rollout.targets] == [shown.published_version]
        version = await c.stub.GetVersion(
            rpb.GetVersionRequest(name=f"models/clf/versions/{shown.published_version}"),
            metadata=c.md,
        )
        v = version.version
        assert v.lineage.pipeline_run == "models/clf/learner"
        assert v.approval.state == rpb.APPROVAL_STATE_APPROVED
        assert int(v.params["last_sequence"]) >= 4000 and v.metrics["prequential_accuracy"] > 0.9
        # Bad examples never reach the model: counted by reason, alerted.
        bad = examples(10, seed=2, start=10_000)
        for event in bad[:4]:
            event.example.features[0] = float("nan")
        for event in bad[4:7]:
            del event.example.features[-1]
        for event in bad[7:]:
            event.example.label.class_index = 7
        await o.append(bad)

        async def quarantined() -> dict[str, int] | None:
            s = await o.status()
            return dict(s.quarantined) if s is not None and s.quarantined else None

        counts = await async_wait_until(quarantined, 30, "the bad examples quarantined")
        assert counts == {"NaN or infinity": 4, "wrong feature count": 3, "unknown label": 3}
        alerts = await c.stub.ListAlerts(rpb.ListAlertsRequest(model="clf"), metadata=c.md)
        assert {a.alert for a in alerts.alerts} >= {"LearnerQuarantined"}


async def test_sigkills_change_nothing_and_one_learner_applies(tmp_path: Path) -> None:
    """20 SIGKILLs at random points of a 100,000-example replay: the final weights are
    byte for byte those of an uninterrupted learner, and every sequence applied once."""
    rows, batch = 100_000, 8  # small batches: the replay lasts long enough for 20 kills
    stream = examples(rows, seed=3)
    async with cluster(tmp_path) as c:
        o = Online(c)
        await o.setup(
            online_policy(
                publish_every=10**9, checkpoint_interval=training.seconds(0.2), batch_size=batch
            )
        )
        await o.append(stream)
        rng = random.Random(7)
        resumes: list[float] = []
        await c.start_trainer("t1", "--lease-seconds", "3")
        await c.start_trainer("t2", "--lease-seconds", "3")  # one learner per model
        committed = 0
        # Random points of the stream to kill at (not of time: a faster learner would end
        # the replay before the 20th kill), at least 2,000 examples apart.
        points = sorted(rng.sample(range(2_000, 90_000, 2_000), 20))
        for point in points:
            started = time.monotonic()
            status = await o.applied(committed + 1, within=30)  # resumed, and committing
            resumes.append(time.monotonic() - started)
            status = await o.applied(point, within=60)  # then on to the kill point
            assert status.applied < rows, f"the replay ended after {len(resumes)} kills"
            # One learner: the holder is the same, or it changed hands under a newer token
            # (a holder too slow to renew its 3 s lease on a busy box loses it).
            now = await o.status() or status
            assert now.learner == status.learner or now.fencing_token > status.fencing_token
            others = [n for n in c.trainers if f"trainers/{n}" != now.learner]
            await asyncio.sleep(rng.uniform(0.0, 0.1))  # wherever it is then (noqa: sleep-ok)
            holder = now.learner.split("/")[1]
            c.trainers[holder].popen.kill()  # SIGKILL, wherever it is
            c.trainers[holder].popen.wait()
            committed = (await o.status() or status).applied
            await c.start_trainer(holder, "--lease-seconds", "3")
            assert others  # the other trainer stood by all along
        final = await o.applied(rows, within=120)
    expected = sum(range(1, rows + 1))
    assert final.applied == rows and final.sequence_sum == expected and final.last_sequence == rows
    killed = checkpoint(tmp_path, seal.derive_key(c.trainer_token))
    straight = OnlineLearner(settings_of(online_policy(batch_size=batch)))
    seqs = np.arange(1, rows + 1, dtype=np.int64)
    x = np.array([e.example.features for e in stream])
    y = np.array([e.example.label.class_index for e in stream])
    for i in range(0, rows, batch):
        part = seqs[i : i + batch]
        straight.step(part, x[i : i + batch], y[i : i + batch], int(part[-1]))
    assert killed.applied == straight.applied == rows
    assert killed.model.weights().tobytes() == straight.model.weights().tobytes()
    assert pickle.dumps(killed.model.standardizer) == pickle.dumps(straight.model.standardizer)
    assert len(resumes) == 20 and max(resumes[1:]) < 5, resumes
