"""windows, alerts and leases (monitoring and the rollout controller)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "windows",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.Integer(), nullable=False),
        sa.Column("end_us", sa.BigInteger(), nullable=False),
        sa.Column("proto", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_windows_end_us", "windows", ["end_us"])
    op.create_index("ix_windows_model_end_us", "windows", ["model", "end_us"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("fingerprint", sa.String(length=256), nullable=False),
        sa.Column("firing", sa.Boolean(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("proto", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alerts_fingerprint", "alerts", ["fingerprint"])
    op.create_index("ix_alerts_sequence", "alerts", ["sequence"])
    leases = op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expire_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(leases, [{"name": "controller", "holder": "", "expire_us": 0}])


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_alerts_sequence", "alerts")
    op.drop_index("ix_alerts_fingerprint", "alerts")
    op.drop_table("alerts")
    op.drop_index("ix_windows_model_end_us", "windows")
    op.drop_index("ix_windows_end_us", "windows")
    op.drop_table("windows")
