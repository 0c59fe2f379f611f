"""The one server bootstrap every liveml service uses.

It builds a grpc.aio server with raised message limits, requests decoded so that a
malformed one is INVALID_ARGUMENT (`decoding`), the standard health
service (for Kubernetes probes), server reflection (for grpcurl / `buf curl`),
tracing and auth interceptors, TLS or mutual TLS from the settings, a
Prometheus endpoint, and where asked a plaintext port that serves health alone (for
probes that cannot show a client certificate); and it shuts down gracefully on SIGTERM: health turns
NOT_SERVING, no new call is accepted, in-flight calls get `shutdown_grace`
seconds to finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import traceback
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common import config, decoding, metrics_server, telemetry
from services.common.auth import Authenticator, AuthInterceptor, Role
from services.common.config import ServerSettings
from services.common.tls import server_credentials

log = logging.getLogger(__name__)

# Longest one step of a server's stop (ending its background work) may take.
STOP_STEP_SECONDS = 3.0

# A function that adds servicers to the server and returns their full service names.
Registrar = Callable[[aio.Server], Sequence[str]]


def grpc_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Two servers must never share a port silently (tests pick free ports).
        ("grpc.so_reuseport", 0),
    ]


def address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class CannotListen(OSError):
    """A port the settings name cannot be listened on: the caller's to change, so
    `liveml <service> serve` says it in one line (exit 2), not as a traceback."""

    def __init__(self, name: str, setting: str, where: str, why: str) -> None:
        self.setting = setting
        self.where = where
        super().__init__(
            f"{name}: cannot listen on {where} ({why}): choose another with "
            f"{config.flag_and_variable(setting)}"
        )


def _why_not(host: str, port: int) -> str:
    """Why `host:port` cannot be bound, in the kernel's words (grpc says only "failed")."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.bind(infos[0][4])
    except OSError as exc:
        return _strerror(exc)
    return "grpc could not bind it"


_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.EPERM})


def _strerror(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    return (exc.strerror or str(exc)).lower()


@dataclass
class RunningServer:
    """A started server: its bound ports, health servicer and how to stop it."""

    name: str
    server: aio.Server
    port: int
    metrics_port: int | None
    health: HealthServicer
    services: list[str]
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    health_server: aio.Server | None = None
    health_port: int | None = None

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ["", *self.services]:
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, give in-flight ones `grace` seconds, then close."""
        await self.set_serving(False)
        for hook in self.on_stop:
            # Bounded: a step stuck on a task that cannot end (SQLAlchemy's aiosqlite
            # close waits for ever on a cancelled connection, aiosqlite >= 0.22) must
            # not keep the process from stopping.
            try:
                async with asyncio.timeout(STOP_STEP_SECONDS):
                    await hook()
            except TimeoutError:
                log.error("%s: a stop step took over %g s; going on", self.name, STOP_STEP_SECONDS)
        stopping = asyncio.ensure_future(self.server.stop(grace))
        await asyncio.sleep(0)  # let the core start its shutdown before saying so
        log.info("%s: refusing new calls; in-flight calls have %.0f s", self.name, grace)
        await stopping
        if self.health_server is not None:
            await self.health_server.stop(0)


async def start_server(
    name: str,
    settings: ServerSettings,
    register: Registrar,
    *,
    authenticator: Authenticator | None = None,
    policy: Mapping[str, Collection[Role]] | None = None,
    interceptors: Sequence[aio.ServerInterceptor] = (),
) -> RunningServer:
    """Build, bind and start a server; raise if the port cannot be bound."""
    # The tracing interceptor costs tens of microseconds per call: only when spans go somewhere.
    chain: list[aio.ServerInterceptor] = (
        [telemetry.tracing_interceptor()] if telemetry.tracing_enabled() else []
    )
    if authenticator is not None:
        chain.append(AuthInterceptor(authenticator, policy or {}))
    chain.extend(interceptors)
    # No interceptor list at all when there is none: grpc.aio then skips its interception path.
    server = aio.server(
        interceptors=chain or None, options=grpc_options(settings.max_message_bytes)
    )

    # Every service decodes through `decoding`: a request that is not valid protobuf is
    # INVALID_ARGUMENT naming the message expected, not grpc's UNKNOWN.
    guarded = cast(aio.Server, decoding.Guarded(server))
    services = list(register(guarded))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, guarded)
    reflection.enable_server_reflection(
        [
            *services,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        guarded,
    )

    credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    # Checked before anything listens: a bad setting must not leave a port half served.
    if (settings.metrics_tls_cert is None) != (settings.metrics_tls_key is None):
        raise ValueError("--metrics-tls-cert and --metrics-tls-key go together")
    metrics_token = (
        metrics_server.read_token(settings.metrics_token_file)
        if settings.metrics_token_file
        else None
    )
    where = address(settings.host, settings.port)
    try:
        if credentials is None:
            port = server.add_insecure_port(where)
        else:
            port = server.add_secure_port(where, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise CannotListen(name, "port", where, _why_not(settings.host, settings.port))
    await server.start()
    try:
        health_server, health_port = await _health_only(name, health, settings)
        metrics_host = settings.metrics_host or settings.host
        try:
            metrics_port = metrics_server.start(
                metrics_host,
                settings.metrics_port,
                tls_cert=settings.metrics_tls_cert,
                tls_key=settings.metrics_tls_key,
                token=metrics_token,
            )
        except OSError as exc:
            # Only binding: a missing certificate file is an OSError too, and not a port's.
            if not isinstance(exc, socket.gaierror) and exc.errno not in _BIND_ERRORS:
                raise
            if health_server is not None:
                await health_server.stop(0)
            setting = "metrics_port"
            if isinstance(exc, socket.gaierror):  # a host name that does not resolve
                setting = "metrics_host" if settings.metrics_host else "host"
            where = address(metrics_host, settings.metrics_port)
            raise CannotListen(name, setting, where, _strerror(exc)) from exc
    except BaseException:
        await server.stop(0)  # nothing half served: the gRPC port closes again
        raise
    running = RunningServer(
        name,
        server,
        port,
        metrics_port,
        health,
        services,
        health_server=health_server,
        health_port=health_port,
    )
    await running.set_serving(True)
    log.info(
        "%s listening on %s (%s), metrics %s%s",
        name,
        address(settings.host, port),
        "mTLS" if settings.tls_client_ca else "TLS" if credentials else "plaintext",
        f"on {metrics_port}" if metrics_port is not None else "off",
        f", health alone (plaintext) on {health_port}" if health_port is not None else "",
    )
    return running


async def _health_only(
    name: str, health: HealthServicer, settings: ServerSettings
) -> tuple[aio.Server | None, int | None]:
    """A plaintext server with the health service and nothing else, when asked for.

    Kubernetes' gRPC probes cannot show a client certificate, so a mutual-TLS port cannot
    be probed; this one tells only SERVING or NOT_SERVING (the same servicer as the main
    port, so draining shows here too), which is as open as health is everywhere."""
    if settings.health_port < 0:
        return None, None
    health_server = aio.server(options=grpc_options(64 * 1024))
    health_pb2_grpc.add_HealthServicer_to_server(health, health_server)
    where = address(settings.host, settings.health_port)
    try:
        port = health_server.add_insecure_port(where)
    except RuntimeError:
        port = 0
    if port == 0:
        why = _why_not(settings.host, settings.health_port)
        raise CannotListen(name, "health_port", where, why)
    await health_server.start()
    return health_server, port


def stop_on_signal() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; taken before the server starts, so a signal
    that comes while it starts (right after it says it listens) still stops it gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_until_signal(running: RunningServer, grace: float, stop: asyncio.Event) -> None:
    """Serve until `stop` (see stop_on_signal), then stop gracefully."""
    waiter = asyncio.ensure_future(running.server.wait_for_termination())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        await running.stop(grace)
    for task in (waiter, stopper):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    log.info("%s stopped", running.name)


async def _end_the_rest(name: str, within: float = 5.0) -> None:
    """Cancel the background tasks still running once the server stopped, and wait for
    them a while. One that will not end is named with where it waits, and the process
    exits anyway: a stopped server must not hang its pod's termination on it."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    if not rest:
        return
    _, pending = await asyncio.wait(rest, timeout=within)
    if not pending:
        return
    for task in pending:
        where = "".join(traceback.format_list(traceback.extract_stack(task.get_stack()[-1])))
        log.warning("%s: task %s did not end when cancelled; waiting at:\n%s", name, task, where)
    logging.shutdown()
    os._exit(0)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def run(
    name: str,
    settings: ServerSettings,
    build: Callable[[], Awaitable[RunningServer]],
) -> int:
    """Process entry point of a `liveml … serve` command: start, serve, exit 0."""
    configure_logging(settings.log_level)
    plaintext = config.plaintext_upstreams(settings)
    if plaintext:
        # Encrypting the front door and not the calls behind it would leave a token and
        # every request readable on the wire, with nothing to say so.
        what = " and ".join(plaintext)
        if not getattr(settings, "allow_plaintext_upstream", False):
            log.error(
                "%s serves TLS but would call %s in plaintext: give the CA to verify it "
                "with, or start with --allow-plaintext-upstream (LIVEML_ALLOW_PLAINTEXT_UPSTREAM) "
                "to accept that",
                name,
                what,
            )
            return 2
        log.warning(
            "%s serves TLS but calls %s IN PLAINTEXT (--allow-plaintext-upstream): "
            "tokens and requests on those links can be read and changed on the wire",
            name,
            what,
        )
    telemetry.setup_tracing(f"liveml-{name}", settings.otlp_endpoint)

    async def main() -> None:
        stop = stop_on_signal()
        building = asyncio.ensure_future(build())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({building, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not building.done():
            # Stopped while starting (waiting on a database, say): nothing serves yet.
            building.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await building
            log.info("%s stopped while starting", name)
            return
        await serve_until_signal(building.result(), settings.shutdown_grace, stop)
        await _end_the_rest(name)

    loop_factory = None
    if settings.event_loop != "asyncio":
        try:
            import uvloop  # grpc.aio's per-call work runs faster on it (bench/RESULTS.md)

            loop_factory = uvloop.new_event_loop
        except ImportError:
            if settings.event_loop == "uvloop":
                raise
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    return 0
