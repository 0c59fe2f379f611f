"""Content-addressed artifact store: sha256 of the plaintext -> blob, encrypted at rest.

Uploads stream into a temporary file while their sha256 is computed, so nothing is
ever whole in memory; a blob that is already stored is not written twice. With a
key configured, blobs are sealed with AES-256-GCM in independent chunks (each
chunk's nonce and associated data bind its index and whether it is the last, so
chunks cannot be reordered, dropped or truncated unnoticed), and the key id is
kept so keys can be rotated. Downloads decrypt on the fly.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

CHUNK = 1024 * 1024
_MAGIC = b"LMLENC1\n"
_SEALED = struct.Struct("<I")  # ciphertext length of the next chunk


@dataclass(frozen=True)
class KeyRing:
    """The key new blobs are sealed with, and every key old blobs may need."""

    current_id: str
    keys: dict[str, bytes]

    @classmethod
    def parse(
        cls, current: str | None, current_id: str, old: str | None = None, what: str = "artifact"
    ) -> KeyRing | None:
        """From base64 keys: `current`, and `old` as "id:base64,id:base64"."""
        if not current:
            return None
        keys = {current_id: _key(current, current_id, what)}
        return cls(current_id, {**keys, **parse_keys(old, what)})


def parse_keys(old: str | None, what: str = "artifact") -> dict[str, bytes]:
    """Keys given as "id:base64,id:base64" (retired keys), by id."""
    keys: dict[str, bytes] = {}
    for item in filter(None, (old or "").split(",")):
        key_id, _, value = item.partition(":")
        keys[key_id.strip()] = _key(value, key_id, what)
    return keys


def _key(value: str, key_id: str, what: str = "artifact") -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        raise ValueError(f"{what} key {key_id!r} is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"{what} key {key_id!r} must be 32 bytes (base64), got {len(raw)}")
    return raw


@dataclass
class Staged:
    """An upload received into a temporary file, not yet in the store."""

    path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class ArtifactStore:
    def __init__(self, root: Path, keys: KeyRing | None = None, max_bytes: int = 1 << 30) -> None:
        self.root = root
        self.keys = keys
        self.max_bytes = max_bytes
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    async def stage(
        self, chunks: AsyncIterator[bytes], expected_sha256: str = "", expected_size: int = 0
    ) -> Staged:
        """Receive an upload into a temp file, enforcing the size limit and the client's digest."""
        if expected_size > self.max_bytes:
            raise ResourceExhausted(
                f"artifact of {expected_size} bytes exceeds the limit of {self.max_bytes} bytes"
            )
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="upload-")
        path = Path(name)
        hasher, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ResourceExhausted(
                            f"artifact exceeds the limit of {self.max_bytes} bytes"
                        )
                    hasher.update(chunk)
                    out.write(chunk)
            if size == 0:
                raise InvalidArgument("the upload carried no artifact bytes")
            if expected_size and size != expected_size:
                raise InvalidArgument(
                    f"truncated upload: received {size} of the {expected_size} bytes announced"
                )
            actual = hasher.hexdigest()
            if expected_sha256 and expected_sha256.lower() != actual:
                raise InvalidArgument(
                    f"sha256 mismatch: the client announced {expected_sha256.lower()}, "
                    f"the bytes received hash to {actual}"
                )
        except BaseException:
            path.unlink(missing_ok=True)  # noqa: ASYNC240 (a local unlink, not I/O wait)
            raise
        return Staged(path, actual, size)

    def commit(self, staged: Staged) -> str:
        """Move a staged upload into the store (sealed when a key is set); return the key id."""
        target = self.blob_path(staged.sha256)
        key_id = self.keys.current_id if self.keys else ""
        if target.exists():
            staged.discard()
            os.utime(target)  # just used again: `collect` leaves it alone for a while
            return self.key_id_of(staged.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.keys is None:
            os.replace(staged.path, target)
            return ""
        sealed = staged.path.with_suffix(".sealed")
        try:
            with staged.path.open("rb") as src, sealed.open("wb") as out:
                self._seal(src, out, key_id)
            os.replace(sealed, target)
        finally:
            sealed.unlink(missing_ok=True)
            staged.discard()
        return key_id

    def key_id_of(self, sha256: str) -> str:
        with self.blob_path(sha256).open("rb") as f:
            head = f.read(len(_MAGIC))
            if head != _MAGIC:
                return ""
            (n,) = struct.unpack("<H", f.read(2))
            return f.read(n).decode()

    def exists(self, sha256: str) -> bool:
        return self.blob_path(sha256).exists()

    def collect(self, sha256: str, min_age: float = 60.0) -> bool:
        """Delete a blob no version references any more (the caller checked), unless it
        was stored or uploaded again within `min_age` seconds (a registration under way)."""
        path = self.blob_path(sha256)
        try:
            if time.time() - path.stat().st_mtime < min_age:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def read(self, sha256: str) -> Iterator[bytes]:
        """The blob's plaintext in chunks; raises if it is missing or was tampered with."""
        path = self.blob_path(sha256)
        if not path.exists():
            raise FailedPrecondition(f"artifact {sha256} is missing from the store")
        with path.open("rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                f.seek(0)
                while chunk := f.read(CHUNK):
                    yield chunk
                return
            (n,) = struct.unpack("<H", f.read(2))
            key_id = f.read(n).decode()
            if self.keys is None or key_id not in self.keys.keys:
                raise FailedPrecondition(
                    f"artifact {sha256} is sealed with key {key_id!r}, which is not configured"
                )
            yield from self._open(f, self.keys.keys[key_id], sha256)

    def _seal(self, src: BinaryIO, out: BinaryIO, key_id: str) -> None:
        assert self.keys is not None
        aead = AESGCM(self.keys.keys[key_id])
        prefix = os.urandom(4)
        out.write(_MAGIC)
        encoded = key_id.encode()
        out.write(struct.pack("<H", len(encoded)) + encoded + prefix)
        index = 0
        chunk = src.read(CHUNK)
        while True:
            following = src.read(CHUNK)
            last = not following
            nonce = prefix + struct.pack("<Q", index)
            sealed = aead.encrypt(nonce, chunk, struct.pack("<Q?", index, last))
            out.write(_SEALED.pack(len(sealed)) + sealed)
            if last:
                return
            chunk, index = following, index + 1

    @staticmethod
    def _open(f: BinaryIO, key: bytes, sha256: str) -> Iterator[bytes]:
        aead = AESGCM(key)
        prefix = f.read(4)
        index = 0
        header = f.read(_SEALED.size)
        while header:
            (length,) = _SEALED.unpack(header)
            sealed = f.read(length)
            header = f.read(_SEALED.size)
            nonce = prefix + struct.pack("<Q", index)
            try:
                yield aead.decrypt(nonce, sealed, struct.pack("<Q?", index, not header))
            except InvalidTag:
                raise FailedPrecondition(
                    f"artifact {sha256} failed its integrity check (chunk {index})"
                ) from None
            index += 1
