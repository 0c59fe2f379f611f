"""Per-worker identity: a worker's credential acts as one worker id, and no other.

A token of role worker carries a `worker_id`: given at creation (`liveml token create
NAME --role worker --worker-id ID`; it never moves), or taken from the token's first
RegisterWorker (trust on first use). Binding on first use keeps an existing worker
token working, for one worker at a time, with no step for the operator: once that
worker has left (DeleteWorker, or its lease expired and it was swept) the token may
register under another id — a pod restarted under a new name — but never act for
two workers at once. Binding at creation is for those who want the id fixed. A first
use may not take an id that another live (not revoked, not expired) worker token is
bound to, so a stolen unbound token cannot take over a running worker. A worker
certificate (mutual TLS, `--cert-roles CN=worker`) acts as the worker named by its
common name.

Bound, a worker's credential may register, heartbeat, report windows (its own,
`reporter` = `workers/{id}`, source WORKER) and leave only as that id; anything else
is PERMISSION_DENIED naming the bound id. Admins act for any worker. The binding is
checked inside the write transaction, which takes the registry's revision row, so
two first uses of one token cannot both bind it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.auth import Principal, Role, current_principal
from services.common.errors import PermissionDenied
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import names
from services.registry.db import TokenRow, WorkerRow
from services.registry.security import TokenPrincipal
from services.registry.store import Tx, now_us

# Set at start from `--shared-worker-tokens`: a worker token not bound at creation acts
# for any worker (one Secret for a scaled Deployment's pods), as before binding existed.
SHARED_TOKENS = False


async def _shared(session: AsyncSession, principal: Principal) -> bool:
    """A shared worker token (allowed by the registry and not bound at creation)."""
    if not SHARED_TOKENS or not isinstance(principal, TokenPrincipal):
        return False
    row = await session.get(TokenRow, principal.token_id)
    return row is not None and not row.worker_id_fixed


def _restricted() -> Principal | None:
    """The caller if it is a worker credential (bound or to be bound), else None."""
    principal = current_principal()
    if principal is None or principal.role is not Role.WORKER:
        return None
    return principal


async def _bound_id(session: AsyncSession, principal: Principal) -> str:
    if isinstance(principal, TokenPrincipal):
        row = await session.get(TokenRow, principal.token_id)
        return (row.worker_id or "") if row is not None else ""
    return principal.name.removeprefix("cert:")


async def register_as(tx: Tx, requested: str) -> str:
    """The worker id a RegisterWorker registers (`requested`, or "" for "mine or a new
    one"), binding an unbound worker token to it; PermissionDenied if it may not."""
    principal = _restricted()
    if principal is None or await _shared(tx.session, principal):
        return requested or secrets.token_hex(6)
    bound = await _bound_id(tx.session, principal)
    if bound and (not requested or requested == bound):
        return bound
    if bound and not await _moves(tx, principal, bound):
        raise PermissionDenied(
            f"{principal.name} is bound to worker workers/{bound}; it may not register "
            f"as workers/{requested}"
        )
    assert isinstance(principal, TokenPrincipal)  # certificates are always bound
    worker_id = names.check_id("worker", requested or secrets.token_hex(6))
    now = now_us()
    other = (
        await tx.session.execute(
            select(TokenRow.id).where(
                TokenRow.worker_id == worker_id,
                TokenRow.id != principal.token_id,
                TokenRow.revoked.is_(False),
                or_(TokenRow.expire_us.is_(None), TokenRow.expire_us > now),
            )
        )
    ).first()
    if other is not None:
        raise PermissionDenied(
            f"{principal.name} may not register as workers/{worker_id}: that worker id is "
            "bound to another worker token (an admin can create a token bound to it: "
            "liveml token create NAME --role worker --worker-id ID)"
        )
    row = await tx.session.get(TokenRow, principal.token_id)
    assert row is not None
    row.worker_id = worker_id
    details = {"worker_id": worker_id, **({"previous": bound} if bound else {})}
    await tx.audit("BindWorkerToken", f"tokens/{row.id}", None, None, details)
    return worker_id


async def _moves(tx: Tx, principal: Principal, bound: str) -> bool:
    """Whether a token bound on first use may bind again: its worker left (or its lease
    expired), so a worker restarted under a new id (a new pod name) can register.
    One worker at a time: never two ids at once, never a binding made at creation."""
    if not isinstance(principal, TokenPrincipal):
        return False
    row = await tx.session.get(TokenRow, principal.token_id)
    if row is None or row.worker_id_fixed:
        return False
    return await tx.session.get(WorkerRow, bound) is None


async def check_acts_as(session: AsyncSession, worker_id: str, action: str) -> None:
    """A worker credential may `action` (heartbeat, leave) only as its bound worker."""
    principal = _restricted()
    if principal is None or await _shared(session, principal):
        return
    bound = await _bound_id(session, principal)
    if not bound:
        raise PermissionDenied(
            f"{principal.name} is not bound to a worker yet: RegisterWorker first "
            f"(it binds to the id registered), then {action}"
        )
    if bound != worker_id:
        raise PermissionDenied(
            f"{principal.name} is bound to worker workers/{bound}; it may not {action} "
            f"as workers/{worker_id}"
        )


async def check_windows(session: AsyncSession, windows: Iterable[rpb.Window]) -> None:
    """Workers report their own windows only; gateways report gateway windows only."""
    principal = current_principal()
    if principal is None or principal.role not in (Role.WORKER, Role.GATEWAY):
        return
    if principal.role is Role.GATEWAY:
        for window in windows:
            if window.source != rpb.WINDOW_SOURCE_GATEWAY:
                raise PermissionDenied(
                    f"{principal.name} (role gateway) may report only WINDOW_SOURCE_GATEWAY "
                    f"windows; got {rpb.WindowSource.Name(window.source)}"
                )
        return
    if await _shared(session, principal):
        return
    bound = await _bound_id(session, principal)
    for window in windows:
        if window.source != rpb.WINDOW_SOURCE_WORKER or window.reporter != f"workers/{bound}":
            raise PermissionDenied(
                f"{principal.name} may report only its own worker windows (source "
                f"WINDOW_SOURCE_WORKER, reporter workers/{bound or '<bound at RegisterWorker>'}); "
                f"got {rpb.WindowSource.Name(window.source)} from {window.reporter!r}"
            )
