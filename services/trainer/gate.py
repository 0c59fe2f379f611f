"""The validation gate: candidate and production scored on the same holdout, both
through onnxruntime from their ONNX artifacts, exactly as workers will serve them.

Every check is listed with its numbers, passed or not; one that cannot be made says
why (no production version: the floors alone apply) instead of being left out.

- `min_holdout_rows`: enough holdout to judge at all.
- `floor:<metric>`: an absolute bound (a ceiling for losses).
- `regression:<metric>` / `relative_regression:<metric>`: how much worse than
  production it may be.
- `non_inferiority:<metric>`: a paired bootstrap of the candidate-minus-production
  difference over the holdout rows; the candidate passes when the lower end of the
  one-sided (1 - alpha) interval is above -margin. A point comparison alone would
  pass a candidate that is worse but lucky on this holdout.
- `parity`: the ONNX export against the fitted original (labels identical, largest
  probability difference within the tolerance) — what is served is what was trained.
- `latency`: candidate p99 over production p99 on single-row calls, over the holdout's
  rows, each row timed as the fastest of a few interleaved calls (so the scheduler's
  interruptions are not the tail).
Floors and regressions apply again per group of `slice_column`, where there are
enough rows to judge.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from sklearn import metrics as skm

from services.common.gen.liveml.training.v1 import training_pb2 as tpb

LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
DEFAULT_MIN_HOLDOUT = 50
DEFAULT_MARGIN = 0.01
DEFAULT_ALPHA = 0.05
DEFAULT_PARITY = 1e-4
DEFAULT_LATENCY_RATIO = 1.5
BOOTSTRAP = 1000
LATENCY_ROWS = 200
LATENCY_ROUNDS = 3  # a regression must show in each round: one busy moment is not one
LATENCY_REPEATS = 5  # calls per row; the fastest is the row's time


@dataclass
class Scored:
    """A model's answers on the holdout."""

    labels: npt.NDArray[Any] | None = None  # classification
    probabilities: npt.NDArray[np.float64] | None = None
    values: npt.NDArray[np.float64] | None = None  # regression


class Model:
    """An ONNX model in onnxruntime, as a worker would open it."""

    def __init__(self, onnx_bytes: bytes, task: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name
        self.task = task

    def run(self, x: npt.NDArray[np.float32]) -> list[Any]:
        return list(self.session.run(None, {self.input: x}))

    def score(self, x: npt.NDArray[np.float32]) -> Scored:
        out = self.run(x)
        if self.task == tpb.TRAINING_TASK_CLASSIFICATION:
            labels = np.asarray(out[0]).reshape(-1)
            probabilities = np.asarray(out[1], dtype=np.float64) if len(out) > 1 else None
            return Scored(labels=labels, probabilities=probabilities)
        return Scored(values=np.asarray(out[0], dtype=np.float64).reshape(-1))


def primary_of(gate: tpb.GatePolicy, task: int) -> str:
    if gate.primary_metric:
        return gate.primary_metric
    return "accuracy" if task == tpb.TRAINING_TASK_CLASSIFICATION else "rmse"


def metrics(task: int, y: npt.NDArray[Any], s: Scored) -> dict[str, float]:
    """Every metric of the task that can be computed on this holdout."""
    out: dict[str, float] = {}
    if task == tpb.TRAINING_TASK_REGRESSION:
        assert s.values is not None
        err = s.values - y
        out["rmse"] = float(math.sqrt(np.mean(err**2)))
        out["mae"] = float(np.mean(np.abs(err)))
        if np.var(y) > 0:
            out["r2"] = float(skm.r2_score(y, s.values))
        return out
    assert s.labels is not None
    out["accuracy"] = float(np.mean(s.labels == y))
    classes = np.unique(np.concatenate([y, s.labels]))
    average = "binary" if set(classes.tolist()) <= {0, 1} else "macro"
    for name, fn in (
        ("precision", skm.precision_score),
        ("recall", skm.recall_score),
        ("f1", skm.f1_score),
    ):
        out[name] = float(fn(y, s.labels, average=average, zero_division=0))
    p = s.probabilities
    if p is not None and p.ndim == 2:
        p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)  # float32 rounding
    if p is not None and p.ndim == 2 and len(np.unique(y)) > 1:
        labels = list(range(p.shape[1]))
        out["log_loss"] = float(skm.log_loss(y, np.clip(p, 1e-15, 1), labels=labels))
        try:
            if p.shape[1] == 2:
                out["roc_auc"] = float(skm.roc_auc_score(y, p[:, 1]))
            else:
                out["roc_auc"] = float(skm.roc_auc_score(y, p, multi_class="ovr", labels=labels))
        except ValueError:
            pass  # a class missing from the holdout: no AUC, reported as such
    return out


def _worse_by(metric: str, candidate: float, production: float) -> float:
    """How much worse the candidate is, in the metric's units (negative = better)."""
    return candidate - production if metric in LOWER_IS_BETTER else production - candidate


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def _check(
    name: str, candidate: float, limit: float, passed: bool, text: str, **kw: Any
) -> tpb.GateCheck:
    check = tpb.GateCheck(name=name, candidate=candidate, limit=limit, passed=passed, text=text)
    if kw.get("production") is not None:
        check.production = kw["production"]
    check.slice = kw.get("slice", "")
    return check


def bounds(
    gate: tpb.GatePolicy,
    task: int,
    cand: dict[str, float],
    prod: dict[str, float] | None,
    slice_: str = "",
) -> list[tpb.GateCheck]:
    """Floors and regressions over one set of rows (the whole holdout, or a group)."""
    where = f" on {slice_}" if slice_ else ""
    checks = []
    for metric, floor in sorted(gate.floors.items()):
        value = cand.get(metric)
        name = f"floor:{metric}"
        if value is None:
            checks.append(
                _check(
                    name,
                    0.0,
                    floor,
                    False,
                    f"{metric}{where} cannot be computed on this holdout (one class only?)",
                    slice=slice_,
                )
            )
            continue
        ok = value <= floor if metric in LOWER_IS_BETTER else value >= floor
        sign = "at most" if metric in LOWER_IS_BETTER else "at least"
        checks.append(
            _check(
                name,
                value,
                floor,
                ok,
                f"{metric}{where} {_fmt(value)} ({sign} {floor:g})",
                slice=slice_,
            )
        )
    for field, relative in (("max_regression", False), ("max_relative_regression", True)):
        for metric, limit in sorted(getattr(gate, field).items()):
            name = f"{'relative_' if relative else ''}regression:{metric}"
            value = cand.get(metric)
            if prod is None:
                checks.append(
                    _check(
                        name,
                        value or 0.0,
                        limit,
                        True,
                        f"{metric}{where}: no production version to compare with; "
                        "the floors alone apply",
                        slice=slice_,
                    )
                )
                continue
            base = prod.get(metric)
            if value is None or base is None:
                checks.append(
                    _check(
                        name,
                        value or 0.0,
                        limit,
                        False,
                        f"{metric}{where} cannot be computed on this holdout",
                        slice=slice_,
                    )
                )
                continue
            worse = _worse_by(metric, value, base)
            amount = worse / abs(base) if relative and base else worse
            ok = amount <= limit
            unit = f"{amount:+.2%}" if relative else f"{amount:+.4f}"
            checks.append(
                _check(
                    name,
                    value,
                    limit,
                    ok,
                    f"{metric}{where} {_fmt(value)} vs production {_fmt(base)}: worse by {unit} "
                    f"(at most {limit:g}{' relative' if relative else ''})",
                    production=base,
                    slice=slice_,
                )
            )
    return checks


def _per_row(
    metric: str, y: npt.NDArray[Any], s: Scored
) -> tuple[npt.NDArray[np.float64], Callable[[Any], Any]] | None:
    """Per-row values whose mean (then `finish`) is the metric, for a fast bootstrap."""
    if metric == "accuracy" and s.labels is not None:
        return (s.labels == y).astype(np.float64), lambda m: m
    if metric == "log_loss" and s.probabilities is not None:
        p = np.clip(s.probabilities[np.arange(len(y)), y.astype(np.int64)], 1e-15, 1)
        return -np.log(p), lambda m: m
    if metric in ("rmse", "mae") and s.values is not None:
        err = s.values - y
        if metric == "rmse":
            return err**2, np.sqrt
        return np.abs(err), lambda m: m
    return None


def non_inferiority(
    gate: tpb.GatePolicy, task: int, y: npt.NDArray[Any], cand: Scored, prod: Scored | None
) -> tpb.GateCheck:
    metric = primary_of(gate, task)
    margin = gate.non_inferiority_margin or DEFAULT_MARGIN
    alpha = gate.alpha or DEFAULT_ALPHA
    name = f"non_inferiority:{metric}"
    if prod is None:
        return _check(
            name,
            0.0,
            -margin,
            True,
            f"{metric}: no production version to compare with; the floors alone apply",
        )
    rng = np.random.default_rng(0)
    n = len(y)
    fast_c, fast_p = _per_row(metric, y, cand), _per_row(metric, y, prod)
    diffs = []
    if fast_c is not None and fast_p is not None:
        (c_rows, finish), (p_rows, _) = fast_c, fast_p
        for start in range(0, BOOTSTRAP, 100):
            idx = rng.integers(0, n, size=(min(100, BOOTSTRAP - start), n))
            c_m, p_m = finish(c_rows[idx].mean(axis=1)), finish(p_rows[idx].mean(axis=1))
            diffs.append(-(c_m - p_m) if metric in LOWER_IS_BETTER else c_m - p_m)
        estimate_c, estimate_p = float(finish(c_rows.mean())), float(finish(p_rows.mean()))
        boot = np.concatenate(diffs)
    else:
        estimate_c = metrics(task, y, cand).get(metric, math.nan)
        estimate_p = metrics(task, y, prod).get(metric, math.nan)
        values = []
        for _ in range(200):  # metrics that do not decompose by row: fewer, slower resamples
            idx = rng.integers(0, n, size=n)
            c = metrics(task, y[idx], _take(cand, idx)).get(metric)
            p = metrics(task, y[idx], _take(prod, idx)).get(metric)
            if c is not None and p is not None:
                values.append(-(c - p) if metric in LOWER_IS_BETTER else c - p)
        boot = np.array(values)
    if not len(boot) or math.isnan(estimate_c) or math.isnan(estimate_p):
        return _check(name, 0.0, -margin, False, f"{metric} cannot be computed on this holdout")
    lower = float(np.quantile(boot, alpha))
    ok = lower >= -margin
    return _check(
        name,
        estimate_c,
        -margin,
        ok,
        f"{metric} {_fmt(estimate_c)} vs production {_fmt(estimate_p)}: the candidate is "
        f"better by at least {lower:+.4f} with {1 - alpha:.0%} confidence (paired bootstrap, "
        f"{len(boot)} resamples of {n} rows); {'not worse' if ok else 'may be worse'} than "
        f"the margin {margin:g}",
        production=estimate_p,
    )


def _take(s: Scored, idx: npt.NDArray[np.int64]) -> Scored:
    return Scored(
        labels=None if s.labels is None else s.labels[idx],
        probabilities=None if s.probabilities is None else s.probabilities[idx],
        values=None if s.values is None else s.values[idx],
    )


def parity(
    gate: tpb.GatePolicy,
    task: int,
    original: Any | None,
    x: npt.NDArray[np.float32],
    served: Scored,
) -> tpb.GateCheck:
    tolerance = gate.parity_tolerance or DEFAULT_PARITY
    if original is None:
        return _check(
            "parity",
            0.0,
            tolerance,
            True,
            "the entry point returned ONNX itself: no original to compare with",
        )
    if task == tpb.TRAINING_TASK_CLASSIFICATION:
        labels = np.asarray(original.predict(x)).reshape(-1)
        assert served.labels is not None
        mismatched = int(np.sum(labels != served.labels))
        gap = 0.0
        if hasattr(original, "predict_proba") and served.probabilities is not None:
            gap = float(np.max(np.abs(original.predict_proba(x) - served.probabilities)))
        ok = mismatched == 0 and gap <= tolerance
        return _check(
            "parity",
            gap,
            tolerance,
            ok,
            f"ONNX vs fitted estimator on {len(x)} holdout rows: {mismatched} labels differ, "
            f"largest probability difference {gap:.2e} (at most {tolerance:g})",
        )
    assert served.values is not None
    gap = float(
        np.max(
            np.abs(np.asarray(original.predict(x), dtype=np.float64).reshape(-1) - served.values)
        )
    )
    return _check(
        "parity",
        gap,
        tolerance,
        gap <= tolerance,
        f"ONNX vs fitted estimator on {len(x)} holdout rows: largest difference "
        f"{gap:.2e} (at most {tolerance:g})",
    )


def _single_row_p99(a: Model, b: Model, rows: npt.NDArray[np.float32]) -> tuple[float, float]:
    """p99 over the rows of each model's single-row call, each row's time the fastest of
    LATENCY_REPEATS calls: the tail over inputs stays (a deep path of a tree, a long
    sequence), the scheduler's interruptions of a shared box go (they make a raw p99
    of a few hundred calls whichever call was interrupted)."""
    times_a, times_b = [], []
    for row in rows:
        one = row.reshape(1, -1)
        best_a = best_b = math.inf
        for _ in range(LATENCY_REPEATS):  # interleaved, so a busy moment lands on both
            started = time.perf_counter()
            a.run(one)
            best_a = min(best_a, time.perf_counter() - started)
            started = time.perf_counter()
            b.run(one)
            best_b = min(best_b, time.perf_counter() - started)
        times_a.append(best_a)
        times_b.append(best_b)
    return float(np.percentile(times_a, 99)), float(np.percentile(times_b, 99))


def latency(
    gate: tpb.GatePolicy, cand: Model, prod: Model | None, x: npt.NDArray[np.float32]
) -> tpb.GateCheck:
    limit = gate.max_latency_ratio or DEFAULT_LATENCY_RATIO
    if prod is None:
        return _check("latency", 0.0, limit, True, "no production version to compare with")
    rows = x[:LATENCY_ROWS]
    cand.run(rows[:1]), prod.run(rows[:1])  # warm
    best = None
    for _ in range(LATENCY_ROUNDS):
        c99, p99 = _single_row_p99(cand, prod, rows)
        ratio = c99 / p99 if p99 > 0 else math.inf
        if best is None or ratio < best[0]:
            best = (ratio, c99, p99)
        if ratio <= limit:
            break
    assert best is not None
    ratio, c99, p99 = best
    return _check(
        "latency",
        ratio,
        limit,
        ratio <= limit,
        f"single-row p99 {c99 * 1e3:.3f} ms vs production {p99 * 1e3:.3f} ms: ratio "
        f"{ratio:.2f} (at most {limit:g}; each of {len(rows)} rows the fastest of "
        f"{LATENCY_REPEATS} calls; best of up to {LATENCY_ROUNDS} rounds)",
        production=p99,
    )


@dataclass
class Verdict:
    checks: list[tpb.GateCheck]
    candidate: dict[str, float]
    production: dict[str, float]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def judge(
    policy: tpb.TrainingPolicy,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[Any],
    groups: npt.NDArray[Any] | None,
    candidate: Model,
    production: Model | None,
    original: Any | None,
) -> Verdict:
    """Every check of the gate; CPU-bound (run it on a worker thread)."""
    gate, task = policy.gate, policy.task
    minimum = gate.min_holdout_rows or DEFAULT_MIN_HOLDOUT
    n = len(y)
    checks = [
        _check(
            "min_holdout_rows",
            float(n),
            float(minimum),
            n >= minimum,
            f"holdout of {n} rows (at least {minimum})",
        )
    ]
    cand_scored = candidate.score(x)
    prod_scored = production.score(x) if production is not None else None
    cand_m = metrics(task, y, cand_scored)
    prod_m = metrics(task, y, prod_scored) if prod_scored is not None else None
    checks += bounds(gate, task, cand_m, prod_m)
    checks.append(non_inferiority(gate, task, y, cand_scored, prod_scored))
    checks.append(parity(gate, task, original, x, cand_scored))
    checks.append(latency(gate, candidate, production, x))
    if groups is not None:
        smallest = max(10, minimum // 5)
        for group in sorted(set(groups.tolist())):
            mask = groups == group
            label = f"{policy.gate.slice_column}={group}"
            rows = int(mask.sum())
            if rows < smallest:
                checks.append(
                    _check(
                        "slice_rows",
                        float(rows),
                        float(smallest),
                        True,
                        f"{label}: {rows} rows, too few to judge (at least {smallest})",
                        slice=label,
                    )
                )
                continue
            idx = np.flatnonzero(mask)
            c = metrics(task, y[idx], _take(cand_scored, idx))
            p = metrics(task, y[idx], _take(prod_scored, idx)) if prod_scored is not None else None
            checks += bounds(gate, task, c, p, label)
    return Verdict(checks, cand_m, prod_m or {})
