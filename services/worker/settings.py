"""Settings of a worker process (flags and LIVEML_* variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from services.common.config import DataPlaneAuthSettings, RegistryClientSettings, ServerSettings
from services.common.ids import ID, MAX_WATCH_MODELS


class WorkerSettings(ServerSettings, RegistryClientSettings, DataPlaneAuthSettings):
    port: int = Field(9001, ge=0, le=65535, description="gRPC port (0 = pick a free one).")
    metrics_port: int = Field(
        9101, ge=-1, le=65535, description="Prometheus /metrics port (0 = any free one, -1 = off)."
    )
    model_dir: Path | None = Field(
        None, description="Standalone mode: serve DIR/<model>/<version>/model.onnx (Triton layout)."
    )
    registry: str | None = Field(None, description="Registry mode: the registry's host:port.")
    worker_id: str | None = Field(None, description="Stable worker id (default: a random one).")
    advertise: str | None = Field(
        None, description="host:port gateways reach this worker at (default: --host:--port)."
    )
    forward_port: int = Field(
        0,
        ge=-1,
        le=65535,
        description="Port of the framed forward listener gateways prefer to the gRPC "
        "Forward stream (same TLS as --port; 0 = any free one, advertised through the "
        "registry; -1 = off).",
    )
    models: str = Field("", description="Comma-separated models to serve (empty = every model).")
    role: Literal["all", "primary", "mirror"] = Field(
        "all",
        description="Registry mode: which versions it loads and which traffic it takes: all "
        "(targets, pinned and mirror versions), primary (targets and pinned: clients' "
        "requests only) or mirror (mirror versions only: gateways' shadow copies, the "
        "whole process at --shadow-priority).",
    )
    allow_client_direct: bool = Field(
        False,
        description="Also serve inference to role client (not only the gateway's "
        "identity): clients may then bypass the gateway's routing and accounting.",
    )
    capacity: int = Field(64, ge=1, description="Concurrent requests this worker advertises.")
    cache_dir: Path = Field(Path(".liveml/cache"), description="Local artifact cache (by digest).")
    intra_op_threads: int = Field(1, ge=1, description="onnxruntime intra-op threads per session.")
    run_threads: int = Field(2, ge=1, description="Threads that run sessions concurrently.")
    inline_us: float = Field(
        100.0,
        ge=0,
        description="Run versions whose warm batch-1 run is faster than this (microseconds) "
        "on the event loop instead of a thread: the hand-off costs more than such a run "
        "(0 = always use threads).",
    )
    max_batch_size: int = Field(32, ge=0, description="Default largest merged batch (0 = off).")
    max_queue_delay_ms: float = Field(
        4.0,
        ge=0,
        description="Default longest a batch waits for more requests, ms; it waits only "
        "while waiting has lately brought more (0 = never wait).",
    )
    shadow_priority: Literal["idle", "low", "normal"] = Field(
        "idle",
        description="OS priority of the thread that runs gateways' shadow copies, and of "
        "the whole process with --role mirror: idle (Linux SCHED_IDLE: only CPU time "
        "nothing else wants), low (nice 19) or normal.",
    )
    drain_grace: float = Field(
        2.0, ge=0, description="Seconds a retired version stays after its last request."
    )
    heartbeat_seconds: float = Field(
        5.0,
        gt=0,
        description="Heartbeat interval to the registry; the lease is three of them. A "
        "state change or a moved rollout is reported at once, so a longer interval slows "
        "no swap, only how soon a vanished worker's lease runs out.",
    )
    scan_seconds: float = Field(
        1.0, gt=0, description="Standalone mode: model-dir rescan interval."
    )
    report_seconds: float = Field(
        5.0, gt=0, description="Registry mode: how often per-version windows are reported."
    )
    drift_learn_rows: int = Field(
        500,
        ge=10,
        description="Rows that choose drift bins for a version published without reference "
        "statistics.",
    )

    @field_validator("models")
    @classmethod
    def _model_ids(cls, value: str) -> str:
        ids = [m.strip() for m in value.split(",") if m.strip()]
        bad = [m for m in ids if not ID.fullmatch(m)]
        if bad:
            raise ValueError(
                f"expected comma-separated model ids such as iris,churn (1-128 letters, "
                f"digits, '_', '.', '-'); {bad[0]!r} is not one"
            )
        if len(ids) > MAX_WATCH_MODELS:
            raise ValueError(f"at most {MAX_WATCH_MODELS} models, got {len(ids)}")
        return value
