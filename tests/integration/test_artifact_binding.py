"""Sealed artifacts are bound to their digest: a blob swapped or moved on disk is refused.

Blobs of older formats (format 1, sealed without the digest; plaintext stored before
a key was set) stay readable, are verified by digest before a byte is served and are
sealed again as format 2.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry.artifacts import CHUNK
from tests.helpers.models import linear
from tests.helpers.registry import (
    Client,
    RunningRegistry,
    registry_settings,
    running_registry,
    stream,
    upload,
)

KEY = base64.b64encode(os.urandom(32)).decode()


def db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/registry.db"


async def push(client: Client, data: bytes) -> rpb.Version:
    reply = await client.CreateVersion(stream(upload("models/iris", data)))
    return reply.version  # type: ignore[no-any-return]


async def two_versions(registry: RunningRegistry, tmp_path: Path) -> tuple[list[bytes], list[Path]]:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
    datas = [linear(tmp_path / f"m{seed}.onnx", seed=seed).read_bytes() for seed in (1, 2)]
    for data in datas:
        await push(client, data)
    blobs = [
        registry.settings.artifact_dir / "blobs" / d[:2] / d
        for d in (hashlib.sha256(data).hexdigest() for data in datas)
    ]
    return datas, blobs


async def download(registry: RunningRegistry, number: int) -> bytes:
    request = rpb.DownloadArtifactRequest(name=f"models/iris/versions/{number}")
    parts = [m async for m in registry.client().DownloadArtifact(request)]
    return b"".join(p.chunk for p in parts[1:])


async def refused(registry: RunningRegistry, number: int, *fragments: str) -> list[bytes]:
    """Download `number`, expect DATA_LOSS with `fragments`; the chunks received before."""
    request = rpb.DownloadArtifactRequest(name=f"models/iris/versions/{number}")
    got: list[bytes] = []
    with pytest.raises(aio.AioRpcError) as err:
        async for message in registry.client().DownloadArtifact(request):
            got += [message.chunk] if message.chunk else []
    assert err.value.code() == grpc.StatusCode.DATA_LOSS, err.value.details()
    details = str(err.value.details())
    for fragment in (
        f"the stored blob of models/iris/versions/{number} does not belong to it",
        *fragments,
    ):
        assert fragment in details, details
    return got


def seal_format_1(data: bytes, key: bytes, key_id: str) -> bytes:
    """A blob as the registry sealed it before format 2 (chunks bound to their index)."""
    aead, prefix = AESGCM(key), os.urandom(4)
    encoded = key_id.encode()
    out = b"LMLENC1\n" + struct.pack("<H", len(encoded)) + encoded + prefix
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        nonce = prefix + struct.pack("<Q", index)
        sealed = aead.encrypt(nonce, chunk, struct.pack("<Q?", index, last))
        out += struct.pack("<I", len(sealed)) + sealed
    return out


async def test_swapped_sealed_blobs_are_refused(tmp_path: Path) -> None:
    settings = registry_settings(db(tmp_path), tmp_path, artifact_key=KEY, artifact_key_id="k1")
    async with running_registry(settings) as registry:
        datas, blobs = await two_versions(registry, tmp_path)
        assert all(b.read_bytes().startswith(b"LMLENC2\n") for b in blobs)
        assert await download(registry, 2) == datas[1]

        one, two = (b.read_bytes() for b in blobs)
        blobs[0].write_bytes(two)
        blobs[1].write_bytes(one)
        for number in (1, 2):
            got = await refused(
                registry, number, "failed its integrity check (chunk 0)", "sealed for another"
            )
            assert got == []  # not one byte of the other version
        # Moved: v1's blob where v2's was, v2's gone.
        blobs[1].write_bytes(two)
        blobs[0].unlink()
        blobs[0].write_bytes(two)
        await refused(registry, 1, "failed its integrity check")
        assert await download(registry, 2) == datas[1]


async def test_format_1_blobs_are_verified_and_sealed_again(tmp_path: Path) -> None:
    settings = registry_settings(db(tmp_path), tmp_path, artifact_key=KEY, artifact_key_id="k1")
    key = base64.b64decode(KEY)
    async with running_registry(settings) as registry:
        datas, blobs = await two_versions(registry, tmp_path)
        for data, blob in zip(datas, blobs, strict=True):
            blob.write_bytes(seal_format_1(data, key, "k1"))
        assert await download(registry, 1) == datas[0]
        assert blobs[0].read_bytes().startswith(b"LMLENC2\n")  # upgraded on read
        assert await download(registry, 1) == datas[0]

        # A format-1 blob of v1 where v2's belongs: its plaintext is checked first.
        swapped = seal_format_1(datas[0], key, "k1")
        blobs[1].write_bytes(swapped)
        got = await refused(
            registry,
            2,
            f"the stored blob's plaintext hashes to {hashlib.sha256(datas[0]).hexdigest()}",
        )
        assert got == []
        assert blobs[1].read_bytes() == swapped  # left as it was
        assert not list((settings.artifact_dir / "tmp").iterdir())


async def test_plaintext_blobs_from_before_the_key(tmp_path: Path) -> None:
    plain = registry_settings(db(tmp_path), tmp_path)
    async with running_registry(plain) as registry:
        datas, blobs = await two_versions(registry, tmp_path)
        assert blobs[0].read_bytes() == datas[0]
        # No key: a swapped plaintext blob ends the download with an error, not OK.
        blobs[1].write_bytes(datas[0])
        await refused(registry, 2, "the stored blob hashes to")
        blobs[1].write_bytes(datas[1])

    keyed = registry_settings(db(tmp_path), tmp_path, artifact_key=KEY, artifact_key_id="k1")
    async with running_registry(keyed) as registry:
        blobs[0].write_bytes(datas[1])  # v2's plaintext where v1's belongs
        await refused(registry, 1, "plaintext hashes to")
        assert blobs[0].read_bytes() == datas[1]
        request = rpb.DownloadArtifactRequest(name="models/iris/versions/2")
        parts = [m async for m in registry.client().DownloadArtifact(request)]
        assert parts[0].artifact.key_id == "k1"  # sealed at rest from this read on
        assert b"".join(p.chunk for p in parts[1:]) == datas[1]
        sealed = blobs[1].read_bytes()
        assert sealed.startswith(b"LMLENC2\n") and datas[1][:64] not in sealed
