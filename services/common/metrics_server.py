"""The Prometheus /metrics endpoint of every service: where it binds, TLS, a bearer token.

prometheus-client's WSGI server in a daemon thread, as its `start_http_server` runs it,
with two things added in front: TLS from `--metrics-tls-cert/--metrics-tls-key`, and a
bearer token (`--metrics-token-file`) every scrape must send as `Authorization: Bearer
…` — Prometheus' `authorization.credentials_file` and `tls_config` do both. The token
is kept as its sha256 and compared in constant time, so a wrong guess learns nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import (
    ThreadingWSGIServer,
    _get_best_family,
    _get_ssl_ctx,
    _SilentHandler,
)

Start = Callable[[str, list[tuple[str, str]]], Any]
App = Callable[[dict[str, Any], Start], Iterable[bytes]]


def read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"--metrics-token-file {path} is empty: it must hold the bearer token")
    return token


def _with_bearer(app: App, token: str) -> App:
    wanted = hashlib.sha256(token.encode()).digest()

    def guarded(environ: dict[str, Any], start: Start) -> Iterable[bytes]:
        sent = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, credential = sent.partition(" ")
        given = hashlib.sha256(credential.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, wanted):
            start(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
            )
            return [b"send the metrics token: Authorization: Bearer <token>\n"]
        return app(environ, start)

    return guarded


def start(
    host: str,
    port: int,
    registry: CollectorRegistry = REGISTRY,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    token: str | None = None,
) -> int | None:
    """Serve /metrics on `port` (0 = a free one, -1 = off); return the bound port."""
    if port < 0:
        return None
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("--metrics-tls-cert and --metrics-tls-key go together")

    class Server(ThreadingWSGIServer):
        """Its own class: the address family is set per server."""

    Server.address_family, addr = _get_best_family(host, port)  # type: ignore[no-untyped-call]
    app: App = make_wsgi_app(registry)
    if token is not None:
        app = _with_bearer(app, token)
    httpd = make_server(addr, port, app, Server, handler_class=_SilentHandler)
    if tls_cert is not None and tls_key is not None:
        context = _get_ssl_ctx(
            str(tls_cert), str(tls_key), ssl.PROTOCOL_TLS_SERVER, None, None, False, None, None
        )
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    bound: int = httpd.server_address[1]
    return bound
