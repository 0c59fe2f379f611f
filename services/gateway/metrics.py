"""The gateway's Prometheus metrics (`liveml_gateway_*`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "liveml_gateway_requests",
    "Requests by model, answering version, role (primary or shadow) and status.",
    ["model", "version", "role", "status"],
)
LATENCY = Histogram(
    "liveml_gateway_request_seconds",
    "Latency through the gateway by model, version and role.",
    ["model", "version", "role"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
IN_FLIGHT = Gauge("liveml_gateway_in_flight", "Requests the gateway is handling now.")
REDISTRIBUTED = Counter(
    "liveml_gateway_redistributed",
    "Requests whose weighted choice skipped a target with no READY worker.",
    ["model"],
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
