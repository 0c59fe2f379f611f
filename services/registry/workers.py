"""Worker membership: registration, leases renewed by heartbeats, and expiry.

A heartbeat that only renews the lease changes nothing the data plane sees; one
that reports a different version state (LOADING -> READY, a FAILED load and its
error) is published on the change feed and audited. Only the sweep
(lease_sweep.py) expires a lease, and a registry that finds itself stalled renews
every lease instead (`renew_all`): a worker is judged on heartbeats the registry had
the chance to read.

Renewals, and a newer observed revision a heartbeat brings, are held in memory
(`leases.Leases`) and persisted lazily, every `--lease-flush-seconds`: a quiet
heartbeat costs no database write. The sweep counts what is held before it judges,
and counts a lease as lapsed only a flush
interval after it ran out (a renewal may wait that long in another replica's memory);
renewals a registry held when it died are covered by the lease every known worker gets
when a registry starts (`--restart-grace-seconds`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.errors import InvalidArgument, NotFound
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import names
from services.registry.db import WorkerRow
from services.registry.store import Store, Tx, now_us

log = logging.getLogger(__name__)


def states_of(versions: Iterable[rpb.WorkerVersionState]) -> list[tuple[str, int, int, str]]:
    return sorted((v.model, v.version, v.state, v.error) for v in versions)


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


async def renew(
    session: AsyncSession,
    name: str,
    versions: list[rpb.WorkerVersionState],
    observed_revision: int = 0,
) -> rpb.Worker | None:
    """A lease renewal written at once (see `renew_row`)."""
    return (await renew_row(session, name, versions, observed_revision))[0]


async def renew_row(
    session: AsyncSession,
    name: str,
    versions: list[rpb.WorkerVersionState],
    observed_revision: int = 0,
) -> tuple[rpb.Worker | None, int, bool]:
    """A heartbeat that changes nothing anyone watches — the same version states, the
    same or a newer observed revision — is a lease renewal: the lease and the observed
    revision move, and nothing else (no revision, no change event, no audit, no wait on
    the revision row's lock). (worker, lease length, observed revision moved on); the
    worker is None when the heartbeat says something new (or names no registered
    worker): `heartbeat` then takes it in a versioned write.

    A newer observed revision is no change anyone watches: the worker's own event
    would tell every gateway nothing; what it decides — a rollout may settle — is
    `rollouts.settle`'s to look at (settler.Settler), once per revision."""
    row = await session.get(WorkerRow, names.simple("workers", name))
    if row is None:
        return None, 0, False
    worker = rpb.Worker.FromString(row.proto)
    if worker.observed_revision > observed_revision or states_of(worker.versions) != states_of(
        versions
    ):
        return None, 0, False
    advanced = observed_revision != worker.observed_revision
    worker.observed_revision = observed_revision
    row.lease_expire_us = now_us() + row.lease_us
    worker.lease_expire_time.FromMicroseconds(row.lease_expire_us)
    row.proto = worker.SerializeToString()
    return worker, row.lease_us, advanced


async def heartbeat(
    tx: Tx, name: str, versions: list[rpb.WorkerVersionState], observed_revision: int = 0
) -> tuple[rpb.Worker, bool, bool]:
    """Renew the lease and take the version states; (worker, states changed, the
    worker's observed revision moved on).

    A lease that ran out is renewed as long as the sweep has not removed the worker:
    expiry is the sweep's decision, and a registry that was itself stalled reads the
    heartbeats queued for it before it judges anyone.
    """
    worker_id = names.simple("workers", name)
    row = await tx.session.get(WorkerRow, worker_id)
    if row is None:
        raise NotFound(
            f"worker workers/{worker_id} is not registered (its lease expired?); register again"
        )
    before = rpb.Worker.FromString(row.proto)
    after = rpb.Worker()
    after.CopyFrom(before)
    del after.versions[:]
    after.versions.extend(versions)
    after.observed_revision = observed_revision
    row.lease_expire_us = now_us() + row.lease_us
    after.lease_expire_time.FromMicroseconds(row.lease_expire_us)
    row.proto = after.SerializeToString()
    changed = states_of(before.versions) != states_of(after.versions)
    if changed:
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
    return after, changed, observed_revision != before.observed_revision


async def live(session: AsyncSession) -> list[rpb.Worker]:
    """The registered workers. A lapsed lease counts until the sweep removes the worker
    (and publishes that): readiness, snapshots and the change feed agree, and a
    heartbeat late by a moment does not make a version flicker out of READY."""
    # Columns, not ORM objects: this reads every worker (the settler, make before break
    # and the monitor call it after every change), and building and discarding 5,000
    # mapped instances was most of its cost.
    query = select(WorkerRow.id, WorkerRow.lease_expire_us, WorkerRow.proto).order_by(WorkerRow.id)
    rows = (await session.execute(query)).all()
    store: Store | None = session.info.get("store")
    held = store.leases if store is not None else None
    listed = []
    for worker_id, lease_expire_us, proto in rows:
        worker = rpb.Worker.FromString(proto)
        # The lease column moves without the proto (lazily persisted renewals), and this
        # process may hold a renewal newer than both.
        expire = max(lease_expire_us, held.held(worker_id) if held is not None else 0)
        worker.lease_expire_time.FromMicroseconds(expire)
        if held is not None:  # an observed revision held in memory, not yet written
            worker.observed_revision = max(worker.observed_revision, held.observed(worker_id))
        listed.append(worker)
    return listed


@dataclass(frozen=True)
class _Serving:
    """What `ready_counts` needs of one worker's row, decoded once per distinct row."""

    proto: bytes
    mirror: bool
    observed_revision: int
    ready: tuple[tuple[str, int], ...]  # (model, version) READY on it


# Worker id -> its row as last decoded. Make before break, the settler and the monitor
# count READY workers after every change, each time over the whole fleet; a row is
# decoded again only when its bytes changed (so an entry can never be stale, whichever
# registry in the process read it).
_DECODED: dict[str, _Serving] = {}


def _serving(worker_id: str, proto: bytes) -> _Serving:
    known = _DECODED.get(worker_id)
    if known is not None and known.proto == proto:
        return known
    worker = rpb.Worker.FromString(proto)
    return _Serving(
        proto,
        worker.role == rpb.WORKER_ROLE_MIRROR,
        worker.observed_revision,
        tuple(
            (v.model, v.version) for v in worker.versions if v.state == rpb.VERSION_LOAD_STATE_READY
        ),
    )


async def ready_counts(session: AsyncSession, model: str, seen_revision: int = 0) -> dict[int, int]:
    """READY workers per version that take clients' requests (mirror workers do not);
    with `seen_revision`, only workers that reported after seeing that revision (an
    observed revision held in memory counts, as in `live`)."""
    global _DECODED
    rows = (await session.execute(select(WorkerRow.id, WorkerRow.proto))).all()
    store: Store | None = session.info.get("store")
    held = store.leases if store is not None else None
    decoded: dict[str, _Serving] = {}
    ready: dict[int, int] = {}
    for worker_id, proto in rows:
        worker = decoded[worker_id] = _serving(worker_id, proto)
        if worker.mirror:
            continue
        observed = worker.observed_revision
        if held is not None:
            observed = max(observed, held.observed(worker_id))
        if observed < seen_revision:
            continue
        for ready_model, version in worker.ready:
            if ready_model == model:
                ready[version] = ready.get(version, 0) + 1
    _DECODED = decoded  # only the workers there are now
    return ready


async def why_not_ready(session: AsyncSession, model: str, version: int) -> str:
    """What the workers say of a version no client-taking worker has READY."""
    seen = []
    for worker in await live(session):
        for s in worker.versions:
            if s.model != model or s.version != version:
                continue
            what = rpb.VersionLoadState.Name(s.state).removeprefix("VERSION_LOAD_STATE_")
            if worker.role == rpb.WORKER_ROLE_MIRROR and s.state == rpb.VERSION_LOAD_STATE_READY:
                what += " (a mirror worker: it takes no client's request)"
            seen.append(f"{what} on {worker.name}" + (f": {s.error}" if s.error else ""))
    return "; ".join(seen) or "not loaded on any worker"


async def renew_all(tx: Tx, grace_seconds: float) -> None:
    """Give every worker a fresh lease: while no registry ran, none could renew one, and
    their clients may take a few reconnect attempts to find the registry again."""
    rows = (await tx.session.execute(select(WorkerRow))).scalars().all()
    for row in rows:
        row.lease_expire_us = max(
            row.lease_expire_us, now_us() + max(row.lease_us, int(grace_seconds * 1e6))
        )


async def any_expired(session: AsyncSession, cutoff_us: int | None = None) -> bool:
    cutoff = now_us() if cutoff_us is None else cutoff_us
    query = select(WorkerRow.id).where(WorkerRow.lease_expire_us < cutoff).limit(1)
    return (await session.execute(query)).first() is not None


async def lapsed_ids(session: AsyncSession, cutoff_us: int) -> list[str]:
    """Workers whose lease as written ran out before `cutoff_us`."""
    query = select(WorkerRow.id).where(WorkerRow.lease_expire_us < cutoff_us)
    return list((await session.execute(query)).scalars())


async def remove(tx: Tx, name: str) -> None:
    worker_id = names.simple("workers", name)
    row = await tx.session.get(WorkerRow, worker_id)
    if row is None:
        raise NotFound(f"worker workers/{worker_id} is not registered")
    before = rpb.Worker.FromString(row.proto)
    await tx.session.delete(row)
    tx.delete("worker", before.name)
    await tx.audit("DeleteWorker", before.name, before, None)


async def expire(
    tx: Tx, cutoff_us: int | None = None, keep: Callable[[str], bool] | None = None
) -> list[str]:
    """Remove workers whose lease ran out before `cutoff_us` (default: now), except those
    `keep` names (renewed in memory); they leave the routing picture."""
    cutoff = now_us() if cutoff_us is None else cutoff_us
    rows = [
        row
        for row in (
            await tx.session.execute(select(WorkerRow).where(WorkerRow.lease_expire_us < cutoff))
        ).scalars()
        if keep is None or not keep(row.id)
    ]
    gone = []
    for row in rows:
        before = rpb.Worker.FromString(row.proto)
        tx.delete("worker", before.name)
        await tx.audit("ExpireWorker", before.name, before, None, {"reason": "lease expired"})
        gone.append(before.name)
    if rows:
        await tx.session.execute(delete(WorkerRow).where(WorkerRow.id.in_([r.id for r in rows])))
    return gone
