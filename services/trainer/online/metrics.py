"""Prometheus metrics of the online learners in a trainer process (`liveml_learner_*`).

Set by the learner that holds a model's lease; when it stops (lease lost, policy
changed, trainer stopping) its gauges are removed, so only the holder reports a
model's lag, accuracy and drift state — two trainers never both claim to be behind.
Counters (examples learned, publishes, quarantined) are this process's own: sum
them across trainers, and take `rate()` of examples learned for examples per second.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from services.trainer.online.state import DriftState

if TYPE_CHECKING:
    from services.trainer.online.learner import OnlineLearner

DRIFT_VALUES = {DriftState.STABLE: 0, DriftState.WARNING: 1, DriftState.DRIFT: 2}

LAG = Gauge(
    "liveml_learner_lag_events",
    "The event stream's newest sequence minus the last sequence the model's learner applied.",
    ["model"],
)
APPLIED_SEQUENCE = Gauge(
    "liveml_learner_applied_sequence",
    "The last stream sequence the model's learner applied.",
    ["model"],
)
LEARNED = Counter(
    "liveml_learner_examples_learned",
    "Examples the model's learner scored and learned (rate() = examples per second).",
    ["model"],
)
ACCURACY = Gauge(
    "liveml_learner_prequential_accuracy",
    "Share of the recent window's examples the model predicted right before learning them.",
    ["model"],
)
RMSE = Gauge(
    "liveml_learner_prequential_rmse",
    "Root mean squared error over the recent window, each example scored before learned.",
    ["model"],
)
DRIFT = Gauge(
    "liveml_learner_drift_state",
    "The drift detector's state: 0 stable, 1 warning (a background learner runs), 2 drift.",
    ["model"],
)
PUBLISHES = Counter(
    "liveml_learner_publishes",
    "Publish attempts by outcome (published; held: a gate check failed; stopped: a "
    "guardrail stopped publishing).",
    ["model", "outcome"],
)
QUARANTINED = Counter(
    "liveml_learner_quarantined",
    "Examples set aside unlearned, by reason.",
    ["model", "reason"],
)
PUBLISH_OUTCOMES = ("published", "held", "stopped")
_GAUGES = (LAG, APPLIED_SEQUENCE, ACCURACY, RMSE, DRIFT)


def started(model: str) -> None:
    """A learner holds the model here: its series exist from now on, at zero."""
    LEARNED.labels(model)
    for outcome in PUBLISH_OUTCOMES:
        PUBLISHES.labels(model, outcome)
    DRIFT.labels(model).set(0)


def observe(model: str, learner: OnlineLearner, lag: int) -> None:
    """The learner's gauges as of now."""
    LAG.labels(model).set(lag)
    APPLIED_SEQUENCE.labels(model).set(learner.last_sequence)
    if learner.prequential_accuracy is not None:
        ACCURACY.labels(model).set(learner.prequential_accuracy)
    if learner.prequential_rmse is not None:
        RMSE.labels(model).set(learner.prequential_rmse)
    DRIFT.labels(model).set(DRIFT_VALUES[learner.drift_state])


def learned(model: str, count: int, quarantined: dict[str, int]) -> None:
    if count:
        LEARNED.labels(model).inc(count)
    for reason, n in quarantined.items():
        if n > 0:
            QUARANTINED.labels(model, reason).inc(n)


def published(model: str, outcome: str) -> None:
    PUBLISHES.labels(model, outcome).inc()


def stopped(model: str) -> None:
    """This process no longer learns the model: its gauges go (the counters stay)."""
    for gauge in _GAUGES:
        with contextlib.suppress(KeyError):  # it never reported
            gauge.remove(model)
