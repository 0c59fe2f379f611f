"""`liveml data tail` and `liveml data stats`: reading the event stream and its numbers.

`tail` reads through the registry's ReadEvents, which serves whichever backend the
registry runs on; one event a line, as text or (`--json`) as the Event message in
JSON. `stats` prints GetEventStats.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from datetime import UTC
from typing import Annotated, Any

import typer
from google.protobuf.timestamp_pb2 import Timestamp

from services.cli.args import JsonFlag, ModelArg, model_id, model_name
from services.cli.client import Connection, connect, connected
from services.cli.output import (
    as_dict,
    json_text,
    print_fields,
    print_json,
    print_table,
    time_text,
)
from services.common import codec
from services.common.events import KIND_NAMES, KINDS_BY_NAME
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

Start = rpb.ReadEventsRequest.Start
SHOWN_VALUES = 8  # features or outputs shown on one line


def _stamp(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _values(values: Iterable[float]) -> str:
    shown = list(values)
    text = ", ".join(f"{v:g}" for v in shown[:SHOWN_VALUES])
    return f"[{text}{', ...' if len(shown) > SHOWN_VALUES else ''}]"


def _label(label: gpb.Label) -> str:
    kind = label.WhichOneof("value")
    if kind == "class_index":
        return f"class {label.class_index}"
    if kind == "number":
        return f"{label.number:g}"
    if kind == "text":
        return json.dumps(label.text)
    return "-"


def _answer(response: bytes) -> str:
    """The first output of a logged answer, shortened; '' when it cannot be read."""
    try:
        parsed = pb.ModelInferResponse.FromString(response)
        tensor = parsed.outputs[0]
        array = codec.decode_raw(
            tensor.name, tensor.datatype, list(tensor.shape), parsed.raw_output_contents[0]
        )
        if array.dtype == object:
            return f" {tensor.name}={len(array.reshape(-1))} texts"
        return f" {tensor.name}={_values(float(v) for v in array.reshape(-1))}"
    except Exception:  # an answer of another shape than raw outputs: leave it out
        return ""


def line(event: epb.Event) -> str:
    """One event as one human-readable line."""
    head = f"#{event.sequence} {_stamp(event.time)} {KIND_NAMES.get(event.kind, '?')} {event.model}"
    body = event.WhichOneof("body")
    if body == "prediction":
        p = event.prediction
        group = f" group={p.group}" if p.group else ""
        return (
            f"{head} request={p.request_id or '-'} v{p.version}{group}{_answer(p.response)}"
            f" from={p.source or '-'}"
        )
    if body == "feedback":
        f = event.feedback
        groups = "".join(f" {k}={v}" for k, v in sorted(f.groups.items()))
        return f"{head} request={f.request_id} truth={_label(f.ground_truth)}{groups}"
    if body == "example":
        x = event.example
        origin = epb.ExampleOrigin.Name(x.origin).removeprefix("EXAMPLE_ORIGIN_").lower()
        where = f" {x.source}:{x.line}" if x.source else ""
        joined = f" request={x.request_id} v{x.version} correct={x.correct}" if x.request_id else ""
        group = f" group={x.group}" if x.group else ""
        return (
            f"{head} {origin}{where} features={_values(x.features)} label={_label(x.label)}"
            f"{joined}{group}"
        )
    return head


def _start(text: str | None, follow: bool) -> tuple[int, int]:
    """(start, after_sequence) for --from: a first sequence, `oldest` or `latest`."""
    if text is None:
        text = "latest" if follow else "oldest"
    if text == "oldest":
        return Start.START_OLDEST, 0
    if text == "latest":
        return Start.START_LATEST, 0
    try:
        first = int(text)
    except ValueError:
        first = 0
    if first < 1:
        raise typer.BadParameter(
            f"{text!r}: expected a sequence (1 or more), oldest or latest", param_hint="--from"
        )
    return Start.START_AFTER_SEQUENCE, first - 1


def _kinds(names: list[str] | None) -> list[int]:
    out = []
    for name in names or []:
        kind = KINDS_BY_NAME.get(name.lower())
        if kind is None:
            raise typer.BadParameter(
                f"{name!r}: expected one of {', '.join(KINDS_BY_NAME)}", param_hint="--kind"
            )
        out.append(kind)
    return out


def _emit(text: str) -> None:
    # Flushed per line, so `liveml data tail ... | jq` shows events as they come.
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@connected
def tail(
    conn: Connection,
    model: ModelArg,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind", metavar="KIND", help="prediction, feedback or example (repeatable)."
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="SEQ",
            help="First sequence to show, or oldest / latest (default: latest when "
            "following, oldest with --no-follow).",
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option("--follow/--no-follow", help="Keep waiting for new events."),
    ] = True,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON Event message a line.")
    ] = False,
) -> None:
    """Print MODEL's events in order, one a line; with --follow, as they come."""
    how, after = _start(start, follow)
    request = rpb.ReadEventsRequest(
        after_sequence=after,
        start=how,  # type: ignore[arg-type]
        model=model_id(model),
        kinds=_kinds(kind),  # type: ignore[arg-type]
        follow=follow,
    )
    with connect(conn) as registry:
        # ReadEvents reads any model's name without checking it: ask first, for a clear
        # NOT_FOUND instead of an empty stream for a mistyped name.
        registry.GetModel(rpb.GetModelRequest(name=model_name(model)))
        try:
            for reply in registry.ReadEvents(request):
                for event in reply.events:
                    if json_output:
                        _emit(json_text(as_dict(event), compact=True))
                    else:
                        _emit(line(event))
        except KeyboardInterrupt:
            return


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds <= 0:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _stats_fields(model: str, reply: rpb.GetEventStatsResponse) -> list[tuple[str, str]]:
    counts: dict[int, int] = {int(c.kind): c.count for c in reply.counts}
    retention_age = reply.retention_age.ToNanoseconds() / 1e9
    return [
        ("model", model),
        ("backend", reply.backend),
        *((name, str(counts.get(k, 0))) for k, name in KIND_NAMES.items()),
        ("joined", str(reply.joined)),
        ("feedback unmatched", str(reply.feedback_unmatched)),
        ("predictions expired", str(reply.predictions_expired)),
        ("joined fraction", f"{reply.joined_fraction:.1%}"),
        ("stream sequences", f"{reply.first_sequence}-{reply.last_sequence}"),
        ("oldest", time_text(reply.oldest_time)),
        ("newest", time_text(reply.newest_time)),
        ("stream bytes", str(reply.bytes)),
        (
            "retention",
            f"{_duration(retention_age)} or {reply.retention_bytes} bytes, oldest first",
        ),
    ]


@connected
def stats(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """Counts of MODEL's events by kind, the joined fraction, lag, retention."""
    with connect(conn) as registry:
        reply: rpb.GetEventStatsResponse = registry.GetEventStats(
            rpb.GetEventStatsRequest(model=model_name(model))
        )
    if json_output:
        print_json(reply)
        return
    print_fields(_stats_fields(model_id(model), reply))
    rows: list[Any] = [(c.name, str(c.position), str(c.pending)) for c in reply.consumers]
    if rows:
        print_table(("consumer", "position", "pending"), rows, title="lag")
