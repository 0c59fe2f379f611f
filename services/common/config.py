"""Settings shared by every liveml server, read from flags and LIVEML_* variables.

Each service subclasses `ServerSettings`; a field `foo_bar` is set by the flag
`--foo-bar` or the environment variable `LIVEML_FOO_BAR` (the flag wins), and
`settings_options` turns a settings class into the options of a typer command so
the two can never drift apart.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import typer
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.markup import escape

ENV_PREFIX = "LIVEML_"
MiB = 1024 * 1024


class ServerSettings(BaseSettings):
    """What every gRPC server of liveml can be told."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for all).")
    port: int = Field(0, ge=0, le=65535, description="gRPC port (0 = pick a free one).")
    metrics_port: int = Field(
        0, ge=-1, le=65535, description="Prometheus /metrics port (0 = any free one, -1 = off)."
    )
    metrics_host: str | None = Field(
        None, description="Address the /metrics endpoint listens on (default: --host)."
    )
    metrics_tls_cert: Path | None = Field(
        None, description="PEM certificate chain: serve /metrics over TLS (https)."
    )
    metrics_tls_key: Path | None = Field(None, description="PEM private key of --metrics-tls-cert.")
    metrics_token_file: Path | None = Field(
        None,
        description="File holding the bearer token every /metrics scrape must send "
        "(Prometheus: authorization.credentials_file); none = open.",
    )
    health_port: int = Field(
        -1,
        ge=-1,
        le=65535,
        description="Plaintext port serving only the gRPC health service, for probes that "
        "cannot show a client certificate (Kubernetes gRPC probes under mutual TLS); "
        "-1 = off, 0 = any free one.",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve TLS.")
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert.")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: require client certificates signed by it (mutual TLS)."
    )
    max_message_bytes: int = Field(
        256 * MiB, ge=4 * MiB, description="Largest gRPC message sent or received."
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds in-flight calls may take to finish on SIGTERM."
    )
    otlp_endpoint: str | None = Field(
        None, description="OpenTelemetry collector (host:port) to export traces to."
    )
    log_level: str = Field("INFO", description="Python log level.")
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto", description="Event loop: uvloop when installed (auto), or asyncio's own."
    )


class RegistryClientSettings(BaseSettings):
    """How a data-plane service reaches the registry (workers and gateways)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    registry_token: SecretStr | None = Field(
        None, description="Token (role worker) for the registry."
    )
    registry_token_file: Path | None = Field(None, description="File holding --registry-token.")
    registry_ca: Path | None = Field(None, description="CA bundle to verify the registry's TLS.")
    registry_cert: Path | None = Field(
        None, description="Client certificate for mTLS to the registry."
    )
    registry_key: Path | None = Field(None, description="Key of --registry-cert.")
    allow_plaintext_upstream: bool = Field(
        False,
        description="Serve TLS yet call the registry (or a gateway its workers) in "
        "plaintext: refused at start unless this is set, and then logged as a warning.",
    )


def plaintext_upstreams(settings: BaseSettings) -> list[str]:
    """What a server that serves TLS would call in plaintext (its settings name no CA
    for it): the registry, and for a gateway its workers."""
    if getattr(settings, "tls_cert", None) is None:
        return []
    found = []
    registry = getattr(settings, "registry", None)
    if registry and getattr(settings, "registry_ca", None) is None:
        found.append(f"the registry at {registry} (no --registry-ca)")
    if hasattr(settings, "worker_ca") and getattr(settings, "worker_ca", None) is None:
        found.append("its workers (no --worker-ca)")
    return found


class DataPlaneAuthSettings(BaseSettings):
    """Who may call a data-plane server (workers and gateways)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    allow_anonymous: bool = Field(
        False,
        description="Serve inference, feedback and ingestion to callers without "
        "credentials (no token, no certificate role). Off by default; logged as a "
        "warning at start.",
    )
    cert_roles: str = Field(
        "",
        description="Client-certificate identities and their roles (mutual TLS), as "
        "CN=role,CN=role (e.g. gateway=gateway,app=client).",
    )


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def flag_and_variable(name: str) -> str:
    """How field `name` is set: `--metrics-port (LIVEML_METRICS_PORT)`."""
    return f"--{name.replace('_', '-')} ({ENV_PREFIX}{name.upper()})"


def _said(cls: type[BaseSettings], error: Any) -> str:
    """One validation error as the flag and variable that set it, what was wrong, and
    the value given (unless the setting is a secret)."""
    name = str(error["loc"][0]) if error["loc"] else ""
    where = flag_and_variable(name) if name else "settings"
    field = cls.model_fields.get(name)
    secret = field is not None and (
        field.annotation is SecretStr or "secret" in name or "key" in name or "token" in name
    )
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" + ("" if secret else f" (given: {error.get('input')!r})")


def _flag_type(annotation: Any) -> Any:
    """The type typer should parse a field's flag as (Optional unwrapped)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation is SecretStr:
        return str
    if annotation in (str, int, float, bool, Path):
        return annotation
    return str


def settings_options(
    cls: type[SettingsT],
) -> Callable[[Callable[[SettingsT], Any]], Callable[..., Any]]:
    """Decorate `def cmd(settings: cls)` into a typer command with one flag per field.

    Flags left out fall back to LIVEML_* variables, then to the field default, which
    pydantic-settings resolves because only the flags actually given are passed on.
    """

    def decorate(func: Callable[[SettingsT], Any]) -> Callable[..., Any]:
        params = []
        for name, field in cls.model_fields.items():
            flag_type = _flag_type(field.annotation)
            env = f"{ENV_PREFIX}{name.upper()}"
            decls = [f"--{name.replace('_', '-')}"]
            if flag_type is bool:
                decls = [f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}"]
            secret = field.annotation is SecretStr or "secret" in name or "key" in name
            shown = "" if secret else f" [default: {field.default}]"
            # Escaped: typer renders help as rich markup, where [..] is a tag.
            text = escape(f"{field.description or ''}{shown} [env: {env}]")
            option = typer.Option(None, *decls, help=text, show_default=False)
            params.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=option,
                    annotation=flag_type | None,
                )
            )

        def command(**flags: Any) -> Any:
            given = {k: v for k, v in flags.items() if v is not None}
            try:
                settings = cls(**given)
            except ValidationError as exc:
                # A setting's mistake is the caller's: said per setting, not as a traceback.
                for error in exc.errors():
                    typer.echo(f"error: {_said(cls, error)}", err=True)
                raise typer.Exit(2) from None
            return func(settings)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__doc__ = func.__doc__
        command.__name__ = func.__name__
        return command

    return decorate


class EventStreamSettings(BaseSettings):
    """Where the event stream is (every process that appends to or reads it)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    event_stream: str = Field(
        "sql",
        pattern=r"^(sql|(nats|tls)://\S+)$",
        description="The event stream: sql (a table in the registry's database, reached "
        "through the registry) or nats://HOST:PORT (NATS JetStream).",
    )
    event_stream_name: str = Field(
        "LIVEML_EVENTS",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="JetStream stream that holds the events (nats only).",
    )
    event_subject_prefix: str = Field(
        "liveml.events",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="Subjects are PREFIX.KIND.MODEL (nats only).",
    )
    event_retention_seconds: float = Field(
        7 * 86400.0, gt=0, description="Events older than this are removed, seconds."
    )
    event_retention_bytes: int = Field(
        1 << 30, ge=1024, description="The stream keeps at most this many bytes (oldest go)."
    )
    event_dedup_seconds: float = Field(
        600.0,
        gt=0,
        description="JetStream's duplicate window: a key appended again within it is stored "
        "once (the sql stream keeps keys unique for ever).",
    )
