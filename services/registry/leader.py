"""Leadership among registry replicas sharing one database: a lease row, renewed or taken.

The holder renews its lease every tick; another replica takes it only once it has
expired, so a killed leader is replaced within one lease length. Whatever a leader
writes is also fenced by the rollout's revision, so a leader that lost its lease
mid-decision cannot overwrite a newer state.
"""

from __future__ import annotations

from sqlalchemy import or_, update

from services.registry.db import LeaseRow
from services.registry.store import Store, now_us


class Lease:
    def __init__(self, store: Store, name: str, holder: str, seconds: float) -> None:
        self.store = store
        self.name = name
        self.holder = holder
        self.seconds = seconds
        self.held = False

    async def hold(self) -> bool:
        """Renew or take the lease; whether this replica holds it now."""
        now = now_us()
        async with self.store.write_unversioned() as session:
            result = await session.execute(
                update(LeaseRow)
                .where(
                    LeaseRow.name == self.name,
                    or_(LeaseRow.holder == self.holder, LeaseRow.expire_us < now),
                )
                .values(holder=self.holder, expire_us=now + int(self.seconds * 1e6))
            )
        self.held = result.rowcount == 1  # type: ignore[attr-defined]
        return self.held

    async def release(self) -> None:
        if not self.held:
            return
        async with self.store.write_unversioned() as session:
            await session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == self.name, LeaseRow.holder == self.holder)
                .values(expire_us=0)
            )
        self.held = False
