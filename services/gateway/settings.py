"""Settings of the gateway process (flags and LIVEML_* variables)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from services.common.config import (
    DataPlaneAuthSettings,
    EventStreamSettings,
    RegistryClientSettings,
    ServerSettings,
)

# A DNS host name: dot-separated labels of letters, digits and inner hyphens.
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"{LABEL}(\.{LABEL})*")


class GatewaySettings(
    ServerSettings, RegistryClientSettings, DataPlaneAuthSettings, EventStreamSettings
):
    port: int = Field(8001, ge=0, le=65535, description="gRPC port (0 = pick a free one).")
    metrics_port: int = Field(
        9100, ge=-1, le=65535, description="Prometheus /metrics port (0 = any free one, -1 = off)."
    )
    registry: str = Field("127.0.0.1:50051", description="The registry's host:port.")
    worker_ca: Path | None = Field(None, description="CA bundle to verify workers' TLS.")
    worker_cert: Path | None = Field(None, description="Client certificate for mTLS to workers.")
    worker_key: Path | None = Field(None, description="Key of --worker-cert.")
    worker_tls_name: str | None = Field(
        None,
        description="Host name every worker's certificate must carry, checked instead of "
        "the address a worker advertises (Kubernetes: pod IPs); default: that address.",
    )
    upstream_transport: Literal["frames", "grpc"] = Field(
        "frames",
        description="How requests travel to workers: frames (a worker's framed forward "
        "listener, where it offers one; else gRPC) or grpc (always the gRPC Forward stream).",
    )
    route_key_header: str = Field(
        "x-liveml-route-key", description="Metadata key whose value keeps a client on one side."
    )
    default_timeout: float = Field(
        30.0, gt=0, description="Deadline for a request whose caller set none, seconds."
    )
    stall_seconds: float = Field(
        1.0,
        gt=0,
        description="A worker that answers nothing for this long while requests wait on it "
        "(a paused or frozen process) is ejected and those requests go to another worker "
        "of the version, if there is one.",
    )
    forward_hold_ms: float = Field(
        4.0,
        ge=0,
        description="Longest a request waits for others to share its message to a worker, "
        "ms; it waits only while requests have lately come together (0 = never wait).",
    )
    shadow_queue: int = Field(
        256, ge=1, description="Mirror copies waiting at most; more are dropped."
    )
    shadow_max_wait: float = Field(
        1.0,
        gt=0,
        description="Seconds a mirror copy may wait, from its primary's answer until a "
        "worker starts it; one that waits longer is dropped and counted (a copy run late "
        "would take CPU from later requests, and tell of a past load).",
    )
    shadow_priority: Literal["idle", "low", "normal"] = Field(
        "idle",
        description="OS priority of the process that sends mirror copies and compares "
        "their answers: idle (Linux SCHED_IDLE: only CPU time nothing else wants), low "
        "(nice 19) or normal.",
    )
    feedback_size: int = Field(100_000, ge=1, description="Predictions remembered for feedback.")
    feedback_seconds: float = Field(
        3600.0, gt=0, description="How long a prediction is remembered for feedback."
    )
    group_key: str = Field(
        "group", description="Request parameter naming a request's group (fairness metrics)."
    )
    report_seconds: float = Field(
        5.0, gt=0, description="How often per-version windows are reported to the registry."
    )
    gateway_id: str | None = Field(
        None, description="Name in reported windows (default: host and port)."
    )
    log_predictions: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of predictions logged to the event stream (a model's "
        "prediction_log_rate in the registry overrides it).",
    )
    log_buffer: int = Field(
        10_000, ge=1, description="Predictions waiting for the event stream at most; more drop."
    )
    log_batch: int = Field(500, ge=1, description="Predictions appended per batch at most.")
    log_flush_ms: float = Field(
        100.0, gt=0, description="Longest a logged prediction waits for its batch, ms."
    )
    log_max_request_bytes: int = Field(
        64 * 1024,
        ge=0,
        description="Requests larger than this are logged without their inputs (the answer "
        "is kept).",
    )

    @field_validator("worker_tls_name")
    @classmethod
    def _a_host_name(cls, value: str | None) -> str | None:
        if value is not None and not HOST_NAME.fullmatch(value):
            raise ValueError("expected a host name, such as liveml-worker")
        return value
