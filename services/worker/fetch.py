"""A version's artifact for the worker: downloaded from the registry, verified by digest,
cached on disk only when the registry itself keeps it in plaintext.

The download's first message says how the registry keeps the artifact at rest (its
key id). A sealed artifact (the registry runs with --artifact-key) is held in memory
only, and onnxruntime opens it from there: the worker has no artifact key, and a
plaintext copy on its disk would undo the encryption at rest. Keeping the sealed
bytes would not help (the worker cannot open them), and a worker-side key would
be one more secret to hand out and rotate. The price is the restart: a restarted
worker downloads every sealed version again (and the registry decrypts it) instead
of reading its cache — one transfer per version, at the registry's read speed. A
plaintext copy of an artifact that is sealed now (cached before the key was set) is
deleted when seen. Unsealed artifacts are cached by digest as before.

The cache directory is made 0700 and every file in it 0600 (fixed at start, too, for
a directory an older worker made), so other local users cannot read models.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from services.common.errors import InvalidArgument
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc

DIR_MODE = 0o700
FILE_MODE = 0o600


def prepare_cache(cache_dir: Path) -> None:
    """Create the cache directory private to this user; tighten what is already there."""
    cache_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(cache_dir, DIR_MODE)  # mkdir's mode is masked by the umask, and not applied
    for entry in cache_dir.iterdir():  # to a directory that exists
        if entry.is_file():
            os.chmod(entry, FILE_MODE)


async def fetch(
    stub: rpb_grpc.RegistryServiceStub,
    metadata: Sequence[tuple[str, str]],
    version: rpb.Version,
    cache_dir: Path,
) -> Path | bytes:
    """The artifact: a cached file (unsealed at the registry) or its bytes (sealed)."""
    digest = version.artifact.sha256
    path = cache_dir / f"{digest}.onnx"
    call = stub.DownloadArtifact(rpb.DownloadArtifactRequest(name=version.name), metadata=metadata)
    messages = aiter(call)
    first = await anext(messages, None)
    if first is None or first.WhichOneof("part") != "artifact":
        call.cancel()
        raise InvalidArgument("download failed: the registry sent no artifact header")
    sealed = bool(first.artifact.key_id)
    if sealed:
        path.unlink(missing_ok=True)
    elif path.exists():
        call.cancel()
        return path
    hasher, data = hashlib.sha256(), bytearray()
    partial = path.with_suffix(f".{secrets.token_hex(4)}.part")
    out = None if sealed else os.fdopen(_create_private(partial), "wb")
    try:
        async for message in messages:
            if message.WhichOneof("part") != "chunk":
                continue
            hasher.update(message.chunk)
            if out is None:
                data += message.chunk
            else:
                out.write(message.chunk)
        if out is not None:
            out.close()
        if hasher.hexdigest() != digest:
            raise InvalidArgument(
                f"artifact digest mismatch: registry said {digest}, "
                f"downloaded bytes hash to {hasher.hexdigest()}"
            )
        if sealed:
            return bytes(data)
        os.replace(partial, path)
        return path
    finally:
        if out is not None:
            with contextlib.suppress(OSError):
                out.close()
            partial.unlink(missing_ok=True)


def _create_private(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
