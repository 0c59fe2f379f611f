"""`liveml data`: the event stream from the command line.

`data push FILE --model M` stores a CSV or Parquet file of labelled examples through
the registry's ImportExamples: the whole file, or nothing and an error naming the
line. The file is checked against the model's signature before a row is sent; the
registry checks every row again (its check is the one that counts) and stores the
import, in one transaction, only after every row the header announced has arrived, so
an error on either side, or an interrupted push, stores nothing. Pushing the same file
again stores nothing new: an example without a key is known by the file's digest and
its line.

`data tail MODEL` prints the model's events as they come (or up to now with
`--no-follow`); `data stats MODEL` shows counts by kind, the joiner's progress, the
consumers' lag and the retention window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from services.cli import data_view
from services.cli.args import JsonFlag, model_id, model_name
from services.cli.client import Connection, connect, connected, fail, stderr
from services.cli.data_files import Checked, Columns, ExampleFile, FileError, file_format
from services.cli.output import print_json
from services.cli.versions_cmds import sha256_file
from services.common import examples
from services.common.errors import ServiceError
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

data_app = typer.Typer(
    help="The event stream: push files of examples, follow the stream, its numbers.",
    no_args_is_help=True,
)

DEFAULT_MAX_BYTES = 64 << 20  # the registry's own default --import-max-bytes
MESSAGE_BYTES = 1 << 20  # rows per ImportExamples message: about this many bytes


def _progress() -> Progress:
    # On stderr so --json output stays clean; off when nobody watches (CI logs).
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        disable=not stderr.is_terminal,
    )


def _requests(
    header: rpb.ImportExamplesRequest.Header,
    rows: Iterator[Any],
    per_message: int,
    with_groups: bool,
    advance: Callable[[int], object],
    failed: list[FileError],
) -> Iterator[rpb.ImportExamplesRequest]:
    """The ImportExamples stream: the header, then rows a message at a time.

    A problem reading the file now (it changed since it was checked) is kept in
    `failed` and ends the stream with an error, which cancels the call: the registry
    stores nothing of a call that did not finish.
    """
    yield rpb.ImportExamplesRequest(header=header)
    message = rpb.ImportExamplesRequest.Rows()
    try:
        for row in rows:
            example = gpb.Example(features=row.features, label=row.label, key=row.key)
            message.examples.append(example)
            message.lines.append(row.line)
            if with_groups:
                message.groups.append(row.group)
            if len(message.lines) >= per_message:
                yield rpb.ImportExamplesRequest(rows=message)
                advance(len(message.lines))  # resumed once grpc took the message
                message = rpb.ImportExamplesRequest.Rows()
    except FileError as exc:
        failed.append(exc)
        raise
    if message.lines:
        yield rpb.ImportExamplesRequest(rows=message)
        advance(len(message.lines))


@data_app.command("push")
@connected
def push(
    conn: Connection,
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", exists=True, dir_okay=False, help="CSV or Parquet file of examples."
        ),
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="Model the examples are for.")],
    label: Annotated[
        str, typer.Option("--label", metavar="COL", help="Column holding the label.")
    ] = "label",
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            metavar="COL",
            help="Column identifying each example: a key already stored is not stored "
            "again (default: the file's digest and line).",
        ),
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            metavar="COL",
            help="Column of the group each example counts in (repeatable; several are "
            "joined with '/').",
        ),
    ] = None,
    max_bytes: Annotated[
        int,
        typer.Option(
            "--max-bytes",
            envvar="LIVEML_DATA_MAX_BYTES",
            min=1,
            help="Refuse files larger than this (the registry has its own limit, "
            "--import-max-bytes).",
        ),
    ] = DEFAULT_MAX_BYTES,
    json_output: JsonFlag = False,
) -> None:
    """Store a CSV or Parquet file of labelled examples for MODEL: all of it, or nothing."""
    try:
        fmt = file_format(file, max_bytes)
    except FileError as exc:
        fail(str(exc), "nothing was stored")
    source = ExampleFile(file, fmt)
    bare = model_id(model)
    with connect(conn) as registry:
        found: rpb.GetModelResponse = registry.GetModel(rpb.GetModelRequest(name=model_name(model)))
        try:
            specs = examples.features(bare, found.model.signature)
        except ServiceError as exc:
            fail(exc.message, "nothing was stored")
        columns = Columns(specs, label, key, list(group or []))
        with _progress() as progress:
            checking = progress.add_task(f"check {file.name}", total=None)
            try:
                checked: Checked = source.check(columns, lambda n: progress.advance(checking, n))
            except FileError as exc:
                progress.stop()
                fail(str(exc), "nothing was stored")
            progress.update(checking, total=checked.rows, completed=checked.rows)
            hashing = progress.add_task(f"sha256 {file.name}", total=file.stat().st_size)
            digest = sha256_file(file, lambda n: progress.advance(hashing, n))
            sending = progress.add_task(f"send {file.name}", total=checked.rows)
            header = rpb.ImportExamplesRequest.Header(
                model=model_name(model),
                features=[f.name for f in specs],
                source=file.name,
                digest=digest,
                examples=checked.rows,  # the registry stores nothing if fewer arrive
            )
            failed: list[FileError] = []
            requests = _requests(
                header,
                source.rows(columns, checked),
                max(1, MESSAGE_BYTES // (9 * len(specs) + 48)),
                bool(columns.groups),
                lambda n: progress.advance(sending, n),
                failed,
            )
            try:
                reply: rpb.ImportExamplesResponse = registry.ImportExamples(requests)
            except grpc.RpcError:
                if failed:
                    progress.stop()
                    fail(str(failed[0]), "nothing was stored")
                raise
    if json_output:
        print_json(reply)
        return
    span = f" (sequences {reply.first_sequence}-{reply.last_sequence})" if reply.stored else ""
    typer.echo(
        f"stored {reply.stored} of {reply.received} examples from {file.name} for "
        f"{bare}{span}; {reply.duplicates} already stored"
    )


data_app.command("tail")(data_view.tail)
data_app.command("stats")(data_view.stats)
