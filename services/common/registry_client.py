"""A connection to the registry for services (workers, gateways): channel, token, retries."""

from __future__ import annotations

from pathlib import Path

from grpc import aio
from pydantic import SecretStr

from services.common import tls
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.common.server import grpc_options

Metadata = tuple[tuple[str, str], ...]


def read_token(token: SecretStr | None, token_file: Path | None) -> str | None:
    if token is not None:
        return token.get_secret_value()
    if token_file is not None:
        return token_file.read_text().strip()
    return None


def connect(
    address: str,
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    max_message_bytes: int = 256 * 1024 * 1024,
) -> tuple[aio.Channel, rpb_grpc.RegistryServiceStub]:
    options = [
        *grpc_options(max_message_bytes)[:2],
        # Find a registry that comes back quickly instead of backing off for minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if ca is not None or cert is not None:
        channel = aio.secure_channel(address, tls.channel_credentials(ca, cert, key), options)
    else:
        channel = aio.insecure_channel(address, options)
    return channel, rpb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]


def auth_metadata(token: str | None) -> Metadata:
    return (("authorization", f"Bearer {token}"),) if token else ()
