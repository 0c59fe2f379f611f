"""How the CLI prints: rich tables and key/value fields, JSON, short enum names, times.

Tables and fields go to stdout, progress bars to stderr, so `--json` output stays
clean for scripts to pipe.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any

import typer
from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from services.cli.client import stderr

stdout = Console()


# --- output --------------------------------------------------------------------------


def print_json(message: Message) -> None:
    # typer.echo, not rich: rich would wrap long lines and read [..] as markup.
    typer.echo(json_format.MessageToJson(message, preserving_proto_field_name=True))


def as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json_list(messages: Iterable[Message]) -> None:
    typer.echo(json.dumps([as_dict(m) for m in messages], indent=2))


def short(enum: EnumTypeWrapper, value: int) -> str:
    """`STAGE_PRODUCTION` as `production`: the enum's prefix is its UNSPECIFIED name's."""
    known = enum.DESCRIPTOR.values_by_number.get(value)
    if known is None:  # a registry newer than this CLI
        return str(value)
    prefix = enum.DESCRIPTOR.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return known.name.removeprefix(prefix).lower()


def time_text(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def size_text(size_bytes: int) -> str:
    return f"{decimal(size_bytes)} ({size_bytes} bytes)"


def mapping_text(values: Iterable[tuple[str, object]]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values)


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None
) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        # Text, not str: names, reasons and errors are data, never rich markup.
        table.add_row(*(Text(cell) for cell in row))
    stdout.print(table)


def print_fields(rows: Iterable[tuple[str, str]], title: str | None = None) -> None:
    table = Table(show_header=False, title=title)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, Text(value or "-"))
    stdout.print(table)


def transfer_progress() -> Progress:
    # On stderr so --json output stays clean; off when nobody watches (CI logs).
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        disable=not stderr.is_terminal,
    )
