"""Registry: its PostgreSQL database away (restarting, failing over, refusing connections).

Every call that needs the database answers UNAVAILABLE, saying the database is
unreachable and to retry — what a client retries — not UNKNOWN with a driver class.
Calls that need no database go on: a quiet heartbeat is a renewal held in memory, so a
fleet at rest keeps its leases through the outage. Nothing asked during it is half
done, and once the database is back every call works again without a restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from tests.helpers.registry import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    Client,
    database,
    registry_settings,
    running_registry,
)
from tests.helpers.wait import async_wait_until

READY = rpb.WorkerVersionState(model="m", version=1, state=rpb.VERSION_LOAD_STATE_READY)
LOADING = rpb.WorkerVersionState(model="m", version=1, state=rpb.VERSION_LOAD_STATE_LOADING)
AWAY = "the registry's database is unreachable or busy"


@asynccontextmanager
async def refused(url: str) -> AsyncIterator[None]:
    """The database refuses new connections and its open ones are cut (what a restart
    or a failover does to the registry's pool), until the block ends."""
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def unavailable(call: Any) -> str:
    with pytest.raises(aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    return str(err.value.details())


def heartbeat(client: Client, name: str, state: rpb.WorkerVersionState) -> Any:
    return client.Heartbeat(
        rpb.HeartbeatRequest(name=name, versions=[state], observed_revision=0), timeout=10
    )


async def test_calls_answer_unavailable_while_the_database_is_away_and_work_after(
    tmp_path: Path,
) -> None:
    async with (
        database("postgres", tmp_path) as url,
        running_registry(registry_settings(url, tmp_path)) as registry,
    ):
        client = registry.client()
        await client.CreateModel(rpb.CreateModelRequest(model_id="m"))
        worker = await client.RegisterWorker(
            rpb.RegisterWorkerRequest(worker=rpb.Worker(address="127.0.0.1:9001"))
        )
        name = worker.worker.name
        await heartbeat(client, name, READY)  # a change (registered with no versions)
        await heartbeat(client, name, READY)  # a renewal: known, quiet from here on

        async with refused(url):
            # A read, a versioned write, an unversioned one (a changing heartbeat).
            for call in (
                client.GetModel(rpb.GetModelRequest(name="models/m"), timeout=10),
                client.CreateModel(rpb.CreateModelRequest(model_id="n"), timeout=10),
                heartbeat(client, name, LOADING),
            ):
                details = await unavailable(call)
                assert details.startswith(AWAY), details
                assert "retry" in details, details
                assert "SELECT" not in details and "UPDATE" not in details, details
            # A quiet heartbeat needs no database: the lease is renewed from memory.
            reply = await heartbeat(client, name, READY)
            assert reply.lease_expire_time.ToMicroseconds() > 0

        # Back without a restart: the pool's stale connections are replaced.
        got = await async_wait_until(
            lambda: _get(client), within=20, what="GetModel works once the database is back"
        )
        assert got.model.name == "models/m"
        with pytest.raises(aio.AioRpcError) as err:
            await client.GetModel(rpb.GetModelRequest(name="models/n"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # the refused create left nothing
        await heartbeat(client, name, LOADING)
        listed = await client.ListWorkers(rpb.ListWorkersRequest())
        (state,) = listed.workers[0].versions
        assert state.state == rpb.VERSION_LOAD_STATE_LOADING


async def _get(client: Client) -> rpb.GetModelResponse | None:
    try:
        reply: rpb.GetModelResponse = await client.GetModel(
            rpb.GetModelRequest(name="models/m"), timeout=10
        )
        return reply
    except aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return None
