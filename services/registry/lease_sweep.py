"""The lease sweep: expires workers whose lease ran out, judged fairly — never while
the registry itself was stalled or is behind, since the heartbeats queued for it then
were not read (workers.py holds what a lease is; leases.py the renewals held in
memory, which the sweep counts)."""

from __future__ import annotations

import asyncio
import logging
import time

from services.registry.store import Store, now_us
from services.registry.workers import expire, lapsed_ids, renew_all

log = logging.getLogger(__name__)

STALL_TICK_SECONDS = 0.1  # how often the sweep's ticker looks whether the loop stood still
# An event loop busy this much of a sweep interval is behind: heartbeats wait unread.
BUSY_FRACTION = 0.9


class LeaseSweep:
    """Expires lapsed leases every `interval` seconds — unless the registry itself was
    stalled (a paused process, a starved event loop, a slow disk): then the heartbeats
    queued for it were never read, and every worker gets a fresh lease instead — or
    behind: an event loop busy for BUSY_FRACTION of the interval (more heartbeats,
    registrations or fan-out than it keeps up with) may hold heartbeats unread for as
    long as it stays so, and no lease is judged until it keeps up again. Expiring then
    would feed the overload (each expiry is a change every watcher is sent, and its
    worker registers again), as a fleet outgrowing its registry found.
    """

    def __init__(self, store: Store, interval: float, stall_seconds: float = 0.5) -> None:
        self.store = store
        self.interval = interval
        self.stall_seconds = stall_seconds
        self.renewals = 0  # sweeps that found the registry stalled (for tests and logs)
        self.postponed = 0  # sweeps that found it behind and judged no lease
        self._stalled = 0.0  # seconds the event loop stood still since the last sweep
        self._behind_since: float | None = None

    async def run(self) -> None:
        ticker = asyncio.create_task(self._tick(), name="lease sweep stall ticker")
        try:
            # The loop's own CPU time (this coroutine runs on its thread) over the
            # wall time between sweeps: how busy it was, its sweeps included.
            wall, used = time.monotonic(), time.thread_time()
            while True:
                slept = time.monotonic()
                await asyncio.sleep(self.interval)
                now, cpu = time.monotonic(), time.thread_time()
                late = max(now - slept - self.interval, self._stalled)
                busy = (cpu - used) / max(now - wall, 1e-9)
                wall, used = now, cpu
                self._stalled, cutoff = 0.0, now_us()
                try:
                    await self.sweep(late, cutoff, busy)
                except Exception as exc:  # a failed sweep is retried at the next tick
                    log.warning("lease sweep failed: %s", exc)
        finally:
            ticker.cancel()

    async def _tick(self) -> None:
        """The longest the event loop stood still since the last sweep. The sweep's own
        sleep sees a stall only when one lands in it; under load a pause as often lands
        in the sweep's database work, and the heartbeats queued meanwhile were not read
        either. A slow database alone does not count: it stops no event loop."""
        tick = min(STALL_TICK_SECONDS, self.interval)
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self._stalled = max(self._stalled, now - last - tick)
            last = now

    async def sweep(self, late: float, cutoff_us: int, busy: float = 0.0) -> None:
        if busy >= BUSY_FRACTION:
            self.postponed += 1
            if self._behind_since is None:
                self._behind_since = time.monotonic()
                log.warning(
                    "the registry's event loop was busy %.0f%% of the last sweep interval: "
                    "heartbeats may wait unread, so no lease is judged until it keeps up",
                    100 * busy,
                )
            return
        if self._behind_since is not None:
            log.warning(
                "the registry keeps up again after %.1f s: leases are judged again",
                time.monotonic() - self._behind_since,
            )
            self._behind_since = None
        if late > self.stall_seconds:
            self.renewals += 1
            log.warning(
                "the registry was stalled for %.1f s: every worker's lease is renewed "
                "before any is judged",
                late,
            )
            async with self.store.write("registry") as tx:
                await renew_all(tx, 0.0)
            return
        # Judged as of waking: a stall from here on cannot make a lease look lapsed.
        leases = self.store.leases
        held = leases.held if leases is not None else (lambda _: 0)
        # A renewal another replica holds may reach the database up to a flush interval
        # late, so a lease written there lapses that much later; one this process holds
        # counts as it stands.
        written_cutoff = cutoff_us - (leases.margin_us if leases is not None else 0)

        def renewed(worker_id: str) -> bool:
            return held(worker_id) >= cutoff_us

        async with self.store.read() as session:
            lapsed = await lapsed_ids(session, written_cutoff)
        if all(renewed(worker_id) for worker_id in lapsed):
            return
        async with self.store.write("registry") as tx:
            gone = await expire(tx, written_cutoff, keep=renewed)
        for name in gone:
            log.info("worker %s left: lease expired", name)
