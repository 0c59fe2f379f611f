"""`liveml rollout set|show|history|rollback`: which versions serve a model's traffic.

The automatic rollouts (`rollout canary|status|pause|...`) are in canary_cmds.py,
registered on the same `rollout_app`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Annotated

import grpc
import typer
from rich.text import Text

from services.cli.args import (
    JsonFlag,
    ModelArg,
    model_id,
    model_name,
    parse_traffic,
    parse_version_number,
    rollout_name,
)
from services.cli.client import Connection, Registry, all_pages, connect, connected, stderr
from services.cli.output import (
    as_dict,
    print_fields,
    print_json,
    print_json_list,
    print_table,
    short,
    stdout,
    time_text,
)
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

rollout_app = typer.Typer(
    help="Rollouts: which versions serve a model's traffic.", no_args_is_help=True
)


def shares_text(targets: Iterable[rpb.TrafficTarget]) -> str:
    return ", ".join(f"v{t.version} {t.percent}%" for t in targets) or "-"


def _percent(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0") + "%"


def serving_text(shares: Iterable[rpb.ServingShare]) -> str:
    """The split as served now, e.g. `v1 100%`."""
    return ", ".join(f"v{s.version} {_percent(s.percent)}" for s in shares) or "nothing READY"


def held_text(held: Iterable[rpb.HeldShare]) -> list[str]:
    """One line per held share: `v2 not READY (FAILED on workers/w1: ...); its 100% held on v1`."""
    lines = []
    for h in held:
        where = (
            "held on " + ", ".join(f"v{v}" for v in h.held_on)
            if h.held_on
            else "nothing can take it: its requests fail"
        )
        lines.append(f"v{h.version} not READY ({h.reason}); its {h.percent}% {where}")
    return lines


def _analysis(policy: rpb.AnalysisPolicy) -> str:
    if not policy.steps:
        return "-"
    every = policy.step_interval.ToTimedelta()
    return f"steps {', '.join(f'{s}%' for s in policy.steps)} every {every}"


def _rollout_fields(rollout: rpb.Rollout) -> list[tuple[str, str]]:
    return [
        ("name", rollout.name),
        ("targets", shares_text(rollout.targets)),
        ("mirrors", shares_text(rollout.mirrors)),
        ("pinned", ", ".join(f"v{v}" for v in rollout.pinned)),
        ("sticky key", rollout.sticky_key),
        ("fallback", serving_text(rollout.fallback) if rollout.fallback else ""),
        ("analysis", _analysis(rollout.analysis)),
        ("revision", str(rollout.revision)),
        ("updater", rollout.updater),
        ("updated", time_text(rollout.update_time)),
    ]


def _roles(rollout: rpb.Rollout) -> dict[int, list[str]]:
    """Each version the rollout needs loaded, and why (a version may serve and be pinned)."""
    roles: dict[int, list[str]] = {}
    for target in rollout.targets:
        roles.setdefault(target.version, []).append(f"target {target.percent}%")
    for mirror in rollout.mirrors:
        roles.setdefault(mirror.version, []).append(f"mirror {mirror.percent}%")
    for pinned in rollout.pinned:
        roles.setdefault(pinned, []).append("pinned")
    return roles


def _holds(state: rpb.WorkerVersionState, model: str) -> bool:
    # Workers may report either form of the model's name.
    return state.model in (model_id(model), model_name(model))


def _placement_rows(
    rollout: rpb.Rollout, workers: Sequence[rpb.Worker], model: str
) -> Iterator[tuple[str, ...]]:
    for number, roles in _roles(rollout).items():
        held = [
            (worker, state)
            for worker in workers
            for state in worker.versions
            if state.version == number and _holds(state, model)
        ]
        if not held:
            yield (f"v{number}", ", ".join(roles), "-", "-", "not loaded", "")
        for worker, state in held:
            yield (
                f"v{number}",
                ", ".join(roles),
                worker.name + _role_note(worker.role),
                worker.address,
                short(rpb.VersionLoadState, state.state),
                state.error,
            )


def _role_note(role: int) -> str:
    """` (mirror)` or ` (primary)` after a worker's name; nothing for the default role."""
    if role in (rpb.WORKER_ROLE_PRIMARY, rpb.WORKER_ROLE_MIRROR):
        return f" ({short(rpb.WorkerRole, role)})"
    return ""


def _list_workers(registry: Registry) -> list[rpb.Worker] | None:
    """Live workers, or None when this token may not see them (the rollout still shows)."""
    try:
        resp: rpb.ListWorkersResponse = registry.ListWorkers(rpb.ListWorkersRequest())
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
        stderr.print(Text(f"workers not shown: {error.details()}", style="yellow"))
        return None
    return list(resp.workers)


@rollout_app.command("set")
@connected
def rollout_set(
    conn: Connection,
    model: ModelArg,
    targets: Annotated[
        list[str],
        typer.Option(
            "--target",
            metavar="VERSION=PERCENT",
            help="A version serving a share of traffic; repeatable, percents sum to 100.",
        ),
    ],
    mirrors: Annotated[
        list[str] | None,
        typer.Option(
            "--mirror",
            metavar="VERSION=PERCENT",
            help="A version shadowing a share of traffic (answers compared, never returned).",
        ),
    ] = None,
    pins: Annotated[
        list[str] | None,
        typer.Option(
            "--pin", metavar="VERSION", help="Keep loaded for callers asking for it by number."
        ),
    ] = None,
    sticky_key: Annotated[
        str, typer.Option(help="Request parameter or metadata key that keeps a client on one side.")
    ] = "",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Move traffic at once, even to versions not READY anywhere (their share "
            "fails until they are). By default a share moves only once its version is "
            "READY on some worker.",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Replace a model's rollout (the previous one stays in its history).

    Make before break: a target's share moves to it once it is READY on some worker;
    until then the versions that served it keep it (see `rollout show`)."""
    rollout = rpb.Rollout(
        name=rollout_name(model),
        targets=parse_traffic(targets, "--target"),
        mirrors=parse_traffic(mirrors, "--mirror"),
        pinned=[parse_version_number(p, "--pin") for p in pins or ()],
        sticky_key=sticky_key,
    )
    with connect(conn) as registry:
        resp: rpb.UpdateRolloutResponse = registry.UpdateRollout(
            rpb.UpdateRolloutRequest(rollout=rollout, force=force)
        )
    if json_output:
        print_json(resp)
        return
    print_fields(_rollout_fields(resp.rollout), title="rollout updated")
    if resp.rollout.fallback:
        stdout.print(
            Text(
                "a target is not READY on any worker yet: its share stays with what served "
                f"({serving_text(resp.rollout.fallback)}) until it is; see `liveml rollout "
                f"show {model_id(model)}`",
                style="yellow",
            )
        )


@rollout_app.command("show")
@connected
def rollout_show(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """Show a model's rollout and where each of its versions is loaded."""
    with connect(conn) as registry:
        resp: rpb.GetRolloutResponse = registry.GetRollout(
            rpb.GetRolloutRequest(name=rollout_name(model))
        )
        workers = _list_workers(registry)
    rollout = resp.rollout
    if json_output:
        holding = [w for w in workers or () if any(_holds(s, model) for s in w.versions)]
        shown = {
            "rollout": as_dict(rollout),
            "serving": [as_dict(s) for s in resp.serving],
            "held": [as_dict(h) for h in resp.held],
            "workers": [as_dict(w) for w in holding],
        }
        print_json(shown)
        return
    print_fields(
        [
            *_rollout_fields(rollout),
            ("serving now", serving_text(resp.serving)),
            *(("held", line) for line in held_text(resp.held)),
        ]
    )
    if workers is not None:
        print_table(
            ("version", "role", "worker", "address", "state", "error"),
            _placement_rows(rollout, workers, model),
            title="workers",
        )


@rollout_app.command("history")
@connected
def rollout_history(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """List the past states of a model's rollout, newest first."""
    with connect(conn) as registry:

        def page(token: str) -> tuple[Iterable[rpb.Rollout], str]:
            resp: rpb.ListRolloutHistoryResponse = registry.ListRolloutHistory(
                rpb.ListRolloutHistoryRequest(name=rollout_name(model), page_token=token)
            )
            return resp.rollouts, resp.next_page_token

        rollouts = all_pages(page)
    if json_output:
        print_json_list(rollouts)
        return
    print_table(
        ("revision", "targets", "mirrors", "pinned", "sticky key", "updater", "updated"),
        (
            (
                str(r.revision),
                shares_text(r.targets),
                shares_text(r.mirrors),
                ", ".join(f"v{v}" for v in r.pinned) or "-",
                r.sticky_key or "-",
                r.updater,
                time_text(r.update_time),
            )
            for r in rollouts
        ),
        title=rollout_name(model),
    )


@rollout_app.command("rollback")
@connected
def rollout_rollback(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """Restore the previous state of a model's rollout."""
    with connect(conn) as registry:
        resp: rpb.RollbackRolloutResponse = registry.RollbackRollout(
            rpb.RollbackRolloutRequest(name=rollout_name(model))
        )
    if json_output:
        print_json(resp)
        return
    print_fields(_rollout_fields(resp.rollout), title="rolled back")
