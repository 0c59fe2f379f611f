"""FeedAuthenticator: tokens as the feed told them, certificates by --cert-roles."""

from __future__ import annotations

import time

import pytest

from services.common.auth import AuthError, Role, hash_secret
from services.common.data_auth import FeedAuthenticator, parse_cert_roles
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.dataplane.watcher import Picture


def credential(secret: str, role: int, expire_in: float | None = None) -> rpb.WatchEvent:
    event = rpb.WatchEvent(type=rpb.WatchEvent.TYPE_PUT, resource_name="tokens/t1")
    event.credential.name = "tokens/t1"
    event.credential.display_name = "app"
    event.credential.role = role  # type: ignore[assignment]
    event.credential.secret_sha256 = hash_secret(secret)
    if expire_in is not None:
        event.credential.expire_time.FromMicroseconds(int((time.time() + expire_in) * 1e6))
    return event


def test_tokens_from_the_feed_and_their_revocation() -> None:
    picture = Picture()
    auth = FeedAuthenticator(lambda: picture.credentials, parse_cert_roles("gw=gateway"))
    picture.apply([credential("s3cret", rpb.ROLE_CLIENT)])
    principal = auth.check("s3cret", None)
    assert principal.role is Role.CLIENT and principal.name == "tokens/t1 (app)"
    assert auth.still_valid(principal) is None
    revoked = credential("s3cret", rpb.ROLE_CLIENT)
    revoked.credential.revoked = True
    picture.apply([revoked])
    with pytest.raises(AuthError, match="not valid"):
        auth.check("s3cret", None)
    assert auth.still_valid(principal) == "tokens/t1 (app) has been revoked"
    assert auth.check(None, "gw").role is Role.GATEWAY
    with pytest.raises(AuthError, match="'intruder' has no role here"):
        auth.check(None, "intruder")
    with pytest.raises(AuthError, match="missing credentials"):
        auth.check(None, None)


def test_expiry_is_enforced_locally() -> None:
    picture = Picture()
    picture.apply([credential("old", rpb.ROLE_CLIENT, expire_in=-1)])
    auth = FeedAuthenticator(lambda: picture.credentials)
    with pytest.raises(AuthError, match=r"tokens/t1 \(app\) has expired"):
        auth.check("old", None)


def test_before_the_first_snapshot_says_so() -> None:
    auth = FeedAuthenticator(dict, synced=lambda: False)
    with pytest.raises(AuthError, match="has not heard the registry"):
        auth.check("anything", None)


def test_cert_roles_name_the_bad_entry() -> None:
    with pytest.raises(ValueError, match="cert_roles entry 'x=boss'"):
        parse_cert_roles("x=boss")
