"""A server that serves TLS and would call the registry or its workers in plaintext
does not start silently: it refuses, unless told --allow-plaintext-upstream, and then
warns."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common import pki
from tests.conftest import free_port
from tests.helpers.procs import Proc, python_module, wait_port


@pytest.fixture
def certs(tmp_path: Path) -> pki.Issued:
    ca = pki.create_ca(tmp_path / "pki")
    return pki.issue(ca, "gateway", tmp_path / "pki")


def serve(service: str, cert: pki.Issued, *flags: str) -> tuple[Proc, int]:
    port = free_port()
    proc = python_module(
        "services.cli.main",
        {"LIVEML_REGISTRY_TOKEN": "unused"},
        service, "serve",
        "--port", str(port), "--metrics-port", "-1",
        "--tls-cert", str(cert.cert), "--tls-key", str(cert.key),
        *flags,
    )  # fmt: skip
    return proc, port


@pytest.mark.parametrize(
    ("service", "flags", "said"),
    [
        ("gateway", ("--registry-ca", "{ca}"), "its workers (no --worker-ca)"),
        (
            "gateway",
            ("--worker-ca", "{ca}"),
            "the registry at 127.0.0.1:50051 (no --registry-ca)",
        ),
        (
            "worker",
            ("--registry", "127.0.0.1:1"),
            "the registry at 127.0.0.1:1 (no --registry-ca)",
        ),
    ],
)
def test_tls_server_with_a_plaintext_upstream_refuses_to_start(
    certs: pki.Issued, tmp_path: Path, service: str, flags: tuple[str, ...], said: str
) -> None:
    ca = str(tmp_path / "pki" / "ca.pem")
    proc, _ = serve(service, certs, *(f.format(ca=ca) for f in flags))
    assert proc.popen.wait(timeout=60) == 2
    output = "".join(proc.output)
    assert f"{service} serves TLS but would call {said} in plaintext" in output, output
    assert "--allow-plaintext-upstream" in output


def test_allowed_plaintext_upstream_starts_and_warns(certs: pki.Issued, tmp_path: Path) -> None:
    proc, port = serve(
        "gateway",
        certs,
        "--registry", f"127.0.0.1:{free_port()}",
        "--allow-plaintext-upstream",
    )  # fmt: skip
    try:
        wait_port(port, proc)
        line = proc.expect("IN PLAINTEXT")
        assert "gateway serves TLS but calls the registry at" in line
        assert "and its workers (no --worker-ca) IN PLAINTEXT" in line
    finally:
        proc.stop()
