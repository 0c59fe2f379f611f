"""Why a TLS connection failed, in words: gRPC only says "UNAVAILABLE … Socket closed".

When a call over TLS fails as UNAVAILABLE, a client may shake hands with the server
itself, with the same CA and certificate, and name what went wrong: the server's
certificate not signed by the CA it trusts (or expired, or not for that host name), a
server that wants a client certificate and got none, one that does not trust the
certificate it got, or a server that speaks plaintext. It says nothing when the
handshake works or the server cannot be reached at all: then TLS is not the problem.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from services.common import addresses

# The HTTP/2 connection preface and an empty SETTINGS frame: under TLS 1.3 the server
# judges the client's certificate after the handshake, so only its answer to a first
# message tells whether it accepted the certificate.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def explain(
    address: str,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    timeout: float = 3.0,
) -> str | None:
    """What is wrong with TLS to `address` with these files, or None if nothing is."""
    try:
        host, port = addresses.split(address)
    except ValueError:
        return None
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        return f"the TLS files cannot be used: {exc}"
    context.set_alpn_protocols(["h2"])
    against = f"CA {ca}" if ca else "the system's CAs"
    showing = f"client certificate {cert}"
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as conn,
        ):
            conn.settimeout(timeout)
            conn.sendall(_PREFACE)
            try:
                answered = bool(conn.recv(1))
            except (ssl.SSLEOFError, ConnectionResetError):
                answered = False
            if not answered:
                return _refused(cert)
    except ssl.SSLCertVerificationError as exc:
        return (
            f"the server's certificate was refused: {exc.verify_message} (checked "
            f"against {against}, for the name {host!r})"
        )
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).upper()
        if "CERTIFICATE_REQUIRED" in reason:
            return (
                "the server requires a client certificate (mutual TLS): pass --tls-cert/--tls-key"
            )
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
            return f"the server refused {showing}: it is not signed by a CA the server trusts"
        if "CERTIFICATE_EXPIRED" in reason:
            return f"the server refused {showing}: it has expired"
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
            return "the server does not speak TLS here (plaintext?): drop the TLS options"
        return f"the TLS handshake failed: {exc.reason or exc}"
    except (OSError, TimeoutError):
        return None  # not reachable at all, or slow: not a TLS verdict
    return None


def _refused(cert: Path | None) -> str:
    """The server ended the connection over our certificate (TLS 1.3 tells it after the
    handshake, often by just closing)."""
    if cert is None:
        return "the server requires a client certificate (mutual TLS): pass --tls-cert/--tls-key"
    return (
        f"the server refused client certificate {cert}: it is not signed by a CA the "
        "server trusts (or has expired)"
    )
