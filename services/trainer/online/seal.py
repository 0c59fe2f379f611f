"""Checkpoints sealed with a MAC: a learner restores only state a trainer of this
deployment wrote (the registry keeps the bytes, but cannot forge or alter them).

The key is `--checkpoint-key` (shared by every trainer replica), or else derived from
the trainer's registry token, which replicas share when they run under one identity.
"""

from __future__ import annotations

import hashlib
import hmac

MAGIC = b"LMCK1"
TAG = 32


class SealError(ValueError):
    """The checkpoint was not sealed with this key (or was altered)."""


def derive_key(secret: str) -> bytes:
    return hashlib.sha256(b"liveml checkpoint key|" + secret.encode()).digest()


def seal(key: bytes, data: bytes) -> bytes:
    return MAGIC + hmac.new(key, data, hashlib.sha256).digest() + data


def unseal(key: bytes, blob: bytes) -> bytes:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + TAG:
        raise SealError("not a sealed liveml checkpoint")
    tag, data = blob[len(MAGIC) : len(MAGIC) + TAG], blob[len(MAGIC) + TAG :]
    if not hmac.compare_digest(tag, hmac.new(key, data, hashlib.sha256).digest()):
        raise SealError(
            "the checkpoint's MAC does not match: it was written with another key "
            "(--checkpoint-key) or altered"
        )
    return data
