"""The online learner as trainer processes: a learner paused past its lease is fenced
off when it wakes (only its successor applies, every sequence once, the weights an
uninterrupted learner makes); a stream whose labels collapse to one class stops
publishing with an alert, and the last good version keeps serving."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.trainer.online import seal
from services.trainer.online.learner import OnlineLearner
from services.trainer.online.runner import settings_of
from tests.e2e.test_online import Online, checkpoint, examples, online_policy
from tests.helpers import training
from tests.helpers.cluster import cluster
from tests.helpers.wait import async_wait_until, wait_until

pytestmark = pytest.mark.timeout(300)


async def test_a_learner_paused_past_its_lease_is_fenced_off(tmp_path: Path) -> None:
    rows, batch = 20_000, 8  # small batches: the replay lasts a while
    stream = examples(rows, seed=5)
    async with cluster(tmp_path) as c:
        o = Online(c)
        await o.setup(
            online_policy(
                publish_every=10**9, checkpoint_interval=training.seconds(0.2), batch_size=batch
            )
        )
        await o.append(stream)
        t1 = await c.start_trainer("t1", "--lease-seconds", "3")
        first = await o.applied(500, within=60)
        assert first.learner == "trainers/t1" and first.fencing_token == 1
        t2 = await c.start_trainer("t2", "--lease-seconds", "3")
        os.kill(t1.popen.pid, signal.SIGSTOP)  # t1 keeps its state, but not its lease
        try:

            async def taken_over() -> tpb.LearnerStatus | None:
                s = await o.status()
                return s if s is not None and s.learner == "trainers/t2" else None

            second = await async_wait_until(taken_over, 30, "t2 to take the learner over")
        finally:
            os.kill(t1.popen.pid, signal.SIGCONT)
        assert second.fencing_token == 2 and second.applied < rows
        # Woken, t1 goes on from where it was: its next commit is refused, and it stops.
        line = t1.expect("the learner of clf stopped", timeout=30)
        assert "fencing token 2, not trainers/t1 with 1: this learner lost it" in line
        final = await o.applied(rows, within=120)
        assert t2.popen.poll() is None
    assert final.learner == "trainers/t2" and final.fencing_token == 2
    assert final.sequence_sum == sum(range(1, rows + 1)) and final.last_sequence == rows
    kept = checkpoint(tmp_path, seal.derive_key(c.trainer_token))
    straight = OnlineLearner(settings_of(online_policy(batch_size=batch)))
    seqs = np.arange(1, rows + 1, dtype=np.int64)
    x = np.array([e.example.features for e in stream])
    y = np.array([e.example.label.class_index for e in stream])
    for i in range(0, rows, batch):
        part = seqs[i : i + batch]
        straight.step(part, x[i : i + batch], y[i : i + batch], int(part[-1]))
    assert kept.applied == rows
    assert kept.model.weights().tobytes() == straight.model.weights().tobytes()


async def test_a_collapsed_label_rate_stops_publishing_with_an_alert(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        o = Online(c)
        await o.setup(online_policy(publish_every=1000, rollout=tpb.ONLINE_ROLLOUT_DIRECT))
        await o.append(examples(3000, seed=6))
        await c.start_trainer("t1")

        async def published() -> tpb.LearnerStatus | None:
            s = await o.status()
            return s if s is not None and s.applied >= 3000 and s.published_version else None

        good = await async_wait_until(published, 60, "a version published from good data")
        assert not good.publishing_stopped
        # Every label 0 from here: over the window of 1,000 the label rate is 0.
        await o.append(examples(3000, seed=7, start=10_000, positive=0.0))

        async def stopped() -> tpb.LearnerStatus | None:
            s = await o.status()
            return s if s is not None and s.publishing_stopped and s.applied >= 6000 else None

        try:
            held = await async_wait_until(stopped, 60, "publishing stopped")
        except TimeoutError:
            print("".join(c.trainers["t1"].output)[-5000:], await o.status())
            raise
        assert "the label rate collapsed to 0.0000" in held.stopped_reason
        assert "publishing stopped" in held.stopped_reason
        alerts = await c.stub.ListAlerts(
            rpb.ListAlertsRequest(model="clf", firing_only=True), metadata=c.md
        )
        stop = [a for a in alerts.alerts if a.alert == "LearnerStopped"]
        assert len(stop) == 1 and stop[0].severity == rpb.Alert.SEVERITY_CRITICAL
        # Raised when publishing stopped: the first check to hold may be another one (the
        # reservoir's accuracy falls as the model learns one class), the stop stays.
        assert stop[0].summary.startswith("the online learner of clf stopped publishing: ")

        # Nothing learned from the collapsed stream goes out: more of it, more publishes
        # due, each held, and no new version.
        async def online_versions() -> dict[int, int]:
            reply = await c.stub.ListVersions(
                rpb.ListVersionsRequest(parent="models/clf"), metadata=c.md
            )
            # Every version, the batch ones too: a drift's retrain is asked for only once
            # a version after it passes the gate, never on a collapsed stream.
            return {v.number: int(v.params.get("last_sequence", "0")) for v in reply.versions}

        at_stop = await online_versions()
        await o.append(examples(2000, seed=8, start=20_000, positive=0.0))
        logged = "held a publish: the label rate collapsed"
        await o.applied(8000, within=60)
        wait_until(
            lambda: "".join(c.trainers["t1"].output).count(logged) >= 2, 30, "two holds logged"
        )
        assert await online_versions() == at_stop
        # At most the first publish window of the collapsed stream was ever published.
        assert max(at_stop.values()) <= 3000 + 1000, at_stop
        rollout = await c.stub.GetRollout(
            rpb.GetRolloutRequest(name="models/clf/rollout"), metadata=c.md
        )
        assert {t.version for t in rollout.rollout.targets if t.percent} <= set(at_stop)
