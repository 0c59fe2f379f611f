"""windows.key: a report sent again (a retry after a lost answer) is stored once

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows stored before have no key (NULL), and NULLs never collide in a unique index.
    with op.batch_alter_table("windows") as batch:
        batch.add_column(sa.Column("key", sa.String(length=64), nullable=True))
        batch.create_index("ix_windows_key", ["key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("windows") as batch:
        batch.drop_index("ix_windows_key")
        batch.drop_column("key")
