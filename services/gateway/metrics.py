"""The gateway's Prometheus metrics (`liveml_gateway_*`).

What every request touches (requests, latency, in flight) is counted in plain dicts
and turned into metric families when Prometheus scrapes: a labelled prometheus_client
metric costs a lock and a label lookup per request, which the gateway's per-request
budget of a few tens of microseconds cannot spare. Rarer events use ordinary counters.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Requests:
    """Requests by (model, version, role, status) and latency by (model, version, role)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, str], int] = {}
        self.latency: dict[tuple[str, str, str], list[float]] = {}  # bucket counts + sum
        self.in_flight = 0

    def record(self, model: str, version: str, role: str, status: str, seconds: float) -> None:
        key = (model, version, role, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        if status == "OK":
            hist = self.latency.get(key[:3])
            if hist is None:
                hist = self.latency[key[:3]] = [0.0] * (len(BUCKETS) + 2)
            hist[bisect.bisect_left(BUCKETS, seconds)] += 1
            hist[-1] += seconds


REQUESTS = Requests()


class _Collector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "liveml_gateway_requests",
            "Requests by model, answering version, role (primary or shadow) and status.",
            labels=["model", "version", "role", "status"],
        )
        for status_key, count in list(REQUESTS.counts.items()):
            requests.add_metric(list(status_key), count)
        latency = HistogramMetricFamily(
            "liveml_gateway_request_seconds",
            "Latency through the gateway by model, version and role.",
            labels=["model", "version", "role"],
        )
        for key, hist in list(REQUESTS.latency.items()):
            cumulative: list[tuple[str, float]] = []
            total = 0.0
            for bound, n in zip((*map(str, BUCKETS), "+Inf"), hist[:-1], strict=True):
                total += n
                cumulative.append((bound, total))
            latency.add_metric(list(key), cumulative, hist[-1])
        in_flight = GaugeMetricFamily(
            "liveml_gateway_in_flight", "Requests the gateway is handling now."
        )
        in_flight.add_metric([], REQUESTS.in_flight)
        yield from (requests, latency, in_flight)


REGISTRY.register(_Collector())
REDISTRIBUTED = Counter(
    "liveml_gateway_redistributed",
    "Requests routed while a target had no READY worker (its share held on the fallback "
    "or spread over the other targets).",
    ["model"],
)
EJECTIONS = Counter(
    "liveml_gateway_ejections",
    "Workers taken out of the pool because their transport failed (probed until they answer).",
    ["worker"],
)
RETRIES = Counter(
    "liveml_gateway_retries", "Requests retried on another worker of the same version.", ["model"]
)
SHADOW_DROPPED = Counter(
    "liveml_gateway_shadow_dropped", "Mirror copies dropped (queue full).", ["model", "version"]
)
SHADOW_COMPARED = Counter(
    "liveml_gateway_shadow_compared",
    "Mirror answers compared with the primary, by agreement.",
    ["model", "version", "agree"],
)
FEEDBACK = Counter(
    "liveml_gateway_feedback",
    "Ground truth joined to the version that answered, by outcome.",
    ["model", "version", "outcome"],
)
GROUP_PREDICTIONS = Counter(
    "liveml_gateway_group_predictions",
    "Predictions for requests that carry a group attribute, by outcome (fairness).",
    ["model", "version", "group", "outcome"],
)
INGESTED = Counter("liveml_gateway_ingested_examples", "Labelled examples accepted.", ["model"])
