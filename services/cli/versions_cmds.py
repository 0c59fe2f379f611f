"""`liveml versions`: upload, inspect, review, stage and download a model's versions.

Artifacts stream in chunks both ways (never read whole into memory) and are
sha256-checked: by the registry on upload, here on download.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.filesize import decimal
from rich.text import Text

from services.cli.args import (
    JsonFlag,
    ModelArg,
    NumberArg,
    model_name,
    parse_metrics,
    parse_pairs,
    version_name,
)
from services.cli.client import Connection, Registry, all_pages, connect, connected, fail
from services.cli.models_cmds import signature_text
from services.cli.output import (
    mapping_text,
    print_fields,
    print_json,
    print_json_list,
    print_table,
    short,
    size_text,
    stdout,
    time_text,
    transfer_progress,
)
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

versions_app = typer.Typer(
    help="Versions: upload, inspect, review, stage and download artifacts.", no_args_is_help=True
)

CHUNK_BYTES = 1024 * 1024


class StageName(StrEnum):
    NONE = "none"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"


def _version_fields(version: rpb.Version) -> list[tuple[str, str]]:
    approval = version.approval
    review = short(rpb.ApprovalState, approval.state)
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
        ("stage", short(rpb.Stage, version.stage)),
        ("approval", review),
        ("sha256", artifact.sha256),
        ("size", size_text(artifact.size_bytes)),
        ("format", short(rpb.ArtifactFormat, artifact.format)),
        ("encrypted", f"key {artifact.key_id}" if artifact.key_id else "no"),
        ("signature", signature_text(version.signature)),
        ("params", mapping_text(sorted(version.params.items()))),
        ("metrics", mapping_text(sorted(version.metrics.items()))),
        ("tags", mapping_text(sorted(version.tags.items()))),
        ("dataset", " ".join(filter(None, (dataset.uri, dataset.digest))) or "-"),
        ("dataset rows", str(dataset.rows or "-")),
        ("parent version", str(version.lineage.parent_version or "-")),
        ("max batch size", str(batching.max_batch_size or "worker default")),
        ("max queue delay", f"{delay:g} ms" if delay else "worker default"),
        ("creator", version.creator),
        ("created", time_text(version.create_time)),
        ("updated", time_text(version.update_time)),
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


def sha256_file(path: Path, advance: Callable[[int], object]) -> str:
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
    with transfer_progress() as progress:
        hashing = progress.add_task(f"sha256 {path.name}", total=size)
        digest = sha256_file(path, lambda n: progress.advance(hashing, n))
        metadata = rpb.CreateVersionRequest.Metadata(
            parent=model_name(model),
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
        params=parse_pairs(params, "--param"),
        metrics=parse_metrics(metrics),
        tags=parse_pairs(tags, "--tag"),
        dataset=_dataset(dataset_uri, dataset_digest, dataset_rows),
        lineage=rpb.Lineage(parent_version=parent_version) if parent_version else None,
        batching=_batching(max_batch_size, max_queue_delay_ms),
    )
    with connect(conn) as registry:
        created = _push(registry, model, version, file)
    if json_output:
        print_json(rpb.CreateVersionResponse(version=created))
        return
    print_fields(
        [
            ("name", created.name),
            ("number", str(created.number)),
            ("sha256", created.artifact.sha256),
            ("size", size_text(created.artifact.size_bytes)),
            ("signature", signature_text(created.signature)),
            ("approval", short(rpb.ApprovalState, created.approval.state)),
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
                rpb.ListVersionsRequest(parent=model_name(model), page_token=token)
            )
            return resp.versions, resp.next_page_token

        versions = all_pages(page)
    if json_output:
        print_json_list(versions)
        return
    print_table(
        ("number", "stage", "approval", "sha256", "size", "creator", "created", "description"),
        (
            (
                str(v.number),
                short(rpb.Stage, v.stage),
                short(rpb.ApprovalState, v.approval.state),
                v.artifact.sha256[:12],
                decimal(v.artifact.size_bytes),
                v.creator,
                time_text(v.create_time),
                v.description,
            )
            for v in versions
        ),
        title=model_name(model),
    )


@versions_app.command("show")
@connected
def versions_show(
    conn: Connection, model: ModelArg, number: NumberArg, json_output: JsonFlag = False
) -> None:
    """Show everything the registry knows of a version."""
    with connect(conn) as registry:
        resp: rpb.GetVersionResponse = registry.GetVersion(
            rpb.GetVersionRequest(name=version_name(model, number))
        )
    if json_output:
        print_json(resp)
        return
    print_fields(_version_fields(resp.version))


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
        name=version_name(model, number),
        decision=rpb.APPROVAL_STATE_APPROVED if approve else rpb.APPROVAL_STATE_REJECTED,
        reason=reason,
    )
    with connect(conn) as registry:
        resp: rpb.ReviewVersionResponse = registry.ReviewVersion(request)
    if json_output:
        print_json(resp)
        return
    state = short(rpb.ApprovalState, resp.version.approval.state)
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
        version=rpb.Version(name=version_name(model, number), stage=f"STAGE_{stage.name}"),
        update_mask={"paths": ["stage"]},
    )
    with connect(conn) as registry:
        resp: rpb.UpdateVersionResponse = registry.UpdateVersion(request)
    if json_output:
        print_json(resp)
        return
    stdout.print(Text(f"{resp.version.name}: {short(rpb.Stage, resp.version.stage)}"))


def _receive(stream: Iterator[rpb.DownloadArtifactResponse], out: Path) -> rpb.Artifact:
    """Write the artifact to OUT through a .part file, renamed only once its sha256 checks."""
    first = next(stream, None)
    if first is None or first.WhichOneof("part") != "artifact":
        fail("the registry did not describe the artifact before sending it")
    artifact = first.artifact
    partial = out.with_name(out.name + ".part")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as f, transfer_progress() as progress:
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
            rpb.DownloadArtifactRequest(name=version_name(model, number))
        )
        artifact = _receive(stream, out)
    if json_output:
        print_json(artifact)
        return
    stdout.print(
        Text(f"wrote {out}: {size_text(artifact.size_bytes)}, sha256 {artifact.sha256} ok")
    )
