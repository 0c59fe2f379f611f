"""Settings of the registry process (flags and LIVEML_* variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from services.common.config import EventStreamSettings, ServerSettings


class RegistrySettings(ServerSettings, EventStreamSettings):
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 = pick a free one).")
    metrics_port: int = Field(
        9102, ge=-1, le=65535, description="Prometheus /metrics port (0 = any free one, -1 = off)."
    )
    database_url: str = Field(
        "sqlite+aiosqlite:///.liveml/registry.db",
        description="SQLAlchemy URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB.",
    )
    database_password_file: Path | None = Field(
        None, description="File holding the database password (the URL must then have none)."
    )
    artifact_dir: Path = Field(Path(".liveml/artifacts"), description="Artifact store folder.")
    max_artifact_bytes: int = Field(
        1 << 30, ge=1, description="Largest artifact an upload may carry."
    )
    artifact_key: SecretStr | None = Field(
        None, description="Base64 AES-256 key: artifacts are encrypted at rest when set."
    )
    artifact_key_file: Path | None = Field(
        None, description="File holding --artifact-key (set one of the two)."
    )
    artifact_key_id: str = Field(
        "k1", description="Id recorded with artifacts sealed by --artifact-key."
    )
    artifact_old_keys: SecretStr | None = Field(
        None, description="Retired keys still needed to read old artifacts: id:base64,id:base64."
    )
    artifact_old_keys_file: Path | None = Field(
        None, description="File holding --artifact-old-keys (empty: none; set one of the two)."
    )
    audit_key: SecretStr | None = Field(
        None,
        description=(
            "Base64 HMAC-SHA256 key (32 bytes) of the audit trail; default: one generated "
            "on first start into ARTIFACT_DIR/audit/key (mode 0600)."
        ),
    )
    audit_key_file: Path | None = Field(
        None, description="File holding --audit-key (set one of the two)."
    )
    audit_key_id: str = Field(
        "k1", min_length=1, max_length=32, description="Id recorded with audit events MACed now."
    )
    audit_old_keys: SecretStr | None = Field(
        None, description="Retired audit keys still needed to verify old events: id:base64,..."
    )
    audit_old_keys_file: Path | None = Field(
        None, description="File holding --audit-old-keys (empty: none; set one of the two)."
    )
    auth: bool = Field(True, description="Require a token or client certificate on every call.")
    admin_token_file: Path = Field(
        Path(".liveml/admin.token"),
        description=(
            "Bootstrap admin token: on an empty database, the token this file holds, "
            "else a new one written here (mode 0600)."
        ),
    )
    cert_roles: str = Field(
        "", description="Client-certificate identities and roles (mTLS): CN=role,CN=role."
    )
    token_ttl: float = Field(30 * 86400, gt=0, description="Default token lifetime, seconds.")
    lease_seconds: float = Field(10.0, gt=0, description="Default worker lease, seconds.")
    restart_grace_seconds: float = Field(
        30.0, ge=0, description="Lease every known worker gets when the registry starts, seconds."
    )
    lease_flush_seconds: float = Field(
        1.0,
        ge=0,
        description="How often lease renewals held in memory are written (one UPDATE for "
        "all), seconds; a lease lapses this much after it ran out. 0 = write each at once.",
    )
    gc_young_threshold: int = Field(
        50_000,
        ge=0,
        description="Allocations between the garbage collector's young collections (0 = "
        "Python's default, 700). With thousands of open heartbeat and watch streams the "
        "default promoted their short-lived objects and ran full collections every few "
        "seconds, each a 400 ms pause.",
    )
    watch_progress_seconds: float = Field(
        5.0, gt=0, description="Progress message interval of an idle watch, seconds."
    )
    watch_slow_seconds: float = Field(
        10.0,
        gt=0,
        description="A watch whose client has not read for this long (a write still waiting "
        "on HTTP/2 flow control) is ended with RESOURCE_EXHAUSTED after what it was sent; "
        "its client resumes from the last revision it received.",
    )
    watch_poll_seconds: float = Field(
        1.0, gt=0, description="How often the change feed is polled (a fallback to NOTIFY)."
    )
    watch_keep_revisions: int = Field(
        10_000, ge=10, description="Change-feed revisions kept at least (however old)."
    )
    watch_keep_seconds: float = Field(
        300.0,
        ge=0,
        description="Change-feed history kept at least, seconds: a revision is compacted "
        "away once it is older than this and not among the newest --watch-keep-revisions.",
    )
    controller_seconds: float = Field(
        1.0, gt=0, description="How often the rollout controller looks at canaries, seconds."
    )
    leader_lease_seconds: float = Field(
        5.0, gt=0, description="Controller leadership lease among replicas, seconds."
    )
    controller_id: str | None = Field(
        None, description="This replica's name as controller leader (default: host and pid)."
    )
    monitor_window_seconds: float = Field(
        300.0, gt=0, description="Window the drift alerts and /metrics numbers cover, seconds."
    )
    monitor_seconds: float = Field(
        5.0, gt=0, description="How often drift and worker alerts are evaluated, seconds."
    )
    keep_windows_seconds: float = Field(
        3600.0, gt=0, description="How long reported windows are kept, seconds."
    )
    drift_alert_psi: float = Field(
        0.25, gt=0, description="Raise DriftHigh when a version's worst feature PSI exceeds this."
    )
    accuracy_alert_drop: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Raise AccuracyDrop when a served version's live feedback accuracy falls "
        "this far below the holdout_accuracy it was registered with.",
    )
    accuracy_alert_feedback: int = Field(
        50, ge=1, description="Feedback labels a version needs before AccuracyDrop is judged."
    )
    ready_alert_seconds: float = Field(
        60.0,
        ge=0,
        description="Raise NoReadyWorker when a target has had no READY worker this long, s.",
    )
    alert_webhook: str | None = Field(
        None, description="URL that gets every alert change as a JSON POST."
    )
    shared_worker_tokens: bool = Field(
        False,
        description="Let a worker token not bound at creation act for any worker (one "
        "token for a scaled Deployment's pods) instead of binding to the first worker "
        "that registers with it. Weaker: one worker's token can speak for another. "
        "Tokens created with --worker-id stay bound.",
    )
    import_max_bytes: int = Field(
        64 << 20, ge=1024, description="Largest file of examples one ImportExamples may carry."
    )
    event_retain_seconds: float = Field(
        60.0, gt=0, description="How often retention removes old events (sql stream), seconds."
    )
    join_window_seconds: float = Field(
        3600.0,
        gt=0,
        description="How long the joiner waits for a prediction's feedback (and a "
        "feedback's prediction) before counting it unmatched, seconds.",
    )
    join_max_pending: int = Field(
        200_000, ge=1, description="Predictions and feedback the joiner holds at most."
    )
    join_commit_seconds: float = Field(
        2.0, gt=0, description="How often the joiner commits its joins and position, seconds."
    )
