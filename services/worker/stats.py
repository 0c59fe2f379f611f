"""Per-version statistics: Prometheus metrics and the counters V2 ModelStatistics reports.

Label children are resolved once per version, so recording a request costs a few
attribute updates, not label lookups.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from services.common.gen.inference import grpc_predict_v2_pb2 as pb

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
REQUESTS = Counter(
    "liveml_worker_requests", "Inference requests by outcome.", ["model", "version", "status"]
)
LATENCY = Histogram(
    "liveml_worker_request_seconds",
    "Request latency by phase: queue (waiting for a batch), compute (the batch run), total.",
    ["model", "version", "phase"],
    buckets=LATENCY_BUCKETS,
)
BATCH = Histogram(
    "liveml_worker_batch_size",
    "Rows per executed batch.",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
LOAD = Gauge(
    "liveml_worker_load_seconds", "Time the last load of a version took.", ["model", "version"]
)
STATE = Gauge(
    "liveml_worker_version_state",
    "1 for the state a held version is in.",
    ["model", "version", "state"],
)
STATES = ("LOADING", "READY", "FAILED", "DRAINING")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)


@dataclass
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
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))

    def __post_init__(self) -> None:
        labels = (self.model, str(self.version))
        self._ok = REQUESTS.labels(*labels, "OK")
        self._queue = LATENCY.labels(*labels, "queue")
        self._compute = LATENCY.labels(*labels, "compute")
        self._total = LATENCY.labels(*labels, "total")
        self._batch = BATCH.labels(*labels)
        self._statuses = {"OK"}

    def batch(self, rows: int, queued: float, compute: float) -> None:
        self.execution_count += 1
        self.batches[rows].add(compute)
        self._batch.observe(rows)
        self._queue.observe(queued)
        self._compute.observe(compute)
        self.queue.add(queued)
        self.compute.add(compute)

    def request(self, rows: int, seconds: float) -> None:
        self.inference_count += rows
        self.success.add(seconds)
        self.last_inference_ms = time.time_ns() // 1_000_000
        self._ok.inc()
        self._total.observe(seconds)

    def failure(self, status: str, seconds: float) -> None:
        self.fail.add(seconds)
        self._statuses.add(status)
        REQUESTS.labels(self.model, str(self.version), status).inc()

    def set_state(self, state: str) -> None:
        for name in STATES:
            STATE.labels(self.model, str(self.version), name).set(1 if name == state else 0)

    def loaded(self, seconds: float) -> None:
        LOAD.labels(self.model, str(self.version)).set(seconds)

    def forget(self) -> None:
        """Drop this version's metric series once it is unloaded."""
        labels = (self.model, str(self.version))
        for phase in ("queue", "compute", "total"):
            _remove(LATENCY, *labels, phase)
        for status in self._statuses:
            _remove(REQUESTS, *labels, status)
        for state in STATES:
            _remove(STATE, *labels, state)
        _remove(BATCH, *labels)
        _remove(LOAD, *labels)

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


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
