"""Drift statistics: bins, vectorised counting, PSI, and the latency quantile."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from services.common import drift
from services.common.windows import FeatureCounts
from services.registry.windows import quantile


def test_columns_name_features_and_skip_text() -> None:
    x = np.zeros((3, 2), dtype=np.float32)
    assert [n for n, _ in drift.columns("x", x)] == ["x[0]", "x[1]"]
    assert [n for n, _ in drift.columns("p", np.zeros((3, 1)))] == ["p"]
    assert [n for n, _ in drift.columns("label", np.zeros(3, dtype=np.int64))] == ["label"]
    assert list(drift.columns("s", np.array([b"a"], dtype=object))) == []
    wide = np.zeros((1, 100))
    assert len(list(drift.columns("w", wide))) == drift.MAX_FEATURES


def test_deciles_hold_a_tenth_each_and_a_constant_feature_one_bin() -> None:
    values = np.random.default_rng(0).standard_normal(10_000)
    stats = drift.feature_statistics("x", values)
    assert len(stats.bin_edges) == 11
    assert np.allclose(stats.bin_fractions, 0.1, atol=0.002)
    flat = drift.feature_statistics("c", np.ones(50))
    assert list(flat.bin_fractions) == [1.0]


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(1)
    ref = drift.feature_statistics("x", rng.standard_normal(20_000))
    same = drift.counts_of(rng.standard_normal(5_000), list(ref.bin_edges))
    moved = drift.counts_of(rng.normal(1.0, 1.0, 5_000), list(ref.bin_edges))
    assert drift.psi(list(ref.bin_fractions), same) < 0.01
    assert drift.psi(list(ref.bin_fractions), moved) > 0.25
    assert drift.psi([0.5, 0.5], [0, 0]) == 0.0


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 40), st.just(3)),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
)
def test_vectorised_counts_match_per_feature_counts(batch: np.ndarray) -> None:
    reference = drift.reference_statistics(
        {"x": np.random.default_rng(2).normal(0, 50, (500, 3)).astype(np.float32)}, {}
    )
    counts = FeatureCounts(reference)
    counts.observe({"x": batch}, {})
    inputs, _ = counts.drain()
    for feature in inputs:
        j = int(feature.name[2])
        expected = drift.counts_of(batch[:, j], list(feature.bin_edges))
        assert list(feature.counts) == expected.tolist()
    assert sum(sum(f.counts) for f in inputs) == batch.size


def test_quantile_interpolates_within_a_bucket() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert quantile(bounds, [0, 10, 0, 0], 0.5) == pytest.approx(1.5)
    assert quantile(bounds, [0, 0, 0, 5], 0.99) == 4.0
    assert quantile(bounds, [0, 0, 0, 0], 0.99) == 0.0


def test_infinities_nan_and_other_widths_stay_in_their_own_bins() -> None:
    reference = drift.reference_statistics(
        {"x": np.random.default_rng(3).standard_normal((1000, 2)).astype(np.float32)}, {}
    )
    counts = FeatureCounts(reference)
    counts.observe({"x": np.array([[np.inf, -np.inf], [np.nan, 0.0]], dtype=np.float32)}, {})
    counts.observe({"x": np.zeros((1, 3), dtype=np.float32)}, {})  # another width: ignored
    inputs, _ = counts.drain()
    by_name = {f.name: list(f.counts) for f in inputs}
    assert by_name["x[0]"][-1] == 1 and by_name["x[0]"][0] == 1  # +inf last bin, NaN first
    assert by_name["x[1]"][0] == 1 and sum(by_name["x[1]"]) == 2
