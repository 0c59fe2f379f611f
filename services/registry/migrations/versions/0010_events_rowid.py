"""events: the sequence is SQLite's rowid, no index on stored_us

Revision ID: 0010
Revises: 0009

Every event appended wrote five b-trees on SQLite: the table, a separate index for its
BIGINT primary key (only a column declared exactly INTEGER is the rowid), the key's
UNIQUE index and three more. Declared INTEGER there, the sequence is the rowid (the
table is ordered by it, reads by sequence need no index); `ix_events_stored_us` served
only retention by age, which now scans the bounded prefix it may remove by sequence,
and the stats' oldest/newest times, now read at the ends of the stream. PostgreSQL
keeps its BIGINT key and loses the same index.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # The table is copied into its new form (SQLite cannot change a primary key).
        with op.batch_alter_table("events", recreate="always") as batch:
            batch.drop_index("ix_events_stored_us")
            batch.alter_column(
                "sequence",
                existing_type=sa.BigInteger(),
                type_=sa.Integer(),
                existing_nullable=False,
                autoincrement=False,
            )
    else:
        op.drop_index("ix_events_stored_us", "events")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("events", recreate="always") as batch:
            batch.alter_column(
                "sequence",
                existing_type=sa.Integer(),
                type_=sa.BigInteger(),
                existing_nullable=False,
                autoincrement=False,
            )
            batch.create_index("ix_events_stored_us", ["stored_us"])
    else:
        op.create_index("ix_events_stored_us", "events", ["stored_us"])
