"""`liveml tls init`: certificates that hold for the service names of liveml's own
deployments, one identity each, and a refusal of a host name that cannot be one."""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from tests.integration.test_cli import liveml


def sans(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in names]


def common_name(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def test_default_names_cover_compose_and_kubernetes(tmp_path: Path) -> None:
    done = liveml({}, "tls", "init", str(tmp_path))
    assert "valid for  localhost, 127.0.0.1, ::1, registry, gateway, worker" in done.stdout
    for name in ("registry", "worker", "gateway", "trainer", "client"):
        assert common_name(tmp_path / f"{name}.pem") == name
        names = sans(tmp_path / f"{name}.pem")
        # Compose's service names, then the Kubernetes Services (deploy/k8s/base).
        for host in (
            "registry",
            "gateway",
            "worker-1",
            "trainer",
            "liveml-registry",
            "liveml-gateway",
            "liveml-worker",
            "liveml-trainer",
            "liveml-registry.liveml.svc",
        ):
            assert host in names, (name, names)
        assert "127.0.0.1" in names and "localhost" in names
    assert (tmp_path / "registry-key.pem").stat().st_mode & 0o077 == 0


async def test_a_client_reaches_the_registry_by_its_service_name(tmp_path: Path) -> None:
    """Mutual TLS to a server holding `registry.pem`, the client checking the name
    `registry` (as it would in Compose) and showing `client.pem`."""
    liveml({}, "tls", "init", str(tmp_path))
    read = lambda name: (tmp_path / name).read_bytes()  # noqa: E731
    server = aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [(read("registry-key.pem"), read("registry.pem"))],
        root_certificates=read("ca.pem"),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        client = grpc.ssl_channel_credentials(
            read("ca.pem"), read("client-key.pem"), read("client.pem")
        )
        options = [("grpc.ssl_target_name_override", "registry")]
        async with aio.secure_channel(f"127.0.0.1:{port}", client, options) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # A name the certificate does not hold is refused by the client's check.
        wrong = [("grpc.ssl_target_name_override", "intruder.example")]
        async with aio.secure_channel(f"127.0.0.1:{port}", client, wrong) as channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            except aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
            else:
                raise AssertionError("a name outside the certificate was accepted")
    finally:
        await server.stop(0)


def test_san_sets_the_names_and_a_blank_one_is_refused(tmp_path: Path) -> None:
    liveml(
        {}, "tls", "init", str(tmp_path), "--name", "gw", "--san", "gw.example", "--san", "10.0.0.7"
    )
    assert sans(tmp_path / "gw.pem") == ["gw.example", "10.0.0.7"]
    bad = liveml({}, "tls", "init", str(tmp_path / "b"), "--san", "two words", ok=False)
    assert bad.returncode == 1
    assert "error: --san 'two words': expected a host name or IP address" in bad.stderr
    assert not (tmp_path / "b").exists()
