"""Authentication and role-based authorization of every RPC, as a server interceptor.

An `Authenticator` turns the caller's credentials (a bearer token from the
`authorization` metadata, or the identity of a verified client certificate) into a
`Principal`; a policy maps each RPC to the roles allowed to call it. Health checks
and reflection stay open so probes and `buf curl` work without a token. The
principal of the current call is available to servicers through `current_principal()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import hashlib
import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc import aio

log = logging.getLogger(__name__)

# How often an open stream's credential is checked again: a revoked or expired token
# ends the streams it opened within this (plus the feed's delay).
RECHECK_SECONDS = 0.25


class Role(enum.StrEnum):
    ADMIN = "admin"
    DEPLOYER = "deployer"
    PUBLISHER = "publisher"
    VIEWER = "viewer"
    WORKER = "worker"
    CLIENT = "client"
    INGEST = "ingest"
    GATEWAY = "gateway"
    TRAINER = "trainer"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's or certificate's identity and its role."""

    name: str
    role: Role


class AuthError(Exception):
    """Credentials missing or not valid (UNAUTHENTICATED); the message says why."""


class Authenticator(Protocol):
    async def authenticate(self, token: str | None, peer_identity: str | None) -> Principal:
        """Return the caller, or raise AuthError saying what is wrong with its credentials."""
        ...


def hash_secret(secret: str) -> str:
    """How token secrets are stored: never in the clear."""
    return hashlib.sha256(secret.encode()).hexdigest()


class StaticAuthenticator:
    """Fixed tokens (by the sha256 of their secret) and client-certificate identities.

    For servers that are not the registry: a worker or gateway given its callers
    in a file, and any server whose clients authenticate by mutual TLS.
    """

    def __init__(
        self,
        token_hashes: Mapping[str, Principal] | None = None,
        certificates: Mapping[str, Role] | None = None,
    ) -> None:
        self._tokens = dict(token_hashes or {})
        self._certificates = dict(certificates or {})

    async def authenticate(self, token: str | None, peer_identity: str | None) -> Principal:
        if token is not None:
            digest = hash_secret(token)
            for known, principal in self._tokens.items():
                if hmac.compare_digest(known, digest):
                    return principal
            raise AuthError("the bearer token is not valid")
        if peer_identity is not None:
            role = self._certificates.get(peer_identity)
            if role is None:
                raise AuthError(f"client certificate {peer_identity!r} is not allowed here")
            return Principal(f"cert:{peer_identity}", role)
        raise AuthError("missing credentials: send 'authorization: Bearer <token>' metadata")


OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "liveml_principal", default=None
)


def current_principal() -> Principal | None:
    """The caller of the RPC being served (None when auth is off or the RPC is open)."""
    return _principal.get()


def bearer_token(metadata: Collection[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def peer_identity(context: aio.ServicerContext[Any, Any]) -> str | None:
    """Common name of a verified client certificate (mutual TLS), if any."""
    auth = context.auth_context()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth.get(key)
        if values:
            return str(values[0].decode())
    return None


def _service_of(method: str) -> str:
    return method.lstrip("/").split("/", 1)[0]


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects calls without valid credentials or without a role the RPC allows.

    `policy` maps a full method name (`/pkg.Service/Method`) or a service name
    (`pkg.Service`) to its allowed roles; methods it does not name are denied,
    so a new RPC is closed until someone decides who may call it. Admins may call
    everything.
    """

    def __init__(
        self, authenticator: Authenticator, policy: Mapping[str, Collection[Role]]
    ) -> None:
        self._authenticator = authenticator
        self._policy = policy
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        recheck = getattr(authenticator, "still_valid", None)
        self._guards = _StreamGuards(recheck) if recheck is not None else None

    def _allowed(self, method: str) -> Collection[Role] | None:
        if method in self._policy:
            return self._policy[method]
        return self._policy.get(_service_of(method))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            # Built once per method: the check reads everything else from the call.
            return cached[1]
        if handler is None or _service_of(method) in OPEN_SERVICES:
            return handler
        wrapped = self._wrap_method(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap_method(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        allowed = self._allowed(method)

        async def check(context: aio.ServicerContext[Any, Any]) -> Principal:
            try:
                token = bearer_token(context.invocation_metadata())
                # The certificate only when there is no token: auth_context() costs.
                identity = None if token is not None else peer_identity(context)
                principal = await self._authenticator.authenticate(token, identity)
            except AuthError as exc:
                raise _Refused(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
            if principal.role is not Role.ADMIN and (not allowed or principal.role not in allowed):
                wanted = ", ".join(sorted(r.value for r in allowed or ())) or "admin"
                raise _Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{principal.name} (role {principal.role.value}) may not call {method}; "
                    f"it needs one of: {wanted}",
                )
            _principal.set(principal)
            return principal

        return _wrap(handler, check, self._guard)

    def _guard(
        self, principal: Principal, context: aio.ServicerContext[Any, Any]
    ) -> _StreamGuard | None:
        """For a server stream: a watch that ends it once its credential stands no more."""
        if self._guards is None:
            return None
        return self._guards.watch(principal, context)


class _Refused(Exception):
    """A call refused before its handler ran: the status to end it with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details

    async def abort(self, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(self.code, self.details)

    def end(self, context: aio.ServicerContext[Any, Any]) -> None:
        """End a streaming call with this status by returning (an abort raised inside a
        stream handler can reach a client that is still sending as INTERNAL)."""
        context.set_code(self.code)
        context.set_details(self.details)


class _StreamGuard:
    """One open stream under watch: ended UNAUTHENTICATED when its credential goes."""

    def __init__(self, guards: _StreamGuards, principal: Principal, context: Any) -> None:
        self.ended = False
        self.principal = principal
        self._guards = guards
        self._context = context
        self._task = asyncio.current_task()

    async def end(self, why: str) -> None:
        self.ended = True
        log.info("ending a stream of %s: %s", self.principal.name, why)
        with contextlib.suppress(Exception):
            await self._context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{why}; stream ended")
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        self._guards.forget(self)


class _StreamGuards:
    """Re-checks the credentials of every open stream (a token is otherwise checked
    once per call), each distinct credential once per RECHECK_SECONDS, from one task:
    a task per stream woke thousands of times a second once every worker of a fleet
    held a stream or two open."""

    def __init__(self, recheck: Callable[[Principal], Any]) -> None:
        self._recheck = recheck
        self._open: dict[Principal, set[_StreamGuard]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()

    def watch(self, principal: Principal, context: Any) -> _StreamGuard:
        guard = _StreamGuard(self, principal, context)
        self._open.setdefault(principal, set()).add(guard)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return guard

    def forget(self, guard: _StreamGuard) -> None:
        streams = self._open.get(guard.principal)
        if streams is not None:
            streams.discard(guard)
            if not streams:
                del self._open[guard.principal]

    async def _run(self) -> None:
        while self._open:
            await asyncio.sleep(RECHECK_SECONDS)
            for principal in list(self._open):
                try:
                    why = self._recheck(principal)
                    if inspect.isawaitable(why):
                        why = await why
                except Exception as exc:  # a database hiccup must not end a healthy stream
                    log.debug("re-checking %s failed: %s", principal.name, exc)
                    continue
                if why is None:
                    continue
                for guard in self._open.pop(principal, set()):
                    # Each on its own: an abort waits for its status to be sent.
                    ending = asyncio.ensure_future(guard.end(why))
                    self._ending.add(ending)
                    ending.add_done_callback(self._ending.discard)


Check = Callable[[aio.ServicerContext[Any, Any]], Awaitable[Principal]]
Guard = Callable[[Principal, aio.ServicerContext[Any, Any]], "_StreamGuard | None"]


def _single(inner: Callable[..., Awaitable[Any]], check: Check) -> Callable[..., Awaitable[Any]]:
    """A handler answering once (unary or client-streaming) with `check` run first."""

    async def handle(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            await check(context)
        except _Refused as refused:
            await refused.abort(context)
        return await inner(request, context)

    return handle


def _streaming(
    inner: Callable[..., AsyncIterator[Any]], check: Check, guard: Guard
) -> Callable[..., AsyncIterator[Any]]:
    """A server-streaming handler (unary or bidi) with `check` run first and its
    credential watched while it streams."""

    async def handle(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            principal = await check(context)
        except _Refused as refused:
            refused.end(context)
            return
        watch = guard(principal, context)
        try:
            async for item in inner(request, context):
                yield item
        except asyncio.CancelledError:
            if watch is None or not watch.ended:
                raise
        finally:
            if watch is not None:
                watch.close()

    return handle


def _wrap(handler: grpc.RpcMethodHandler, check: Check, guard: Guard) -> grpc.RpcMethodHandler:
    """The same handler with `check` run first in the call's own context."""
    codecs = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_single(handler.unary_unary, check), *codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, check, guard), *codecs
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_single(handler.stream_unary, check), *codecs)
    return grpc.stream_stream_rpc_method_handler(
        _streaming(handler.stream_stream, check, guard), *codecs
    )
