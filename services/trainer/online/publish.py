"""What an online learner publishes, and whether: its model as ONNX (the standardiser
and the estimator in one pipeline), the light gate and the guardrails.

The light gate:
- `prequential`: accuracy over the recent window, each example scored before it was
  learned, against the serving version's live accuracy (at most `max_accuracy_gap`
  below it; with too little feedback there, said so and not held against it);
- `forgetting`: accuracy on the replay reservoir (old examples) at most
  `max_forgetting` below the last published version's.
The guardrails:
- `finite_weights`: no NaN or infinity;
- `weight_change`: ||w - w_published|| / ||w_published|| within `max_weight_change`
  (a label-flip storm moves the weights far);
- `positive_rate`: the predicted positive rate within `positive_rate_band` of the label
  rate;
- `label_rate`: a label rate collapsed below `min_label_rate` (or above 1 - it) stops
  publishing altogether until it recovers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.trainer import fit
from services.trainer.online.learner import Model, OnlineLearner

DEFAULTS = {
    "max_accuracy_gap": 0.02,
    "max_forgetting": 0.05,
    "max_weight_change": 1.0,
    "positive_rate_band": 0.15,
    "min_label_rate": 0.01,
}
MIN_LIVE_FEEDBACK = 30


def limit(online: tpb.OnlinePolicy, name: str) -> float:
    value: float = getattr(online, name)
    return value if value > 0 else DEFAULTS[name]


def export(model: Model, width: int, signature: rpb.Signature, task: int) -> bytes:
    scaler = StandardScaler()
    s = model.standardizer
    assert s.mean is not None
    scaler.mean_ = s.mean.copy()
    scaler.scale_ = s.scale.copy()
    scaler.var_ = s.scale**2
    scaler.n_features_in_ = width
    scaler.n_samples_seen_ = s.count
    pipeline = Pipeline([("scale", scaler), ("model", model.estimator)])
    return fit.export(pipeline, width, signature, task, classifier=model.estimator)


@dataclass
class Verdict:
    checks: list[tpb.GateCheck]
    stop: str  # non-empty: a guardrail stops publishing altogether

    @property
    def passed(self) -> bool:
        return not self.stop and all(c.passed for c in self.checks)

    def summary(self) -> str:
        failed = [f"{c.name}: {c.text}" for c in self.checks if not c.passed]
        return self.stop or "; ".join(failed) or "passed"


def _check(
    name: str, value: float, bound: float, passed: bool, text: str, **kw: Any
) -> tpb.GateCheck:
    check = tpb.GateCheck(name=name, candidate=value, limit=bound, passed=passed, text=text)
    if kw.get("production") is not None:
        check.production = kw["production"]
    return check


def judge(
    learner: OnlineLearner,
    online: tpb.OnlinePolicy,
    live_accuracy: float | None,
    live_feedback: int,
    published_weights: np.ndarray | None,
    published_reservoir: float | None,
) -> Verdict:
    checks: list[tpb.GateCheck] = []
    weights = learner.model.weights()
    finite = bool(np.isfinite(weights).all())
    checks.append(
        _check(
            "finite_weights",
            0.0 if finite else 1.0,
            0.0,
            finite,
            "every weight finite" if finite else "a weight is NaN or infinite",
        )
    )
    if not finite:
        return Verdict(checks, "")
    gap = limit(online, "max_accuracy_gap")
    accuracy = learner.prequential_accuracy
    if not learner.settings.classification:
        rmse = learner.prequential_rmse or 0.0
        checks.append(
            _check(
                "prequential",
                rmse,
                0.0,
                True,
                f"prequential RMSE {rmse:.4f} over the window (regression: reported)",
            )
        )
    elif accuracy is None:
        checks.append(_check("prequential", 0.0, gap, False, "no example was scored yet"))
    elif live_accuracy is None or live_feedback < MIN_LIVE_FEEDBACK:
        checks.append(
            _check(
                "prequential",
                accuracy,
                gap,
                True,
                f"prequential accuracy {accuracy:.4f}; the serving version has "
                f"{live_feedback} feedback labels (fewer than {MIN_LIVE_FEEDBACK}): no live "
                "accuracy to compare with",
            )
        )
    else:
        ok = accuracy >= live_accuracy - gap
        checks.append(
            _check(
                "prequential",
                accuracy,
                gap,
                ok,
                f"prequential accuracy {accuracy:.4f} vs the serving version's live "
                f"{live_accuracy:.4f} over {live_feedback} labels (at most {gap:g} below)",
                production=live_accuracy,
            )
        )
    if learner.settings.classification:
        reservoir = learner.reservoir_accuracy()
        forgetting = limit(online, "max_forgetting")
        if reservoir is None or published_reservoir is None:
            checks.append(
                _check(
                    "forgetting",
                    reservoir or 0.0,
                    forgetting,
                    True,
                    "first publish: nothing to compare the reservoir accuracy with",
                )
            )
        else:
            ok = reservoir >= published_reservoir - forgetting
            checks.append(
                _check(
                    "forgetting",
                    reservoir,
                    forgetting,
                    ok,
                    f"accuracy on {len(learner.reservoir)} replayed past examples "
                    f"{reservoir:.4f} vs {published_reservoir:.4f} when last published "
                    f"(at most {forgetting:g} lower)",
                    production=published_reservoir,
                )
            )
    change_limit = limit(online, "max_weight_change")
    if published_weights is None or published_weights.shape != weights.shape:
        checks.append(
            _check(
                "weight_change",
                0.0,
                change_limit,
                True,
                "first publish: no weights to compare with",
            )
        )
    else:
        base = float(np.linalg.norm(published_weights)) or 1.0
        change = float(np.linalg.norm(weights - published_weights)) / base
        checks.append(
            _check(
                "weight_change",
                change,
                change_limit,
                change <= change_limit,
                f"||dw|| / ||w|| = {change:.3f} since the last publish (at most {change_limit:g})",
            )
        )
    stop = ""
    if learner.settings.classification:
        band = limit(online, "positive_rate_band")
        predicted, labels = learner.positive_rate, learner.label_rate
        if predicted is not None and labels is not None:
            ok = abs(predicted - labels) <= band
            checks.append(
                _check(
                    "positive_rate",
                    predicted,
                    band,
                    ok,
                    f"predicted positive rate {predicted:.3f} vs label rate {labels:.3f} "
                    f"(within {band:g})",
                    production=labels,
                )
            )
        floor = limit(online, "min_label_rate")
        if labels is not None and (labels < floor or labels > 1 - floor):
            stop = (
                f"the label rate collapsed to {labels:.4f} over the last "
                f"{len(learner.labels_positive)} examples (alert below {floor:g} or above "
                f"{1 - floor:g}): publishing stopped"
            )
    return Verdict(checks, stop)
