"""The registry's secrets given as files (--*-file settings): read and checked at start.

Each secret may be given as a value (flag or LIVEML_* variable) or as a file holding it,
not both. Files are read once, surrounding whitespace stripped. The database password
goes into the SQLAlchemy URL object only: a URL object prints its password as ***, so
it cannot reach a log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy.engine import URL, make_url

from services.registry import security
from services.registry.artifacts import KeyRing, parse_keys
from services.registry.settings import RegistrySettings


class SecretsError(ValueError):
    """A secret setting that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Secrets:
    database_url: URL  # with the password of --database-password-file, if set
    artifact_keys: KeyRing | None  # None: artifacts are stored unencrypted
    # None: no --audit-key, the registry uses (or makes) its own key file; the old keys
    # are then in `audit_old_keys`.
    audit_keys: KeyRing | None = None
    audit_old_keys: dict[str, bytes] | None = None


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')} (LIVEML_{name.upper()})"


def read_secret_file(path: Path, name: str) -> str:
    """The stripped content of the file of setting `name` (e.g. artifact_key_file)."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SecretsError(f"cannot read {_flag(name)} {path}: {reason}") from None


def _value_or_file(settings: RegistrySettings, name: str, *, empty_ok: bool = False) -> str | None:
    value: SecretStr | None = getattr(settings, name)
    path: Path | None = getattr(settings, f"{name}_file")
    if path is None:
        return value.get_secret_value() if value is not None else None
    if value is not None:
        raise SecretsError(f"set {_flag(name)} or {_flag(name + '_file')}, not both")
    text = read_secret_file(path, f"{name}_file")
    if not text and not empty_ok:
        raise SecretsError(f"{_flag(name + '_file')} {path} is empty")
    return text or None


def _database_url(settings: RegistrySettings) -> URL:
    try:
        url = make_url(settings.database_url)
    except Exception:  # SQLAlchemy's ArgumentError, whose message would quote the URL
        raise SecretsError(
            f"{_flag('database_url')} is not a SQLAlchemy URL (DRIVER://USER@HOST:PORT/DB)"
        ) from None
    path = settings.database_password_file
    if path is None:
        return url
    if url.password is not None:
        raise SecretsError(
            f"{_flag('database_url')} holds a password and {_flag('database_password_file')} "
            "is set: give the password in one place only (remove it from the URL)"
        )
    if url.get_backend_name() == "sqlite":
        raise SecretsError(f"{_flag('database_password_file')} is set, but SQLite has no password")
    password = read_secret_file(path, "database_password_file")
    if not password:
        raise SecretsError(f"{_flag('database_password_file')} {path} is empty")
    return url.set(password=password)


def resolved_secrets(settings: RegistrySettings) -> Secrets:
    """The secrets to run with, from values or files; SecretsError if they are unusable."""
    key = _value_or_file(settings, "artifact_key")
    # An empty file is fine: no retired keys (yet).
    old_keys = _value_or_file(settings, "artifact_old_keys", empty_ok=True)
    try:
        keys = KeyRing.parse(key, settings.artifact_key_id, old_keys)
    except ValueError as exc:  # names the key id, never the key
        raise SecretsError(str(exc)) from None
    audit_keys, audit_old = _audit_keys(settings)
    return Secrets(_database_url(settings), keys, audit_keys, audit_old)


def _audit_keys(settings: RegistrySettings) -> tuple[KeyRing | None, dict[str, bytes]]:
    key = _value_or_file(settings, "audit_key")
    old_text = _value_or_file(settings, "audit_old_keys", empty_ok=True)
    try:
        old = parse_keys(old_text, "audit")
        ring = KeyRing.parse(key, settings.audit_key_id, None, "audit")
    except ValueError as exc:  # names the key id, never the key
        raise SecretsError(str(exc)) from None
    if settings.audit_key_id in old:
        raise SecretsError(
            f"audit key id {settings.audit_key_id!r} is both {_flag('audit_key_id')} and one of "
            f"{_flag('audit_old_keys')}: give a new key a new id"
        )
    if ring is None:
        return None, old
    return KeyRing(ring.current_id, {**old, **ring.keys}), old


def supplied_admin_token(path: Path) -> str | None:
    """The bootstrap admin token an operator put in --admin-token-file, if any.

    A missing or empty file means none (one is generated and written there); a file
    holding anything but a well-formed token is an error, never overwritten.
    """
    if not path.exists():
        return None
    secret = read_secret_file(path, "admin_token_file")
    if not secret:
        return None
    if not security.well_formed(secret):
        raise SecretsError(
            f"{_flag('admin_token_file')} {path} holds no valid liveml token: expected "
            f"lml_<id>_<secret> (id: 1-32 letters, digits or '-'; secret: at least "
            f"{security.MIN_SUPPLIED_SECRET} letters, digits, '-' or '_'); empty the file "
            "to have one generated"
        )
    return secret
