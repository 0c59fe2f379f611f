"""The change feed's snapshot: everything the data plane needs (models, versions,
rollouts, live workers, credentials) read at one revision, in one consistent read,
for a watcher that starts from scratch or from a revision compacted away."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import security, workers
from services.registry.db import Meta, ModelRow, RolloutRow, TokenRow, VersionRow
from services.registry.store import Store, now_us


async def snapshot(store: Store) -> tuple[int, list[rpb.WatchEvent]]:
    """Everything the data plane needs, at one revision."""
    async with store.read() as session:
        if store.dialect == "postgresql":
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        revision = (await session.execute(select(Meta.revision))).scalar_one()
        events: list[rpb.WatchEvent] = []

        def put(kind: str, resource: Any) -> None:
            event = rpb.WatchEvent(
                revision=revision, type=rpb.WatchEvent.TYPE_PUT, resource_name=resource.name
            )
            getattr(event, kind).CopyFrom(resource)
            events.append(event)

        for proto in (
            await session.execute(select(ModelRow.proto).order_by(ModelRow.id))
        ).scalars():
            put("model", rpb.Model.FromString(proto))
        for proto in (
            await session.execute(select(VersionRow.proto).order_by(VersionRow.id))
        ).scalars():
            put("version", rpb.Version.FromString(proto))
        for proto in (
            await session.execute(select(RolloutRow.proto).order_by(RolloutRow.model_id))
        ).scalars():
            put("rollout", rpb.Rollout.FromString(proto))
        for worker in await workers.live(session):
            put("worker", worker)
        now = now_us()
        for row in (
            await session.execute(select(TokenRow).where(TokenRow.revoked.is_(False)))
        ).scalars():
            if row.expire_us is None or row.expire_us > now:
                credential = security.credential_proto(row)
                event = rpb.WatchEvent(
                    revision=revision,
                    type=rpb.WatchEvent.TYPE_PUT,
                    resource_name=credential.name,
                )
                event.credential.CopyFrom(credential)
                events.append(event)
        return int(revision), events
