"""Drift statistics: reference histograms, live histograms on the same bins, and PSI.

A tensor becomes features column by column: `x` of shape [N] or [N, 1] is one
feature named `x`, `x` of shape [N, F] is F features `x[0]` ... `x[F-1]` (at most
`MAX_FEATURES` of them, to bound the cost per request). Bins come from the
reference: deciles of the data a version was trained on, so each bin holds about a
tenth of it; values outside the reference range count in the outer bins. The
publisher and the worker use these same functions, so their bins always agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

MAX_FEATURES = 64
BINS = 10
# Empty bins would make PSI infinite; this floor is the usual smoothing.
_FLOOR = 1e-4


def columns(name: str, array: npt.NDArray[Any]) -> Iterator[tuple[str, npt.NDArray[Any]]]:
    """The numeric features of one tensor (batch axis first), as (name, column)."""
    if array.dtype == object or array.ndim == 0 or array.size == 0:
        return
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        return
    flat = array.reshape(array.shape[0], -1)
    if flat.shape[1] == 1:
        yield name, flat[:, 0]
        return
    for j in range(min(flat.shape[1], MAX_FEATURES)):
        yield f"{name}[{j}]", flat[:, j]


def edges_of(values: npt.NDArray[Any], bins: int = BINS) -> list[float]:
    """Quantile bin edges (fewer bins when values repeat, e.g. a binary feature)."""
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return [0.0, 1.0]
    edges = np.unique(np.quantile(data, np.linspace(0, 1, bins + 1)))
    if edges.size == 1:
        edges = np.array([edges[0], edges[0] + 1.0])
    return [float(e) for e in edges]


def counts_of(values: npt.NDArray[Any], edges: list[float] | npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Counts per bin of `edges` (n + 1 edges, n bins; outer bins open-ended)."""
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    index = np.searchsorted(inner, np.asarray(values, dtype=np.float64), side="right")
    return np.bincount(index, minlength=len(edges) - 1)


def feature_statistics(name: str, values: npt.NDArray[Any]) -> rpb.FeatureStatistics:
    edges = edges_of(values)
    counts = counts_of(values, edges)
    data = np.asarray(values, dtype=np.float64)
    return rpb.FeatureStatistics(
        name=name,
        bin_edges=edges,
        bin_fractions=[float(c) / max(1, int(counts.sum())) for c in counts],
        mean=float(data.mean()) if data.size else 0.0,
        std=float(data.std()) if data.size else 0.0,
    )


def reference_statistics(
    inputs: Mapping[str, npt.NDArray[Any]], outputs: Mapping[str, npt.NDArray[Any]]
) -> rpb.ReferenceStatistics:
    """What a publisher stores with a version: histograms of its training inputs and of
    the model's outputs on them."""
    return rpb.ReferenceStatistics(
        inputs=[feature_statistics(n, c) for k, a in inputs.items() for n, c in columns(k, a)],
        outputs=[feature_statistics(n, c) for k, a in outputs.items() for n, c in columns(k, a)],
    )


def psi(expected: list[float], counts: list[int] | npt.NDArray[Any]) -> float:
    """Population stability index of live `counts` against reference `expected` fractions.

    Below 0.1 is usually read as stable, 0.1-0.25 as a moderate shift, above 0.25 as a
    significant one.
    """
    total = float(sum(counts))
    if total <= 0 or len(expected) != len(counts):
        return 0.0
    value = 0.0
    for e, c in zip(expected, counts, strict=True):
        a = max(c / total, _FLOOR)
        e = max(e, _FLOOR)
        value += (a - e) * math.log(a / e)
    return value
