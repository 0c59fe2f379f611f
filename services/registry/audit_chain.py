"""The audit trail's keyed chain: HMAC-SHA256 of each event, and the signed checkpoint.

The database holds the events; what vouches for them lives outside it, so that a
database writer alone cannot forge history:

- the audit key (`--audit-key[-file]`, or else `ARTIFACT_DIR/audit/key`, generated on
  first start with mode 0600) MACs every event together with the previous event's MAC
  and the id of the key used (`--audit-key-id`; retired keys stay usable for
  verification through `--audit-old-keys`);
- the checkpoint `ARTIFACT_DIR/audit/checkpoint.json` records the newest event's
  sequence and MAC, itself MACed. It is advanced after every commit that audits,
  never moved back, and never advanced over a database that no longer matches it,
  so a cut or rewritten tail stays visible.

Without the key, an edited, inserted, re-chained (with plain sha256) or reordered event
fails its MAC; with the checkpoint, deleting the tail does too. The checkpoint may lag
the database after a crash between commit and write: events past it still need valid
MACs, which only a key holder can make.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.registry.artifacts import KeyRing, parse_keys
from services.registry.db import AuditRow

log = logging.getLogger(__name__)

_EVENT = "liveml-audit-event/1"
_CHECKPOINT = "liveml-audit-checkpoint/1"


def event_fields(row: AuditRow) -> list[object]:
    """What an event's MAC (and the unkeyed hash of events before the keyed chain)
    covers, in order: everything but the MAC itself and its key id."""
    return [
        row.sequence,
        row.time_us,
        row.actor,
        row.action,
        row.target,
        row.before_digest,
        row.after_digest,
        row.details,
        row.previous_hash,
    ]


def event_mac(key: bytes, row: AuditRow) -> str:
    body = json.dumps(
        [_EVENT, *event_fields(row), row.key_id], separators=(",", ":"), ensure_ascii=False
    )
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def _checkpoint_mac(key: bytes, sequence: int, mac: str, key_id: str) -> str:
    body = json.dumps([_CHECKPOINT, sequence, mac, key_id], separators=(",", ":"))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """What the checkpoint file says. `problem` is set when it cannot be trusted
    (unreadable, not signed with a configured key, or altered); `missing` when absent."""

    sequence: int = 0
    mac: str = ""
    key_id: str = ""
    missing: bool = False
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.problem


class AuditChain:
    """The audit keys and the checkpoint file of one registry."""

    def __init__(self, keys: KeyRing, directory: Path) -> None:
        self.keys = keys
        self.directory = directory
        self.checkpoint_path = directory / "checkpoint.json"
        directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def local(
        cls, artifact_dir: Path, key_id: str, old: dict[str, bytes] | None = None
    ) -> AuditChain:
        """With the key in `ARTIFACT_DIR/audit/key`, made there on first start."""
        directory = artifact_dir / "audit"
        key = local_key(directory / "key", has_checkpoint=(directory / "checkpoint.json").exists())
        return cls(KeyRing(key_id, {**(old or {}), key_id: key}), directory)

    def seal(self, row: AuditRow) -> None:
        """Give `row` the current key id and its MAC (its previous_hash already set)."""
        row.key_id = self.keys.current_id
        row.hash = event_mac(self.keys.keys[row.key_id], row)

    def check(self, row: AuditRow) -> bool:
        key = self.keys.keys.get(row.key_id)
        return key is not None and hmac.compare_digest(event_mac(key, row), row.hash)

    def read_checkpoint(self) -> Checkpoint:
        try:
            data = json.loads(self.checkpoint_path.read_text())
            sequence, mac, key_id, seal = (
                int(data["sequence"]),
                str(data["mac"]),
                str(data["key_id"]),
                str(data["seal"]),
            )
        except FileNotFoundError:
            return Checkpoint(missing=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return Checkpoint(
                problem=f"the signed checkpoint {self.checkpoint_path} is unreadable ({exc})"
            )
        key = self.keys.keys.get(key_id)
        if key is None:
            return Checkpoint(
                sequence,
                mac,
                key_id,
                problem=f"the signed checkpoint is signed with audit key {key_id!r}, which is "
                "not configured (--audit-key-id / --audit-old-keys)",
            )
        if not hmac.compare_digest(_checkpoint_mac(key, sequence, mac, key_id), seal):
            return Checkpoint(
                sequence,
                mac,
                key_id,
                problem=f"the signed checkpoint {self.checkpoint_path} does not verify with "
                f"audit key {key_id!r}: it was altered, or that key is not the one it was "
                "written with",
            )
        return Checkpoint(sequence, mac, key_id)

    def advance(self, sequence: int, mac: str) -> None:
        """Record (sequence, mac) as the head, unless the checkpoint is already at or past it
        or cannot be trusted (then it is left as evidence)."""
        try:
            with self._locked():
                current = self.read_checkpoint()
                if current.problem or (current.ok and current.sequence >= sequence):
                    return
                key_id = self.keys.current_id
                seal = _checkpoint_mac(self.keys.keys[key_id], sequence, mac, key_id)
                body = {"sequence": sequence, "mac": mac, "key_id": key_id, "seal": seal}
                tmp = self.checkpoint_path.with_suffix(f".tmp-{os.getpid()}")
                _write_private(tmp, json.dumps(body, indent=1) + "\n")
                os.replace(tmp, self.checkpoint_path)
        except OSError as exc:
            # The change is committed; a checkpoint left behind only lags (events past it
            # still need valid MACs), so the caller is not failed for it.
            log.error("cannot advance the audit checkpoint %s: %s", self.checkpoint_path, exc)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Registry replicas sharing the artifact volume advance one checkpoint.
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def local_key(path: Path, *, has_checkpoint: bool = False) -> bytes:
    """The key in `path`, or a new one written there (mode 0600) if there is none.

    Replicas starting together agree on one: the new key is linked into place, which
    fails for all but the first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        if has_checkpoint:
            # The trail was written with a key that is gone: new events get a new one, and
            # `liveml audit verify` reports the old ones (restore the key file to fix it).
            log.warning(
                "audit key %s is missing although the trail has a checkpoint: generating a "
                "new key; the existing trail cannot be verified until the old key is restored",
                path,
            )
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        _write_private(tmp, base64.b64encode(os.urandom(32)).decode())
        try:
            os.link(tmp, path)
            log.info("audit key generated in %s (mode 0600)", path)
        except FileExistsError:
            pass  # another replica made it first
        finally:
            tmp.unlink(missing_ok=True)
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the audit key file {path}: {exc}") from None
    try:
        return parse_keys(f"local:{text}", "audit")["local"]
    except ValueError as exc:
        raise ValueError(f"the audit key file {path} holds no usable key: {exc}") from None
