"""Request and response parameters a gateway and a worker exchange, by name.

A gateway appends them to requests it forwards (without decoding the rest) and a
worker reads them; a worker sets the status on a failed answer, a gateway reads it.
"""

from __future__ import annotations

# How long the sender still waits, microseconds (int64): a worker does not start
# what has waited past it.
TIMEOUT = "liveml_timeout_us"
# The request's trace context (string), so one trace spans gateway and worker.
TRACEPARENT = "traceparent"
# A failed answer's gRPC status code (int64), so a gateway can tell a retryable
# failure from bad input.
STATUS = "liveml_status"
