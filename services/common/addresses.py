"""`host:port` addresses: taking one apart (IPv6 in brackets)."""

from __future__ import annotations


def split(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) into its parts."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port)
