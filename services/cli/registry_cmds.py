"""Operator commands for the registry: models, versions, rollouts, tokens and the audit trail.

Every command prints rich tables, or with `--json` only JSON on stdout (the
registry's message, or a list of resources for listings) so scripts can pipe it.
Errors, hints and progress go to stderr. Connection options come from `@connected`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
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

from services.cli.client import Connection, Registry, connect, connected, fail, stderr
from services.common.auth import Role
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

models_app = typer.Typer(
    help="Models: named signatures that versions belong to.", no_args_is_help=True
)
versions_app = typer.Typer(
    help="Versions: upload, inspect, review, stage and download artifacts.", no_args_is_help=True
)
rollout_app = typer.Typer(
    help="Rollouts: which versions serve a model's traffic.", no_args_is_help=True
)
token_app = typer.Typer(help="Access tokens for people, workers and clients.", no_args_is_help=True)
audit_app = typer.Typer(help="The HMAC-chained audit trail.", no_args_is_help=True)

stdout = Console()

CHUNK_BYTES = 1024 * 1024
T = TypeVar("T")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of tables.")]
ModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="Model name, e.g. iris.")]
NumberArg = Annotated[int, typer.Argument(metavar="NUMBER", min=1, help="Version number.")]


class StageName(StrEnum):
    NONE = "none"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"


# --- names -------------------------------------------------------------------------


def _model_id(model: str) -> str:
    return model.removeprefix("models/")


def _model_name(model: str) -> str:
    return f"models/{_model_id(model)}"


def _version_name(model: str, number: int) -> str:
    return f"{_model_name(model)}/versions/{number}"


def _rollout_name(model: str) -> str:
    return f"{_model_name(model)}/rollout"


def _token_name(token: str) -> str:
    return token if token.startswith("tokens/") else f"tokens/{token}"


# --- parsing options -----------------------------------------------------------------


def _split(value: str, flag: str) -> tuple[str, str]:
    key, sep, rest = value.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint=flag)
    return key, rest


def _pairs(values: Iterable[str] | None, flag: str) -> dict[str, str]:
    """KEY=VALUE options as a dict (a later key wins)."""
    return dict(_split(value, flag) for value in values or ())


def _metrics(values: Iterable[str] | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in _pairs(values, "--metric").items():
        try:
            metrics[key] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"{key}: {value!r} is not a number", param_hint="--metric"
            ) from None
    return metrics


def _version_number(text: str, flag: str) -> int:
    """A version number written `3` or `v3`."""
    digits = text.strip().removeprefix("v")
    if not digits.isdigit() or int(digits) < 1:
        raise typer.BadParameter(f"{text!r} is not a version number", param_hint=flag)
    return int(digits)


def _traffic(values: Iterable[str] | None, flag: str) -> list[rpb.TrafficTarget]:
    """VERSION=PERCENT options as traffic targets; the registry checks the sums."""
    targets: dict[int, rpb.TrafficTarget] = {}
    for value in values or ():
        version, percent = _split(value, flag)
        number = _version_number(version, flag)
        if not percent.isdigit() or int(percent) > 100:
            raise typer.BadParameter(f"percent {percent!r} is not 0..100", param_hint=flag)
        # Refused rather than merged: two shares for one version is a typo, not a wish.
        if number in targets:
            raise typer.BadParameter(f"version {number} is given twice", param_hint=flag)
        targets[number] = rpb.TrafficTarget(version=number, percent=int(percent))
    return list(targets.values())


_TTL = re.compile(r"(\d+)([smhd])")
_TTL_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _ttl(text: str) -> timedelta:
    match = _TTL.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise typer.BadParameter(
            f"{text!r}: expected e.g. 90s, 15m, 12h or 30d", param_hint="--ttl"
        )
    return timedelta(**{_TTL_UNITS[match[2]]: int(match[1])})


# --- output --------------------------------------------------------------------------


def _print_json(message: Message) -> None:
    # typer.echo, not rich: rich would wrap long lines and read [..] as markup.
    typer.echo(json_format.MessageToJson(message, preserving_proto_field_name=True))


def _as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print_json_list(messages: Iterable[Message]) -> None:
    typer.echo(json.dumps([_as_dict(m) for m in messages], indent=2))


def _short(enum: EnumTypeWrapper, value: int) -> str:
    """`STAGE_PRODUCTION` as `production`: the enum's prefix is its UNSPECIFIED name's."""
    known = enum.DESCRIPTOR.values_by_number.get(value)
    if known is None:  # a registry newer than this CLI
        return str(value)
    prefix = enum.DESCRIPTOR.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return known.name.removeprefix(prefix).lower()


def _time(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _size(size_bytes: int) -> str:
    return f"{decimal(size_bytes)} ({size_bytes} bytes)"


def _mapping(values: Iterable[tuple[str, object]]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values)


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        # Text, not str: names, reasons and errors are data, never rich markup.
        table.add_row(*(Text(cell) for cell in row))
    stdout.print(table)


def _fields(rows: Iterable[tuple[str, str]], title: str | None = None) -> None:
    table = Table(show_header=False, title=title)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, Text(value or "-"))
    stdout.print(table)


def _all_pages(
    fetch: Callable[[str], tuple[Iterable[T], str]], limit: int | None = None
) -> list[T]:
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


def _progress() -> Progress:
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


# --- models --------------------------------------------------------------------------


def _tensor(spec: rpb.TensorSpec) -> str:
    return f"{spec.name} {spec.datatype}[{','.join(str(d) for d in spec.shape)}]"


def _signature(signature: rpb.Signature) -> str:
    inputs = ", ".join(_tensor(t) for t in signature.inputs) or "-"
    outputs = ", ".join(_tensor(t) for t in signature.outputs) or "-"
    return f"in: {inputs}\nout: {outputs}"


def _model_fields(model: rpb.Model) -> list[tuple[str, str]]:
    return [
        ("name", model.name),
        ("description", model.description),
        ("signature", _signature(model.signature)),
        ("latest version", str(model.latest_version or "-")),
        ("aliases", _mapping(sorted(model.aliases.items()))),
        ("labels", _mapping(sorted(model.labels.items()))),
        ("created", _time(model.create_time)),
        ("updated", _time(model.update_time)),
    ]


@models_app.command("list")
@connected
def models_list(conn: Connection, json_output: JsonFlag = False) -> None:
    """List models."""
    with connect(conn) as registry:

        def page(token: str) -> tuple[Iterable[rpb.Model], str]:
            resp: rpb.ListModelsResponse = registry.ListModels(
                rpb.ListModelsRequest(page_token=token)
            )
            return resp.models, resp.next_page_token

        models = _all_pages(page)
    if json_output:
        _print_json_list(models)
        return
    _table(
        ("name", "latest", "aliases", "description", "created"),
        (
            (
                m.name,
                str(m.latest_version or "-"),
                _mapping(sorted(m.aliases.items())),
                m.description,
                _time(m.create_time),
            )
            for m in models
        ),
    )


@models_app.command("show")
@connected
def models_show(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """Show a model: signature, aliases, latest version."""
    with connect(conn) as registry:
        resp: rpb.GetModelResponse = registry.GetModel(rpb.GetModelRequest(name=_model_name(model)))
    if json_output:
        _print_json(resp)
        return
    _fields(_model_fields(resp.model))


@models_app.command("create")
@connected
def models_create(
    conn: Connection,
    model: ModelArg,
    description: Annotated[str, typer.Option(help="What the model does.")] = "",
    json_output: JsonFlag = False,
) -> None:
    """Create a model; its versions are pushed with `liveml versions push`."""
    request = rpb.CreateModelRequest(
        model_id=_model_id(model), model=rpb.Model(description=description)
    )
    with connect(conn) as registry:
        resp: rpb.CreateModelResponse = registry.CreateModel(request)
    if json_output:
        _print_json(resp)
        return
    _fields(_model_fields(resp.model), title="created")


# --- versions ------------------------------------------------------------------------


def _version_fields(version: rpb.Version) -> list[tuple[str, str]]:
    approval = version.approval
    review = _short(rpb.ApprovalState, approval.state)
    if approval.actor:
        review += f" by {approval.actor}" + (f": {approval.reason}" if approval.reason else "")
    artifact = version.artifact
    dataset = version.dataset
    batching = version.batching
    delay = batching.max_queue_delay.ToTimedelta().total_seconds() * 1000
    return [
        ("name", version.name),
        ("number", str(version.number)),
        ("description", version.description),
        ("stage", _short(rpb.Stage, version.stage)),
        ("approval", review),
        ("sha256", artifact.sha256),
        ("size", _size(artifact.size_bytes)),
        ("format", _short(rpb.ArtifactFormat, artifact.format)),
        ("encrypted", f"key {artifact.key_id}" if artifact.key_id else "no"),
        ("signature", _signature(version.signature)),
        ("params", _mapping(sorted(version.params.items()))),
        ("metrics", _mapping(sorted(version.metrics.items()))),
        ("tags", _mapping(sorted(version.tags.items()))),
        ("dataset", " ".join(filter(None, (dataset.uri, dataset.digest))) or "-"),
        ("dataset rows", str(dataset.rows or "-")),
        ("parent version", str(version.lineage.parent_version or "-")),
        ("max batch size", str(batching.max_batch_size or "worker default")),
        ("max queue delay", f"{delay:g} ms" if delay else "worker default"),
        ("creator", version.creator),
        ("created", _time(version.create_time)),
        ("updated", _time(version.update_time)),
    ]


def _dataset(uri: str | None, digest: str | None, rows: int | None) -> rpb.Dataset | None:
    if uri is None and digest is None and rows is None:
        return None
    return rpb.Dataset(uri=uri or "", digest=digest or "", rows=rows or 0)


def _batching(max_batch_size: int | None, delay_ms: float | None) -> rpb.BatchingConfig | None:
    if max_batch_size is None and delay_ms is None:
        return None
    return rpb.BatchingConfig(
        max_batch_size=max_batch_size or 0,
        max_queue_delay=timedelta(milliseconds=delay_ms) if delay_ms is not None else None,
    )


def _sha256(path: Path, advance: Callable[[int], object]) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            advance(len(chunk))
    return digest.hexdigest()


def _upload_requests(
    path: Path, metadata: rpb.CreateVersionRequest.Metadata, advance: Callable[[int], object]
) -> Iterator[rpb.CreateVersionRequest]:
    """The CreateVersion stream: metadata, then the file chunk by chunk (never all of it)."""
    yield rpb.CreateVersionRequest(metadata=metadata)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield rpb.CreateVersionRequest(chunk=chunk)
            # Resumed only once grpc asks for the next message: this chunk has been taken.
            advance(len(chunk))


def _push(registry: Registry, model: str, version: rpb.Version, path: Path) -> rpb.Version:
    size = path.stat().st_size
    with _progress() as progress:
        hashing = progress.add_task(f"sha256 {path.name}", total=size)
        digest = _sha256(path, lambda n: progress.advance(hashing, n))
        metadata = rpb.CreateVersionRequest.Metadata(
            parent=_model_name(model),
            version=version,
            sha256=digest,
            size_bytes=size,
            format=rpb.ARTIFACT_FORMAT_ONNX,
        )
        uploading = progress.add_task(f"upload {path.name}", total=size)
        requests = _upload_requests(path, metadata, lambda n: progress.advance(uploading, n))
        resp: rpb.CreateVersionResponse = registry.CreateVersion(requests)
    return resp.version


@versions_app.command("push")
@connected
def versions_push(
    conn: Connection,
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", exists=True, dir_okay=False, help="ONNX file to register."),
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="Model the version belongs to.")],
    description: Annotated[str, typer.Option(help="What changed in this version.")] = "",
    params: Annotated[
        list[str] | None,
        typer.Option("--param", metavar="KEY=VALUE", help="Training parameter; repeatable."),
    ] = None,
    metrics: Annotated[
        list[str] | None,
        typer.Option("--metric", metavar="KEY=NUMBER", help="Evaluation metric; repeatable."),
    ] = None,
    tags: Annotated[
        list[str] | None, typer.Option("--tag", metavar="KEY=VALUE", help="Tag; repeatable.")
    ] = None,
    dataset_uri: Annotated[str | None, typer.Option(help="Where the training data is.")] = None,
    dataset_digest: Annotated[str | None, typer.Option(help="Digest of the training data.")] = None,
    dataset_rows: Annotated[int | None, typer.Option(min=0, help="Rows of training data.")] = None,
    parent_version: Annotated[
        int | None, typer.Option(min=1, help="Version this one was derived from.")
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(min=1, help="Largest batch the worker forms.")
    ] = None,
    max_queue_delay_ms: Annotated[
        float | None, typer.Option(min=0, help="Longest a request waits for a batch, ms.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Upload an ONNX file as the model's next version (sha256-checked by the registry)."""
    version = rpb.Version(
        description=description,
        params=_pairs(params, "--param"),
        metrics=_metrics(metrics),
        tags=_pairs(tags, "--tag"),
        dataset=_dataset(dataset_uri, dataset_digest, dataset_rows),
        lineage=rpb.Lineage(parent_version=parent_version) if parent_version else None,
        batching=_batching(max_batch_size, max_queue_delay_ms),
    )
    with connect(conn) as registry:
        created = _push(registry, model, version, file)
    if json_output:
        _print_json(rpb.CreateVersionResponse(version=created))
        return
    _fields(
        [
            ("name", created.name),
            ("number", str(created.number)),
            ("sha256", created.artifact.sha256),
            ("size", _size(created.artifact.size_bytes)),
            ("signature", _signature(created.signature)),
            ("approval", _short(rpb.ApprovalState, created.approval.state)),
        ],
        title="created",
    )


@versions_app.command("list")
@connected
def versions_list(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """List a model's versions, newest first."""
    with connect(conn) as registry:

        def page(token: str) -> tuple[Iterable[rpb.Version], str]:
            resp: rpb.ListVersionsResponse = registry.ListVersions(
                rpb.ListVersionsRequest(parent=_model_name(model), page_token=token)
            )
            return resp.versions, resp.next_page_token

        versions = _all_pages(page)
    if json_output:
        _print_json_list(versions)
        return
    _table(
        ("number", "stage", "approval", "sha256", "size", "creator", "created", "description"),
        (
            (
                str(v.number),
                _short(rpb.Stage, v.stage),
                _short(rpb.ApprovalState, v.approval.state),
                v.artifact.sha256[:12],
                decimal(v.artifact.size_bytes),
                v.creator,
                _time(v.create_time),
                v.description,
            )
            for v in versions
        ),
        title=_model_name(model),
    )


@versions_app.command("show")
@connected
def versions_show(
    conn: Connection, model: ModelArg, number: NumberArg, json_output: JsonFlag = False
) -> None:
    """Show everything the registry knows of a version."""
    with connect(conn) as registry:
        resp: rpb.GetVersionResponse = registry.GetVersion(
            rpb.GetVersionRequest(name=_version_name(model, number))
        )
    if json_output:
        _print_json(resp)
        return
    _fields(_version_fields(resp.version))


@versions_app.command("review")
@connected
def versions_review(
    conn: Connection,
    model: ModelArg,
    number: NumberArg,
    approve: Annotated[
        bool, typer.Option("--approve/--reject", help="Approve, or reject (it can't roll out).")
    ],
    reason: Annotated[str, typer.Option(help="Why; kept in the audit trail.")],
    json_output: JsonFlag = False,
) -> None:
    """Approve or reject a version."""
    request = rpb.ReviewVersionRequest(
        name=_version_name(model, number),
        decision=rpb.APPROVAL_STATE_APPROVED if approve else rpb.APPROVAL_STATE_REJECTED,
        reason=reason,
    )
    with connect(conn) as registry:
        resp: rpb.ReviewVersionResponse = registry.ReviewVersion(request)
    if json_output:
        _print_json(resp)
        return
    state = _short(rpb.ApprovalState, resp.version.approval.state)
    stdout.print(Text(f"{resp.version.name}: {state}"))


@versions_app.command("stage")
@connected
def versions_stage(
    conn: Connection,
    model: ModelArg,
    number: NumberArg,
    stage: Annotated[
        StageName, typer.Argument(metavar="STAGE", help="The version's new lifecycle stage.")
    ],
    json_output: JsonFlag = False,
) -> None:
    """Move a version to a lifecycle stage (none, staging, production, archived)."""
    request = rpb.UpdateVersionRequest(
        version=rpb.Version(name=_version_name(model, number), stage=f"STAGE_{stage.name}"),
        update_mask={"paths": ["stage"]},
    )
    with connect(conn) as registry:
        resp: rpb.UpdateVersionResponse = registry.UpdateVersion(request)
    if json_output:
        _print_json(resp)
        return
    stdout.print(Text(f"{resp.version.name}: {_short(rpb.Stage, resp.version.stage)}"))


def _receive(stream: Iterator[rpb.DownloadArtifactResponse], out: Path) -> rpb.Artifact:
    """Write the artifact to OUT through a .part file, renamed only once its sha256 checks."""
    first = next(stream, None)
    if first is None or first.WhichOneof("part") != "artifact":
        fail("the registry did not describe the artifact before sending it")
    artifact = first.artifact
    partial = out.with_name(out.name + ".part")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as f, _progress() as progress:
            task = progress.add_task(f"download {out.name}", total=artifact.size_bytes)
            for message in stream:
                digest.update(message.chunk)
                f.write(message.chunk)
                progress.advance(task, len(message.chunk))
        if digest.hexdigest() != artifact.sha256:
            fail(
                f"sha256 mismatch: the registry promised {artifact.sha256}, "
                f"received {digest.hexdigest()}; {out} was not written"
            )
    except BaseException:
        # Never leave a half or corrupt artifact behind, whatever ended the download.
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    return artifact


@versions_app.command("download")
@connected
def versions_download(
    conn: Connection,
    model: ModelArg,
    number: NumberArg,
    out: Annotated[
        Path, typer.Argument(metavar="OUT", dir_okay=False, help="File to write the artifact to.")
    ],
    json_output: JsonFlag = False,
) -> None:
    """Download a version's artifact and check its sha256."""
    with connect(conn) as registry:
        stream = registry.DownloadArtifact(
            rpb.DownloadArtifactRequest(name=_version_name(model, number))
        )
        artifact = _receive(stream, out)
    if json_output:
        _print_json(artifact)
        return
    stdout.print(Text(f"wrote {out}: {_size(artifact.size_bytes)}, sha256 {artifact.sha256} ok"))


# --- rollouts ------------------------------------------------------------------------


def _shares(targets: Iterable[rpb.TrafficTarget]) -> str:
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
        ("targets", _shares(rollout.targets)),
        ("mirrors", _shares(rollout.mirrors)),
        ("pinned", ", ".join(f"v{v}" for v in rollout.pinned)),
        ("sticky key", rollout.sticky_key),
        ("fallback", serving_text(rollout.fallback) if rollout.fallback else ""),
        ("analysis", _analysis(rollout.analysis)),
        ("revision", str(rollout.revision)),
        ("updater", rollout.updater),
        ("updated", _time(rollout.update_time)),
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
    return state.model in (_model_id(model), _model_name(model))


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
                _short(rpb.VersionLoadState, state.state),
                state.error,
            )


def _role_note(role: int) -> str:
    """` (mirror)` or ` (primary)` after a worker's name; nothing for the default role."""
    if role in (rpb.WORKER_ROLE_PRIMARY, rpb.WORKER_ROLE_MIRROR):
        return f" ({_short(rpb.WorkerRole, role)})"
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
        name=_rollout_name(model),
        targets=_traffic(targets, "--target"),
        mirrors=_traffic(mirrors, "--mirror"),
        pinned=[_version_number(p, "--pin") for p in pins or ()],
        sticky_key=sticky_key,
    )
    with connect(conn) as registry:
        resp: rpb.UpdateRolloutResponse = registry.UpdateRollout(
            rpb.UpdateRolloutRequest(rollout=rollout, force=force)
        )
    if json_output:
        _print_json(resp)
        return
    _fields(_rollout_fields(resp.rollout), title="rollout updated")
    if resp.rollout.fallback:
        stdout.print(
            Text(
                "a target is not READY on any worker yet: its share stays with what served "
                f"({serving_text(resp.rollout.fallback)}) until it is; see `liveml rollout "
                f"show {_model_id(model)}`",
                style="yellow",
            )
        )


@rollout_app.command("show")
@connected
def rollout_show(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """Show a model's rollout and where each of its versions is loaded."""
    with connect(conn) as registry:
        resp: rpb.GetRolloutResponse = registry.GetRollout(
            rpb.GetRolloutRequest(name=_rollout_name(model))
        )
        workers = _list_workers(registry)
    rollout = resp.rollout
    if json_output:
        holding = [w for w in workers or () if any(_holds(s, model) for s in w.versions)]
        shown = {
            "rollout": _as_dict(rollout),
            "serving": [_as_dict(s) for s in resp.serving],
            "held": [_as_dict(h) for h in resp.held],
            "workers": [_as_dict(w) for w in holding],
        }
        typer.echo(json.dumps(shown, indent=2))
        return
    _fields(
        [
            *_rollout_fields(rollout),
            ("serving now", serving_text(resp.serving)),
            *(("held", line) for line in held_text(resp.held)),
        ]
    )
    if workers is not None:
        _table(
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
                rpb.ListRolloutHistoryRequest(name=_rollout_name(model), page_token=token)
            )
            return resp.rollouts, resp.next_page_token

        rollouts = _all_pages(page)
    if json_output:
        _print_json_list(rollouts)
        return
    _table(
        ("revision", "targets", "mirrors", "pinned", "sticky key", "updater", "updated"),
        (
            (
                str(r.revision),
                _shares(r.targets),
                _shares(r.mirrors),
                ", ".join(f"v{v}" for v in r.pinned) or "-",
                r.sticky_key or "-",
                r.updater,
                _time(r.update_time),
            )
            for r in rollouts
        ),
        title=_rollout_name(model),
    )


@rollout_app.command("rollback")
@connected
def rollout_rollback(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """Restore the previous state of a model's rollout."""
    with connect(conn) as registry:
        resp: rpb.RollbackRolloutResponse = registry.RollbackRollout(
            rpb.RollbackRolloutRequest(name=_rollout_name(model))
        )
    if json_output:
        _print_json(resp)
        return
    _fields(_rollout_fields(resp.rollout), title="rolled back")


# --- tokens --------------------------------------------------------------------------


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
        ttl=_ttl(ttl) if ttl is not None else None,
        worker_id=worker_id,
    )
    with connect(conn) as registry:
        resp: rpb.CreateTokenResponse = registry.CreateToken(request)
    if secret_only:
        typer.echo(resp.secret)  # plain: a token file holds the secret and a newline
        return
    if json_output:
        _print_json(resp)
    else:
        token = resp.token
        _fields(
            [
                ("name", token.name),
                ("display name", token.display_name),
                ("role", _short(rpb.Role, token.role)),
                *([("worker", f"workers/{token.worker_id}")] if token.worker_id else []),
                ("expires", _time(token.expire_time)),
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
        _print_json_list(resp.tokens)
        return
    _table(
        ("name", "display name", "role", "state", "created", "expires", "creator"),
        (
            (
                t.name,
                t.display_name,
                _short(rpb.Role, t.role),
                _token_state(t),
                _time(t.create_time),
                _time(t.expire_time),
                t.creator,
            )
            for t in resp.tokens
        ),
    )


@token_app.command("revoke")
@connected
def token_revoke(
    conn: Connection,
    token_name: Annotated[str, typer.Argument(metavar="TOKEN", help="tokens/ID or ID.")],
    json_output: JsonFlag = False,
) -> None:
    """Revoke a token: calls made with it fail from now on."""
    with connect(conn) as registry:
        resp: rpb.RevokeTokenResponse = registry.RevokeToken(
            rpb.RevokeTokenRequest(name=_token_name(token_name))
        )
    if json_output:
        _print_json(resp)
        return
    stdout.print(Text(f"revoked {resp.token.name} ({resp.token.display_name})"))


# --- audit ---------------------------------------------------------------------------


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

        events = _all_pages(page, limit)
    if json_output:
        _print_json_list(events)
        return
    _table(
        ("seq", "time", "actor", "action", "target", "details"),
        ((str(e.sequence), _time(e.time), e.actor, e.action, e.target, e.details) for e in events),
    )


@audit_app.command("verify")
@connected
def audit_verify(conn: Connection, json_output: JsonFlag = False) -> None:
    """Check the audit trail's HMAC chain and checkpoint; exit 1 naming the first bad event."""
    with connect(conn) as registry:
        resp: rpb.VerifyAuditResponse = registry.VerifyAudit(rpb.VerifyAuditRequest())
    if json_output:
        _print_json(resp)
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
