"""Operator commands for automatic rollouts: canary, status and taking over by hand.

`liveml rollout canary` starts a canary that the registry's controller walks through
its steps; `rollout status` (optionally `--watch`, a live view) shows the weights,
each version's numbers and the controller's last decision; `rollout pause|resume|
promote|abort` take over by hand. Alerts are in alerts_cmds.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import typer
from google.protobuf.duration_pb2 import Duration
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.cli.args import JsonFlag, ModelArg, parse_ttl, rollout_name
from services.cli.client import Connection, Registry, connect, connected, fail
from services.cli.output import as_dict, print_fields, print_json, short, stdout, time_text
from services.cli.refresh import refreshed
from services.cli.rollout_cmds import held_text, rollout_app, serving_text, shares_text
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb


def _duration(text: str, flag: str) -> Duration:
    try:
        delta = parse_ttl(text)
    except typer.BadParameter:
        raise typer.BadParameter(
            f"{text!r}: expected e.g. 30s, 5m or 1h", param_hint=flag
        ) from None
    out = Duration()
    out.FromTimedelta(delta)
    return out


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: expected ascending percents ending at 100, e.g. 10,25,50,100",
            param_hint="--steps",
        ) from None
    return steps


@rollout_app.command("canary")
@connected
def rollout_canary(
    conn: Connection,
    model: ModelArg,
    version: Annotated[int, typer.Argument(metavar="VERSION", min=1, help="The candidate.")],
    steps: Annotated[
        str, typer.Option(help="Candidate weights in percent, ascending, ending at 100.")
    ] = "10,25,50,100",
    interval: Annotated[str, typer.Option(help="Time at each step, e.g. 30s or 5m.")] = "60s",
    min_requests: Annotated[
        int, typer.Option(min=1, help="Fewest requests per version before a step is judged.")
    ] = 50,
    max_error_rate_delta: Annotated[
        float, typer.Option(help="Largest candidate minus stable error rate.")
    ] = 0.02,
    max_p99_ratio: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Largest candidate p99 over stable p99 [default: 1.5, judged when both "
            "answered; given: required]",
            show_default=False,
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Largest stable minus candidate feedback accuracy [default: 0.05, judged "
            "when both have feedback; given: required, so a step without enough feedback "
            "waits and, after --max-idle-intervals, fails]",
            show_default=False,
        ),
    ] = None,
    min_feedback: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Feedback labels each version needs before accuracy is judged "
            "[default: max(10, min_requests / 5); given: accuracy is required]",
            show_default=False,
        ),
    ] = None,
    max_drift_psi: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Largest PSI of any feature [default: 0.25, judged when the version has "
            "reference statistics; given: required]",
            show_default=False,
        ),
    ] = None,
    max_fairness_gap: Annotated[
        float, typer.Option(help="Largest parity gap across groups (0 = not checked).")
    ] = 0.0,
    ready_timeout: Annotated[
        str, typer.Option(help="How long the candidate may take to become READY.")
    ] = "5m",
    max_idle_intervals: Annotated[
        int, typer.Option(min=1, help="Intervals without enough data before the canary fails.")
    ] = 3,
    json_output: JsonFlag = False,
) -> None:
    """Start a canary of VERSION against the version now serving all the traffic."""
    policy = rpb.AnalysisPolicy(
        steps=_steps(steps),
        step_interval=_duration(interval, "--interval"),
        min_requests=min_requests,
        max_error_rate_delta=max_error_rate_delta,
        max_p99_latency_ratio=max_p99_ratio or 0.0,
        max_accuracy_drop=max_accuracy_drop or 0.0,
        min_feedback=min_feedback or 0,
        max_drift_psi=max_drift_psi or 0.0,
        max_fairness_gap=max_fairness_gap,
        ready_timeout=_duration(ready_timeout, "--ready-timeout"),
        max_idle_intervals=max_idle_intervals,
        candidate_version=version,
    )
    with connect(conn) as registry:
        current: rpb.GetRolloutResponse = registry.GetRollout(
            rpb.GetRolloutRequest(name=rollout_name(model))
        )
        serving = [t.version for t in current.rollout.targets if t.percent > 0]
        if len(serving) != 1 or serving[0] == version:
            fail(
                f"a canary starts from one version serving all of '{model}' traffic; "
                f"now: {shares_text(current.rollout.targets)}",
                hint=f"liveml rollout set {model} --target VERSION=100",
            )
        rollout = rpb.Rollout()
        rollout.CopyFrom(current.rollout)
        del rollout.targets[:]
        first = policy.steps[0] if policy.steps else 100
        rollout.targets.add(version=serving[0], percent=100 - first)
        rollout.targets.add(version=version, percent=first)
        rollout.analysis.CopyFrom(policy)
        resp: rpb.UpdateRolloutResponse = registry.UpdateRollout(
            rpb.UpdateRolloutRequest(rollout=rollout, expected_revision=current.rollout.revision)
        )
    if json_output:
        print_json(resp)
        return
    print_fields(_status_fields(resp.rollout), title=f"canary of v{version} started")


def _status_fields(
    rollout: rpb.Rollout, view: rpb.GetRolloutResponse | None = None
) -> list[tuple[str, str]]:
    status = rollout.status
    rows = [("targets", shares_text(rollout.targets))]
    if view is not None:
        rows.append(("serving now", serving_text(view.serving)))
        rows += [("held", line) for line in held_text(view.held)]
    if status.phase:
        steps = list(rollout.analysis.steps)
        every = rollout.analysis.step_interval.ToTimedelta()
        share = {t.version: t.percent for t in rollout.targets}
        candidate, stable = status.candidate_version, status.stable_version
        phase = status.phase
        if phase in (rpb.AnalysisStatus.PHASE_PROGRESSING, rpb.AnalysisStatus.PHASE_PAUSED):
            at = steps[status.step_index] if status.step_index < len(steps) else 100
            shown = (f"v{stable} at {share.get(stable, 0)}%", f"v{candidate} at {at}%")
        elif phase == rpb.AnalysisStatus.PHASE_PROMOTED:
            shown = (f"v{stable} (retired)", f"v{candidate} at 100% (promoted)")
        else:
            shown = (f"v{stable} at 100%", f"v{candidate} at 0% (rolled back)")
        rows += [
            ("phase", short(rpb.AnalysisStatus.Phase, status.phase)),
            ("stable", shown[0]),
            ("candidate", shown[1]),
            ("steps", f"{', '.join(f'{s}%' for s in steps)} every {every}"),
            ("step started", time_text(status.step_start_time)),
            ("last decision", status.last_decision),
            ("decided", time_text(status.last_decision_time)),
        ]
    return rows


def _metrics_table(rollout: rpb.Rollout, metrics: Iterable[rpb.VersionMetrics]) -> Table:
    shares = {t.version: f"{t.percent}%" for t in rollout.targets}
    for mirror in rollout.mirrors:
        shares.setdefault(mirror.version, f"mirror {mirror.percent}%")
    table = Table(
        "version",
        "share",
        "ready",
        "requests",
        "error rate",
        "client errors",
        "p50 ms",
        "p99 ms",
        "accuracy",
        "drift PSI",
        "fairness gap",
        title="last 5 minutes",
    )
    for m in metrics:
        table.add_row(
            f"v{m.version}",
            shares.get(m.version, "-"),
            str(m.ready_workers),
            str(m.requests),
            f"{m.error_rate:.3f}" if m.requests else "-",
            str(m.client_errors),
            f"{m.p50_seconds * 1e3:.2f}" if m.requests else "-",
            f"{m.p99_seconds * 1e3:.2f}" if m.requests else "-",
            f"{m.accuracy:.3f} ({m.feedback_total})" if m.feedback_total else "-",
            Text(f"{m.max_drift_psi:.3f} {m.worst_feature}") if m.drift_psi else Text("-"),
            f"{m.fairness_gap:.3f}" if len(m.groups) >= 2 else "-",
        )
    return table


def _status_view(
    registry: Registry, model: str
) -> tuple[rpb.GetRolloutResponse, list[rpb.VersionMetrics]]:
    rollout: rpb.GetRolloutResponse = registry.GetRollout(
        rpb.GetRolloutRequest(name=rollout_name(model))
    )
    metrics: rpb.GetVersionMetricsResponse = registry.GetVersionMetrics(
        rpb.GetVersionMetricsRequest(parent=f"models/{model.removeprefix('models/')}")
    )
    return rollout, list(metrics.metrics)


def _render(model: str, view: rpb.GetRolloutResponse, metrics: list[rpb.VersionMetrics]) -> Group:
    fields = Table(show_header=False, title=f"rollout of {model}")
    fields.add_column(style="bold")
    fields.add_column()
    for key, value in _status_fields(view.rollout, view):
        fields.add_row(key, Text(value or "-"))
    return Group(fields, _metrics_table(view.rollout, metrics))


@rollout_app.command("status")
@connected
def rollout_status(
    conn: Connection,
    model: ModelArg,
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep the view live until Ctrl-C.")
    ] = False,
    every: Annotated[float, typer.Option(help="Refresh interval of --watch, seconds.")] = 2.0,
    json_output: JsonFlag = False,
) -> None:
    """Weights, per-version numbers and the controller's last decision."""
    with connect(conn) as registry:
        rollout, metrics = _status_view(registry, model)
        if json_output:
            shown = {
                "rollout": as_dict(rollout.rollout),
                "serving": [as_dict(s) for s in rollout.serving],
                "held": [as_dict(h) for h in rollout.held],
                "metrics": [as_dict(m) for m in metrics],
            }
            print_json(shown)
            return
        if not watch:
            stdout.print(_render(model, rollout, metrics))
            return
        views = refreshed(lambda: _status_view(registry, model), every)
        try:  # Ctrl-C while printing (in a refresh, `refreshed` takes it)
            if not stdout.is_terminal:  # a pipe or a log: one full view per refresh
                stdout.print(_render(model, rollout, metrics))
                for rollout, metrics in views:
                    stdout.print(_render(model, rollout, metrics))
                return
            with Live(_render(model, rollout, metrics), console=stdout, auto_refresh=False) as live:
                for rollout, metrics in views:
                    live.update(_render(model, rollout, metrics), refresh=True)
        except KeyboardInterrupt:
            pass


def _control(
    conn: Connection,
    model: str,
    action: rpb.ControlRolloutRequest.Action,
    reason: str,
    json_output: bool,
) -> None:
    with connect(conn) as registry:
        resp: rpb.ControlRolloutResponse = registry.ControlRollout(
            rpb.ControlRolloutRequest(name=rollout_name(model), action=action, reason=reason)
        )
    if json_output:
        print_json(resp)
        return
    print_fields(_status_fields(resp.rollout))


ReasonOpt = Annotated[str, typer.Option(help="Why (kept in the audit trail).")]
A = rpb.ControlRolloutRequest


@rollout_app.command("pause")
@connected
def rollout_pause(
    conn: Connection, model: ModelArg, reason: ReasonOpt = "", json_output: JsonFlag = False
) -> None:
    """Hold a canary at its current weight."""
    _control(conn, model, A.ACTION_PAUSE, reason, json_output)


@rollout_app.command("resume")
@connected
def rollout_resume(
    conn: Connection, model: ModelArg, reason: ReasonOpt = "", json_output: JsonFlag = False
) -> None:
    """Continue a paused canary from its current step."""
    _control(conn, model, A.ACTION_RESUME, reason, json_output)


@rollout_app.command("promote")
@connected
def rollout_promote(
    conn: Connection, model: ModelArg, reason: ReasonOpt = "", json_output: JsonFlag = False
) -> None:
    """Give the canary's candidate all the traffic now."""
    _control(conn, model, A.ACTION_PROMOTE, reason, json_output)


@rollout_app.command("abort")
@connected
def rollout_abort(
    conn: Connection, model: ModelArg, reason: ReasonOpt = "", json_output: JsonFlag = False
) -> None:
    """Stop a canary and send all the traffic back to the stable version."""
    _control(conn, model, A.ACTION_ABORT, reason, json_output)
