"""Registry: models, versions, artifacts and aliases, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from tests.helpers.models import linear
from tests.helpers.registry import (
    Client,
    RunningRegistry,
    registry_settings,
    running_registry,
    stream,
    upload,
)


async def push(client: Client, model: str, data: bytes, **kwargs: object) -> rpb.Version:
    reply = await client.CreateVersion(stream(upload(f"models/{model}", data, **kwargs)))  # type: ignore[arg-type]
    return reply.version  # type: ignore[no-any-return]


async def expect_error(call: object, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    details = str(err.value.details())
    for fragment in fragments:
        assert fragment in details, details
    return details


@pytest.fixture
def model_bytes(tmp_path: Path) -> bytes:
    return linear(tmp_path / "v.onnx").read_bytes()


async def snapshot_state(registry: RunningRegistry, model: str = "iris") -> tuple[object, ...]:
    """What must not change when a request is refused."""
    client = registry.client()
    got = await client.GetModel(rpb.GetModelRequest(name=f"models/{model}"))
    versions = await client.ListVersions(rpb.ListVersionsRequest(parent=f"models/{model}"))
    rollout = await client.GetRollout(rpb.GetRolloutRequest(name=f"models/{model}/rollout"))
    events = await client.ListAuditEvents(rpb.ListAuditEventsRequest(page_size=1000))
    blobs = (
        sorted(p.name for p in (registry.settings.artifact_dir / "blobs").rglob("*") if p.is_file())
        if (registry.settings.artifact_dir / "blobs").exists()
        else []
    )
    tmp = list((registry.settings.artifact_dir / "tmp").iterdir())
    return (
        got.model.latest_version,
        [v.number for v in versions.versions],
        rollout.rollout,
        len(events.events),
        blobs,
        tmp,
    )


async def test_models_create_get_list_update_delete(registry: RunningRegistry) -> None:
    client = registry.client()
    for name in ("iris", "churn", "fraud"):
        await client.CreateModel(
            rpb.CreateModelRequest(model_id=name, model=rpb.Model(description=name))
        )
    page = await client.ListModels(rpb.ListModelsRequest(page_size=2))
    assert [m.name for m in page.models] == ["models/churn", "models/fraud"]
    rest = await client.ListModels(
        rpb.ListModelsRequest(page_size=2, page_token=page.next_page_token)
    )
    assert [m.name for m in rest.models] == ["models/iris"] and not rest.next_page_token

    updated = await client.UpdateModel(
        rpb.UpdateModelRequest(
            model=rpb.Model(name="models/iris", description="flowers", labels={"team": "ml"}),
            update_mask=FieldMask(paths=["description"]),
        )
    )
    assert updated.model.description == "flowers" and not updated.model.labels
    await client.DeleteModel(rpb.DeleteModelRequest(name="models/fraud"))
    await expect_error(
        client.GetModel(rpb.GetModelRequest(name="models/fraud")),
        grpc.StatusCode.NOT_FOUND,
        "model 'fraud' not found",
    )


async def test_model_errors(registry: RunningRegistry) -> None:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
    await expect_error(
        client.CreateModel(rpb.CreateModelRequest(model_id="iris")),
        grpc.StatusCode.ALREADY_EXISTS,
        "model 'iris' already exists",
    )
    await expect_error(
        client.CreateModel(rpb.CreateModelRequest(model_id="bad name")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model id 'bad name' is not valid",
    )
    await expect_error(
        client.GetModel(rpb.GetModelRequest(name="iris")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected a model name like 'models/iris'",
    )
    await expect_error(
        client.UpdateModel(
            rpb.UpdateModelRequest(
                model=rpb.Model(name="models/iris"), update_mask=FieldMask(paths=["signature"])
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cannot update model field(s) signature",
    )


async def test_versions_are_numbered_and_described(
    registry: RunningRegistry, model_bytes: bytes, tmp_path: Path
) -> None:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
    meta = rpb.Version(
        description="first",
        metrics={"accuracy": 0.9},
        params={"C": "1.0"},
        dataset=rpb.Dataset(uri="file:///d.csv", digest="abc", rows=150),
        lineage=rpb.Lineage(pipeline_run="run-1"),
    )
    first = await push(client, "iris", model_bytes, version=meta)
    assert (first.name, first.number, first.description) == ("models/iris/versions/1", 1, "first")
    assert first.artifact.sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert first.artifact.size_bytes == len(model_bytes)
    assert [(t.name, t.datatype, list(t.shape)) for t in first.signature.inputs] == [
        ("x", "FP32", [-1, 4])
    ]
    assert first.approval.state == rpb.APPROVAL_STATE_PENDING and first.dataset.rows == 150
    second = await push(client, "iris", linear(tmp_path / "v2.onnx", seed=1).read_bytes())
    assert second.number == 2

    model = (await client.GetModel(rpb.GetModelRequest(name="models/iris"))).model
    assert model.latest_version == 2 and [t.name for t in model.signature.outputs] == ["y"]
    listed = await client.ListVersions(rpb.ListVersionsRequest(parent="models/iris", page_size=1))
    assert [v.number for v in listed.versions] == [2] and listed.next_page_token

    await client.SetAlias(rpb.SetAliasRequest(parent="models/iris", alias="champion", version=1))
    by_alias = await client.GetVersion(rpb.GetVersionRequest(name="models/iris/aliases/champion"))
    assert by_alias.version.number == 1
    await expect_error(
        client.SetAlias(rpb.SetAliasRequest(parent="models/iris", alias="x", version=9)),
        grpc.StatusCode.NOT_FOUND,
        "model 'iris' has no version 9",
    )
    staged = await client.UpdateVersion(
        rpb.UpdateVersionRequest(
            version=rpb.Version(
                name="models/iris/versions/2", stage=rpb.STAGE_STAGING, tags={"a": "b"}
            ),
            update_mask=FieldMask(paths=["stage", "tags"]),
        )
    )
    assert staged.version.stage == rpb.STAGE_STAGING and dict(staged.version.tags) == {"a": "b"}
    reviewed = await client.ReviewVersion(
        rpb.ReviewVersionRequest(
            name="models/iris/versions/2", decision=rpb.APPROVAL_STATE_APPROVED, reason="looks good"
        )
    )
    assert reviewed.version.approval.state == rpb.APPROVAL_STATE_APPROVED
    assert reviewed.version.approval.actor.startswith("tokens/")
    await expect_error(
        client.GetVersion(rpb.GetVersionRequest(name="models/iris/versions/7")),
        grpc.StatusCode.NOT_FOUND,
        "model 'iris' has no version 7",
    )


async def test_same_bytes_are_stored_once_and_download_streams_them(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
    data = linear(tmp_path / "big.onnx", n_in=512, n_out=600).read_bytes()  # > 1 MiB
    one = await push(client, "iris", data, chunk=300_000)
    two = await push(client, "iris", data)
    assert one.artifact.sha256 == two.artifact.sha256 and one.number != two.number
    blobs = [p for p in (registry.settings.artifact_dir / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1 and blobs[0].read_bytes() == data  # no key: stored as is

    parts = [
        m
        async for m in client.DownloadArtifact(
            rpb.DownloadArtifactRequest(name="models/iris/versions/2")
        )
    ]
    assert parts[0].artifact.sha256 == one.artifact.sha256
    assert len(parts) > 2  # streamed in chunks
    assert b"".join(p.chunk for p in parts[1:]) == data


async def test_artifacts_are_encrypted_at_rest(db_url: str, tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    settings = registry_settings(db_url, tmp_path, artifact_key=key, artifact_key_id="2026-11")
    data = linear(tmp_path / "big.onnx", n_in=512, n_out=600).read_bytes()
    async with running_registry(settings) as registry:
        client = registry.client()
        await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
        version = await push(client, "iris", data)
        assert version.artifact.key_id == "2026-11"
        [blob] = [p for p in (settings.artifact_dir / "blobs").rglob("*") if p.is_file()]
        sealed = blob.read_bytes()
        assert data[:4096] not in sealed and len(sealed) > len(data)
        parts = [
            m async for m in client.DownloadArtifact(rpb.DownloadArtifactRequest(name=version.name))
        ]
        assert b"".join(p.chunk for p in parts[1:]) == data

        # Tampering is detected on read, not served.
        tampered = bytearray(sealed)
        tampered[len(tampered) // 2] ^= 0x01
        blob.write_bytes(bytes(tampered))
        with pytest.raises(aio.AioRpcError) as err:
            [
                m
                async for m in client.DownloadArtifact(
                    rpb.DownloadArtifactRequest(name=version.name)
                )
            ]
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        assert "failed its integrity check" in str(err.value.details())


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("corrupt", grpc.StatusCode.INVALID_ARGUMENT, "artifact is not a loadable ONNX model"),
        ("truncated", grpc.StatusCode.INVALID_ARGUMENT, "truncated upload: received"),
        ("digest", grpc.StatusCode.INVALID_ARGUMENT, "sha256 mismatch: the client announced 00000"),
        ("oversized", grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the limit of 100000 bytes"),
        ("unknown-model", grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
        (
            "signature",
            grpc.StatusCode.INVALID_ARGUMENT,
            "artifact signature does not match model 'iris': "
            "input 'x': expected FP32 [-1, 4], got FP32 [-1, 6]",
        ),
        (
            "no-metadata",
            grpc.StatusCode.INVALID_ARGUMENT,
            "first CreateVersion message must carry metadata",
        ),
    ],
)
async def test_bad_uploads_are_refused_and_change_nothing(
    db_url: str, tmp_path: Path, case: str, code: grpc.StatusCode, message: str
) -> None:
    settings = registry_settings(db_url, tmp_path, max_artifact_bytes=100_000)
    good = linear(tmp_path / "good.onnx").read_bytes()
    async with running_registry(settings) as registry:
        client = registry.client()
        await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
        await push(client, "iris", good)
        before = await snapshot_state(registry)
        parent = "models/iris"
        if case == "corrupt":
            bad = good[: len(good) // 2] + b"\x00garbage" * 10
            messages = upload(parent, bad)
        elif case == "truncated":
            messages = upload(parent, good, size=len(good) + 1000)
        elif case == "digest":
            messages = upload(parent, good, sha256="0" * 64)
        elif case == "oversized":
            big = linear(tmp_path / "big.onnx", n_in=256, n_out=256).read_bytes()
            messages = upload(parent, big, size=0)
        elif case == "unknown-model":
            messages = upload("models/nope", good)
        elif case == "signature":
            messages = upload(parent, linear(tmp_path / "wide.onnx", n_in=6).read_bytes())
        else:
            messages = upload(parent, good)[1:]
        await expect_error(client.CreateVersion(stream(messages)), code, message)
        assert await snapshot_state(registry) == before
