"""`liveml token`: access tokens for people, workers and clients."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.text import Text

from services.cli.args import (
    JsonFlag,
    parse_ttl,
    token_name,
)
from services.cli.client import Connection, connect, connected, stderr
from services.cli.output import (
    print_fields,
    print_json,
    print_json_list,
    print_table,
    short,
    stdout,
    time_text,
)
from services.common.auth import Role
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

token_app = typer.Typer(help="Access tokens for people, workers and clients.", no_args_is_help=True)


def _token_state(token: rpb.Token) -> str:
    if token.revoked:
        return "revoked"
    expires = token.expire_time
    if (expires.seconds or expires.nanos) and expires.ToDatetime(tzinfo=UTC) < datetime.now(UTC):
        return "expired"
    return "active"


@token_app.command("create")
@connected
def token_create(
    conn: Connection,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Who or what the token is for.")],
    role: Annotated[Role, typer.Option(help="What the token may do.")],
    ttl: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION", help="Lifetime: 90s, 15m, 12h, 30d; default the registry's."
        ),
    ] = None,
    json_output: JsonFlag = False,
    secret_only: Annotated[
        bool,
        typer.Option(
            "--secret-only", help="Print only the secret on stdout (e.g. into a token file)."
        ),
    ] = False,
    worker_id: Annotated[
        str,
        typer.Option(
            "--worker-id",
            metavar="ID",
            help="Role worker: the one worker id the token may act as (default: the id "
            "of its first RegisterWorker).",
        ),
    ] = "",
) -> None:
    """Create an access token and print its secret (the only time it is shown)."""
    if secret_only and json_output:
        raise typer.BadParameter("give --json or --secret-only, not both", param_hint="--json")
    request = rpb.CreateTokenRequest(
        display_name=name,
        role=f"ROLE_{role.name}",
        ttl=parse_ttl(ttl) if ttl is not None else None,
        worker_id=worker_id,
    )
    with connect(conn) as registry:
        resp: rpb.CreateTokenResponse = registry.CreateToken(request)
    if secret_only:
        typer.echo(resp.secret)  # plain: a token file holds the secret and a newline
        return
    if json_output:
        print_json(resp)
    else:
        token = resp.token
        print_fields(
            [
                ("name", token.name),
                ("display name", token.display_name),
                ("role", short(rpb.Role, token.role)),
                *([("worker", f"workers/{token.worker_id}")] if token.worker_id else []),
                ("expires", time_text(token.expire_time)),
            ],
            title="token created",
        )
        stdout.print(resp.secret, markup=False, highlight=False, soft_wrap=True)
    stderr.print(
        "[yellow]warning:[/] the secret is shown only once: store it now "
        "(e.g. in a file for --token-file)."
    )


@token_app.command("list")
@connected
def token_list(conn: Connection, json_output: JsonFlag = False) -> None:
    """List tokens (never their secrets)."""
    with connect(conn) as registry:
        resp: rpb.ListTokensResponse = registry.ListTokens(rpb.ListTokensRequest())
    if json_output:
        print_json_list(resp.tokens)
        return
    print_table(
        ("name", "display name", "role", "state", "created", "expires", "creator"),
        (
            (
                t.name,
                t.display_name,
                short(rpb.Role, t.role),
                _token_state(t),
                time_text(t.create_time),
                time_text(t.expire_time),
                t.creator,
            )
            for t in resp.tokens
        ),
    )


@token_app.command("revoke")
@connected
def token_revoke(
    conn: Connection,
    token_id: Annotated[str, typer.Argument(metavar="TOKEN", help="tokens/ID or ID.")],
    json_output: JsonFlag = False,
) -> None:
    """Revoke a token: calls made with it fail from now on."""
    with connect(conn) as registry:
        resp: rpb.RevokeTokenResponse = registry.RevokeToken(
            rpb.RevokeTokenRequest(name=token_name(token_id))
        )
    if json_output:
        print_json(resp)
        return
    stdout.print(Text(f"revoked {resp.token.name} ({resp.token.display_name})"))
