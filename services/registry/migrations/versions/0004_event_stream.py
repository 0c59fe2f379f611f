"""the event stream: events, its meta row, consumers' state, the joiner's lease

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("stored_us", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("proto", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("sequence"),
        sa.UniqueConstraint("key"),
    )
    op.create_index("ix_events_model_sequence", "events", ["model", "sequence"])
    op.create_index("ix_events_model_kind", "events", ["model", "kind"])
    op.create_index("ix_events_stored_us", "events", ["stored_us"])
    meta = op.create_table(
        "event_meta",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("first_sequence", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(meta, [{"id": 1, "last_sequence": 0, "first_sequence": 1, "bytes": 0}])
    op.create_table(
        "event_consumers",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    leases = sa.table(
        "leases",
        sa.column("name", sa.String),
        sa.column("holder", sa.String),
        sa.column("expire_us", sa.BigInteger),
    )
    op.bulk_insert(leases, [{"name": "joiner", "holder": "", "expire_us": 0}])


def downgrade() -> None:
    op.execute("DELETE FROM leases WHERE name = 'joiner'")
    op.drop_table("event_consumers")
    op.drop_table("event_meta")
    op.drop_index("ix_events_stored_us", "events")
    op.drop_index("ix_events_model_kind", "events")
    op.drop_index("ix_events_model_sequence", "events")
    op.drop_table("events")
