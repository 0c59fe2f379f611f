"""Worker membership: registration, leases renewed by heartbeats, and expiry.

A heartbeat that only renews the lease changes nothing the data plane sees; one
that reports a different version state (LOADING -> READY, a FAILED load and its
error) is published on the change feed and audited.
"""

from __future__ import annotations

import secrets

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.errors import InvalidArgument, NotFound
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import names
from services.registry.db import WorkerRow
from services.registry.store import Tx, now_us


def _states(worker: rpb.Worker) -> list[tuple[str, int, int, str]]:
    return sorted((v.model, v.version, v.state, v.error) for v in worker.versions)


async def register(tx: Tx, worker: rpb.Worker, lease_seconds: float) -> rpb.Worker:
    if not worker.address:
        raise InvalidArgument("worker.address is required (host:port the gateway can reach)")
    worker_id = names.simple("workers", worker.name) if worker.name else secrets.token_hex(6)
    names.check_id("worker", worker_id)
    lease_us = int(lease_seconds * 1e6)
    row = await tx.session.get(WorkerRow, worker_id)
    before = rpb.Worker.FromString(row.proto) if row else None
    after = rpb.Worker()
    after.CopyFrom(worker)
    after.name = f"workers/{worker_id}"
    expire = now_us() + lease_us
    after.lease_expire_time.FromMicroseconds(expire)
    if row is None:
        tx.session.add(
            WorkerRow(id=worker_id, lease_expire_us=expire, lease_us=lease_us, proto=b"")
        )
        await tx.session.flush()
        row = await tx.session.get(WorkerRow, worker_id)
        assert row is not None
    row.lease_expire_us, row.lease_us, row.proto = expire, lease_us, after.SerializeToString()
    tx.put(after, after.name)
    await tx.audit(
        "RegisterWorker",
        after.name,
        before,
        after,
        {"address": after.address, "models": list(after.models)},
    )
    return after


async def heartbeat(tx: Tx, name: str, versions: list[rpb.WorkerVersionState]) -> rpb.Worker:
    worker_id = names.simple("workers", name)
    row = await tx.session.get(WorkerRow, worker_id)
    if row is None or row.lease_expire_us < now_us():
        raise NotFound(
            f"worker workers/{worker_id} is not registered (lease expired?); register again"
        )
    before = rpb.Worker.FromString(row.proto)
    after = rpb.Worker()
    after.CopyFrom(before)
    del after.versions[:]
    after.versions.extend(versions)
    row.lease_expire_us = now_us() + row.lease_us
    after.lease_expire_time.FromMicroseconds(row.lease_expire_us)
    row.proto = after.SerializeToString()
    if _states(before) != _states(after):
        tx.put(after, after.name)
        await tx.audit(
            "Heartbeat",
            after.name,
            before,
            after,
            {
                "versions": [
                    f"{v.model}/{v.version}:{rpb.VersionLoadState.Name(v.state)}" for v in versions
                ]
            },
        )
    return after


async def live(session: AsyncSession) -> list[rpb.Worker]:
    rows = (
        (
            await session.execute(
                select(WorkerRow)
                .where(WorkerRow.lease_expire_us >= now_us())
                .order_by(WorkerRow.id)
            )
        )
        .scalars()
        .all()
    )
    return [rpb.Worker.FromString(r.proto) for r in rows]


async def renew_all(tx: Tx, grace_seconds: float) -> None:
    """Give every worker a fresh lease: while no registry ran, none could renew one, and
    their clients may take a few reconnect attempts to find the registry again."""
    rows = (await tx.session.execute(select(WorkerRow))).scalars().all()
    for row in rows:
        row.lease_expire_us = max(
            row.lease_expire_us, now_us() + max(row.lease_us, int(grace_seconds * 1e6))
        )


async def any_expired(session: AsyncSession) -> bool:
    query = select(WorkerRow.id).where(WorkerRow.lease_expire_us < now_us()).limit(1)
    return (await session.execute(query)).first() is not None


async def remove(tx: Tx, name: str) -> None:
    worker_id = names.simple("workers", name)
    row = await tx.session.get(WorkerRow, worker_id)
    if row is None:
        raise NotFound(f"worker workers/{worker_id} is not registered")
    before = rpb.Worker.FromString(row.proto)
    await tx.session.delete(row)
    tx.delete("worker", before.name)
    await tx.audit("DeleteWorker", before.name, before, None)


async def expire(tx: Tx) -> list[str]:
    """Remove workers whose lease ran out; they leave the routing picture."""
    rows = (
        (await tx.session.execute(select(WorkerRow).where(WorkerRow.lease_expire_us < now_us())))
        .scalars()
        .all()
    )
    gone = []
    for row in rows:
        before = rpb.Worker.FromString(row.proto)
        tx.delete("worker", before.name)
        await tx.audit("ExpireWorker", before.name, before, None, {"reason": "lease expired"})
        gone.append(before.name)
    if rows:
        await tx.session.execute(delete(WorkerRow).where(WorkerRow.id.in_([r.id for r in rows])))
    return gone
