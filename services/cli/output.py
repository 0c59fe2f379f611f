"""How the CLI prints: rich tables and key/value fields, JSON, short enum names, times.

Tables and fields go to stdout, progress bars to stderr, so `--json` output stays
clean for scripts to pipe. JSON is proto3's mapping with two changes that make it
easier to script against: 64-bit integers are numbers (proto3 JSON writes them as
strings) and enums go by their short names (`READY`, not `VERSION_LOAD_STATE_READY`).
On a terminal tables take its width; piped (or into a file) they are never cut, so a
header reads `version`, not `vers…`, whatever COLUMNS a parent process left behind.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any

import typer
from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
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

# Wide enough for any table: rich sizes a table to its content, so this only lifts the cap.
UNCAPPED = 100_000


def _console() -> Console:
    if sys.stdout.isatty():
        return Console()  # rich's own width: the terminal's (or COLUMNS)
    # Height too: rich takes a size it is given only when it is given both.
    return Console(width=UNCAPPED, height=UNCAPPED)


stdout = _console()


# --- JSON ----------------------------------------------------------------------------

_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
# Messages whose JSON form is not their fields (Timestamp is a string, Struct any JSON).
_WELL_KNOWN = "google.protobuf."
_INT64_WRAPPERS = frozenset({"google.protobuf.Int64Value", "google.protobuf.UInt64Value"})


def _prefix(enum: EnumDescriptor) -> str:
    """`STAGE_` for Stage: its values' prefix is the one of its UNSPECIFIED (zero) value."""
    zero = enum.values_by_number.get(0)
    if zero is None or not zero.name.endswith("UNSPECIFIED"):
        return ""
    return zero.name.removesuffix("UNSPECIFIED")


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type in _INT64 and isinstance(value, str):
        return int(value)
    if field.enum_type is not None and isinstance(value, str):
        return value.removeprefix(_prefix(field.enum_type))
    if field.message_type is not None:
        return _tidy(field.message_type, value)
    return value


def _tidy(descriptor: Any, data: Any) -> Any:  # a Descriptor (Python or upb)
    """Proto3 JSON data of a `descriptor` message, its int64s as numbers, enums short."""
    if descriptor.full_name in _INT64_WRAPPERS:
        return int(data)
    if descriptor.full_name.startswith(_WELL_KNOWN) or not isinstance(data, dict):
        return data
    for name, value in data.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:  # an extension, "[full.name]"
            continue
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            inner = entry.fields_by_name["value"]
            data[name] = {k: _scalar(inner, v) for k, v in value.items()}
        elif field.is_repeated:
            data[name] = [_scalar(field, v) for v in value]
        else:
            data[name] = _scalar(field, value)
    return data


def as_dict(message: Message) -> dict[str, Any]:
    """The message as JSON data: field names as in the proto, int64s numbers, enums short."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return dict(_tidy(message.DESCRIPTOR, data))


def json_text(data: object, *, compact: bool = False) -> str:
    if compact:  # one object a line (JSON Lines)
        return json.dumps(data, separators=(",", ":"))
    return json.dumps(data, indent=2)


def print_json(message: Message | dict[str, Any]) -> None:
    # typer.echo, not rich: rich would wrap long lines and read [..] as markup.
    typer.echo(json_text(message if isinstance(message, dict) else as_dict(message)))


def print_json_list(messages: Iterable[Message]) -> None:
    typer.echo(json_text([as_dict(m) for m in messages]))


def short(enum: EnumTypeWrapper, value: int) -> str:
    """`STAGE_PRODUCTION` as `production`: the enum's prefix is its UNSPECIFIED name's."""
    known = enum.DESCRIPTOR.values_by_number.get(value)
    if known is None:  # a registry newer than this CLI
        return str(value)
    return known.name.removeprefix(_prefix(enum.DESCRIPTOR)).lower()


def time_text(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def size_text(size_bytes: int) -> str:
    """`1.2 MB (1234567 bytes)`; `844 bytes` once, not `844 bytes (844 bytes)`."""
    shown = decimal(size_bytes)
    exact = f"{size_bytes} bytes"
    return shown if shown in (exact, "1 byte") else f"{shown} ({exact})"


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
