"""Settling rollouts once per revision, as workers report in memory that they saw it.

A rollout's fallback (rollouts.py, make before break) is cleared once every target is
READY on a worker that has observed the rollout's revision. A heartbeat whose only news
is a newer observed revision is held in memory (`leases.Leases`), not written: after a
rollout every worker's next heartbeat carries one, and a versioned write per worker
(plus a settle per worker) was a storm that held the change feed up for seconds. Here
such heartbeats only name the models they serve (`advanced`); one task settles them
together, and only when some rollout of theirs still holds a fallback its revision
could release (learned from the change feed, so a quiet fleet costs nothing here).

What "every worker observed R" rests on stays correct across a restart: a held observed
revision that was lost with its process is reported again by the worker's next
heartbeat, the fallback stays until then (never released early), and every rollout
that still holds one is looked at when the registry starts and each `recheck_seconds`
(5 s, or two lease flushes: this covers what another replica holds until its next
flush). A pass reads every worker, so passes are at least MIN_GAP_SECONDS apart, and a
report wakes one only when it crosses an unsettled rollout's revision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import rollouts
from services.registry.store import Store

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.02  # heartbeats reporting the same revision settle together
# A pass reads every worker: at most one per this (thousands report a revision at once).
MIN_GAP_SECONDS = 0.25


class Settler:
    def __init__(self, store: Store, recheck_seconds: float = 1.0) -> None:
        self.store = store
        self.recheck_seconds = recheck_seconds
        # model -> revision of its rollout while that rollout holds a fallback; None
        # until read (then every report is looked at).
        self._unsettled: dict[str, int] | None = None
        self._models: set[str] = set()
        self._wake = asyncio.Event()
        self.runs = 0  # settle passes that read the workers (for tests and logs)
        store.event_listeners.append(self._learn)
        store.reset_listeners.append(self._forget)

    def _forget(self) -> None:
        self._unsettled = None
        self._wake.set()

    def _learn(self, events: list[rpb.WatchEvent], local: bool) -> None:
        if self._unsettled is None:
            return
        for event in events:
            if event.WhichOneof("resource") == "rollout":
                model = event.rollout.name.split("/")[1]
                if event.rollout.fallback:
                    self._unsettled[model] = event.rollout.revision
                    self._models.add(model)  # READY may be reported already
                    self._wake.set()
                else:
                    self._unsettled.pop(model, None)
            elif event.type == rpb.WatchEvent.TYPE_DELETE and event.resource_name.startswith(
                "models/"
            ):
                self._unsettled.pop(event.resource_name.split("/")[1], None)

    def advanced(self, models: Iterable[str], observed_revision: int, previous: int = 0) -> None:
        """A worker serving `models` now reports `observed_revision` (before: `previous`,
        0 if not known). Only a report that crosses an unsettled rollout's revision can
        release it: a rollout held for long (a target that failed) is not looked at again
        on every heartbeat after every change."""
        unsettled = self._unsettled
        wanted = [
            m
            for m in models
            if unsettled is None
            or previous < unsettled.get(m, observed_revision + 1) <= observed_revision
        ]
        if wanted:
            self._models.update(wanted)
            self._wake.set()

    async def _load(self) -> None:
        async with self.store.read() as session:
            every = await rollouts.all_by_model(session)
        unsettled = {name: r.revision for name, r in every.items() if r.fallback}
        self._unsettled = unsettled
        self._models.update(unsettled)

    async def settle(self, models: set[str]) -> None:
        """Settle what can be among `models`: read first, write only if one settles."""
        if self._unsettled is not None:
            models = {m for m in models if m in self._unsettled}
        if not models:
            return
        self.runs += 1
        async with self.store.read() as session:
            due = await rollouts.settleable(session, models)
        if due:
            async with self.store.write("registry") as tx:
                await rollouts.settle(tx, due)

    async def run(self) -> None:
        last = 0.0
        while True:
            try:
                if self._unsettled is None:
                    await self._load()
                timeout = self.recheck_seconds if self._unsettled else None
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    self._models.update(self._unsettled or ())
                # why: heartbeats of one revision arrive together; one pass takes them
                gap = max(COALESCE_SECONDS, MIN_GAP_SECONDS - (time.monotonic() - last))
                await asyncio.sleep(gap)  # (noqa: sleep-ok)
                last = time.monotonic()
                self._wake.clear()
                models, self._models = self._models, set()
                await self.settle(models)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried at the next report or recheck
                log.warning("settling rollouts failed: %s", exc)
                await asyncio.sleep(self.recheck_seconds)  # why: back off (noqa: sleep-ok)


def models_of(versions: Iterable[rpb.WorkerVersionState]) -> set[str]:
    return {v.model for v in versions}
