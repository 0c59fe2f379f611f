"""How `liveml` commands reach the registry: connection options, the channel, errors.

A command asks for a connection by taking `conn: Connection` as its first parameter
and being decorated with `@connected`, which gives it the shared options
(`--registry`, `--token`, `--token-file`, `--tls-ca`, `--tls-cert`, `--tls-key`, each
also a LIVEML_* variable). Declaring them once here keeps every command's flags and
variables the same, and lets them follow the command (`liveml models list --token X`)
rather than sit between group and command.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Concatenate, NoReturn, ParamSpec, TypeVar

import grpc
import typer
from rich.console import Console
from rich.markup import escape

from services.common import handshake
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc
from services.common.tls import channel_credentials

DEFAULT_ADDRESS = "127.0.0.1:50051"
# Where the registry writes its bootstrap admin token on first start, so an operator
# on the same machine and folder needs no flags at all.
DEFAULT_TOKEN_FILE = Path(".liveml/admin.token")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

stderr = Console(stderr=True)

P = ParamSpec("P")
T = TypeVar("T")

_PANEL = "Connection"


@dataclass(frozen=True)
class Connection:
    """Where the registry is and how to authenticate to it."""

    address: str = DEFAULT_ADDRESS
    # Kept out of repr so a traceback or debug print never shows the secret.
    token: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return any(p is not None for p in (self.tls_ca, self.tls_cert, self.tls_key))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def read_token_file(path: Path) -> str | None:
    """The secret a token file holds, or None when it is empty."""
    return path.read_text().strip() or None


def resolve_connection(
    address: str,
    token: str | None,
    token_file: Path | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> Connection:
    """A Connection from the option values; an explicit token beats any token file."""
    if token is None:
        if token_file is None and DEFAULT_TOKEN_FILE.is_file():
            token_file = DEFAULT_TOKEN_FILE
        if token_file is not None:
            token = read_token_file(token_file)
    return Connection(address, token, tls_ca, tls_cert, tls_key)


def _pem_option(flag: str, env: str, text: str) -> Any:
    return typer.Option(
        flag, envvar=env, help=text, exists=True, dir_okay=False, rich_help_panel=_PANEL
    )


# The options `@connected` adds to a command; names match resolve_connection's parameters.
_OPTIONS = (
    inspect.Parameter(
        "address",
        inspect.Parameter.KEYWORD_ONLY,
        default=DEFAULT_ADDRESS,
        annotation=Annotated[
            str,
            typer.Option(
                "--registry",
                envvar="LIVEML_REGISTRY",
                metavar="HOST:PORT",
                help="Address of the registry.",
                rich_help_panel=_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "token",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                "--token",
                envvar="LIVEML_TOKEN",
                help="Bearer token secret (prefer LIVEML_TOKEN or --token-file: "
                "flags show up in shell history and ps).",
                show_default=False,
                rich_help_panel=_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "token_file",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None,
            typer.Option(
                "--token-file",
                envvar="LIVEML_TOKEN_FILE",
                help=f"File holding the token secret; default {DEFAULT_TOKEN_FILE} if it exists.",
                exists=True,
                dir_okay=False,
                show_default=False,
                rich_help_panel=_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "tls_ca",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None,
            _pem_option("--tls-ca", "LIVEML_TLS_CA", "PEM CA bundle to trust: connect over TLS."),
        ],
    ),
    inspect.Parameter(
        "tls_cert",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None,
            _pem_option("--tls-cert", "LIVEML_TLS_CERT", "PEM client certificate (mutual TLS)."),
        ],
    ),
    inspect.Parameter(
        "tls_key",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None,
            _pem_option("--tls-key", "LIVEML_TLS_KEY", "PEM private key of --tls-cert."),
        ],
    ),
)


def connected(command: Callable[Concatenate[Connection, P], None]) -> Callable[P, None]:
    """Decorate `def cmd(conn: Connection, ...)` into a command that also takes the
    connection options, resolved into `conn` before it runs.

    Place it under `@sub_app.command()`: typer reads the signature built here.
    """
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        options: dict[str, Any] = {p.name: kwargs.pop(p.name) for p in _OPTIONS}
        command(resolve_connection(**options), *args, **kwargs)

    parameters = [*own, *_OPTIONS]
    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    # typer also resolves annotations through get_type_hints: give it the real objects.
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run


def fail(message: str, hint: str | None = None) -> NoReturn:
    """Print `error: message` (and a hint) to stderr and exit with status 1."""
    stderr.print(f"[bold red]error:[/] {escape(message)}")
    if hint is not None:
        stderr.print(f"[dim]hint: {escape(hint)}[/]")
    raise typer.Exit(1)


def _hint(code: grpc.StatusCode, conn: Connection) -> str | None:
    if code == grpc.StatusCode.UNAVAILABLE:
        if conn.uses_tls:
            # gRPC says only "Socket closed": shake hands ourselves to say which side
            # refused which certificate.
            why = handshake.explain(conn.address, conn.tls_ca, conn.tls_cert, conn.tls_key)
            if why is not None:
                return f"TLS to {conn.address}: {why}"
        # A TLS registry called in plaintext (or the reverse) also shows up as UNAVAILABLE.
        how = "over TLS" if conn.uses_tls else "in plaintext; a TLS registry needs --tls-ca"
        return f"is the registry running at {conn.address}? (connecting {how})"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return "pass --token or LIVEML_TOKEN (or --token-file / LIVEML_TOKEN_FILE)"
    return None


def fail_rpc(error: grpc.RpcError, conn: Connection) -> NoReturn:
    """Explain a failed call as `error: STATUS: details` and exit 1."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    fail(f"{name}: {error.details() or ''}", _hint(code, conn))


def open_channel(conn: Connection) -> grpc.Channel:
    """A synchronous channel to the registry: TLS when any TLS file is given."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    if not conn.uses_tls:
        return grpc.insecure_channel(conn.address, options=options)
    try:
        credentials = channel_credentials(conn.tls_ca, conn.tls_cert, conn.tls_key)
    except (OSError, ValueError) as error:
        fail(f"TLS: {error}")
    return grpc.secure_channel(conn.address, credentials, options=options)


class _Authenticated:
    """A stub whose every call carries the caller's token."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, method: str) -> Any:
        # A proxy rather than metadata= at each call site, so no call can forget it.
        return functools.partial(getattr(self._stub, method), metadata=self._metadata)


class Registry(_Authenticated):
    """The registry's stub, with the caller's token attached to every call.

    Attributes are the stub's methods (`registry.GetModel(request)`), and `training`
    is its TrainingService's; grpc's stubs are untyped, so annotate what they return
    at the call site.
    """

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        super().__init__(rpb_grpc.RegistryServiceStub(channel), metadata)  # type: ignore[no-untyped-call]
        self.training = _Authenticated(tpb_grpc.TrainingServiceStub(channel), metadata)  # type: ignore[no-untyped-call]


@contextmanager
def connect(conn: Connection) -> Iterator[Registry]:
    """Open a channel for the block; a failed call in it ends the command with exit 1.

    Streams are read inside the block too, so errors mid-stream are reported the same way.
    """
    channel = open_channel(conn)
    try:
        yield Registry(channel, conn.metadata())
    except grpc.RpcError as error:
        fail_rpc(error, conn)
    finally:
        channel.close()


def all_pages(fetch: Callable[[str], tuple[Iterable[T], str]], limit: int | None = None) -> list[T]:
    """Every item of a paginated listing (or the first `limit`); fetch(page_token) -> page."""
    items: list[T] = []
    token = ""
    while limit is None or len(items) < limit:
        page, next_token = fetch(token)
        items.extend(page)
        # Empty pages may still promise more (AIP-158); only a token that repeats is stuck.
        if not next_token or next_token == token:
            break
        token = next_token
    return items[:limit]
