"""worker tokens bound to one worker id

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing worker tokens stay unbound: each binds on its next RegisterWorker.
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("worker_id", sa.String(length=128), nullable=True))
        batch.add_column(
            sa.Column("worker_id_fixed", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("worker_id_fixed")
        batch.drop_column("worker_id")
