"""When a model should be retrained: its policy's triggers, evaluated by each trainer.

A trigger that fires asks the registry for a run; the registry makes coinciding
requests (several triggers, several trainers) one run and refuses automatic ones
within the cooldown, so evaluating the same triggers on every trainer replica is
safe. Measured from the model's last run (or, before its first, from when the
policy was set):
- schedule: the interval has passed, or the cron expression's next time after it;
- data volume: at least `min_new_examples` more labelled examples than that run saw;
- alert: a drift or accuracy alert started since, for the version being served.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.trainer import data

# Alerts on the serving version that mean its model no longer fits the data.
RETRAIN_ALERTS = ("DriftHigh", "AccuracyDrop")

# The number of labelled examples a model's source holds now, or None if unknown.
Volume = Callable[[tpb.TrainingPolicy], Awaitable[int | None]]


@dataclass(frozen=True)
class Fired:
    trigger: int
    reason: str


class FileVolume:
    """Rows of a policy's file, re-counted only when the file changes."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, int, int]] = {}  # uri -> (mtime, size, rows)

    async def __call__(self, policy: tpb.TrainingPolicy) -> int | None:
        uri = policy.dataset_uri
        try:
            path = data._path(uri)
            stat = os.stat(path)
        except (OSError, data.DataError):
            return None
        known = self._seen.get(uri)
        if known and known[:2] == (stat.st_mtime, stat.st_size):
            return known[2]
        rows = await asyncio.to_thread(data.count_rows, uri)
        self._seen[uri] = (stat.st_mtime, stat.st_size, rows)
        return rows


def _since(policy: tpb.TrainingPolicy, last: tpb.TrainingRun | None) -> float:
    if last is not None:
        return float(last.create_time.ToMicroseconds() / 1e6)
    return float(policy.update_time.ToMicroseconds() / 1e6)


def schedule(policy: tpb.TrainingPolicy, last: tpb.TrainingRun | None, now: float) -> Fired | None:
    since = _since(policy, last)
    interval = policy.triggers.interval.ToNanoseconds() / 1e9
    if interval and now - since >= interval:
        return Fired(tpb.TRAINING_TRIGGER_SCHEDULE, f"every {interval:g} s")
    cron = policy.triggers.cron
    if cron:
        due = croniter(cron, datetime.fromtimestamp(since, UTC)).get_next(float)
        if due <= now:
            return Fired(tpb.TRAINING_TRIGGER_SCHEDULE, f"cron '{cron}' was due")
    return None


def volume(
    policy: tpb.TrainingPolicy, last: tpb.TrainingRun | None, rows: int | None
) -> Fired | None:
    wanted = policy.triggers.min_new_examples
    if not wanted or rows is None:
        return None
    new = rows - (last.source_rows if last is not None else 0)
    if new >= wanted:
        since = f"run {last.number}" if last is not None else "the policy was set"
        return Fired(
            tpb.TRAINING_TRIGGER_DATA_VOLUME,
            f"{new} new labelled examples since {since} (at least {wanted})",
        )
    return None


def alerted(
    policy: tpb.TrainingPolicy,
    last: tpb.TrainingRun | None,
    firing: list[rpb.Alert],
    serving: int,
) -> Fired | None:
    if not policy.triggers.on_alert:
        return None
    since = _since(policy, last)
    for alert in firing:
        started = alert.start_time.ToMicroseconds() / 1e6
        if alert.alert in RETRAIN_ALERTS and alert.version == serving and started > since:
            return Fired(tpb.TRAINING_TRIGGER_ALERT, f"{alert.alert}: {alert.summary}")
    return None
