"""TLS and mutual TLS credentials for liveml servers and the clients that call them."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path else None


def _serves_tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> bool:
    """Whether these files ask for TLS; a ValueError for a combination that makes no sense."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key: mutual TLS is TLS first")
        return False
    if cert is None or key is None:
        raise ValueError("tls_cert and tls_key must be given together")
    return True


def server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None = None
) -> grpc.ServerCredentials | None:
    """TLS credentials from PEM files, or None for plaintext.

    With `client_ca`, clients must present a certificate signed by it (mutual TLS).
    """
    if not _serves_tls(cert, key, client_ca):
        return None
    assert cert is not None and key is not None
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=_read(client_ca),
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client credentials: trust `ca` (system roots if None), present `cert`/`key` for mTLS."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both cert and key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
    )


def server_context(
    cert: Path | None, key: Path | None, client_ca: Path | None = None
) -> ssl.SSLContext | None:
    """The same TLS as `server_credentials`, for a plain asyncio listener."""
    if not _serves_tls(cert, key, client_ca):
        return None
    assert cert is not None and key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """The same trust and client certificate as `channel_credentials`, for asyncio."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both cert and key")
    context = ssl.create_default_context(cafile=ca)
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context
