"""`liveml alerts`: list the registry's alerts, newest first, and follow new ones.

`--json` prints one alert a line (JSON Lines), so `--watch --json` can feed a script.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import grpc
import typer

from services.cli.args import JsonFlag
from services.cli.client import Connection, all_pages, connect, connected
from services.cli.output import as_dict, json_text, print_table, short, time_text
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb


def _alert_row(a: rpb.Alert) -> tuple[str, ...]:
    return (
        time_text(a.start_time),
        short(rpb.Alert.State, a.state),
        short(rpb.Alert.Severity, a.severity),
        a.alert,
        a.model or "-",
        f"v{a.version}" if a.version else "-",
        a.summary,
    )


ALERT_COLUMNS = ("since", "state", "severity", "alert", "model", "version", "summary")


@connected
def alerts(
    conn: Connection,
    firing: Annotated[bool, typer.Option("--firing", help="Only alerts still firing.")] = False,
    model: Annotated[str, typer.Option(help="Only alerts about this model.")] = "",
    limit: Annotated[int, typer.Option(min=1, help="Most alerts to list.")] = 50,
    watch: Annotated[
        bool, typer.Option("--watch", help="Then print each new change until Ctrl-C.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """List alerts, newest first; with --watch, follow new ones."""
    with connect(conn) as registry:

        def page(token: str) -> tuple[Iterable[rpb.Alert], str]:
            resp: rpb.ListAlertsResponse = registry.ListAlerts(
                rpb.ListAlertsRequest(
                    firing_only=firing, model=model.removeprefix("models/"), page_token=token
                )
            )
            return resp.alerts, resp.next_page_token

        found = all_pages(page, limit)
        if json_output:
            for a in found:
                typer.echo(json_text(as_dict(a), compact=True))
        else:
            print_table(ALERT_COLUMNS, (_alert_row(a) for a in found), title="alerts")
        if not watch:
            return
        since = max((a.sequence for a in found), default=0)
        try:
            for changed in registry.WatchAlerts(rpb.WatchAlertsRequest(since_sequence=since)):
                for a in changed.alerts:
                    if model and a.model != model.removeprefix("models/"):
                        continue
                    if json_output:
                        typer.echo(json_text(as_dict(a), compact=True))
                    else:
                        print_table(ALERT_COLUMNS, [_alert_row(a)])
        except KeyboardInterrupt:
            pass
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise
