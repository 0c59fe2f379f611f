"""The online learner's Prometheus metrics, scraped from a trainer process's /metrics:
examples learned, position and lag, prequential accuracy, drift state, publishes and
quarantined examples follow the stream; when the learner stops its gauges go."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from tests.conftest import free_port
from tests.e2e.test_online import Online, examples, online_policy
from tests.helpers.cluster import cluster
from tests.helpers.procs import wait_port
from tests.helpers.wait import async_wait_until

pytestmark = pytest.mark.timeout(240)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted({"model": "clf", **labels}.items()))))


async def test_the_learners_metrics_follow_the_stream(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        o = Online(c)
        await o.setup(online_policy(publish_every=2000, rollout=tpb.ONLINE_ROLLOUT_DIRECT))
        await o.append(examples(5000, seed=1))
        port = free_port()
        trainer = await c.start_trainer("t1", "--metrics-port", str(port))
        wait_port(port, trainer)  # served right after the gRPC port

        async def scraped(check: object) -> dict | None:
            samples = await asyncio.to_thread(scrape, port)
            return samples if check(samples) else None  # type: ignore[operator]

        def learned(count: int) -> object:
            return lambda s: value(s, "liveml_learner_examples_learned_total") == count

        samples = await async_wait_until(
            lambda: scraped(learned(5000)), 60, "5000 examples learned"
        )
        status = await o.applied(5000)  # the registry's copy: as of the next commit
        assert value(samples, "liveml_learner_applied_sequence") == 5000
        assert value(samples, "liveml_learner_lag_events") == 0
        accuracy = value(samples, "liveml_learner_prequential_accuracy")
        assert accuracy is not None and accuracy > 0.9
        assert accuracy == pytest.approx(status.prequential_accuracy)
        states = {"stable": 0, "warning": 1, "drift": 2}
        assert value(samples, "liveml_learner_drift_state") == states[status.drift_state]
        assert value(samples, "liveml_learner_publishes_total", outcome="stopped") == 0

        def published(at_least: int) -> object:
            return lambda s: (
                (value(s, "liveml_learner_publishes_total", outcome="published") or 0) >= at_least
            )

        await async_wait_until(lambda: scraped(published(2)), 60, "two publishes counted")

        # More of the stream, some of it bad: the counters and the position move on.
        bad = examples(10, seed=2, start=10_000)
        for event in bad[:4]:
            event.example.features[0] = float("nan")
        for event in bad[4:7]:
            del event.example.features[-1]
        await o.append([*bad, *examples(1000, seed=4, start=20_000)])
        samples = await async_wait_until(lambda: scraped(learned(6003)), 60, "6003 learned")
        assert value(samples, "liveml_learner_quarantined_total", reason="NaN or infinity") == 4
        assert value(samples, "liveml_learner_quarantined_total", reason="wrong feature count") == 3
        assert value(samples, "liveml_learner_applied_sequence") == 6010
        assert value(samples, "liveml_learner_lag_events") == 0

        # The policy leaves online mode: the learner stops, and so do its gauges.
        batch = online_policy()
        batch.mode = tpb.TRAINING_MODE_BATCH
        await o.training.SetTrainingPolicy(
            tpb.SetTrainingPolicyRequest(policy=batch), metadata=c.md
        )

        def gone(s: dict) -> bool:
            return value(s, "liveml_learner_lag_events") is None

        samples = await async_wait_until(lambda: scraped(gone), 30, "the learner's gauges gone")
        assert value(samples, "liveml_learner_drift_state") is None
        assert value(samples, "liveml_learner_examples_learned_total") == 6003  # counters stay
