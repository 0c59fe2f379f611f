"""Lease renewals held in memory and written lazily: a quiet heartbeat costs no write.

A heartbeat that reports what this process already knows of its worker is answered
from memory (`Leases.quiet`), and so is one whose only news is a newer observed
revision (every worker's next heartbeat after any change): that revision is held
here too, counted by `workers.live` (so by `rollouts.settle`), and the models the
worker serves are handed to the `settler.Settler`, which settles rollouts once per
revision rather than once per worker. Every held renewal is written in one UPDATE,
and held observed revisions with it, every `--lease-flush-seconds`. The sweep
(`lease_sweep.LeaseSweep`) counts what is held here before it judges a lease, and a
registry's restart grace covers renewals a killed process held (a lost observed
revision is reported again by the worker's next heartbeat; settler.py).

What a process knows of the workers is read in one query when it starts (and again if
the change feed lost track), and a worker it does not know yet (registered through
another replica) is read once: after a registry restart every worker's next heartbeat
is a renewal from memory, not a database write — 5,000 of those in one heartbeat
interval were a backlog of seconds.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import BigInteger, LargeBinary, bindparam, case, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.auth import Role, current_principal
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import names
from services.registry.db import WorkerRow
from services.registry.settler import Settler, models_of
from services.registry.store import Store, now_us
from services.registry.workers import renew_row, states_of

log = logging.getLogger(__name__)

CHUNK = 500  # observed revisions written per statement (a flush reads their rows first)


@dataclass
class _Known:
    """What a quiet heartbeat is compared with: the worker as last read or written."""

    states: list[tuple[str, int, int, str]]
    observed_revision: int  # as reported last (held in memory until written)
    lease_us: int
    models: set[str]


def acts_as_itself(worker_id: str) -> bool:
    """Whether the caller may heartbeat as `worker_id` without asking the database: no
    worker credential (admins, auth off), or one bound to exactly this worker. Anything
    else takes the database path, where worker_identity decides and says why."""
    # Imported here: security imports store, which imports this module for typing.
    from services.registry.security import TokenPrincipal

    principal = current_principal()
    if principal is None or principal.role is not Role.WORKER:
        return True
    if isinstance(principal, TokenPrincipal):
        return principal.worker_id == worker_id
    return principal.name == f"cert:{worker_id}"


class Leases:
    """Lease renewals held in memory and written in one UPDATE every `flush_seconds`.

    A heartbeat is answered from memory when it reports what this process knows of the
    worker (the same version states, the same observed revision). What it knows comes
    from the database (a renewal read there first, `renew`) and is forgotten whenever
    the change feed carries an event of the worker, from this process or another, so
    a worker that changed, left or expired is read again. `flush_seconds` 0 writes
    every renewal at once (no memory).
    """

    def __init__(self, store: Store, flush_seconds: float) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self._known: dict[str, _Known] = {}
        self._pending: dict[str, int] = {}  # worker id -> lease expiry not yet written
        # Being written: still held until the write commits (the sweep must not judge
        # a worker by the database while its renewal is on the way there).
        self._flushing: dict[str, int] = {}
        self._epoch: dict[str, int] = {}  # bumped when a worker is forgotten
        # Observed revisions reported but not yet written (and those being written).
        self._observed: dict[str, int] = {}
        self._observed_flushing: dict[str, int] = {}
        self.settler = Settler(store, max(5.0, 2 * flush_seconds))
        self.flushed = 0  # renewals written (for tests and logs)
        self.loaded = 0  # workers read into memory (for tests and logs)
        self._stale = True  # what is known must be read (at start; the feed lost track)
        store.leases = self
        store.event_listeners.append(self._learn_events)
        store.reset_listeners.append(self._forget_all)

    def _forget_all(self) -> None:
        self._known.clear()
        self._stale = True

    @property
    def margin_us(self) -> int:
        """How long a renewal may wait in a registry's memory before it is written."""
        return int(self.flush_seconds * 1e6)

    def held(self, worker_id: str) -> int:
        """The lease renewed in memory (0: none), counting one being written."""
        return max(self._pending.get(worker_id, 0), self._flushing.get(worker_id, 0))

    def observed(self, worker_id: str) -> int:
        """The observed revision held in memory for this worker (0: none)."""
        return max(self._observed.get(worker_id, 0), self._observed_flushing.get(worker_id, 0))

    def _learn_events(self, events: list[rpb.WatchEvent], local: bool) -> None:
        for event in events:
            if event.WhichOneof("resource") == "worker" or (
                event.type == rpb.WatchEvent.TYPE_DELETE
                and event.resource_name.startswith("workers/")
            ):
                worker_id = event.resource_name.rsplit("/", 1)[-1]
                self._known.pop(worker_id, None)
                if event.type == rpb.WatchEvent.TYPE_DELETE:
                    self._observed.pop(worker_id, None)
                self._epoch[worker_id] = self._epoch.get(worker_id, 0) + 1

    def knows(self, worker_id: str) -> bool:
        return worker_id in self._known

    def _remember(self, rows: list[tuple[str, int, bytes]], epochs: dict[str, int]) -> None:
        """Know these workers as read (id, lease length, proto), unless an event of one
        came after the read began (its epoch moved) or it is known already."""
        for worker_id, lease_us, proto in rows:
            if worker_id in self._known or self._epoch.get(worker_id, 0) != epochs.get(
                worker_id, 0
            ):
                continue
            worker = rpb.Worker.FromString(proto)
            self._known[worker_id] = _Known(
                states_of(worker.versions),
                max(worker.observed_revision, self.observed(worker_id)),
                lease_us,
                models_of(worker.versions),
            )
            self.loaded += 1

    async def _read(self, worker_id: str | None = None) -> None:
        """Know the workers as the database has them: every one, or `worker_id`."""
        epochs = dict(self._epoch)  # as the read begins: what moves later is newer
        query = select(WorkerRow.id, WorkerRow.lease_us, WorkerRow.proto)
        if worker_id is not None:
            query = query.where(WorkerRow.id == worker_id)
        async with self.store.read() as session:
            rows = [tuple(r) for r in (await session.execute(query)).all()]
        self._remember(rows, epochs)  # type: ignore[arg-type]

    async def load(self) -> None:
        """Read every worker into memory (one query)."""
        self._stale = False
        try:
            await self._read()
        except BaseException:
            self._stale = True
            raise

    async def learn(self, worker_id: str) -> None:
        """Read one worker this process does not know (registered through another
        replica, or read before the feed lost track)."""
        await self._read(worker_id)

    def quiet(
        self, worker_id: str, versions: list[rpb.WorkerVersionState], observed_revision: int
    ) -> int | None:
        """The new lease expiry if this heartbeat is a renewal this process can answer
        from memory (the same states; the same or a newer observed revision); else None
        (the database decides)."""
        if not self.flush_seconds:
            return None
        known = self._known.get(worker_id)
        if (
            known is None
            or known.observed_revision > observed_revision
            or known.states != states_of(versions)
        ):
            return None
        if observed_revision != known.observed_revision:
            previous, known.observed_revision = known.observed_revision, observed_revision
            self._observed[worker_id] = observed_revision
            self.settler.advanced(known.models, observed_revision, previous)
        expire = now_us() + known.lease_us
        self._pending[worker_id] = expire
        return expire

    async def renew(
        self,
        session: AsyncSession,
        name: str,
        versions: list[rpb.WorkerVersionState],
        observed_revision: int = 0,
    ) -> tuple[rpb.Worker | None, bool]:
        """`renew` from the database, remembering the worker for the next heartbeats;
        (worker, its observed revision moved on: call `advanced` once committed)."""
        worker_id = names.simple("workers", name)
        epoch = self._epoch.get(worker_id, 0)
        renewed, lease_us, advanced = await renew_row(session, name, versions, observed_revision)
        if renewed is not None and self._epoch.get(worker_id, 0) == epoch:
            self._known[worker_id] = _Known(
                states_of(versions), observed_revision, lease_us, models_of(versions)
            )
        return renewed, advanced

    def advanced(self, versions: list[rpb.WorkerVersionState], observed_revision: int) -> None:
        """A worker's newer observed revision was written: its rollouts may settle."""
        self.settler.advanced(models_of(versions), observed_revision)

    async def _write_observed(self, session: AsyncSession, observed: dict[str, int]) -> None:
        """Write held observed revisions into the workers' rows (never moving one back)."""
        ids = sorted(observed)
        statement = (
            update(WorkerRow)
            .where(WorkerRow.id == bindparam("worker_id"))
            .values(proto=bindparam("proto", type_=LargeBinary))
        )
        connection = await session.connection()
        for at in range(0, len(ids), CHUNK):
            chunk = ids[at : at + CHUNK]
            query = select(WorkerRow.id, WorkerRow.proto).where(WorkerRow.id.in_(chunk))
            if self.store.dialect == "postgresql":
                query = query.with_for_update()
            rows = []
            for worker_id, proto in (await connection.execute(query)).all():
                worker = rpb.Worker.FromString(proto)
                if worker.observed_revision < observed[worker_id]:
                    worker.observed_revision = observed[worker_id]
                    rows.append({"worker_id": worker_id, "proto": worker.SerializeToString()})
            if rows:
                await connection.execute(statement, rows)
            await asyncio.sleep(0)  # why: let heartbeats in between chunks (noqa: sleep-ok)

    async def flush(self) -> int:
        """Write the renewals held, and the observed revisions; how many renewals. A
        lease only ever moves forward here (a registry's restart grace may have given a
        longer one), and so does an observed revision."""
        if (not self._pending and not self._observed) or self._flushing or self._observed_flushing:
            return 0  # nothing to write, or a write under way (the next one takes it)
        pending, self._pending = self._pending, {}
        observed, self._observed = self._observed, {}
        self._flushing, self._observed_flushing = pending, observed
        expire = bindparam("expire", type_=BigInteger)
        statement = (
            update(WorkerRow)
            .where(WorkerRow.id == bindparam("worker_id"))
            .values(
                lease_expire_us=case(
                    (WorkerRow.lease_expire_us < expire, expire),
                    else_=WorkerRow.lease_expire_us,
                )
            )
        )
        try:
            async with self.store.write_unversioned() as session:
                connection = await session.connection()
                if pending:
                    await connection.execute(
                        statement, [{"worker_id": w, "expire": e} for w, e in pending.items()]
                    )
                if observed:
                    await self._write_observed(session, observed)
        except BaseException:
            # Kept for the next flush (newer renewals taken meanwhile win).
            for worker_id, when in pending.items():
                self._pending[worker_id] = max(when, self._pending.get(worker_id, 0))
            for worker_id, revision in observed.items():
                self._observed[worker_id] = max(revision, self._observed.get(worker_id, 0))
            raise
        finally:
            self._flushing, self._observed_flushing = {}, {}
        self.flushed += len(pending)
        return len(pending)

    async def run(self) -> None:
        while True:
            try:
                if self._stale:
                    await self.load()
            except Exception as exc:  # read again at the next tick
                log.warning("reading the workers failed: %s", exc)
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except Exception as exc:  # retried at the next tick, nothing lost
                log.warning("writing lease renewals failed: %s", exc)
