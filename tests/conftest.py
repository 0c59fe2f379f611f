"""Shared fixtures: free ports, services that may be absent on a laptop but never in CI."""

from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(available: bool, what: str) -> None:
    """Skip a test whose external service is missing; in CI that is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is not available, and CI must run every test", pytrace=False)
    pytest.skip(f"{what} is not available")


# The data plane authenticates callers by default. Tests of routing, swaps, batching
# and learning run it open (their clients send no token); the tests of data-plane
# authentication (tests/integration/test_data_plane_auth.py) turn it back on for
# their processes with LIVEML_ALLOW_ANONYMOUS=false.
os.environ.setdefault("LIVEML_ALLOW_ANONYMOUS", "true")
