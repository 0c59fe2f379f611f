"""Prometheus metrics of the trainer's batch runs (`liveml_trainer_*`): which triggers
asked for runs, how runs ended and which gate checks failed, how long each stage took,
and when the trainer last reached the registry (a trainer that cannot list policies
retrains nothing, silently otherwise)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.gen.liveml.training.v1 import training_pb2 as tpb

TRIGGERS = Counter(
    "liveml_trainer_trigger_requests",
    "Runs asked for by a trigger, by outcome: created (a new run), absorbed (into the "
    "model's queued or running run), refused (cooldown, or no policy).",
    ["model", "trigger", "outcome"],
)
RUNS = Counter(
    "liveml_trainer_runs",
    "Runs this trainer carried to an end, by final state.",
    ["model", "state"],
)
GATE_FAILURES = Counter(
    "liveml_trainer_gate_failures", "Failed gate checks of rejected runs.", ["model", "check"]
)
STAGE_SECONDS = Histogram(
    "liveml_trainer_stage_seconds",
    "Seconds each stage of a run took (read, fit, export, gate, register...).",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
POLICIES = Gauge("liveml_trainer_policies", "Training policies at the last successful poll.")
LAST_POLL = Gauge(
    "liveml_trainer_last_poll_timestamp_seconds",
    "When the trainer last listed the policies from the registry (Unix time).",
)


def trigger_name(trigger: int) -> str:
    return tpb.TrainingTrigger.Name(trigger).removeprefix("TRAINING_TRIGGER_").lower()  # type: ignore[arg-type]


def run_ended(run: tpb.TrainingRun) -> None:
    model = run.name.split("/")[1]
    RUNS.labels(model, tpb.TrainingRun.State.Name(run.state).removeprefix("STATE_").lower()).inc()
    for stage, seconds in run.stage_seconds.items():
        STAGE_SECONDS.labels(stage).observe(seconds)
    if run.state == tpb.TrainingRun.STATE_REJECTED:
        for check in run.checks:
            if not check.passed:
                GATE_FAILURES.labels(model, check.name).inc()
