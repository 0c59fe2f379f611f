"""Alerts: rollout decisions and conditions raised, resolved, listed, watched and posted.

An alert is identified by its fingerprint (kind, model, version): raising one that is
already FIRING changes nothing, resolving one that is not FIRING changes nothing.
Every change takes the write's global revision as its sequence, so `WatchAlerts`
resumes exactly where a client left off, on any registry replica (each replica polls
the table; the one that wrote also wakes its watchers at once). A webhook, when
configured, gets each change as JSON, posted off the event loop with a few retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.json_format import MessageToDict
from sqlalchemy import select

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import names
from services.registry.db import AlertRow
from services.registry.names import page
from services.registry.store import Store, Tx, now_us

log = logging.getLogger(__name__)

INFO = rpb.Alert.SEVERITY_INFO
WARNING = rpb.Alert.SEVERITY_WARNING
CRITICAL = rpb.Alert.SEVERITY_CRITICAL


def fingerprint(kind: str, model: str, version: int) -> str:
    return f"{kind}/{model}/{version}"


class Alerts:
    def __init__(self, store: Store, webhook: str | None = None, poll_seconds: float = 0.5) -> None:
        self.store = store
        self.webhook = webhook
        self.poll_seconds = poll_seconds
        self._changed = asyncio.Event()
        self._posting: set[asyncio.Task[None]] = set()
        self.posted = 0

    # --- writing (inside the caller's transaction) ------------------------------------------

    async def raise_(
        self,
        tx: Tx,
        kind: str,
        severity: int,
        model: str,
        version: int,
        summary: str,
        details: dict[str, Any] | None = None,
        *,
        event: bool = False,
    ) -> rpb.Alert | None:
        """Raise an alert. `event` ones (decisions that are over when made) are recorded
        already RESOLVED; others stay FIRING until resolved."""
        key = fingerprint(kind, model, version)
        if not event and await self._firing(tx, key) is not None:
            return None
        alert = rpb.Alert(
            alert=kind,
            severity=severity,  # type: ignore[arg-type]
            state=rpb.Alert.STATE_RESOLVED if event else rpb.Alert.STATE_FIRING,
            model=model,
            version=version,
            summary=summary,
            details=json.dumps(details or {}, sort_keys=True),
            sequence=tx.revision,
        )
        alert.start_time.FromMicroseconds(now_us())
        if event:
            alert.end_time.CopyFrom(alert.start_time)
        row = AlertRow(
            fingerprint=key, firing=not event, model=model, sequence=tx.revision, proto=b""
        )
        tx.session.add(row)
        await tx.session.flush()
        alert.name = f"alerts/{row.id}"
        row.proto = alert.SerializeToString()
        self._publish(tx, alert)
        return alert

    async def resolve(self, tx: Tx, kind: str, model: str, version: int, why: str) -> bool:
        row = await self._firing(tx, fingerprint(kind, model, version))
        if row is None:
            return False
        alert = rpb.Alert.FromString(row.proto)
        alert.state = rpb.Alert.STATE_RESOLVED
        alert.end_time.FromMicroseconds(now_us())
        alert.sequence = tx.revision
        if why:
            alert.summary = f"{alert.summary} — resolved: {why}"
        row.firing, row.sequence, row.proto = False, tx.revision, alert.SerializeToString()
        self._publish(tx, alert)
        return True

    async def resolve_model(self, tx: Tx, model: str, kinds: tuple[str, ...], why: str) -> None:
        rows = (
            (
                await tx.session.execute(
                    select(AlertRow).where(AlertRow.model == model, AlertRow.firing.is_(True))
                )
            )
            .scalars()
            .all()
        )
        for row in rows:
            alert = rpb.Alert.FromString(row.proto)
            if alert.alert in kinds:
                await self.resolve(tx, alert.alert, model, alert.version, why)

    async def firing(self) -> list[rpb.Alert]:
        async with self.store.read() as session:
            rows = await session.execute(select(AlertRow.proto).where(AlertRow.firing.is_(True)))
            return [rpb.Alert.FromString(proto) for (proto,) in rows]

    async def firing_keys(self, model: str) -> set[str]:
        async with self.store.read() as session:
            rows = await session.execute(
                select(AlertRow.fingerprint).where(
                    AlertRow.model == model, AlertRow.firing.is_(True)
                )
            )
            return {key for (key,) in rows}

    async def _firing(self, tx: Tx, key: str) -> AlertRow | None:
        query = select(AlertRow).where(AlertRow.fingerprint == key, AlertRow.firing.is_(True))
        return (await tx.session.execute(query.limit(1))).scalar_one_or_none()

    def _publish(self, tx: Tx, alert: rpb.Alert) -> None:
        log.info("alert %s %s: %s", rpb.Alert.State.Name(alert.state), alert.alert, alert.summary)

        def after() -> None:
            # Every watcher waits on the event of its time: none can clear another's wake-up.
            self._changed.set()
            self._changed = asyncio.Event()
            if self.webhook:
                posting = asyncio.get_running_loop().create_task(self._post(alert))
                self._posting.add(posting)
                posting.add_done_callback(self._posting.discard)

        tx.after_commit.append(after)

    # --- reading ------------------------------------------------------------------------

    async def page(
        self, firing_only: bool, model: str, size: int, page_token: str
    ) -> tuple[list[rpb.Alert], str]:
        query = select(AlertRow)
        if firing_only:
            query = query.where(AlertRow.firing.is_(True))
        if model:
            query = query.where(AlertRow.model == model)
        if page_token:
            query = query.where(AlertRow.id < names.decode_page_number(page_token))
        async with self.store.read() as session:
            rows, token = await page(
                session, query.order_by(AlertRow.id.desc()), size, lambda r: r.id
            )
        return [rpb.Alert.FromString(r.proto) for r in rows], token

    async def changes_after(self, sequence: int) -> list[rpb.Alert]:
        async with self.store.read() as session:
            rows = (
                (
                    await session.execute(
                        select(AlertRow)
                        .where(AlertRow.sequence > sequence)
                        .order_by(AlertRow.sequence, AlertRow.id)
                    )
                )
                .scalars()
                .all()
            )
        return [rpb.Alert.FromString(r.proto) for r in rows]

    async def watch(self, since: int) -> AsyncIterator[list[rpb.Alert]]:
        if since <= 0:
            async with self.store.read() as session:
                last = (
                    await session.execute(
                        select(AlertRow.sequence).order_by(AlertRow.sequence.desc()).limit(1)
                    )
                ).scalar_one_or_none()
            since = last or 0
        while True:
            changed = self._changed
            found = await self.changes_after(since)
            if found:
                since = max(a.sequence for a in found)
                yield found
            try:
                async with asyncio.timeout(self.poll_seconds):
                    await changed.wait()
            except TimeoutError:
                pass

    # --- webhook --------------------------------------------------------------------------

    async def _post(self, alert: rpb.Alert) -> None:
        assert self.webhook is not None
        body = json.dumps(MessageToDict(alert, preserving_proto_field_name=True)).encode()
        request = urllib.request.Request(
            self.webhook, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )

        def send() -> None:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()

        for attempt in range(3):
            try:
                await asyncio.to_thread(send)
                self.posted += 1
                return
            except Exception as exc:  # urllib raises several kinds; all mean "retry"
                log.warning("alert webhook failed (attempt %d): %s", attempt + 1, exc)
                await asyncio.sleep(0.5 * 2**attempt)
