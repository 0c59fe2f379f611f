"""The registry's tables (SQLAlchemy 2 declarative); Alembic migrations create them.

Each resource keeps its full protobuf message in `proto` (what the API returns and
the change feed carries) beside the columns that are queried or constrained. Times
are integer microseconds since the epoch, portable across SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """One row: the global revision (its row lock orders all writes) and compaction point."""

    __tablename__ = "meta"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    compacted_revision: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # Sequence of the newest audit event, so deleting the tail of the trail is noticed.
    audit_head: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class ModelRow(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    latest_version: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    proto: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    stage: Mapped[int] = mapped_column(Integer, nullable=False)
    approval: Mapped[int] = mapped_column(Integer, nullable=False)
    proto: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class RolloutRow(Base):
    __tablename__ = "rollouts"
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    proto: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class RolloutHistoryRow(Base):
    __tablename__ = "rollout_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True
    )
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    proto: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class WorkerRow(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    lease_expire_us: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    lease_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    proto: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class TokenRow(Base):
    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    role: Mapped[int] = mapped_column(Integer, nullable=False)
    display_name: Mapped[str] = mapped_column(String(256), nullable=False)
    creator: Mapped[str] = mapped_column(String(256), nullable=False)
    create_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expire_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Role worker: the one worker id the token acts as (None: binds at first register).
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Bound at creation (never moves), rather than on first use (moves once it left).
    worker_id_fixed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class AuditRow(Base):
    __tablename__ = "audit_events"
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    actor: Mapped[str] = mapped_column(String(256), nullable=False)
    action: Mapped[str] = mapped_column(String(128), nullable=False)
    target: Mapped[str] = mapped_column(String(512), nullable=False, index=True)
    before_digest: Mapped[str] = mapped_column(String(64), nullable=False)
    after_digest: Mapped[str] = mapped_column(String(64), nullable=False)
    details: Mapped[str] = mapped_column(Text, nullable=False)
    previous_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    # HMAC-SHA256 under the audit key `key_id` (services/registry/audit_chain.py); events
    # from before migration 0008 have "" and a plain sha256 until they are re-chained.
    hash: Mapped[str] = mapped_column(String(64), nullable=False)
    key_id: Mapped[str] = mapped_column(String(32), nullable=False, default="")


class ChangeRow(Base):
    """The change feed: one row per event, several events may share a revision."""

    __tablename__ = "changes"
    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    type: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    resource_name: Mapped[str] = mapped_column(String(512), nullable=False)
    proto: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class WindowRow(Base):
    """A per-version window reported by a gateway or a worker (the `Window` message)."""

    __tablename__ = "windows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128), nullable=False)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    source: Mapped[int] = mapped_column(Integer, nullable=False)
    end_us: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    proto: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    # A hash of the reported window: a report retried after the registry already stored
    # it is not stored twice.
    key: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True, index=True)


class AlertRow(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # What makes two raises the same alert (kind, model, version): one FIRING row each.
    fingerprint: Mapped[str] = mapped_column(String(256), nullable=False, index=True)
    firing: Mapped[bool] = mapped_column(Boolean, nullable=False)
    model: Mapped[str] = mapped_column(String(128), nullable=False)
    sequence: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    proto: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class LeaseRow(Base):
    """A named leadership lease (the rollout controller's): who holds it and until when."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128), nullable=False)
    expire_us: Mapped[int] = mapped_column(BigInteger, nullable=False)


class TrainingPolicyRow(Base):
    """A model's training policy (the `TrainingPolicy` message)."""

    __tablename__ = "training_policies"
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    proto: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class TrainingRunRow(Base):
    """One training run (the `TrainingRun` message), numbered per model."""

    __tablename__ = "training_runs"
    __table_args__ = (UniqueConstraint("model_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True
    )
    number: Mapped[int] = mapped_column(BigInteger, nullable=False)
    state: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    lease_expire_us: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    proto: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class EventRow(Base):
    """One event of the stream (the embedded backend): `liveml.events.v1.Event` in `proto`.

    Sequences are handed out under the `event_meta` row lock, so they commit in order
    and a reader that has seen sequence N can never miss one that commits later.
    """

    __tablename__ = "events"
    # One index by model serves reads by model (in sequence order, kinds filtered on
    # its entries) and the counts by kind (migration 0011).
    __table_args__ = (Index("ix_events_model_sequence_kind", "model", "sequence", "kind"),)
    # On SQLite declared INTEGER, so it is the rowid: no separate primary-key index to
    # write per event (migration 0010); 64 bits on both.
    sequence: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    kind: Mapped[int] = mapped_column(Integer, nullable=False)
    model: Mapped[str] = mapped_column(String(128), nullable=False)
    # The dedup key: unique for ever (JetStream's dedup window has no counterpart here).
    key: Mapped[str] = mapped_column(String(256), nullable=False, unique=True)
    # When the registry stored it (its own clock): retention by age cuts here. Not
    # indexed: retention scans the bounded prefix it may remove, by sequence.
    stored_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    proto: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class EventMeta(Base):
    """One row: the last sequence handed out (its row lock orders appends), where the
    stream starts after retention, and the bytes it holds."""

    __tablename__ = "event_meta"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    first_sequence: Mapped[int] = mapped_column(BigInteger, nullable=False, default=1)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class ConsumerRow(Base):
    """A consumer's committed state (the joiner's): position and its own counters (JSON)."""

    __tablename__ = "event_consumers"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    state: Mapped[str] = mapped_column(Text, nullable=False, default="{}")


class LearnerRow(Base):
    """A model's online learner: who holds it (lease, fencing token), its last
    checkpoint and where it stands (the `LearnerStatus` message)."""

    __tablename__ = "learners"
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    holder: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    token: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    lease_expire_us: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    checkpoint: Mapped[bytes] = mapped_column(LargeBinary, nullable=False, default=b"")
    status: Mapped[bytes] = mapped_column(LargeBinary, nullable=False, default=b"")
