"""Who may call the data plane (workers and gateways), checked without a registry call.

Bearer tokens are checked against the registry's credentials (sha256 of each secret,
role, expiry, revocation) as the watcher's picture last knew them: kept current by
the Watch feed, kept as they were while the registry is away (expiry still enforced
here). Client certificates are mapped to roles by `--cert-roles`. The per-call cost
is a dict lookup: the digest of recently seen secrets is remembered, so a client
that reuses its token pays for sha256 once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.common.auth import AuthError, Principal, Role, hash_secret
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

ROLE_OF_PROTO: dict[int, Role] = {
    rpb.ROLE_ADMIN: Role.ADMIN,
    rpb.ROLE_DEPLOYER: Role.DEPLOYER,
    rpb.ROLE_PUBLISHER: Role.PUBLISHER,
    rpb.ROLE_VIEWER: Role.VIEWER,
    rpb.ROLE_WORKER: Role.WORKER,
    rpb.ROLE_CLIENT: Role.CLIENT,
    rpb.ROLE_INGEST: Role.INGEST,
    rpb.ROLE_GATEWAY: Role.GATEWAY,
    rpb.ROLE_TRAINER: Role.TRAINER,
}
log = logging.getLogger(__name__)

# Secrets whose digest is remembered; past it the memory starts over (a flood of
# random tokens must not grow it without bound).
DIGEST_MEMORY = 4096


@dataclass(frozen=True)
class CredentialPrincipal(Principal):
    """A caller authenticated by a registry token: its digest, to re-check it later."""

    digest: str = ""
    expire_us: int = 0  # 0 = never


def parse_cert_roles(spec: str) -> dict[str, Role]:
    """`CN=role,CN=role` (the `--cert-roles` setting of every server) as a map."""
    roles: dict[str, Role] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, role = item.partition("=")
        try:
            roles[name.strip()] = Role(role.strip().lower())
        except ValueError:
            raise ValueError(
                f"cert_roles entry {item!r}: role must be one of {', '.join(r.value for r in Role)}"
            ) from None
    return roles


def _now_us() -> int:
    return int(time.time() * 1e6)


class FeedAuthenticator:
    """Tokens as the registry's feed tells them, certificates by a CN -> role map."""

    def __init__(
        self,
        credentials: Callable[[], Mapping[str, rpb.Credential]],
        certificates: Mapping[str, Role] | None = None,
        synced: Callable[[], bool] = lambda: True,
    ) -> None:
        self._credentials = credentials
        self._certificates = dict(certificates or {})
        self._synced = synced
        self._digests: dict[str, str] = {}

    def _digest(self, token: str) -> str:
        digest = self._digests.get(token)
        if digest is None:
            if len(self._digests) >= DIGEST_MEMORY:
                self._digests.clear()
            digest = self._digests[token] = hash_secret(token)
        return digest

    async def authenticate(self, token: str | None, peer_identity: str | None) -> Principal:
        return self.check(token, peer_identity)

    def check(self, token: str | None, peer_identity: str | None) -> Principal:
        if token is None:
            if peer_identity is not None:
                role = self._certificates.get(peer_identity)
                if role is None:
                    raise AuthError(
                        f"client certificate {peer_identity!r} has no role here (--cert-roles)"
                    )
                return Principal(f"cert:{peer_identity}", role)
            raise AuthError("missing credentials: send 'authorization: Bearer <token>' metadata")
        digest = self._digest(token)
        credential = self._credentials().get(digest)
        if credential is None:
            if not self._synced():
                raise AuthError("tokens not known yet: this server has not heard the registry")
            raise AuthError("the bearer token is not valid (unknown, or revoked)")
        expire_us = (
            credential.expire_time.ToMicroseconds() if credential.HasField("expire_time") else 0
        )
        if expire_us and expire_us <= _now_us():
            raise AuthError(f"token {credential.name} ({credential.display_name}) has expired")
        role = ROLE_OF_PROTO.get(credential.role)
        if role is None:
            raise AuthError(f"token {credential.name} has no role this server knows")
        return CredentialPrincipal(
            f"{credential.name} ({credential.display_name})", role, digest, expire_us
        )

    def still_valid(self, principal: Principal) -> str | None:
        """None while `principal`'s token stands, else why it no longer does."""
        if not isinstance(principal, CredentialPrincipal):
            return None
        if principal.digest not in self._credentials():
            return f"{principal.name} has been revoked"
        if principal.expire_us and principal.expire_us <= _now_us():
            return f"{principal.name} has expired"
        return None


def authenticator_for(
    name: str,
    allow_anonymous: bool,
    cert_roles: str,
    credentials: Callable[[], Mapping[str, rpb.Credential]],
    synced: Callable[[], bool] = lambda: True,
) -> FeedAuthenticator | None:
    """The authenticator a data-plane server checks callers with; None (and a loud
    warning) when the deployer opted out with --allow-anonymous."""
    certificates = parse_cert_roles(cert_roles)
    if allow_anonymous:
        log.warning(
            "%s: --allow-anonymous: inference, feedback and ingestion are served to ANY "
            "caller, with no token or certificate; anyone who reaches this port may use them",
            name,
        )
        return None
    return FeedAuthenticator(credentials, certificates, synced)
