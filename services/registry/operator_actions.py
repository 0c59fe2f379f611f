"""Operators' hands on a canary (`ControlRollout`): pause, resume, promote or abort it.

Any registry replica answers these, leader or not: the write is fenced by the rollout
revision like the controller's own decisions (decisions.py), so a hand and the
controller deciding at once cannot both win. Each refusal says what the canary is
doing instead.
"""

from __future__ import annotations

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import alerts, names, rollouts
from services.registry.decisions import Decider, Phase, decided
from services.registry.store import Store, now_us


async def control(
    store: Store, decider: Decider, name: str, action: int, reason: str, actor: str
) -> rpb.Rollout:
    """Pause, resume, promote or abort a canary by hand."""
    model = names.rollout(name)
    async with store.read() as session:
        rollout = await rollouts.get(session, name)
    phase = rollout.status.phase
    live = (Phase.PHASE_PROGRESSING, Phase.PHASE_PAUSED)
    Action = rpb.ControlRolloutRequest
    if action not in (
        Action.ACTION_PAUSE,
        Action.ACTION_RESUME,
        Action.ACTION_PROMOTE,
        Action.ACTION_ABORT,
    ):
        raise InvalidArgument("action must be ACTION_PAUSE, _RESUME, _PROMOTE or _ABORT")
    verb = Action.Action.Name(action).removeprefix("ACTION_").lower()
    if phase not in live:
        state = Phase.Phase.Name(phase).removeprefix("PHASE_") if phase else "no canary"
        raise FailedPrecondition(
            f"rollout of '{model}' has no canary in progress to {verb} (it is {state})"
        )
    why = f"{verb} by {actor}" + (f": {reason}" if reason else "")
    details = {"reason": reason}
    if action == Action.ACTION_PROMOTE:
        return await decider.promote(model, rollout, actor, why, details)
    if action == Action.ACTION_ABORT:
        return await decider.rollback(
            model, rollout, "operator", why, details, actor=actor, phase=Phase.PHASE_ABORTED
        )
    if action == Action.ACTION_PAUSE and phase == Phase.PHASE_PAUSED:
        raise FailedPrecondition(f"the canary of '{model}' is already paused")
    if action == Action.ACTION_RESUME and phase == Phase.PHASE_PROGRESSING:
        raise FailedPrecondition(f"the canary of '{model}' is not paused")

    def hold(r: rpb.Rollout) -> None:
        pausing = action == Action.ACTION_PAUSE
        r.status.phase = Phase.PHASE_PAUSED if pausing else Phase.PHASE_PROGRESSING
        r.status.step_start_time.FromMicroseconds(now_us())
        decided(r, why)

    return await decider.decide(
        model,
        rollout,
        hold,
        "CanaryPause" if action == Action.ACTION_PAUSE else "CanaryResume",
        details,
        actor=actor,
        alert=(
            "CanaryPaused" if action == Action.ACTION_PAUSE else "CanaryResumed",
            alerts.INFO,
            f"canary of v{rollout.status.candidate_version} {verb}d by {actor}",
        ),
    )
