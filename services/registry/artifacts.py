"""Content-addressed artifact store: sha256 of the plaintext -> blob, encrypted at rest.

Uploads stream into a temporary file while their sha256 is computed, so nothing is
ever whole in memory; a blob that is already stored is not written twice. With a
key configured, blobs are sealed with AES-256-GCM in independent chunks, and the key
id is kept so keys can be rotated. Downloads decrypt on the fly.

Format 2 (`LMLENC2`, every blob sealed now): each chunk's associated data binds the
artifact's sha256, the key id, the chunk's index and whether it is the last. So a
sealed blob is valid only under its own digest: one copied over another version's
blob file (or moved to another digest's path) fails authentication on its first
chunk, as do reordered, dropped or truncated chunks; nothing of it is served. The
nonce is a random 8-byte prefix per blob and a 4-byte chunk counter (a 4-byte
prefix, as format 1 had, collides between blobs after some 2^16 of them).

Older blobs — format 1 (`LMLENC1`, chunks bound only to their index) and plaintext
stored before a key was configured — carry nothing that ties them to their digest.
They stay readable, and are upgraded on first read rather than by a one-off
migration: the read decrypts the whole blob while hashing it and sealing it again
(format 2, current key) into a temporary file, and only if the plaintext hashes to
the blob's digest does the new blob replace the old and get served; otherwise the
read is refused and the file left as it is. A migration at start would have to
stop the registry for the whole store and would still leave the question of a
format-1 file put there later; checking on read covers every old blob whenever it
arrives, costs one extra pass once per blob, and never writes plaintext to disk.
Without a key, plaintext blobs are hashed as they stream and the last chunk is held
back until the digest matches, so a swapped file ends the download with an error.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)

CHUNK = 1024 * 1024
_MAGIC_V1 = b"LMLENC1\n"  # chunks bound to their index only: read, then upgraded
_MAGIC = b"LMLENC2\n"  # chunks bound to the digest and key id too
_SEALED = struct.Struct("<I")  # ciphertext length of the next chunk


class BlobMismatch(DataLoss):
    """The stored blob is not the artifact of its digest (swapped, moved or altered)."""


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
        if target.exists():
            staged.discard()
            os.utime(target)  # just used again: `collect` leaves it alone for a while
            return self.key_id_of(staged.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.keys is None:
            os.replace(staged.path, target)
            return ""
        try:
            with staged.path.open("rb") as src:
                self._seal_into(target, iter(lambda: src.read(CHUNK), b""), staged.sha256)
        finally:
            staged.discard()
        return self.keys.current_id

    def key_id_of(self, sha256: str) -> str:
        """The id of the key the blob is sealed with ("" for a plaintext blob)."""
        with self.blob_path(sha256).open("rb") as f:
            if f.read(len(_MAGIC)) not in (_MAGIC, _MAGIC_V1):
                return ""
            (n,) = struct.unpack("<H", f.read(2))
            return f.read(n).decode(errors="replace")

    def served_key_id(self, sha256: str) -> str:
        """The key id a download of the blob is sealed under at rest once read (an old
        blob is sealed again with the current key as it is read)."""
        if not self.exists(sha256):
            return ""
        key_id = self.key_id_of(sha256)
        if self.keys is None or (key_id in self.keys.keys and self._format(sha256) == 2):
            return key_id
        return self.keys.current_id

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

    def _format(self, sha256: str) -> int:
        with self.blob_path(sha256).open("rb") as f:
            head = f.read(len(_MAGIC))
        return 2 if head == _MAGIC else 1 if head == _MAGIC_V1 else 0

    def read(self, sha256: str) -> Iterator[bytes]:
        """The blob's plaintext in chunks; raises before serving a byte of a blob that is
        not this digest's (BlobMismatch) or is sealed with a key not configured."""
        path = self.blob_path(sha256)
        if not path.exists():
            raise FailedPrecondition(f"artifact {sha256} is missing from the store")
        fmt = self._format(sha256)
        if fmt == 0 and self.keys is None:
            yield from _verified_plaintext(path, sha256)
            return
        if fmt != 2:
            self._upgrade(sha256, fmt)
        with path.open("rb") as f:
            f.read(len(_MAGIC))
            (n,) = struct.unpack("<H", f.read(2))
            key_id = f.read(n).decode(errors="replace")
            key = self._key(sha256, key_id)
            yield from _open(f, AESGCM(key), _bound(sha256, key_id), sha256)

    def _key(self, sha256: str, key_id: str) -> bytes:
        if self.keys is None or key_id not in self.keys.keys:
            raise FailedPrecondition(
                f"artifact {sha256} is sealed with key {key_id!r}, which is not configured"
            )
        return self.keys.keys[key_id]

    def _upgrade(self, sha256: str, fmt: int) -> None:
        """Seal an old blob (format 1, or plaintext) as format 2 if, and only if, its
        plaintext hashes to `sha256`; BlobMismatch otherwise (the file is left alone)."""
        path = self.blob_path(sha256)
        hasher = hashlib.sha256()

        def plaintext() -> Iterator[bytes]:
            with path.open("rb") as f:
                if fmt == 0:
                    chunks: Iterator[bytes] = iter(lambda: f.read(CHUNK), b"")
                else:
                    f.read(len(_MAGIC_V1))
                    (n,) = struct.unpack("<H", f.read(2))
                    key_id = f.read(n).decode(errors="replace")
                    aead = AESGCM(self._key(sha256, key_id))
                    chunks = _open(f, aead, b"", sha256, prefix_bytes=4)
                for chunk in chunks:
                    hasher.update(chunk)
                    yield chunk

        def matches() -> None:
            if hasher.hexdigest() != sha256:
                raise BlobMismatch(
                    f"artifact {sha256}: the stored blob's plaintext hashes to {hasher.hexdigest()}"
                )

        self._seal_into(path, plaintext(), sha256, before_replace=matches)

    def _seal_into(
        self,
        target: Path,
        chunks: Iterator[bytes],
        sha256: str,
        before_replace: Callable[[], None] | None = None,
    ) -> None:
        """Seal `chunks` (format 2, current key) into a temp file, then replace `target`."""
        assert self.keys is not None
        key_id = self.keys.current_id
        aead = AESGCM(self.keys.keys[key_id])
        bound = _bound(sha256, key_id)
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="seal-")
        try:
            with os.fdopen(fd, "wb") as out:
                prefix = os.urandom(8)
                encoded = key_id.encode()
                out.write(_MAGIC + struct.pack("<H", len(encoded)) + encoded + prefix)
                index, chunk = 0, next(chunks, b"")
                while True:
                    following = next(chunks, b"")
                    last = not following
                    nonce = prefix + struct.pack("<I", index)
                    sealed = aead.encrypt(nonce, chunk, bound + struct.pack("<Q?", index, last))
                    out.write(_SEALED.pack(len(sealed)) + sealed)
                    if last:
                        break
                    chunk, index = following, index + 1
            if before_replace is not None:
                before_replace()
            os.replace(name, target)
        finally:
            Path(name).unlink(missing_ok=True)


def _bound(sha256: str, key_id: str) -> bytes:
    """Format 2's associated data, before each chunk's index and last flag."""
    encoded = key_id.encode()
    return _MAGIC + bytes.fromhex(sha256) + struct.pack("<H", len(encoded)) + encoded


def _open(
    f: BinaryIO, aead: AESGCM, bound: bytes, sha256: str, prefix_bytes: int = 8
) -> Iterator[bytes]:
    """The chunks after the header: format 2 (`bound` and an 8-byte nonce prefix), or
    format 1 (no `bound`, a 4-byte prefix and a 64-bit counter)."""
    prefix = f.read(prefix_bytes)
    index = 0
    header = f.read(_SEALED.size)
    while header:
        (length,) = _SEALED.unpack(header)
        sealed = f.read(length)
        header = f.read(_SEALED.size)
        counter = struct.pack("<I" if prefix_bytes == 8 else "<Q", index)
        try:
            yield aead.decrypt(
                prefix + counter, sealed, bound + struct.pack("<Q?", index, not header)
            )
        except InvalidTag:
            raise BlobMismatch(
                f"artifact {sha256} failed its integrity check (chunk {index}): the blob "
                "was sealed for another digest or key, or altered"
            ) from None
        index += 1


def _verified_plaintext(path: Path, sha256: str) -> Iterator[bytes]:
    """A plaintext blob in chunks, the last one held back until the digest matched."""
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        held = f.read(CHUNK)
        if not held:
            raise BlobMismatch(f"artifact {sha256}: the stored blob is empty")
        while held:
            following = f.read(CHUNK)
            hasher.update(held)
            if not following and hasher.hexdigest() != sha256:
                raise BlobMismatch(
                    f"artifact {sha256}: the stored blob hashes to {hasher.hexdigest()}"
                )
            yield held
            held = following
