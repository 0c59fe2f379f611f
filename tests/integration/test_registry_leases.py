"""Registry: lease renewals held in memory, and tokens checked from memory.

A quiet heartbeat is a renewal the registry answers from memory and writes later (one
UPDATE for all every --lease-flush-seconds): no revision, no audit event. What a
registry held when it was SIGKILLed is covered by the restart grace, so a worker that
kept heartbeating is not expired and one that stopped still is. Tokens are checked
against an in-memory table: a revocation takes effect at once on the registry that
revoked, and within the change feed's latency on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc import aio
from sqlalchemy import select

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.registry.db import WorkerRow
from tests.helpers.procs import Proc, registry_process
from tests.helpers.registry import auth, registry_settings, running_registry
from tests.helpers.wait import async_wait_until

READY = rpb.WorkerVersionState(model="m", version=1, state=rpb.VERSION_LOAD_STATE_READY)


def db_lease_us(db: Path, worker: str) -> int:
    """The lease the database holds for `worker` (what a restarted registry would read)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (lease,) = conn.execute(
            "SELECT lease_expire_us FROM workers WHERE id = ?", (worker.split("/")[-1],)
        ).fetchone()
    return int(lease)


class Registry:
    """A registry process and a stub on it."""

    def __init__(self, root: Path, **env: str) -> None:
        self.proc, port = registry_process(root, **env)
        self.channel = aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = rpb_grpc.RegistryServiceStub(self.channel)
        self.md = auth((root / "admin.token").read_text().strip())

    async def revision(self) -> int:
        call = self.stub.Watch(rpb.WatchRequest(since_revision=0), metadata=self.md)
        first = await call.read()
        call.cancel()
        return int(first.revision)

    async def audited(self) -> int:
        reply = await self.stub.ListAuditEvents(
            rpb.ListAuditEventsRequest(page_size=1000), metadata=self.md
        )
        return len(reply.events)

    async def heartbeat(self, name: str, observed: int) -> rpb.HeartbeatResponse:
        return await self.stub.Heartbeat(
            rpb.HeartbeatRequest(name=name, versions=[READY], observed_revision=observed),
            metadata=self.md,
            timeout=10,
        )

    async def listed(self) -> set[str]:
        reply = await self.stub.ListWorkers(rpb.ListWorkersRequest(), metadata=self.md)
        return {w.name for w in reply.workers}

    async def close(self) -> None:
        await self.channel.close()


async def test_renewals_held_in_memory_survive_a_sigkill_and_expiry_stays_right(
    tmp_path: Path,
) -> None:
    db = tmp_path / "registry.db"
    # Nothing is flushed while the first registry lives: every renewal it answers is
    # held in memory only when it is killed.
    first = Registry(tmp_path, LIVEML_LEASE_FLUSH_SECONDS="3600")
    second: Registry | None = None
    procs: list[Proc] = [first.proc]
    try:
        names = []
        for address in ("127.0.0.1:9001", "127.0.0.1:9002"):
            reply = await first.stub.RegisterWorker(
                rpb.RegisterWorkerRequest(
                    worker=rpb.Worker(address=address), lease_duration=Duration(seconds=2)
                ),
                metadata=first.md,
            )
            names.append(reply.worker.name)
        alive, dead = names
        # The first heartbeats report a state (published, audited, written at once).
        for name in names:
            await first.heartbeat(name, 0)
        revision = await first.revision()
        for name in names:
            await first.heartbeat(name, revision)  # the observed revision moves: written
        revision, audited = await first.revision(), await first.audited()
        # The first quiet one is read (and written) in the database; the registry then
        # knows the worker and answers the next ones from memory.
        await first.heartbeat(alive, revision)
        persisted = db_lease_us(db, alive)

        # Renewal-only heartbeats of `alive` until its lease in the database has lapsed:
        # each one answered with a later lease, none a revision or an audit event.
        last = 0
        while time.time_ns() // 1000 < persisted + 500_000:
            reply = await first.heartbeat(alive, revision)
            assert reply.lease_expire_time.ToMicroseconds() > last
            last = reply.lease_expire_time.ToMicroseconds()
            await asyncio.sleep(0.2)  # a worker's heartbeat pace (noqa: sleep-ok)
        assert await first.revision() == revision
        assert await first.audited() == audited
        assert last > persisted + 1_000_000
        assert await first.listed() == {alive, dead}

        first.proc.popen.kill()  # SIGKILL: the renewals held are lost with it
        first.proc.popen.wait(10)
        # What a restarted registry finds: `alive`'s lease as written before, lapsed.
        assert db_lease_us(db, alive) == persisted < time.time_ns() // 1000

        grace = 3.0
        restarted = time.monotonic()
        second = Registry(
            tmp_path,
            LIVEML_LEASE_FLUSH_SECONDS="0.2",
            LIVEML_RESTART_GRACE_SECONDS=str(grace),
        )
        procs.append(second.proc)
        registry = second
        revision = await second.revision()
        lost: list[str] = []

        async def keep_alive() -> None:
            while True:
                try:
                    await registry.heartbeat(alive, revision)
                except aio.AioRpcError as exc:
                    lost.append(f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.2)  # a worker's heartbeat pace (noqa: sleep-ok)

        beating = asyncio.create_task(keep_alive())
        try:

            async def dead_left() -> bool:
                return dead not in await registry.listed()

            await async_wait_until(dead_left, 20, f"{dead} to expire after the restart grace")
            gone_after = time.monotonic() - restarted
            # The restart grace, not the lapsed lease in the database, decided.
            assert gone_after >= grace, gone_after
            assert await registry.listed() == {alive}
            # `alive` outlives the grace and its own 2 s lease by a few renewals.
            beats = await registry.heartbeat(alive, revision)
            deadline = beats.lease_expire_time.ToMicroseconds() + 1_000_000

            async def past_a_lease() -> bool:
                return time.time_ns() // 1000 > deadline

            await async_wait_until(past_a_lease, 10, "a whole lease after the grace")
            assert await registry.listed() == {alive}
            assert not lost, lost
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

        # The renewals were written: a restart now would find a current lease.
        async def written() -> bool:
            return db_lease_us(db, alive) > time.time_ns() // 1000

        await async_wait_until(written, 10, "renewals to be written")
    finally:
        for registry_ in (first, second):
            if registry_ is not None:
                await registry_.close()
        for proc in procs:
            proc.stop()


async def test_a_revocation_reaches_another_registry_through_the_feed(
    db_url: str, tmp_path: Path
) -> None:
    """Two registries on one database: a token used on both, revoked on one, is refused
    there at once and on the other within the feed's latency, its open watch ended."""
    settings = registry_settings(db_url, tmp_path)
    async with running_registry(settings) as one, running_registry(settings) as two:
        secret = await one.token(rpb.ROLE_VIEWER, "dash")
        for registry in (one, two):  # both now hold it in their token tables
            await registry.client(secret).ListModels(rpb.ListModelsRequest())
        watch = two.client(secret).Watch(rpb.WatchRequest(since_revision=0))
        assert (await asyncio.wait_for(watch.read(), 10)).kind == rpb.WatchResponse.KIND_SNAPSHOT
        tokens = (await one.client().ListTokens(rpb.ListTokensRequest())).tokens
        (made,) = [t for t in tokens if t.display_name == "dash"]
        await one.client().RevokeToken(rpb.RevokeTokenRequest(name=made.name))

        with pytest.raises(aio.AioRpcError) as refused:
            await one.client(secret).ListModels(rpb.ListModelsRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert f"token {made.name} (dash) has been revoked" in (refused.value.details() or "")

        async def refused_on_two() -> bool:
            try:
                await two.client(secret).ListModels(rpb.ListModelsRequest())
            except aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
                assert "has been revoked" in (exc.details() or "")
                return True
            return False

        await async_wait_until(refused_on_two, 10, "the other registry to refuse the token")

        async def ended() -> grpc.StatusCode:
            try:
                while await watch.read() is not aio.EOF:
                    pass
            except aio.AioRpcError as exc:
                return exc.code()
            return await watch.code()  # type: ignore[no-any-return]

        assert await asyncio.wait_for(ended(), 10) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_started_registry_knows_the_workers_and_renews_them_from_memory(
    db_url: str, tmp_path: Path
) -> None:
    """A registry reads every worker when it starts, and one registered through another
    replica when it first hears of it: their next heartbeats are renewals from memory,
    not a database write each (after a restart, a whole fleet's within one interval)."""
    settings = registry_settings(db_url, tmp_path, lease_flush_seconds=3600)
    async with running_registry(settings) as first:
        admin = first.client()
        names = []
        for port in (9001, 9002, 9003):
            reply = await admin.RegisterWorker(
                rpb.RegisterWorkerRequest(
                    worker=rpb.Worker(address=f"127.0.0.1:{port}", versions=[READY])
                )
            )
            names.append(reply.worker.name)

    async def written() -> dict[str, int]:
        async with registry.registry.store.read() as session:
            rows = (await session.execute(select(WorkerRow.id, WorkerRow.lease_expire_us))).all()
        return {f"workers/{i}": int(lease) for i, lease in rows}

    async with running_registry(settings) as registry, running_registry(settings) as other:
        # Their lease sweeps stop first: one that took the other's start in this same
        # event loop for a stall would renew every lease in the database meanwhile.
        sweeps = [
            t for r in (registry, other) for t in r.registry.tasks if t.get_name() == "lease sweep"
        ]
        for task in sweeps:
            task.cancel()
        await asyncio.gather(*sweeps, return_exceptions=True)
        leases = registry.registry.store.leases
        assert leases is not None

        async def loaded() -> bool:
            return leases.loaded == 3

        await async_wait_until(loaded, 10, "the workers read at start")
        before, audited = (
            await written(),
            await registry.client().ListAuditEvents(rpb.ListAuditEventsRequest(page_size=100)),
        )
        for name in names:
            sent = time.time_ns() // 1000
            reply = await registry.client().Heartbeat(
                rpb.HeartbeatRequest(name=name, versions=[READY])
            )
            expire = reply.lease_expire_time.ToMicroseconds()
            assert expire >= sent + 10_000_000  # the lease's 10 s from now
            assert leases.held(name.split("/")[1]) == expire  # held in memory...
        assert await written() == before  # ...not written

        # A worker registered through the other replica: read once, then renewed here.
        joined = await other.client().RegisterWorker(
            rpb.RegisterWorkerRequest(worker=rpb.Worker(address="127.0.0.1:9004", versions=[READY]))
        )
        worker_id = joined.worker.name.split("/")[1]
        at_join = (await written())[joined.worker.name]
        # Heartbeat only once this replica's feed has carried the registration: its
        # event arriving mid-read would (rightly) send the heartbeat to the database.
        registered, _ = await other.registry.store.revision()

        async def carried() -> bool:
            return registry.registry.feed.position >= registered

        await async_wait_until(carried, 10, "the registration in this replica's feed")
        reply = await registry.client().Heartbeat(
            rpb.HeartbeatRequest(name=joined.worker.name, versions=[READY])
        )
        assert leases.knows(worker_id)
        assert (await written())[joined.worker.name] == at_join
        assert leases.held(worker_id) == reply.lease_expire_time.ToMicroseconds()
        after = await registry.client().ListAuditEvents(rpb.ListAuditEventsRequest(page_size=100))
        # Only the registration was audited: no heartbeat here was.
        assert [e.action for e in after.events][: len(after.events) - len(audited.events)] == [
            "RegisterWorker"
        ]
