"""Writing a rollout decision, whoever made it (the controller or an operator): the new
rollout state, its audit event, the training run's record and the alert, in one
transaction.

Each write is fenced by the rollout revision the decision was made on, so a leader
that lost its lease mid-decision, or an operator racing the controller, cannot
overwrite a newer state (the write is refused as ABORTED). Rollbacks and promotions
are written here for both; the controller's step and wait are in controller.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import alerts, catalog, names, rollouts, training_runs
from services.registry.alerts import Alerts
from services.registry.store import Store, Tx, now_us

# The name these lines carried before the controller was split: log filters keep matching.
log = logging.getLogger("services.registry.controller")

Phase = rpb.AnalysisStatus
CHAMPION = "champion"


def share(rollout: rpb.Rollout, stable: int, candidate: int, weight: int) -> None:
    del rollout.targets[:]
    if weight < 100:
        rollout.targets.add(version=stable, percent=100 - weight)
    rollout.targets.add(version=candidate, percent=weight)


def decided(rollout: rpb.Rollout, text: str) -> None:
    rollout.status.last_decision = text
    rollout.status.last_decision_time.FromMicroseconds(now_us())


class Decider:
    """Writes decisions for one registry replica and counts them (for /metrics)."""

    def __init__(self, store: Store, alerts_: Alerts, holder: str) -> None:
        self.store = store
        self.alerts = alerts_
        self.holder = holder  # this replica's controller, named in its decisions
        self.counts: dict[tuple[str, str], int] = {}  # (model, action) -> decisions

    async def decide(
        self,
        model: str,
        rollout: rpb.Rollout,
        change: Callable[[rpb.Rollout], None],
        action: str,
        details: dict[str, Any],
        *,
        actor: str = "controller",
        alert: tuple[str, int, str] | None = None,
        event: bool = True,
        more: Callable[[Tx], Any] | None = None,
    ) -> rpb.Rollout:
        if actor == "controller":  # which replica decided, when several share the database
            details = {**details, "controller": self.holder}
        async with self.store.write(actor) as tx:
            after = await rollouts.transition(tx, model, rollout.revision, change, action, details)
            await training_runs.record_canary(tx, model, after)
            if alert is not None:
                kind, severity, summary = alert
                await self.alerts.raise_(
                    tx,
                    kind,
                    severity,
                    model,
                    after.status.candidate_version,
                    f"{summary} — {after.status.last_decision}",
                    details,
                    event=event,
                )
            if more is not None:
                await more(tx)
        self.counts[(model, action)] = self.counts.get((model, action), 0) + 1
        log.info("%s %s: %s", action, model, after.status.last_decision)
        return after

    async def rollback(
        self,
        model: str,
        rollout: rpb.Rollout,
        breached: str,
        why: str,
        numbers: dict[str, Any],
        *,
        actor: str = "controller",
        phase: int = Phase.PHASE_ROLLED_BACK,
    ) -> rpb.Rollout:
        """All traffic back to the stable version: rolled back, or aborted by hand."""
        stable, candidate = rollout.status.stable_version, rollout.status.candidate_version

        def back(r: rpb.Rollout) -> None:
            del r.targets[:]
            r.targets.add(version=stable, percent=100)
            r.status.phase = phase  # type: ignore[assignment]
            decided(r, f"rolled back to v{stable}: {why}")

        aborted = phase == Phase.PHASE_ABORTED
        return await self.decide(
            model,
            rollout,
            back,
            "CanaryAbort" if aborted else "CanaryRollback",
            {**numbers, "breached": breached, "reason": why},
            actor=actor,
            alert=(
                ("CanaryAborted", alerts.WARNING, f"canary of v{candidate} aborted")
                if aborted
                else (
                    "RolloutRolledBack",
                    alerts.CRITICAL,
                    f"v{candidate} of {model} rolled back ({breached})",
                )
            ),
            event=aborted,
        )

    async def promote(
        self,
        model: str,
        rollout: rpb.Rollout,
        actor: str,
        why: str,
        numbers: dict[str, Any],
    ) -> rpb.Rollout:
        """All traffic to the candidate; stages and the `champion` alias follow."""
        stable, candidate = rollout.status.stable_version, rollout.status.candidate_version

        def finish(r: rpb.Rollout) -> None:
            share(r, stable, candidate, 100)
            r.status.phase = Phase.PHASE_PROMOTED
            decided(r, f"promoted v{candidate}: {why}")

        async def stages(tx: Tx) -> None:
            stage = FieldMask(paths=["stage"])
            await catalog.update_version(
                tx,
                rpb.Version(name=names.version_name(model, candidate), stage=rpb.STAGE_PRODUCTION),
                stage,
            )
            if stable:
                await catalog.update_version(
                    tx,
                    rpb.Version(name=names.version_name(model, stable), stage=rpb.STAGE_ARCHIVED),
                    stage,
                )
            await catalog.set_alias(tx, f"models/{model}", CHAMPION, candidate)

        return await self.decide(
            model,
            rollout,
            finish,
            "CanaryPromote",
            numbers,
            actor=actor,
            alert=("CanaryPromoted", alerts.INFO, f"v{candidate} of {model} promoted"),
            more=stages,
        )
