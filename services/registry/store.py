"""The registry's database: engine, migrations, and write transactions that feed the watch.

Every write runs in `Store.write()`: it first bumps the global revision in the one
`meta` row, whose row lock orders all writers, so revisions commit in the order
they were handed out and a watcher reading "after revision N" can never skip one
that commits late. The transaction then records change-feed events and audit
events (audit.py makes each event's digests and MAC link), and after commit the
local watch hub (and other registry processes, through PostgreSQL NOTIFY) learn the
new revision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from google.protobuf.message import Message
from sqlalchemy import delete, event, select, text, update
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import audit
from services.registry.audit_chain import AuditChain
from services.registry.db import AuditRow, ChangeRow, Meta, TokenRow
from services.registry.db_away import away

if TYPE_CHECKING:
    from services.registry.leases import Leases

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
NOTIFY_CHANNEL = "liveml_changes"
# Any fixed number: the advisory lock that keeps concurrent registries from migrating at once.
_MIGRATION_LOCK = 7_341_001


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Tx:
    """A write transaction: its session, its revision, and what it will publish."""

    session: AsyncSession
    _revision: int
    actor: str
    chain: AuditChain | None = None
    events: list[rpb.WatchEvent] = field(default_factory=list)
    # Run once the transaction has committed (e.g. waking alert watchers, webhooks).
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    # Whether the audit checkpoint still matches the database (checked once per write).
    _checkpoint_ok: bool | None = None
    # The chain's head as this transaction left it (sequence, MAC): read once, then kept,
    # since the meta row lock taken at the start orders every writer of the trail.
    _audit_last: tuple[int, str] | None = None
    # Where the checkpoint advances after commit: the newest event of the transaction
    # (advancing to each in turn would write, and fsync, the file once per event).
    _advance_to: tuple[int, str] | None = None
    # Whether anything took this transaction's revision (an event, a rollout, an alert's
    # sequence); one that took none gives it back, so the feed moves only with change.
    stamped: bool = False

    @property
    def revision(self) -> int:
        self.stamped = True
        return self._revision

    def put(self, resource: Message, name: str) -> None:
        self._emit(rpb.WatchEvent.TYPE_PUT, resource, name)

    def delete(self, kind: str, name: str) -> None:
        event_ = rpb.WatchEvent(revision=self.revision, type=rpb.WatchEvent.TYPE_DELETE)
        event_.resource_name = name
        self.session.add(
            ChangeRow(
                revision=self.revision,
                seq=len(self.events),
                type=event_.type,
                kind=kind,
                resource_name=name,
                proto=event_.SerializeToString(),
            )
        )
        self.events.append(event_)

    def _emit(self, type_: int, resource: Message, name: str) -> None:
        kind = resource.DESCRIPTOR.name.lower()
        event_ = rpb.WatchEvent(revision=self.revision, type=type_, resource_name=name)  # type: ignore[arg-type]
        getattr(event_, kind).CopyFrom(resource)
        self.session.add(
            ChangeRow(
                revision=self.revision,
                seq=len(self.events),
                type=type_,
                kind=kind,
                resource_name=name,
                proto=event_.SerializeToString(),
            )
        )
        self.events.append(event_)

    async def audit(
        self,
        action: str,
        target: str,
        before: Message | None,
        after: Message | None,
        details: dict[str, Any] | None = None,
    ) -> AuditRow:
        """Append an HMAC-chained audit event (the meta row lock orders the chain)."""
        if self.chain is None:
            raise RuntimeError("this store has no audit key (Store(..., audit=AuditChain))")
        last: Any = self._audit_last
        if last is None:
            last = await audit.last_event(self.session)
        if self._checkpoint_ok is None:
            self._checkpoint_ok = await audit.checkpoint_matches(self.session, self.chain, last)
        row = audit.chained_event(
            self.chain, last, now_us(), self.actor, action, target, before, after, details
        )
        self.session.add(row)
        self._audit_last = (row.sequence, row.hash)
        await self.session.execute(update(Meta).where(Meta.id == 1).values(audit_head=row.sequence))
        if self._checkpoint_ok:
            if self._advance_to is None:
                self.after_commit.append(self._advance_checkpoint)
            self._advance_to = (row.sequence, row.hash)
        return row

    def _advance_checkpoint(self) -> None:
        if self.chain is not None and self._advance_to is not None:
            self.chain.advance(*self._advance_to)


# Rows whose committed state this process keeps in memory (security.TokenTable): a
# write session collects the ones it flushed, and the store hands them on after commit.
_TRACKED = (TokenRow,)


class _WriteSession(Session):
    """A write session that remembers the tracked rows it flushed (strongly: the
    identity map alone would let a flushed row be collected before the commit)."""


@event.listens_for(_WriteSession, "after_flush")
def _collect(session: Session, _context: Any) -> None:
    touched = session.info.setdefault("touched", [])
    touched.extend(o for o in (*session.new, *session.dirty) if isinstance(o, _TRACKED))


class Store:
    """The database of one registry process."""

    def __init__(
        self, url: str | URL, *, echo: bool = False, audit: AuditChain | None = None
    ) -> None:
        self.audit_chain = audit
        # A URL object keeps a password out of anything that prints it (it shows ***).
        self.url = make_url(url)
        self.dialect = "sqlite" if self.url.get_backend_name() == "sqlite" else "postgresql"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.dialect == "sqlite":
            _sqlite_transactions(self.engine)
        # Every session knows its store (workers.live asks it for renewals held).
        info = {"store": self}
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False, info=info)
        self._writes = async_sessionmaker(
            self.engine.execution_options(liveml_write=True),
            expire_on_commit=False,
            sync_session_class=_WriteSession,
            info=info,
        )
        self.listeners: list[Callable[[int], None]] = []
        # After each commit of this process: the tracked rows it wrote (TokenRow), and
        # the change-feed events it published. The feed (watch.Feed) hands on events
        # that other registry processes committed through `event_listeners` too, with
        # local=False.
        self.row_listeners: list[Callable[[list[Any]], None]] = []
        self.event_listeners: list[Callable[[list[rpb.WatchEvent], bool], None]] = []
        # Called when the feed lost track (fell behind compaction): forget what is kept.
        self.reset_listeners: list[Callable[[], None]] = []
        # Revisions this process committed (the feed skips them: already handed on).
        self.local_revisions: set[int] = set()
        # Lease renewals held in memory (leases.Leases), set by the registry at start.
        self.leases: Leases | None = None

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (run on every start)."""
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
            await conn.run_sync(_upgrade)

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def _transaction(
        self, sessions: async_sessionmaker[AsyncSession]
    ) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed at the end; a lost database raises
        Unavailable (db_away.py)."""
        with away():
            async with sessions() as session, session.begin():
                yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._transaction(self._sessions) as session:
            yield session

    @asynccontextmanager
    async def write(self, actor: str) -> AsyncIterator[Tx]:
        """A transaction that takes the next revision; publishes it after commit."""
        async with self._transaction(self._writes) as session:
            revision = (
                await session.execute(
                    update(Meta)
                    .where(Meta.id == 1)
                    .values(revision=Meta.revision + 1)
                    .returning(Meta.revision)
                )
            ).scalar_one()
            tx = Tx(session, revision, actor, self.audit_chain)
            yield tx
            if not tx.stamped:
                # Nothing carries this revision: watchers need not wake, and a worker's
                # observed revision does not move, so its next heartbeat stays quiet.
                await session.execute(
                    update(Meta).where(Meta.id == 1).values(revision=Meta.revision - 1)
                )
            if tx.events and self.dialect == "postgresql":
                # Delivered to listeners only on commit, in commit order.
                await session.execute(
                    text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": NOTIFY_CHANNEL, "payload": str(revision)},
                )
        self._committed(session)
        if tx.events:
            if len(self.local_revisions) > 10_000:
                self.local_revisions.clear()  # only recent ones are ever asked about
            self.local_revisions.add(revision)
            for on_events in self.event_listeners:
                on_events(tx.events, True)
            for listener in self.listeners:
                listener(revision)
        for hook in tx.after_commit:
            hook()

    def _committed(self, session: AsyncSession) -> None:
        touched = session.info.pop("touched", None)
        if touched:
            for on_rows in self.row_listeners:
                on_rows(touched)

    @asynccontextmanager
    async def write_unversioned(self) -> AsyncIterator[AsyncSession]:
        """A write that the change feed does not carry (windows, leases): no revision."""
        async with self._transaction(self._writes) as session:
            yield session
        self._committed(session)

    async def revision(self) -> tuple[int, int]:
        """(current revision, compacted revision)."""
        async with self.read() as session:
            row = (await session.execute(select(Meta.revision, Meta.compacted_revision))).one()
            return int(row[0]), int(row[1])

    async def compact(self, keep: int, through: int | None = None) -> int:
        """Drop change-feed rows older than the newest `keep` revisions (and, given
        `through`, no newer than it); return the new floor."""
        async with self._transaction(self._writes) as session:
            meta = (await session.execute(select(Meta).with_for_update())).scalar_one()
            floor = meta.revision - keep
            if through is not None:
                floor = min(floor, through)
            floor = max(meta.compacted_revision, floor)
            if floor > meta.compacted_revision:
                await session.execute(delete(ChangeRow).where(ChangeRow.revision <= floor))
                meta.compacted_revision = floor
            return floor


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_transactions(engine: AsyncEngine) -> None:
    """WAL, a busy timeout, and BEGIN IMMEDIATE for writes.

    pysqlite's own transaction handling would start a write transaction lazily at
    the first write, where two writers can deadlock; taking the write lock at BEGIN
    makes SQLite writers queue instead.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("liveml_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


async def wait_for_database(url: str | URL, attempts: int = 30) -> None:
    """Retry connecting until the database answers (a registry may start before it).

    An embedded SQLite database only needs its folder to exist.
    """
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        path = url.database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return
    engine = create_async_engine(url)
    try:
        for attempt in range(attempts):
            try:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                return
            except Exception as exc:  # the driver's connection errors vary
                if attempt == attempts - 1:
                    raise
                log.warning("database not ready (%s); retrying", exc)
                await asyncio.sleep(1)
    finally:
        await engine.dispose()
