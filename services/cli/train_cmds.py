"""`liveml train`: training policies, runs by hand, and what runs did.

`train policy set MODEL` takes a YAML file (`--file`, the TrainingPolicy message's
fields, with `task: classification` and `approval: auto` as short forms and
estimator params as plain YAML values) and/or flags, flags winning; `train policy
show`; `train run MODEL` asks for a run now; `train runs MODEL` lists them; `train
show MODEL NUMBER` shows one run with every gate check and its numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from google.protobuf import json_format

from services.cli.args import JsonFlag, ModelArg, model_id, parse_pairs, parse_ttl
from services.cli.client import Connection, connect, connected, fail
from services.cli.output import (
    print_fields,
    print_json,
    print_json_list,
    print_table,
    short,
    stdout,
    time_text,
)
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb

train_app = typer.Typer(
    help="Retraining: policies, runs, the gate's verdicts.", no_args_is_help=True
)
policy_app = typer.Typer(help="A model's training policy.", no_args_is_help=True)
train_app.add_typer(policy_app, name="policy")

Run = tpb.TrainingRun
SHORT_ENUMS = {
    "task": "TRAINING_TASK_",
    "approval": "APPROVAL_MODE_",
    "mode": "TRAINING_MODE_",
}
learner_app = typer.Typer(help="Online learners: where each stands.", no_args_is_help=True)


def _duration_text(text: str, flag: str) -> str:
    try:
        return f"{parse_ttl(text).total_seconds():g}s"
    except typer.BadParameter:
        raise typer.BadParameter(
            f"{text!r}: expected e.g. 30s, 5m, 12h or 1d", param_hint=flag
        ) from None


def _from_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"{path}: {exc}", param_hint="--file") from None
    if not isinstance(loaded, dict):
        raise typer.BadParameter(
            f"{path}: expected a mapping of policy fields", param_hint="--file"
        )
    return loaded


def _numbers(values: list[str] | None, flag: str) -> dict[str, float]:
    out = {}
    for key, value in parse_pairs(values, flag).items():
        try:
            out[key] = float(value)
        except ValueError:
            raise typer.BadParameter(f"{key}: {value!r} is not a number", param_hint=flag) from None
    return out


def _normalise(spec: dict[str, Any]) -> dict[str, Any]:
    """Short enum forms to full names; estimator params to their JSON texts."""
    for key, prefix in SHORT_ENUMS.items():
        value = spec.get(key)
        if isinstance(value, str) and not value.startswith(prefix):
            spec[key] = prefix + value.upper()
    online = spec.get("online")
    rollout = online.get("rollout") if isinstance(online, dict) else None
    is_short = isinstance(rollout, str) and not rollout.startswith("ONLINE_ROLLOUT_")
    if isinstance(online, dict) and is_short:
        online["rollout"] = "ONLINE_ROLLOUT_" + str(rollout).upper()
    estimator = spec.get("estimator")
    if isinstance(estimator, dict) and isinstance(estimator.get("params"), dict):
        estimator["params"] = {
            k: v if isinstance(v, str) and _is_json(v) else json.dumps(v)
            for k, v in estimator["params"].items()
        }
    return spec


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@policy_app.command("set")
@connected
def policy_set(
    conn: Connection,
    model: ModelArg,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", exists=True, dir_okay=False, help="YAML file with the policy's fields."
        ),
    ] = None,
    task: Annotated[str | None, typer.Option(help="classification or regression.")] = None,
    estimator: Annotated[
        str | None,
        typer.Option(help="Estimator class, e.g. sklearn.linear_model.LogisticRegression."),
    ] = None,
    entry_point: Annotated[
        str | None, typer.Option(help="package.module:function building the estimator.")
    ] = None,
    returns_onnx: Annotated[
        bool, typer.Option("--returns-onnx", help="The entry point trains and returns ONNX bytes.")
    ] = False,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", metavar="NAME=JSON", help="Estimator parameter (repeatable)."),
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(help="Feature columns in the model's input order, comma separated."),
    ] = None,
    label: Annotated[str | None, typer.Option(help="The label column.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="file:///... CSV or Parquet (default: the event stream).")
    ] = None,
    time_column: Annotated[
        str | None, typer.Option(help="Column with each row's event time.")
    ] = None,
    window_rows: Annotated[
        int | None, typer.Option(min=0, help="Train on the newest N rows only.")
    ] = None,
    window: Annotated[
        str | None, typer.Option(help="Train on rows newer than this, e.g. 7d.")
    ] = None,
    holdout: Annotated[
        float | None,
        typer.Option(min=0.0, max=0.99, help="Newest share of rows held out (default 0.2)."),
    ] = None,
    every: Annotated[str | None, typer.Option(help="Retrain this often, e.g. 6h.")] = None,
    cron: Annotated[str | None, typer.Option(help="Retrain on this cron schedule (UTC).")] = None,
    min_new_examples: Annotated[
        int | None, typer.Option(min=0, help="Retrain after this many new labelled examples.")
    ] = None,
    on_alert: Annotated[
        bool | None,
        typer.Option("--on-alert/--no-on-alert", help="Retrain on a drift or accuracy alert."),
    ] = None,
    cooldown: Annotated[
        str | None, typer.Option(help="No automatic run within this long of the last.")
    ] = None,
    floor: Annotated[
        list[str] | None,
        typer.Option("--floor", metavar="METRIC=VALUE", help="Gate: absolute bound (repeatable)."),
    ] = None,
    max_regression: Annotated[
        list[str] | None,
        typer.Option(
            "--max-regression",
            metavar="METRIC=VALUE",
            help="Gate: largest regression vs production.",
        ),
    ] = None,
    approval: Annotated[str | None, typer.Option(help="auto or manual.")] = None,
    canary_steps: Annotated[
        str | None, typer.Option(help="The candidate's canary steps, e.g. 10,50,100.")
    ] = None,
    canary_interval: Annotated[
        str | None, typer.Option(help="Time at each canary step, e.g. 60s.")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="batch (runs) or online (a learner on the stream).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Online: examples per update.")
    ] = None,
    publish_every: Annotated[
        int | None, typer.Option(min=1, help="Online: publish after this many examples.")
    ] = None,
    publish_interval: Annotated[
        str | None, typer.Option(help="Online: or after this long, e.g. 30s.")
    ] = None,
    replay_ratio: Annotated[
        float | None,
        typer.Option(max=1.0, help="Online: share replayed from the reservoir (negative: none)."),
    ] = None,
    online_rollout: Annotated[str | None, typer.Option(help="Online: canary or direct.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Create or replace MODEL's training policy."""
    spec = _from_file(file) if file is not None else {}
    est = spec.setdefault("estimator", {})
    if estimator:
        est.pop("entry_point", None)
        est["class_path"] = estimator
    if entry_point:
        est.pop("class_path", None)
        est["entry_point"] = entry_point
    if returns_onnx:
        est["returns_onnx"] = True
    if param:
        est.setdefault("params", {}).update(parse_pairs(param, "--param"))
    simple = {
        "task": task,
        "label": label,
        "dataset_uri": dataset,
        "time_column": time_column,
        "approval": approval,
    }
    spec.update({k: v for k, v in simple.items() if v is not None})
    if features is not None:
        spec["features"] = [f.strip() for f in features.split(",") if f.strip()]
    if window_rows is not None:
        spec.setdefault("window", {})["last_rows"] = window_rows
    if window is not None:
        spec.setdefault("window", {})["last"] = _duration_text(window, "--window")
    if holdout is not None:
        spec.setdefault("holdout", {})["fraction"] = holdout
    triggers = spec.setdefault("triggers", {})
    if every is not None:
        triggers["interval"] = _duration_text(every, "--every")
    if cron is not None:
        triggers["cron"] = cron
    if min_new_examples is not None:
        triggers["min_new_examples"] = min_new_examples
    if on_alert is not None:
        triggers["on_alert"] = on_alert
    if cooldown is not None:
        spec["cooldown"] = _duration_text(cooldown, "--cooldown")
    gate = spec.setdefault("gate", {})
    if floor:
        gate.setdefault("floors", {}).update(_numbers(floor, "--floor"))
    if max_regression:
        gate.setdefault("max_regression", {}).update(_numbers(max_regression, "--max-regression"))
    canary = spec.setdefault("canary", {})
    if canary_steps is not None:
        try:
            canary["steps"] = [int(s) for s in canary_steps.split(",") if s.strip()]
        except ValueError:
            raise typer.BadParameter(
                f"{canary_steps!r}: expected e.g. 10,50,100", param_hint="--canary-steps"
            ) from None
    if canary_interval is not None:
        canary["step_interval"] = _duration_text(canary_interval, "--canary-interval")
    if mode is not None:
        spec["mode"] = mode
    online = spec.setdefault("online", {})
    for key, value in (
        ("batch_size", batch_size),
        ("publish_every", publish_every),
        ("replay_ratio", replay_ratio),
        ("rollout", online_rollout),
    ):
        if value is not None:
            online[key] = value
    if publish_interval is not None:
        online["publish_interval"] = _duration_text(publish_interval, "--publish-interval")
    spec["name"] = f"models/{model_id(model)}/trainingPolicy"
    policy = tpb.TrainingPolicy()
    try:
        json_format.ParseDict(_normalise(spec), policy)
    except json_format.ParseError as exc:
        fail(f"the policy does not parse: {exc}")
    with connect(conn) as registry:
        reply: tpb.SetTrainingPolicyResponse = registry.training.SetTrainingPolicy(
            tpb.SetTrainingPolicyRequest(policy=policy)
        )
    if json_output:
        print_json(reply)
        return
    print_fields(_policy_fields(reply.policy), title="training policy set")


def _duration(d: Any) -> str:
    seconds = d.ToNanoseconds() / 1e9
    return f"{seconds:g} s" if seconds else "-"


def _policy_fields(p: tpb.TrainingPolicy) -> list[tuple[str, str]]:
    est = p.estimator
    triggers = p.triggers
    fired = [
        f"every {_duration(triggers.interval)}" if triggers.interval.ToNanoseconds() else "",
        f"cron '{triggers.cron}'" if triggers.cron else "",
        f"{triggers.min_new_examples} new examples" if triggers.min_new_examples else "",
        "drift or accuracy alert" if triggers.on_alert else "",
        "by hand (liveml train run)",
    ]
    gate = p.gate
    bounds = [
        *(f"{m} floor {v:g}" for m, v in sorted(gate.floors.items())),
        *(f"{m} at most {v:g} worse" for m, v in sorted(gate.max_regression.items())),
        *(f"{m} at most {v:.0%} worse" for m, v in sorted(gate.max_relative_regression.items())),
    ]
    return [
        ("name", p.name),
        ("task", short(tpb.TrainingTask, p.task)),
        (
            "estimator",
            (est.class_path or est.entry_point) + (" (returns ONNX)" if est.returns_onnx else ""),
        ),
        ("params", ", ".join(f"{k}={v}" for k, v in sorted(est.params.items()))),
        ("features", ", ".join(p.features)),
        ("label", p.label),
        ("data", p.dataset_uri or "the event stream (labelled examples)"),
        (
            "window",
            f"last {p.window.last_rows} rows"
            if p.window.last_rows
            else (f"last {_duration(p.window.last)}" if p.window.last.ToNanoseconds() else "all"),
        ),
        (
            "holdout",
            f"{p.holdout.rows} newest rows"
            if p.holdout.rows
            else f"newest {p.holdout.fraction or 0.2:.0%}",
        ),
        ("triggers", "; ".join(f for f in fired if f)),
        ("cooldown", _duration(p.cooldown) if p.cooldown.ToNanoseconds() else "60 s"),
        ("gate", "; ".join(bounds) or "non-inferiority, parity and latency only"),
        ("mode", short(tpb.TrainingMode, p.mode) if p.mode else "batch"),
        ("approval", short(tpb.ApprovalMode, p.approval) if p.approval else "auto"),
        ("canary", ", ".join(f"{s}%" for s in p.canary.steps) or "10%, 50%, 100%"),
        ("updated", f"{time_text(p.update_time)} by {p.updater}"),
    ]


@policy_app.command("show")
@connected
def policy_show(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """Show MODEL's training policy."""
    with connect(conn) as registry:
        reply: tpb.GetTrainingPolicyResponse = registry.training.GetTrainingPolicy(
            tpb.GetTrainingPolicyRequest(name=f"models/{model_id(model)}/trainingPolicy")
        )
    if json_output:
        print_json(reply)
        return
    print_fields(_policy_fields(reply.policy))


@train_app.command("run")
@connected
def train_run(
    conn: Connection,
    model: ModelArg,
    reason: Annotated[str, typer.Option(help="Why (kept in the run).")] = "",
    json_output: JsonFlag = False,
) -> None:
    """Ask for a run of MODEL now (a run already waiting absorbs the request)."""
    with connect(conn) as registry:
        reply: tpb.RequestTrainingRunResponse = registry.training.RequestTrainingRun(
            tpb.RequestTrainingRunRequest(
                parent=f"models/{model_id(model)}",
                trigger=tpb.TRAINING_TRIGGER_MANUAL,
                reason=reason,
            )
        )
    if json_output:
        print_json(reply)
        return
    what = "run queued" if reply.created else "a run was already waiting; it takes this request"
    print_fields(_run_fields(reply.run), title=what)


def _state(run: Run) -> str:
    return short(Run.State, run.state)


@train_app.command("runs")
@connected
def train_runs(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """MODEL's training runs, newest first."""
    with connect(conn) as registry:
        reply: tpb.ListTrainingRunsResponse = registry.training.ListTrainingRuns(
            tpb.ListTrainingRunsRequest(parent=f"models/{model_id(model)}", page_size=100)
        )
    if json_output:
        print_json_list(reply.runs)
        return
    print_table(
        ("run", "trigger", "state", "rows", "version", "canary", "started", "why / outcome"),
        (
            (
                str(r.number),
                short(tpb.TrainingTrigger, r.trigger),
                _state(r),
                f"{r.train_rows}+{r.holdout_rows}" if r.dataset.rows else "-",
                f"v{r.version}" if r.version else "-",
                short(rpb.AnalysisStatus.Phase, r.canary_phase) if r.canary_phase else "-",
                time_text(r.start_time),
                r.error or _first_failed(r) or "; ".join(r.reasons),
            )
            for r in reply.runs
        ),
        title=f"training runs of {model_id(model)}",
    )


def _first_failed(run: Run) -> str:
    failed = [c.text for c in run.checks if not c.passed]
    return f"rejected: {failed[0]}" if failed else ""


def _run_fields(r: Run) -> list[tuple[str, str]]:
    return [
        ("run", r.name),
        (
            "state",
            _state(r) + (f" (attempt {r.attempt}, retry of {r.retry_of})" if r.retry_of else ""),
        ),
        ("trigger", short(tpb.TrainingTrigger, r.trigger)),
        ("why", "; ".join(r.reasons)),
        ("trainer", r.trainer or "-"),
        (
            "dataset",
            f"{r.dataset.uri} ({r.dataset.rows} rows, sha256 {r.dataset.digest[:12]})"
            if r.dataset.rows
            else "-",
        ),
        (
            "split",
            f"{r.train_rows} trained on, {r.holdout_rows} held out" if r.dataset.rows else "-",
        ),
        ("production", f"v{r.production_version}" if r.production_version else "none"),
        ("version", f"v{r.version}" if r.version else "-"),
        ("canary", r.canary_decision or "-"),
        ("error", r.error or "-"),
        ("stages", ", ".join(f"{k} {v:.2f} s" for k, v in r.stage_seconds.items()) or "-"),
        ("created", time_text(r.create_time)),
        ("ended", time_text(r.end_time)),
    ]


@train_app.command("show")
@connected
def train_show(
    conn: Connection,
    model: ModelArg,
    number: Annotated[int, typer.Argument(metavar="RUN", min=1, help="Run number.")],
    json_output: JsonFlag = False,
) -> None:
    """One run of MODEL: its data, every gate check with its numbers, its outcome."""
    with connect(conn) as registry:
        reply: tpb.GetTrainingRunResponse = registry.training.GetTrainingRun(
            tpb.GetTrainingRunRequest(name=f"models/{model_id(model)}/trainingRuns/{number}")
        )
    run = reply.run
    if json_output:
        print_json(reply)
        return
    print_fields(_run_fields(run), title=f"run {run.number} of {model_id(model)}")
    if run.checks:
        print_table(
            ("check", "slice", "candidate", "production", "limit", "verdict", "in words"),
            (
                (
                    c.name,
                    c.slice or "-",
                    f"{c.candidate:.4g}",
                    f"{c.production:.4g}" if c.HasField("production") else "-",
                    f"{c.limit:g}",
                    "pass" if c.passed else "FAIL",
                    c.text,
                )
                for c in run.checks
            ),
            title="gate",
        )
    stdout.print()


@learner_app.command("status")
@connected
def learner_status(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """Where MODEL's online learner stands: position, lag, accuracy, drift, publishing."""
    with connect(conn) as registry:
        reply: tpb.GetLearnerStatusResponse = registry.training.GetLearnerStatus(
            tpb.GetLearnerStatusRequest(parent=f"models/{model_id(model)}")
        )
    if json_output:
        print_json(reply)
        return
    st = reply.status
    if st.HasField("prequential_accuracy"):
        accuracy = f"{st.prequential_accuracy:.4f}"
    elif st.HasField("prequential_rmse"):
        accuracy = f"RMSE {st.prequential_rmse:.4f}"
    else:
        accuracy = "-"
    quarantined = ", ".join(f"{k}: {v}" for k, v in sorted(st.quarantined.items())) or "none"
    drifts = ", ".join(map(str, st.drift_sequences[-3:]))
    published = (
        f"v{st.published_version} at {time_text(st.publish_time)}: {st.publish_decision}"
        if st.published_version
        else (st.publish_decision or "none yet")
    )
    print_fields(
        [
            ("learner", f"{st.learner} (fencing token {st.fencing_token})"),
            ("lease until", time_text(st.lease_expire_time)),
            ("applied", f"{st.applied} examples, through sequence {st.last_sequence}"),
            ("lag", f"{st.lag} sequences behind the stream"),
            ("prequential accuracy", accuracy),
            ("drift", st.drift_state + (f" (at {drifts})" if drifts else "")),
            ("quarantined", quarantined),
            ("speed", f"{st.examples_per_second:,.0f} examples/s"),
            (
                "checkpoint",
                f"#{st.checkpoint_number}, {st.checkpoint_bytes} bytes, "
                f"{time_text(st.checkpoint_time)}",
            ),
            ("last publish", published),
            ("publishing", f"STOPPED: {st.stopped_reason}" if st.publishing_stopped else "on"),
        ],
        title=f"online learner of {model_id(model)}",
    )
