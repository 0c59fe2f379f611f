"""training policies and runs (the trainer)

Revision ID: 0006
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_policies",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("proto", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id"),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("lease_expire_us", sa.BigInteger(), nullable=False),
        sa.Column("proto", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "number"),
    )
    op.create_index("ix_training_runs_model_id", "training_runs", ["model_id"])
    op.create_index("ix_training_runs_state", "training_runs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_training_runs_state", "training_runs")
    op.drop_index("ix_training_runs_model_id", "training_runs")
    op.drop_table("training_runs")
    op.drop_table("training_policies")
