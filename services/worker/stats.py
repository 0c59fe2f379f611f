"""Per-version statistics: the counters V2 ModelStatistics reports and Prometheus metrics.

Recording happens on the event loop for every request, so it is plain arithmetic on
this version's own counters (no locks, no label lookups); a Prometheus collector
turns them into `liveml_worker_*` metrics only when /metrics is scraped. A version's
series disappear when it is unloaded.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from services.common.gen.inference import grpc_predict_v2_pb2 as pb

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STATES = ("LOADING", "READY", "FAILED", "DRAINING")


class Hist:
    """A histogram's bucket counts, sum and count."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        total = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)


@dataclass(eq=False)
class VersionStats:
    model: str
    version: int
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    state: str = "LOADING"
    load_seconds: float = 0.0
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))
    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[str, Hist] = field(
        default_factory=lambda: {p: Hist(LATENCY_BUCKETS) for p in ("queue", "compute", "total")}
    )
    batch_rows: Hist = field(default_factory=lambda: Hist(BATCH_BUCKETS))

    def __post_init__(self) -> None:
        _LIVE[(self.model, self.version)] = self

    def batch(self, rows: int, queued: float, compute: float) -> None:
        self.execution_count += 1
        self.batches[rows].add(compute)
        self.batch_rows.observe(rows)
        self.latency["queue"].observe(queued)
        self.latency["compute"].observe(compute)
        self.queue.add(queued)
        self.compute.add(compute)

    def request(self, rows: int, seconds: float) -> None:
        self.inference_count += rows
        self.success.add(seconds)
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.statuses["OK"] += 1
        self.latency["total"].observe(seconds)

    def failure(self, status: str, seconds: float) -> None:
        self.fail.add(seconds)
        self.statuses[status] += 1

    def set_state(self, state: str) -> None:
        self.state = state

    def loaded(self, seconds: float) -> None:
        self.load_seconds = seconds

    def forget(self) -> None:
        """Drop this version's metric series once it is unloaded."""
        if _LIVE.get((self.model, self.version)) is self:
            del _LIVE[(self.model, self.version)]

    def proto(self) -> pb.ModelStatistics:
        def d(x: Duration) -> pb.StatisticDuration:
            return pb.StatisticDuration(count=x.count, ns=x.ns)

        return pb.ModelStatistics(
            name=self.model,
            version=str(self.version),
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
            inference_stats=pb.InferStatistics(
                success=d(self.success),
                fail=d(self.fail),
                queue=d(self.queue),
                compute_infer=d(self.compute),
            ),
            batch_stats=[
                pb.InferBatchStatistics(batch_size=size, compute_infer=d(x))
                for size, x in sorted(self.batches.items())
            ],
        )


_LIVE: dict[tuple[str, int], VersionStats] = {}


class _Collector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "liveml_worker_requests",
            "Inference requests by outcome.",
            labels=["model", "version", "status"],
        )
        latency = HistogramMetricFamily(
            "liveml_worker_request_seconds",
            "Request latency by phase: queue (waiting for a batch), compute (the run), total.",
            labels=["model", "version", "phase"],
        )
        batch = HistogramMetricFamily(
            "liveml_worker_batch_size", "Rows per executed batch.", labels=["model", "version"]
        )
        load = GaugeMetricFamily(
            "liveml_worker_load_seconds",
            "Time the last load of a version took.",
            labels=["model", "version"],
        )
        state = GaugeMetricFamily(
            "liveml_worker_version_state",
            "1 for the state a held version is in.",
            labels=["model", "version", "state"],
        )
        for (model, number), stats in list(_LIVE.items()):
            labels = [model, str(number)]
            for status, count in list(stats.statuses.items()):
                requests.add_metric([*labels, status], count)
            for phase, hist in stats.latency.items():
                latency.add_metric([*labels, phase], hist.cumulative(), hist.sum)
            batch.add_metric(labels, stats.batch_rows.cumulative(), stats.batch_rows.sum)
            load.add_metric(labels, stats.load_seconds)
            for name in STATES:
                state.add_metric([*labels, name], 1.0 if stats.state == name else 0.0)
        yield from (requests, latency, batch, load, state)


REGISTRY.register(_Collector())
