"""What the demo prints at the end: its steps, every training run (trigger, gate,
version, canary), the controller's numbers per version, and what the clients saw."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from services.cli import demo_traffic as data
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb

Run = tpb.TrainingRun
console = Console()


def trigger(run: Run) -> str:
    return tpb.TrainingTrigger.Name(run.trigger).removeprefix("TRAINING_TRIGGER_").lower()


def state(run: Run) -> str:
    return Run.State.Name(run.state).removeprefix("STATE_")


def failed_checks(run: Run) -> list[tpb.GateCheck]:
    return [c for c in run.checks if not c.passed and not c.slice]


def check(run: Run, name: str) -> tpb.GateCheck | None:
    return next((c for c in run.checks if c.name == name and not c.slice), None)


def describe(run: Run) -> str:
    accuracy = run.candidate_metrics.get("accuracy")
    production = run.production_metrics.get("accuracy")
    numbers = f"holdout accuracy {accuracy:.3f}" if accuracy is not None else ""
    if production is not None and run.production_version:
        numbers += f" vs v{run.production_version} {production:.3f}"
    return f"run {run.number} ({trigger(run)}) {state(run)}: {numbers}"


def summary(
    steps: list[tuple[str, str]],
    runs: list[Run],
    metrics: list[rpb.VersionMetrics],
    tallies: dict[tuple[str, str], data.Tally],
) -> None:
    table = Table(title="what happened")
    table.add_column("step")
    table.add_column("outcome")
    for title, outcome in steps:
        table.add_row(title, outcome)
    console.print(table)
    trained = Table(title="every run: trigger, gate, version, canary")
    for column in ("run", "trigger", "state", "gate (failed checks)", "version", "canary"):
        trained.add_column(column)
    for run in runs:
        failed = failed_checks(run)
        accuracy = check(run, "floor:accuracy")
        gate = f"accuracy {accuracy.candidate:.3f}" if accuracy is not None else run.error[:60]
        if failed:
            gate += "; FAILED " + ", ".join(f.name for f in failed)
        trained.add_row(
            str(run.number),
            "; ".join(run.reasons)[:90],
            state(run),
            gate,
            f"v{run.version}" if run.version else "-",
            ": ".join(run.canary_decision.split(": ")[:2]) or "-",
        )
    console.print(trained)
    numbers = Table(title="per version, as the controller saw it (last 10 minutes)")
    for column in ("version", "requests", "errors", "p99 ms", "feedback accuracy"):
        numbers.add_column(column)
    for m in metrics:
        numbers.add_row(
            f"v{m.version}",
            str(m.requests),
            str(m.errors),
            f"{m.p99_seconds * 1e3:.2f}",
            f"{m.accuracy:.3f} ({m.feedback_total})" if m.feedback_total else "-",
        )
    console.print(numbers)
    live = Table(title="what the clients saw: accuracy by concept and version")
    for column in ("concept", "version", "answers", "accuracy"):
        live.add_column(column)
    for (phase, version), tally in sorted(tallies.items()):
        live.add_row(phase, f"v{version}", str(tally.answered), f"{tally.accuracy:.3f}")
    console.print(live)
