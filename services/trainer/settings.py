"""Settings of a trainer process (flags and LIVEML_* variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from services.common.config import EventStreamSettings, RegistryClientSettings, ServerSettings


class TrainerSettings(ServerSettings, RegistryClientSettings, EventStreamSettings):
    port: int = Field(
        9301, ge=0, le=65535, description="gRPC port of its health service (0 = any free one)."
    )
    metrics_port: int = Field(
        9302, ge=-1, le=65535, description="Prometheus /metrics port (0 = any free one, -1 = off)."
    )
    registry: str = Field("127.0.0.1:50051", description="The registry's host:port.")
    trainer_id: str | None = Field(
        None, description="This trainer's name in claims (default: host and process id)."
    )
    poll_seconds: float = Field(
        2.0, gt=0, description="How often policies' triggers are evaluated and runs claimed."
    )
    lease_seconds: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="A claimed run's lease: a trainer silent for longer loses the run, "
        "which is then FAILED and retried.",
    )
    work_dir: Path = Field(
        Path(".liveml/trainer"), description="Scratch space for artifacts being gated."
    )
    checkpoint_key: SecretStr | None = Field(
        None,
        description="Key that seals online learners' checkpoints (every trainer replica "
        "needs the same one; default: derived from the registry token).",
    )
    checkpoint_key_file: Path | None = Field(None, description="File holding --checkpoint-key.")
