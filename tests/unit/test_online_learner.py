"""The online learner's core, in process: drift found fast and rarely by mistake,
forgetting held off by replay, guardrails, sealed checkpoints that restore exactly."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.trainer.online import publish, seal
from services.trainer.online.learner import OnlineLearner, OnlineSettings

W = np.random.default_rng(5).normal(size=20)
W /= np.linalg.norm(W)
SETTINGS = OnlineSettings(
    width=20, params=(("eta0", 0.01), ("learning_rate", "constant"), ("loss", "log_loss"))
)


def phase(
    n: int, seed: int, shift: float = 0.0, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20)) + shift * W
    y = (x @ W > 0).astype(int)
    return x, (1 - y if flip else y)


def feed(learner: OnlineLearner, x: np.ndarray, y: np.ndarray, batch: int = 256) -> None:
    start = learner.last_sequence
    for i in range(0, len(y), batch):
        seqs = np.arange(start + i + 1, start + i + 1 + len(y[i : i + batch]))
        learner.step(seqs, x[i : i + batch], y[i : i + batch], int(seqs[-1]))


def drifts(learner: OnlineLearner) -> list[int]:
    return [s for s, state in learner.drifts if state == "drift"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_abrupt_drift_is_found_within_1000_examples_and_accuracy_recovers(seed: int) -> None:
    learner = OnlineLearner(SETTINGS)
    feed(learner, *phase(20_000, seed))
    assert drifts(learner) == []
    feed(learner, *phase(20_000, 50 + seed, flip=True))
    found = [s for s in drifts(learner) if s > 20_000]
    assert found and found[0] - 20_000 <= 1000, learner.drifts
    assert learner.prequential_accuracy is not None and learner.prequential_accuracy > 0.95


def test_at_most_one_false_alarm_in_100k_stationary_examples() -> None:
    for seed in (10, 11):
        learner = OnlineLearner(SETTINGS)
        feed(learner, *phase(100_000, seed))
        assert len(drifts(learner)) <= 1, learner.drifts


def test_replay_keeps_what_a_learner_without_it_forgets() -> None:
    # Balanced data, then a long stretch where nearly every label is positive.
    results = {}
    for ratio in (0.0, 0.2):
        learner = OnlineLearner(OnlineSettings(**{**SETTINGS.__dict__, "replay_ratio": ratio}))
        feed(learner, *phase(20_000, 1))
        feed(learner, *phase(30_000, 2, shift=2.0))
        x, y = phase(5000, 9)
        results[ratio] = float(np.mean(learner.model.predict(x) == y))
    assert results[0.2] >= 0.95 > 0.92 > results[0.0], results


def test_bad_examples_are_quarantined_by_reason() -> None:
    learner = OnlineLearner(SETTINGS)
    x, y = phase(10, 1)
    x[0, 3] = np.nan
    x[1, 0] = np.inf
    y[2] = 5
    learner.step(np.arange(1, 11), x, y, 10)
    assert learner.quarantined == {"NaN or infinity": 2, "unknown label": 1}
    assert learner.applied == 7 and learner.last_sequence == 10
    assert learner.sequence_sum == sum(range(4, 11))


def test_a_checkpoint_restores_exactly_and_only_with_its_key() -> None:
    x, y = phase(6000, 4)
    whole = OnlineLearner(SETTINGS)
    feed(whole, x, y)
    half = OnlineLearner(SETTINGS)
    feed(half, x[:3072], y[:3072])
    key = seal.derive_key("trainer token")
    blob = seal.seal(key, half.checkpoint())
    resumed = OnlineLearner.restore(seal.unseal(key, blob))
    feed(resumed, x[3072:], y[3072:])
    assert resumed.model.weights().tobytes() == whole.model.weights().tobytes()
    assert resumed.sequence_sum == whole.sequence_sum
    with pytest.raises(seal.SealError, match="MAC does not match"):
        seal.unseal(seal.derive_key("another"), blob)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(seal.SealError, match="MAC does not match"):
        seal.unseal(key, tampered)


def judge(learner: OnlineLearner, gap: float = 0.0, **published: object) -> publish.Verdict:
    return publish.judge(
        learner,
        tpb.OnlinePolicy(max_accuracy_gap=gap),
        published.get("live"),  # type: ignore[arg-type]
        int(published.get("feedback", 0)),  # type: ignore[arg-type]
        published.get("weights"),  # type: ignore[arg-type]
        published.get("reservoir"),  # type: ignore[arg-type]
    )


def test_guardrails_hold_a_label_flip_storm_and_stop_on_a_collapsed_label_rate() -> None:
    learner = OnlineLearner(SETTINGS)
    feed(learner, *phase(20_000, 1))
    first = judge(learner)
    assert first.passed, first.summary()
    learner.published(1)
    # Labels flipped for a while: the learner follows them, and its weights swing.
    feed(learner, *phase(5000, 2, flip=True))
    storm = judge(
        learner,
        weights=learner.published_weights,
        reservoir=learner.published_reservoir,
        live=0.97,
        feedback=500,
    )
    failed = {c.name for c in storm.checks if not c.passed}
    assert not storm.passed and "weight_change" in failed, storm.summary()
    # A label stream that collapsed to one class stops publishing altogether.
    collapsed = OnlineLearner(SETTINGS)
    x, _ = phase(5000, 3)
    feed(collapsed, x, np.ones(5000, dtype=int))
    verdict = judge(collapsed)
    assert verdict.stop.startswith("the label rate collapsed to 1.0000")
    assert not verdict.passed


def test_a_learner_behind_the_live_version_is_held() -> None:
    learner = OnlineLearner(SETTINGS)
    feed(learner, *phase(3000, 1))
    verdict = judge(learner, gap=0.005, live=0.999, feedback=500)
    (check,) = [c for c in verdict.checks if c.name == "prequential"]
    assert not check.passed and "vs the serving version's live 0.9990" in check.text
    assert "(at most 0.005 below)" in check.text
    few = judge(learner, live=0.999, feedback=5)
    (check,) = [c for c in few.checks if c.name == "prequential"]
    assert check.passed and "no live accuracy to compare with" in check.text


@pytest.mark.parametrize(
    "estimator, classes",
    [
        ("sklearn.linear_model.SGDClassifier", (0, 1)),
        ("sklearn.linear_model.SGDClassifier", (0, 1, 2)),
        ("sklearn.linear_model.Perceptron", (0, 1, 2)),
    ],
)
def test_the_short_predict_of_linear_classifiers_is_sklearns(
    estimator: str, classes: tuple[int, ...]
) -> None:
    settings = OnlineSettings(width=20, classes=classes, estimator=estimator)
    learner = OnlineLearner(settings)
    x, _ = phase(3000, seed=8)
    y = np.digitize(x @ W, [-0.5, 0.5]) if len(classes) == 3 else (x @ W > 0).astype(int)
    feed(learner, x[:2000], y[:2000])
    model = learner.model
    ours = model.predict(x[2000:])
    theirs = model.estimator.predict(model.standardizer.transform(x[2000:]))
    assert ours is not None and ours.dtype == theirs.dtype
    assert np.array_equal(ours, theirs)
    assert len(set(ours.tolist())) == len(classes)  # not one class everywhere


def test_the_reservoir_keeps_a_uniform_sample_of_each_class() -> None:
    from services.trainer.online.state import Reservoir

    reservoir = Reservoir(per_class=500, seed=3)
    rows = np.arange(20_000, dtype=np.float64).reshape(-1, 1)
    labels = (np.arange(20_000) % 4 == 0).astype(int)  # one class a quarter of the other
    for i in range(0, 20_000, 256):
        reservoir.add(rows[i : i + 256], labels[i : i + 256], stratify=True)
    assert reservoir.seen == {0: 15_000, 1: 5_000}
    assert {k: len(v) for k, v in reservoir.rows.items()} == {0: 500, 1: 500}
    for key in (0, 1):
        kept = np.array([r[0] for r in reservoir.rows[key]])
        assert len(set(kept.tolist())) == 500  # no row twice
        assert all((int(v) % 4 == 0) == bool(key) for v in kept)  # each in its class
        # Uniform over the whole stream: the mean position is near the middle.
        assert abs(kept.mean() - 10_000) < 1_000
    x, y = reservoir.sample(10)
    assert x.shape == (10, 1) and sorted(y.tolist()) == [0] * 5 + [1] * 5
