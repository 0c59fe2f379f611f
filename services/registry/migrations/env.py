"""Alembic environment: migrations run on the connection the registry hands over.

The registry calls `services.registry.store.migrate` on start; it opens an async
connection and passes its sync facade here through `config.attributes`, so no
separate sync driver is needed. Running `alembic` by hand uses LIVEML_DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from services.registry.db import Base

config = context.config
target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone() -> None:
    url = os.environ.get("LIVEML_DATABASE_URL", "sqlite+aiosqlite:///.liveml/registry.db")
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(run_on)
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    run_on(connection)
else:
    asyncio.run(run_standalone())
