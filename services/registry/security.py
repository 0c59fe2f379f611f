"""Who may call the registry: hashed, expiring, revocable tokens, and the role of each RPC."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.auth import AuthError, Principal, Role, current_principal, hash_secret
from services.common.data_auth import parse_cert_roles as parse_cert_roles
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry.db import TokenRow
from services.registry.store import Store, Tx, now_us


def actor() -> str:
    """Who the audit trail names for the current call."""
    principal = current_principal()
    return principal.name if principal else "anonymous"


SERVICE = "/liveml.registry.v1.RegistryService/"
TRAINING = "/liveml.training.v1.TrainingService/"

ROLE_TO_PROTO = {
    Role.ADMIN: rpb.ROLE_ADMIN,
    Role.DEPLOYER: rpb.ROLE_DEPLOYER,
    Role.PUBLISHER: rpb.ROLE_PUBLISHER,
    Role.VIEWER: rpb.ROLE_VIEWER,
    Role.WORKER: rpb.ROLE_WORKER,
    Role.CLIENT: rpb.ROLE_CLIENT,
    Role.INGEST: rpb.ROLE_INGEST,
    Role.GATEWAY: rpb.ROLE_GATEWAY,
    Role.TRAINER: rpb.ROLE_TRAINER,
}
PROTO_TO_ROLE: dict[int, Role] = {v: k for k, v in ROLE_TO_PROTO.items()}

_READ = {Role.VIEWER, Role.PUBLISHER, Role.DEPLOYER}
_DATA_PLANE = {Role.WORKER}
# A gateway reads the routing picture and reports what clients saw; it never needs a
# model's bytes, nor acts as a worker.
_GATEWAY_READS = ("GetModel", "ListModels", "GetVersion", "ListVersions", "GetRollout")
# Admins may call everything; every RPC not listed here is admin-only.
POLICY: dict[str, set[Role]] = {
    **{
        SERVICE + m: _READ | _DATA_PLANE
        for m in (
            "GetModel",
            "ListModels",
            "GetVersion",
            "ListVersions",
            "DownloadArtifact",
            "GetRollout",
            "ListWorkers",
            "Watch",
        )
    },
    **{
        SERVICE + m: set(_READ)
        for m in (
            "ListRolloutHistory",
            "ListAuditEvents",
            "VerifyAudit",
            "GetVersionMetrics",
            "ListAlerts",
            "WatchAlerts",
        )
    },
    **{SERVICE + m: {Role.PUBLISHER} for m in ("CreateModel", "UpdateModel", "CreateVersion")},
    SERVICE + "UpdateVersion": {Role.PUBLISHER, Role.DEPLOYER},
    **{
        SERVICE + m: {Role.DEPLOYER}
        for m in (
            "ReviewVersion",
            "SetAlias",
            "DeleteAlias",
            "UpdateRollout",
            "RollbackRollout",
            "ControlRollout",
        )
    },
    **{
        SERVICE + m: set(_DATA_PLANE)
        for m in ("RegisterWorker", "Heartbeat", "StreamHeartbeats", "DeleteWorker")
    },
    # Each caller only its own windows (worker_identity.check_windows).
    SERVICE + "ReportWindows": {Role.WORKER, Role.GATEWAY},
    **{
        TRAINING + m: _READ | {Role.TRAINER}
        for m in ("GetTrainingPolicy", "ListTrainingPolicies", "GetTrainingRun", "ListTrainingRuns")
    },
    **{TRAINING + m: {Role.DEPLOYER} for m in ("SetTrainingPolicy", "DeleteTrainingPolicy")},
    TRAINING + "RequestTrainingRun": {Role.DEPLOYER, Role.TRAINER},
    **{
        TRAINING + m: {Role.TRAINER}
        for m in (
            "ClaimTrainingRun",
            "UpdateTrainingRun",
            "ClaimLearner",
            "CommitLearnerCheckpoint",
            "PublishOnlineVersion",
        )
    },
    TRAINING + "GetLearnerStatus": _READ | {Role.TRAINER},
    # The event stream: gateways (worker or gateway tokens) log predictions and
    # feedback and store ingested examples; ingest tokens append examples only (the
    # servicer checks the kind) and import files; reading is for viewers and up.
    SERVICE + "AppendEvents": {Role.WORKER, Role.GATEWAY, Role.INGEST},
    SERVICE + "ImportExamples": {Role.INGEST},
    # `liveml data push` maps a file's columns onto the model's signature first.
    SERVICE + "GetModel": _READ | _DATA_PLANE | {Role.INGEST},
    # Trainers read the labelled examples they learn from.
    **{SERVICE + m: _READ | {Role.TRAINER} for m in ("ReadEvents", "GetEventStats")},
}
# A trainer reads what it trains against and registers what passes its gate; the
# registry, not the trainer, then approves it and starts its canary.
for _method in (
    "GetModel",
    "GetVersion",
    "DownloadArtifact",
    "GetRollout",
    "ListAlerts",
    "GetVersionMetrics",
):
    POLICY[SERVICE + _method] = POLICY[SERVICE + _method] | {Role.TRAINER}
POLICY[SERVICE + "CreateVersion"] = POLICY[SERVICE + "CreateVersion"] | {Role.TRAINER}
for _method in (*_GATEWAY_READS, "ListWorkers", "Watch"):
    POLICY[SERVICE + _method] = POLICY[SERVICE + _method] | {Role.GATEWAY}


# Operator-made tokens (a supplied bootstrap admin token) must look like generated ones:
# an id that fits the tokens table, and a secret long enough to be unguessable.
MIN_SUPPLIED_SECRET = 32
_WELL_FORMED = re.compile(rf"lml_[A-Za-z0-9-]{{1,32}}_[A-Za-z0-9_-]{{{MIN_SUPPLIED_SECRET},}}")


@dataclass(frozen=True)
class TokenPrincipal(Principal):
    """A caller authenticated by a registry token: which token, and (role worker) the
    worker id it is bound to ("" until its first RegisterWorker)."""

    token_id: str = ""
    worker_id: str = ""
    # Bound at creation (never moves) rather than on first use.
    worker_id_fixed: bool = False


def new_secret(token_id: str) -> str:
    return f"lml_{token_id}_{secrets.token_urlsafe(32)}"


def token_id_of(secret: str) -> str | None:
    parts = secret.split("_", 2)
    if len(parts) == 3 and parts[0] == "lml" and parts[1]:
        return parts[1]
    return None


def well_formed(secret: str) -> bool:
    """Whether `secret` is a token secret this registry could have made (lml_<id>_<secret>)."""
    return _WELL_FORMED.fullmatch(secret) is not None


def token_proto(row: TokenRow) -> rpb.Token:
    token = rpb.Token(
        name=f"tokens/{row.id}",
        display_name=row.display_name,
        role=row.role,  # type: ignore[arg-type]
        revoked=row.revoked,
        creator=row.creator,
        worker_id=row.worker_id or "",
    )
    token.create_time.FromMicroseconds(row.create_us)
    if row.expire_us is not None:
        token.expire_time.FromMicroseconds(row.expire_us)
    return token


def credential_proto(row: TokenRow) -> rpb.Credential:
    """What the data plane needs of a token to check it: the hash of its secret, never it."""
    credential = rpb.Credential(
        name=f"tokens/{row.id}",
        display_name=row.display_name,
        role=row.role,  # type: ignore[arg-type]
        secret_sha256=row.secret_hash,
        revoked=row.revoked,
    )
    if row.expire_us is not None:
        credential.expire_time.FromMicroseconds(row.expire_us)
    return credential


# Watchers that are told credentials (the data plane's servers, and admins).
CREDENTIAL_WATCHERS = frozenset({Role.WORKER, Role.GATEWAY, Role.ADMIN})


async def create_token(
    tx: Tx,
    display_name: str,
    role: Role,
    ttl_seconds: float | None,
    secret: str | None = None,
    worker_id: str = "",
) -> tuple[TokenRow, str]:
    """A new token: a generated secret, or `secret` (well formed) stored under its own id."""
    if secret is None:
        token_id = secrets.token_hex(6)
        secret = new_secret(token_id)
    else:
        supplied_id = token_id_of(secret)
        if supplied_id is None or not well_formed(secret):
            raise ValueError("not a well-formed token secret (lml_<id>_<secret>)")
        token_id = supplied_id
    created = now_us()
    row = TokenRow(
        id=token_id,
        secret_hash=hash_secret(secret),
        role=ROLE_TO_PROTO[role],
        display_name=display_name,
        creator=tx.actor,
        create_us=created,
        expire_us=None if ttl_seconds is None else created + int(ttl_seconds * 1e6),
        revoked=False,
        worker_id=worker_id or None,
        worker_id_fixed=bool(worker_id),
    )
    tx.session.add(row)
    await tx.session.flush()
    tx.put(credential_proto(row), f"tokens/{row.id}")
    return row, secret


async def count_tokens(store: Store) -> int:
    async with store.read() as session:
        return await count_tokens_in(session)


async def count_tokens_in(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(TokenRow))).scalar_one())


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class _Token:
    """What a call's check needs of a token row (a copy: rows belong to sessions)."""

    id: str
    secret_hash: str
    role: int
    display_name: str
    revoked: bool
    expire_us: int | None
    worker_id: str
    worker_id_fixed: bool

    @classmethod
    def of(cls, row: TokenRow) -> _Token:
        return cls(
            row.id,
            row.secret_hash,
            row.role,
            row.display_name,
            bool(row.revoked),
            row.expire_us,
            row.worker_id or "",
            bool(row.worker_id_fixed),
        )


class TokenAuthenticator:
    """Bearer tokens from the database; client certificates by a configured CN -> role map.

    Tokens are checked against an in-memory copy of the tokens table, not a database
    read per call (and per open stream every RECHECK_SECONDS): a token is read once,
    on its first use, and then kept current by this process's own writes (a revocation
    here is in the table before RevokeToken answers) and by the change feed's
    credential events for what other registry processes wrote (`follow`, in the
    feed's latency). A token the table does not know is looked up in the database.
    """

    def __init__(self, store: Store, certificates: Mapping[str, Role] | None = None) -> None:
        self._store = store
        self._certificates = dict(certificates or {})
        self._tokens: dict[str, _Token] = {}
        # Bumped by every change the table learns: a lookup that read the database
        # before a change landed must not put its older row back.
        self._epoch = 0
        store.row_listeners.append(self._learn_rows)
        store.event_listeners.append(self._learn_events)
        store.reset_listeners.append(self._forget_all)

    def _forget_all(self) -> None:
        self._epoch += 1
        self._tokens.clear()

    def _learn_rows(self, rows: list[object]) -> None:
        for row in rows:
            if isinstance(row, TokenRow):
                self._epoch += 1
                self._tokens[row.id] = _Token.of(row)

    def _learn_events(self, events: list[rpb.WatchEvent], local: bool) -> None:
        if local:
            return  # this process's writes arrive as rows, binding included
        for event in events:
            if event.WhichOneof("resource") == "credential":
                # Another registry wrote it: read it again at its next use.
                self._epoch += 1
                self._tokens.pop(simple_id(event.credential.name), None)

    async def _token(self, token_id: str) -> _Token | None:
        known = self._tokens.get(token_id)
        if known is not None:
            return known
        epoch = self._epoch
        async with self._store.read() as session:
            row = await session.get(TokenRow, token_id)
        if row is None:
            return None
        found = _Token.of(row)
        if epoch == self._epoch:
            self._tokens[token_id] = found
        return found

    async def authenticate(self, token: str | None, peer_identity: str | None) -> Principal:
        if token is None:
            if peer_identity is not None:
                role = self._certificates.get(peer_identity)
                if role is None:
                    raise AuthError(f"client certificate {peer_identity!r} has no role here")
                return Principal(f"cert:{peer_identity}", role)
            raise AuthError("missing credentials: send 'authorization: Bearer <token>' metadata")
        token_id = token_id_of(token)
        if token_id is None:
            raise AuthError("the bearer token is not valid")
        row = await self._token(token_id)
        if row is None or not secrets.compare_digest(row.secret_hash, hash_secret(token)):
            raise AuthError("the bearer token is not valid")
        if row.revoked:
            raise AuthError(f"token tokens/{row.id} ({row.display_name}) has been revoked")
        if row.expire_us is not None and row.expire_us <= now_us():
            raise AuthError(
                f"token tokens/{row.id} ({row.display_name}) expired at {_when(row.expire_us)}"
            )
        return TokenPrincipal(
            f"tokens/{row.id} ({row.display_name})",
            PROTO_TO_ROLE[row.role],
            token_id=row.id,
            worker_id=row.worker_id,
            worker_id_fixed=row.worker_id_fixed,
        )

    async def still_valid(self, principal: Principal) -> str | None:
        """None while the token of an open stream stands, else why it does not."""
        if not isinstance(principal, TokenPrincipal):
            return None
        row = await self._token(principal.token_id)
        if row is None or row.revoked:
            return f"{principal.name} has been revoked"
        if row.expire_us is not None and row.expire_us <= now_us():
            return f"{principal.name} expired at {_when(row.expire_us)}"
        return None


def simple_id(name: str) -> str:
    """`tokens/abc` -> `abc`."""
    return name.rsplit("/", 1)[-1]
