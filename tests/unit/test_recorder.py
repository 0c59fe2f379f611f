"""A worker version's one recorder: each request, answered or failed, reaches all three
counts (V2 statistics, the registry's windows, the drift histograms) exactly once."""

from __future__ import annotations

import numpy as np

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.windows import FeatureCounts, WindowBook
from services.worker.recorder import Recorder

INPUTS = {"x": np.arange(12, dtype=np.float32).reshape(3, 4)}
OUTPUTS = [np.arange(6, dtype=np.float32).reshape(3, 2)]


def book_with_features() -> WindowBook:
    book = WindowBook(rpb.WINDOW_SOURCE_WORKER, "workers/w1")
    # learn_rows=1: the first report already has bins, so it carries histograms.
    book.features[("lin", 2)] = FeatureCounts(None, learn_rows=1)
    return book


def test_an_answer_is_counted_once_in_stats_windows_and_drift() -> None:
    book = book_with_features()
    recorder = Recorder("lin", 2, book)
    recorder.answered(INPUTS, ["y"], OUTPUTS, 0.002)
    stats = recorder.stats.proto()
    assert (stats.inference_count, stats.inference_stats.success.count) == (3, 1)
    (window,) = book.drain()
    assert (window.model, window.version, window.requests) == ("lin", 2, 1)
    assert sum(window.latency.counts) == 1 and not window.errors
    assert [h.name for h in window.inputs] == ["x[0]", "x[1]", "x[2]", "x[3]"]
    assert [h.name for h in window.outputs] == ["y[0]", "y[1]"]
    recorder.forget(current=True)


def test_a_failure_is_counted_in_stats_and_windows_not_in_latency_or_drift() -> None:
    book = book_with_features()
    recorder = Recorder("lin", 2, book)
    recorder.failed("DEADLINE_EXCEEDED", 0.5)
    stats = recorder.stats
    assert stats.fail.count == 1 and stats.statuses == {"DEADLINE_EXCEEDED": 1}
    assert stats.success.count == 0
    (window,) = book.drain()
    assert window.requests == 1 and dict(window.errors) == {"DEADLINE_EXCEEDED": 1}
    assert sum(window.latency.counts) == 0 and not window.inputs
    recorder.forget(current=True)


def test_standalone_there_is_no_book_and_stats_still_count() -> None:
    recorder = Recorder("lin", 1, None)
    recorder.answered(INPUTS, ["y"], OUTPUTS, 0.001)
    recorder.failed("INTERNAL", 0.001)
    assert recorder.stats.statuses == {"OK": 1, "INTERNAL": 1}
    recorder.forget(current=True)


def test_forgetting_drops_drift_counts_only_for_the_version_still_held() -> None:
    book = book_with_features()
    Recorder("lin", 2, book).forget(current=False)  # a replaced one: the counts stay
    assert ("lin", 2) in book.features
    Recorder("lin", 2, book).forget(current=True)
    assert ("lin", 2) not in book.features
