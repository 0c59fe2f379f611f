"""Prometheus metrics of the event stream (`liveml_events_*`), in whichever process
appends, drops or joins."""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from services.common.events import Appended, Encoded, EventStream

APPENDED = Counter(
    "liveml_events_appended",
    "Events newly stored in the event stream, by backend, kind and model.",
    ["backend", "kind", "model"],
)
DUPLICATES = Counter(
    "liveml_events_duplicates",
    "Events appended whose key was already stored (stored once), by backend, kind and model.",
    ["backend", "kind", "model"],
)
APPEND_SECONDS = Histogram(
    "liveml_events_append_seconds",
    "Seconds one batched append took until durable (failed ones included), by backend.",
    ["backend"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
APPEND_FAILURES = Counter(
    "liveml_events_append_failures",
    "Appends that failed (the backend unreachable or refusing), by backend.",
    ["backend"],
)
PREDICTIONS_LOGGED = Counter(
    "liveml_gateway_predictions_logged",
    "Predictions the gateway stored in the event stream, by model.",
    ["model"],
)
PREDICTIONS_DROPPED = Counter(
    "liveml_gateway_predictions_dropped",
    "Sampled predictions the gateway could not log, by model and reason "
    "(buffer_full: the sink could not keep up or was down for too long).",
    ["model", "reason"],
)
PREDICTION_BUFFER = Gauge(
    "liveml_gateway_prediction_buffer",
    "Predictions waiting in the gateway's buffer for the event stream.",
)
JOINED = Counter(
    "liveml_joiner_joined",
    "Predictions joined to their feedback (labelled examples made), by model and version.",
    ["model", "version"],
)
UNMATCHED = Counter(
    "liveml_joiner_unmatched",
    "Events that found no partner within the join window, by model and kind "
    "(prediction: no feedback came; feedback: its prediction was never logged).",
    ["model", "kind"],
)
JOINER_LAG = Gauge(
    "liveml_joiner_lag_events",
    "Events appended to the stream that the joiner has not processed yet.",
)
JOINER_POSITION = Gauge("liveml_joiner_position", "The last sequence the joiner committed.")
STREAM_LAST = Gauge("liveml_events_last_sequence", "The newest sequence of the event stream.")


async def append_counted(stream: EventStream, encoded: Sequence[Encoded]) -> Appended:
    """Append, counting what was stored, what was a duplicate and what failed."""
    from services.common.events import KIND_NAMES

    started = time.perf_counter()
    try:
        appended = await stream.append(encoded)
    except Exception:
        APPEND_FAILURES.labels(stream.backend).inc()
        raise
    finally:
        APPEND_SECONDS.labels(stream.backend).observe(time.perf_counter() - started)
    # One increment per (kind, model, duplicate) of the batch, not per event: a batch
    # of 500 predictions costs one label lookup.
    tally = Tally(
        (event.kind, event.model, duplicate)
        for event, duplicate in zip(encoded, appended.duplicates, strict=True)
    )
    for (kind, model, duplicate), count in tally.items():
        counter = DUPLICATES if duplicate else APPENDED
        counter.labels(stream.backend, KIND_NAMES.get(kind, "unknown"), model).inc(count)
    return appended
