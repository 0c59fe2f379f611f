"""`liveml audit`: list the HMAC-chained audit trail and verify it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import typer
from rich.text import Text

from services.cli.args import (
    JsonFlag,
)
from services.cli.client import Connection, all_pages, connect, connected, stderr
from services.cli.output import (
    print_json,
    print_json_list,
    print_table,
    stdout,
    time_text,
)
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

audit_app = typer.Typer(help="The HMAC-chained audit trail.", no_args_is_help=True)


@audit_app.command("list")
@connected
def audit_list(
    conn: Connection,
    target: Annotated[
        str | None, typer.Option(help="Only events on this resource, e.g. models/iris/rollout.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most events to show, newest first.")] = 50,
    json_output: JsonFlag = False,
) -> None:
    """List audit events, newest first."""
    with connect(conn) as registry:

        def page(token: str) -> tuple[Iterable[rpb.AuditEvent], str]:
            request = rpb.ListAuditEventsRequest(
                page_size=limit, page_token=token, target=target or ""
            )
            resp: rpb.ListAuditEventsResponse = registry.ListAuditEvents(request)
            return resp.events, resp.next_page_token

        events = all_pages(page, limit)
    if json_output:
        print_json_list(events)
        return
    print_table(
        ("seq", "time", "actor", "action", "target", "details"),
        (
            (str(e.sequence), time_text(e.time), e.actor, e.action, e.target, e.details)
            for e in events
        ),
    )


@audit_app.command("verify")
@connected
def audit_verify(conn: Connection, json_output: JsonFlag = False) -> None:
    """Check the audit trail's HMAC chain and checkpoint; exit 1 naming the first bad event."""
    with connect(conn) as registry:
        resp: rpb.VerifyAuditResponse = registry.VerifyAudit(rpb.VerifyAuditRequest())
    if json_output:
        print_json(resp)
    if not resp.ok:
        stderr.print(
            Text(
                f"audit trail BROKEN at event #{resp.first_bad_sequence}: {resp.problem}",
                style="bold red",
            )
        )
        raise typer.Exit(1)
    if not json_output:
        stdout.print(
            Text(
                f"audit trail intact: {resp.events_checked} events (HMAC key "
                f"{resp.key_id}, signed checkpoint at #{resp.checkpoint_sequence})"
            )
        )
