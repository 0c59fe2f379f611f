"""The online learner's core: predict, then learn, one mini-batch at a time — exactly
reproducible from its checkpoint.

Each batch of labelled examples (in stream order) is first checked (a wrong number of
features, a NaN or infinity, a class the model does not know: quarantined with the
reason, never learned), then scored by the current model (prequential evaluation:
every example is judged before it is learned from), fed to the drift detector, and
learned with `partial_fit` behind a running standardiser, together with a replay
sample from a class-stratified reservoir of past examples (against forgetting).

On a drift WARNING a background learner starts from the examples that follow; on
DRIFT it replaces the foreground (or a fresh one starts), the detector resets, and the
report says so (the runner raises an alert and asks for a batch retrain).

Everything that decides the next update — estimator with its optimizer state,
standardiser, reservoir and its random generator, detector, background learner, the
last applied sequence — is in one picklable object: the checkpoint. Given the same
stream and the same batch boundaries, the weights are the same however often the
learner was stopped and restored.
"""

from __future__ import annotations

import importlib
import pickle
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import Perceptron, SGDClassifier

from services.trainer.online.state import DDM, DriftState, PageHinkley, Reservoir, Standardizer

Array = npt.NDArray[np.float64]
FORMAT = 1  # of the checkpoint bytes
BACKGROUND_MIN = 200  # examples a background learner needs before it may take over
# Examples without a new warning after which a warning counts as a false alarm (the
# background learner is dropped).
WARNING_PATIENCE = 1000
# A model still learning its first examples gets better fast, which the detector would
# read as a changing error: it watches only a model that learned this many.
DETECTOR_WARMUP = 2000
# (PassiveAggressiveClassifier, deprecated since scikit-learn 1.8, takes sklearn's own path.)
LINEAR_CLASSIFIERS = (SGDClassifier, Perceptron)


@dataclass(frozen=True)
class OnlineSettings:
    classification: bool = True
    classes: tuple[int, ...] = (0, 1)
    width: int = 0
    estimator: str = "sklearn.linear_model.SGDClassifier"
    params: tuple[tuple[str, Any], ...] = ()
    replay_ratio: float = 0.2
    reservoir_per_class: int = 500
    window: int = 1000  # examples in the prequential accuracy window
    seed: int = 0


def make_estimator(settings: OnlineSettings) -> Any:
    module, _, name = settings.estimator.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    params = dict(settings.params)
    params.setdefault("random_state", settings.seed)
    estimator = cls(**params)
    if not hasattr(estimator, "partial_fit"):
        raise ValueError(f"{settings.estimator} has no partial_fit: it cannot learn online")
    return estimator


@dataclass
class Model:
    """One learner's model: the estimator behind its standardiser."""

    estimator: Any
    standardizer: Standardizer = field(default_factory=Standardizer)
    learned: int = 0

    def predict(self, x: Array) -> npt.NDArray[Any] | None:
        if not self.learned:
            return None
        x = self.standardizer.transform(x)
        estimator = self.estimator
        if isinstance(estimator, LINEAR_CLASSIFIERS) and hasattr(estimator, "coef_"):
            # What their predict computes (sklearn's LinearClassifierMixin), without its
            # input validation, which costs more than the product on a few hundred rows.
            scores = x @ estimator.coef_.T + estimator.intercept_
            if scores.shape[1] == 1:
                return estimator.classes_[(scores[:, 0] > 0).astype(int)]  # type: ignore[no-any-return]
            return estimator.classes_[scores.argmax(axis=1)]  # type: ignore[no-any-return]
        return estimator.predict(x)  # type: ignore[no-any-return]

    def learn(self, x: Array, y: npt.NDArray[Any], replay: tuple[Array, Any], classes: Any) -> None:
        self.standardizer.update(x)
        rx, ry = replay
        if len(rx):
            x, y = np.vstack([x, rx]), np.concatenate([y, ry])
        kwargs = {"classes": np.array(classes)} if classes is not None else {}
        self.estimator.partial_fit(self.standardizer.transform(x), y, **kwargs)
        self.learned += len(x)

    def weights(self) -> Array:
        coef = np.ravel(getattr(self.estimator, "coef_", np.zeros(0)))
        intercept = np.ravel(getattr(self.estimator, "intercept_", np.zeros(0)))
        return np.concatenate([coef, intercept]).astype(np.float64)


@dataclass
class StepReport:
    applied: int
    quarantined: dict[str, int]
    scored: int
    correct: int
    drift: DriftState
    replaced: bool  # the background learner took over (or a fresh one started)


@dataclass
class OnlineLearner:
    settings: OnlineSettings
    model: Model = field(init=False)
    background: Model | None = None
    reservoir: Reservoir = field(init=False)
    detector: DDM | PageHinkley = field(init=False)
    last_sequence: int = 0
    applied: int = 0
    sequence_sum: int = 0  # of every applied sequence: proves none was skipped or repeated
    quarantined: dict[str, int] = field(default_factory=dict)
    recent: deque[int] = field(init=False)  # 1 = correct, over the last `window` scored
    squared: deque[float] = field(init=False)  # squared errors (regression), same window
    positives: deque[int] = field(init=False)  # predicted positive, same window
    labels_positive: deque[int] = field(init=False)
    drift_state: DriftState = DriftState.STABLE
    calm: int = 0  # examples scored since the last warning or drift
    # The last published version, kept with the state: what the next publish is judged against.
    published_version: int = 0
    published_weights: Array | None = None
    published_reservoir: float | None = None
    since_publish: int = 0  # examples applied since then
    publish_from: int = 0  # the first sequence applied since then
    drifts: list[tuple[int, str]] = field(default_factory=list)  # (sequence, state)

    def __post_init__(self) -> None:
        self.model = Model(make_estimator(self.settings))
        self.reservoir = Reservoir(self.settings.reservoir_per_class, self.settings.seed)
        self.detector = DDM() if self.settings.classification else PageHinkley()
        window = self.settings.window
        self.recent = deque(maxlen=window)
        self.squared = deque(maxlen=window)
        self.positives = deque(maxlen=window)
        self.labels_positive = deque(maxlen=window)

    # --- learning ------------------------------------------------------------------------

    def _check(self, x: Array, y: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        keep = np.ones(len(y), dtype=bool)
        reasons: list[tuple[npt.NDArray[np.bool_], str]] = []
        finite = np.isfinite(x).all(axis=1) & np.isfinite(y.astype(np.float64))
        reasons.append((~finite, "NaN or infinity"))
        if self.settings.classification:
            known = np.isin(y, np.array(self.settings.classes))
            reasons.append((finite & ~known, "unknown label"))
        for bad, why in reasons:
            count = int((bad & keep).sum())
            if count:
                self.quarantined[why] = self.quarantined.get(why, 0) + count
            keep &= ~bad
        return keep

    def quarantine(self, reason: str, count: int = 1) -> None:
        self.quarantined[reason] = self.quarantined.get(reason, 0) + count

    def step(
        self,
        sequences: npt.NDArray[np.int64],
        x: Array,
        y: npt.NDArray[Any],
        through: int = 0,
    ) -> StepReport:
        """Score, then learn, one batch in stream order (rows of `width` features);
        `through`: the chunk's last sequence, examples quarantined before included."""
        before = dict(self.quarantined)
        keep = self._check(x, y)
        seqs, x, y = sequences[keep], x[keep], y[keep]
        if self.settings.classification:
            y = y.astype(np.int64)
        predicted = self.model.predict(x) if len(y) else None
        scored = correct = 0
        drift = DriftState.STABLE
        replaced = False
        if predicted is not None:
            if self.settings.classification:
                hits = (predicted == y).astype(int)
                errors = 1 - hits
                self.recent.extend(hits.tolist())
                self.positives.extend((predicted != self.settings.classes[0]).astype(int).tolist())
                self.labels_positive.extend((y != self.settings.classes[0]).astype(int).tolist())
                correct = int(hits.sum())
            else:
                errors = (predicted - y) ** 2
                self.squared.extend(errors.tolist())
            scored = len(y)
            watched = self.model.learned >= DETECTOR_WARMUP
            for i, err in enumerate(errors if watched else ()):
                state = self.detector.update(float(err))
                self.calm = self.calm + 1 if state is DriftState.STABLE else 0
                if state is DriftState.STABLE and self.calm == WARNING_PATIENCE:
                    self.background = None  # the warning was a false alarm
                if state is DriftState.DRIFT:
                    drift = DriftState.DRIFT
                    replaced = self._replace(int(seqs[i])) or replaced
                elif state is DriftState.WARNING and drift is DriftState.STABLE:
                    drift = DriftState.WARNING
                    if self.background is None:
                        self.background = Model(make_estimator(self.settings))
                        self.drifts.append((int(seqs[i]), DriftState.WARNING.value))
        elif len(y) and self.settings.classification:
            self.labels_positive.extend((y != self.settings.classes[0]).astype(int).tolist())
        if drift is DriftState.STABLE and self.background is not None:
            drift = DriftState.WARNING  # still learning in the background since a warning
        self.drift_state = drift
        if len(y):
            classes = self.settings.classes if self.settings.classification else None
            n_replay = round(len(y) * self.settings.replay_ratio)
            replay = (
                self.reservoir.sample(n_replay)
                if len(self.reservoir)
                else (np.empty((0, 0)), np.empty(0))
            )
            self.model.learn(x, y, replay, classes)
            if self.background is not None:
                self.background.learn(x, y, (np.empty((0, 0)), np.empty(0)), classes)
            self.reservoir.add(x, y, self.settings.classification)
        if len(sequences):
            self.last_sequence = max(self.last_sequence, int(sequences.max()))
        self.last_sequence = max(self.last_sequence, through)
        self.applied += len(y)
        self.sequence_sum += int(seqs.sum())
        if len(y):
            self.since_publish += len(y)
            self.publish_from = self.publish_from or int(seqs.min())
        added = {
            k: v - before.get(k, 0) for k, v in self.quarantined.items() if v != before.get(k, 0)
        }
        return StepReport(len(y), added, scored, correct, drift, replaced)

    def _replace(self, sequence: int) -> bool:
        """DRIFT: the background learner (if it learned enough) replaces the foreground."""
        self.drifts.append((sequence, DriftState.DRIFT.value))
        self.detector.reset()
        self.recent.clear()
        self.squared.clear()
        # What the reservoir holds now teaches the old concept: start it again.
        self.reservoir = Reservoir(self.settings.reservoir_per_class, self.settings.seed + sequence)
        if self.background is not None and self.background.learned >= BACKGROUND_MIN:
            self.model, self.background = self.background, None
            return True
        self.background = Model(make_estimator(self.settings))
        return False

    # --- what the runner reads ------------------------------------------------------------

    @property
    def prequential_accuracy(self) -> float | None:
        return float(np.mean(self.recent)) if self.recent else None

    @property
    def prequential_rmse(self) -> float | None:
        return float(np.sqrt(np.mean(self.squared))) if self.squared else None

    @property
    def positive_rate(self) -> float | None:
        return float(np.mean(self.positives)) if self.positives else None

    @property
    def label_rate(self) -> float | None:
        return float(np.mean(self.labels_positive)) if self.labels_positive else None

    def reservoir_accuracy(self, predict: Callable[[Array], Any] | None = None) -> float | None:
        """Accuracy of the model (or of `predict`) on the reservoir: the forgetting check."""
        x, y = self.reservoir.all()
        if not len(y):
            return None
        answer = predict(x) if predict is not None else self.model.predict(x)
        if answer is None:
            return None
        return float(np.mean(np.asarray(answer) == y))

    def published(self, version: int) -> None:
        """A version of the current model went out: the next one is judged against it."""
        self.published_version = version
        self.published_weights = self.model.weights()
        self.published_reservoir = self.reservoir_accuracy()
        self.since_publish = 0
        self.publish_from = 0

    # --- checkpoints ---------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        return pickle.dumps((FORMAT, self), protocol=5)

    @staticmethod
    def restore(data: bytes) -> OnlineLearner:
        fmt, learner = pickle.loads(data)  # checked by its MAC before (see checkpoints.py)
        if fmt != FORMAT:
            raise ValueError(f"checkpoint format {fmt}, this learner reads {FORMAT}")
        assert isinstance(learner, OnlineLearner)
        return learner
