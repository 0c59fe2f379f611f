"""The small pieces of an online learner's state, each deterministic and picklable.

- `Standardizer`: running mean and variance per feature (Welford), so the model learns
  on standardised inputs while the data arrives; exported as a StandardScaler.
- `Reservoir`: a class-stratified reservoir sample of past examples, replayed beside
  new ones so a model that adapts does not forget what it knew (catastrophic
  forgetting); its own random generator, whose state is part of the checkpoint.
- `DDM` (Gama et al., 2004) on the 0/1 prequential error of a classifier, and
  `PageHinkley` on the loss of a regressor: WARNING when the error rises, DRIFT when
  it has clearly risen.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


class DriftState(enum.StrEnum):
    STABLE = "stable"
    WARNING = "warning"
    DRIFT = "drift"


@dataclass
class Standardizer:
    count: int = 0
    mean: Array | None = None
    m2: Array | None = None

    def update(self, x: Array) -> None:
        """Chan et al.'s parallel update: exact for a whole batch at once."""
        n = len(x)
        if n == 0:
            return
        batch_mean = x.mean(axis=0)
        batch_m2 = ((x - batch_mean) ** 2).sum(axis=0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, batch_mean, batch_m2
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def scale(self) -> Array:
        assert self.m2 is not None
        var = self.m2 / max(self.count, 1)
        return np.where(var > 1e-12, np.sqrt(var), 1.0)

    def transform(self, x: Array) -> Array:
        if self.mean is None:
            return x
        return (x - self.mean) / self.scale


@dataclass
class Reservoir:
    """Up to `per_class` examples of each class (or of everything, for regression)."""

    per_class: int
    seed: int = 0
    rows: dict[Any, list[Array]] = field(default_factory=dict)
    labels: dict[Any, list[Any]] = field(default_factory=dict)
    seen: dict[Any, int] = field(default_factory=dict)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def add(self, x: Array, y: npt.NDArray[Any], stratify: bool) -> None:
        keys = np.asarray(y) if stratify else np.zeros(len(y), dtype=np.int64)
        for value in np.unique(keys):  # sorted: the generator is drawn in a fixed order
            where = np.flatnonzero(keys == value)
            key = value.item()
            seen = self.seen.get(key, 0)
            rows = self.rows.setdefault(key, [])
            labels = self.labels.setdefault(key, [])
            fill = where[: max(0, self.per_class - len(rows))]
            for i in fill:
                rows.append(x[i].copy())
                labels.append(y[i])
            rest = where[len(fill) :]
            if len(rest):
                # Algorithm R: the n-th seen is kept with p = k / n, in a slot drawn
                # uniformly; drawn for the whole batch at once (one call, not one per row).
                arrivals = seen + len(fill) + np.arange(1, len(rest) + 1)
                slots = self.rng.integers(arrivals)
                for i, slot in zip(
                    rest[slots < self.per_class], slots[slots < self.per_class], strict=True
                ):
                    rows[slot] = x[i].copy()
                    labels[slot] = y[i]
            self.seen[key] = seen + len(where)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def sample(self, n: int) -> tuple[Array, npt.NDArray[Any]]:
        """`n` examples drawn evenly across classes (fewer if the reservoir holds fewer)."""
        keys = sorted(k for k, rows in self.rows.items() if rows)
        if not keys or n <= 0:
            return np.empty((0, 0)), np.empty(0)
        which = np.arange(n) % len(keys)  # round-robin over classes
        sizes = np.array([len(self.rows[k]) for k in keys])[which]
        picks = self.rng.integers(sizes)  # one draw for the whole sample
        xs = [self.rows[keys[w]][j] for w, j in zip(which.tolist(), picks.tolist(), strict=True)]
        ys = [self.labels[keys[w]][j] for w, j in zip(which.tolist(), picks.tolist(), strict=True)]
        return np.array(xs), np.array(ys)

    def all(self) -> tuple[Array, npt.NDArray[Any]]:
        keys = sorted(self.rows)
        xs = [r for k in keys for r in self.rows[k]]
        ys = [label for k in keys for label in self.labels[k]]
        return (np.array(xs), np.array(ys)) if xs else (np.empty((0, 0)), np.empty(0))


@dataclass
class DDM:
    """The Drift Detection Method on a stream of 0/1 errors. Its minimum is taken only
    after `min_samples` errors: over fewer, a lucky run of right answers sets a floor the
    steady error rate then seems to rise above."""

    min_samples: int = 500
    warning_level: float = 2.0
    drift_level: float = 3.0
    n: int = 0
    p: float = 1.0
    s: float = 0.0
    p_min: float = math.inf
    s_min: float = math.inf
    ps_min: float = math.inf

    def reset(self) -> None:
        self.n, self.p, self.s = 0, 1.0, 0.0
        self.p_min = self.s_min = self.ps_min = math.inf

    def update(self, error: float) -> DriftState:
        self.n += 1
        self.p += (error - self.p) / self.n
        self.s = math.sqrt(self.p * (1 - self.p) / self.n)
        if self.n < self.min_samples:
            return DriftState.STABLE
        if self.p + self.s <= self.ps_min:
            self.p_min, self.s_min, self.ps_min = self.p, self.s, self.p + self.s
        if self.p + self.s > self.p_min + self.drift_level * self.s_min:
            return DriftState.DRIFT
        if self.p + self.s > self.p_min + self.warning_level * self.s_min:
            return DriftState.WARNING
        return DriftState.STABLE


@dataclass
class PageHinkley:
    """Page-Hinkley on a stream of losses (regression): a rise of the mean."""

    delta: float = 0.005
    threshold: float = 50.0
    min_samples: int = 500
    n: int = 0
    mean: float = 0.0
    cumulative: float = 0.0
    minimum: float = 0.0

    def reset(self) -> None:
        self.n, self.mean, self.cumulative, self.minimum = 0, 0.0, 0.0, 0.0

    def update(self, loss: float) -> DriftState:
        self.n += 1
        self.mean += (loss - self.mean) / self.n
        self.cumulative += loss - self.mean - self.delta
        self.minimum = min(self.minimum, self.cumulative)
        if self.n < self.min_samples:
            return DriftState.STABLE
        rise = self.cumulative - self.minimum
        if rise > self.threshold:
            return DriftState.DRIFT
        if rise > self.threshold / 2:
            return DriftState.WARNING
        return DriftState.STABLE
