"""Sealed artifacts end to end: a registry with --artifact-key and worker processes.

A blob swapped on disk for another version's sealed blob is refused by the registry;
the worker reports the new version FAILED with why, and the version it had keeps
answering. The worker's cache holds no plaintext model and is private (0700/0600).
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from tests.helpers import models
from tests.helpers.cluster import cluster, infer_request

pytestmark = pytest.mark.timeout(300)


def blob(root: Path, digest: str) -> Path:
    return root / "artifacts" / "blobs" / digest[:2] / digest


def cache_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()]


async def test_swapped_blob_is_refused_and_the_old_version_keeps_serving(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    env = {"LIVEML_ARTIFACT_KEY": key, "LIVEML_ARTIFACT_KEY_ID": "k1"}
    async with cluster(tmp_path, **env) as c:
        await c.create_model("lin")
        paths = [models.linear(tmp_path / f"v{n}.onnx", seed=n) for n in (1, 2)]
        v1, v2 = [await c.push("lin", p) for p in paths]
        await c.route("lin", (1, 100))
        # A plaintext copy cached before the registry had a key: deleted when seen.
        cache = tmp_path / "cache-w1"
        cache.mkdir()
        stale = cache / f"{v1.artifact.sha256}.onnx"
        stale.write_bytes(paths[0].read_bytes())
        port = c.start_worker("w1")
        await c.wait_state("w1", "lin", 1, "READY")
        assert not stale.exists()

        # The sealed v1 blob copied over v2's: a valid ciphertext, of another digest.
        blob(tmp_path, v2.artifact.sha256).write_bytes(
            blob(tmp_path, v1.artifact.sha256).read_bytes()
        )
        with pytest.raises(aio.AioRpcError) as err:
            async for _ in c.stub.DownloadArtifact(
                rpb.DownloadArtifactRequest(name=v2.name), metadata=c.md
            ):
                pass
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        expected = "the stored blob of models/lin/versions/2 does not belong to it"
        assert expected in str(err.value.details())

        await c.route("lin", (2, 100))
        error = await c.wait_state("w1", "lin", 2, "FAILED")
        assert f"download failed: DATA_LOSS: {expected}" in error, error
        assert (await c.worker_states("w1"))[("lin", 1)] == ("READY", "")
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            x = np.ones((1, 4), dtype=np.float32)
            reply = await stub.ModelInfer(infer_request("lin", x))
        assert reply.model_version == "1"

        # No plaintext model under the cache; what is there is private.
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700
        model_bytes = [p.read_bytes() for p in paths]
        for path in cache_files(cache):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            data = path.read_bytes()
            assert b"\x08" not in data[:1] and not any(m[:256] in data for m in model_bytes)


async def test_unsealed_artifacts_are_cached_privately(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.create_model("lin")
        v1 = await c.push("lin", models.linear(tmp_path / "v1.onnx", seed=1))
        await c.route("lin", (1, 100))
        cache = tmp_path / "cache-w1"
        cache.mkdir(mode=0o755)
        (cache / "stale.part").write_bytes(b"x")
        os.chmod(cache / "stale.part", 0o644)
        c.start_worker("w1")
        await c.wait_state("w1", "lin", 1, "READY")
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700
        cached = cache / f"{v1.artifact.sha256}.onnx"
        assert cached.read_bytes() == (tmp_path / "v1.onnx").read_bytes()
        for path in cache_files(cache):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
