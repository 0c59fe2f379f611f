"""`liveml registry serve` as a process: buf curl through reflection, mTLS identities."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from services.common import pki, tls
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.conftest import require
from tests.helpers.procs import ROOT, Proc, registry_process

BUF = ROOT / "node_modules" / ".bin" / "buf"


def serve(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[Proc, int]:
    return registry_process(tmp_path, *flags, **(env or {}))


@pytest.fixture
def registry_proc(tmp_path: Path) -> Iterator[tuple[Proc, int, str]]:
    proc, port = serve(tmp_path)
    token_file = tmp_path / "admin.token"
    yield proc, port, token_file.read_text().strip()
    assert proc.stop() == 0


def test_bootstrap_token_file_is_private_and_never_logged(
    registry_proc: tuple[Proc, int, str], tmp_path: Path
) -> None:
    proc, _, token = registry_proc
    mode = stat.S_IMODE(os.stat(tmp_path / "admin.token").st_mode)
    assert mode == 0o600
    assert token.startswith("lml_")
    proc.expect("bootstrap admin token")
    assert token not in "".join(proc.output)
    secret_part = token.split("_", 2)[2]
    assert secret_part not in "".join(proc.output)


def test_buf_curl_health_and_list_models(registry_proc: tuple[Proc, int, str]) -> None:
    require(BUF.exists(), "buf (npm install)")
    _, port, token = registry_proc
    base = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    health = subprocess.run(
        [*base, f"http://127.0.0.1:{port}/grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(health.stdout) == {"status": "SERVING"}
    models = subprocess.run(
        [
            *base,
            "-H",
            f"authorization: Bearer {token}",
            f"http://127.0.0.1:{port}/liveml.registry.v1.RegistryService/ListModels",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(models.stdout) == {}
    refused = subprocess.run(
        [*base, f"http://127.0.0.1:{port}/liveml.registry.v1.RegistryService/ListModels"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0 and "unauthenticated" in refused.stderr.lower()


async def test_mutual_tls_certificate_is_an_identity(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "pki")
    server = pki.issue(ca, "registry", tmp_path / "pki")
    deployer = pki.issue(ca, "ci-deployer", tmp_path / "pki")
    stranger = pki.issue(ca, "stranger", tmp_path / "pki")
    proc, port = serve(
        tmp_path,
        "--tls-cert",
        str(server.cert),
        "--tls-key",
        str(server.key),
        "--tls-client-ca",
        str(ca.cert),
        env={"LIVEML_CERT_ROLES": "ci-deployer=deployer"},
    )
    try:
        options = [("grpc.ssl_target_name_override", "localhost")]
        creds = tls.channel_credentials(ca.cert, deployer.cert, deployer.key)
        async with aio.secure_channel(f"localhost:{port}", creds, options=options) as channel:
            stub = rpb_grpc.RegistryServiceStub(channel)
            assert (await stub.ListModels(rpb.ListModelsRequest())).models == []
            with pytest.raises(aio.AioRpcError) as err:
                await stub.CreateModel(rpb.CreateModelRequest(model_id="iris"))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "cert:ci-deployer (role deployer) may not call" in str(err.value.details())
        creds = tls.channel_credentials(ca.cert, stranger.cert, stranger.key)
        async with aio.secure_channel(f"localhost:{port}", creds, options=options) as channel:
            with pytest.raises(aio.AioRpcError) as err:
                await rpb_grpc.RegistryServiceStub(channel).ListModels(rpb.ListModelsRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "client certificate 'stranger' has no role here" in str(err.value.details())
    finally:
        assert proc.stop() == 0


def test_a_refused_handshake_is_explained_by_the_cli(tmp_path: Path) -> None:
    """gRPC says "UNAVAILABLE: Socket closed" for every TLS refusal; the CLI names which
    side refused which certificate."""
    from tests.integration.test_cli import liveml

    ca = pki.create_ca(tmp_path / "pki")
    other = pki.create_ca(tmp_path / "other")
    server = pki.issue(ca, "registry", tmp_path / "pki")
    client = pki.issue(ca, "client", tmp_path / "pki")
    outsider = pki.issue(other, "client", tmp_path / "other")
    proc, port = serve(
        tmp_path,
        "--tls-cert", str(server.cert), "--tls-key", str(server.key),
        "--tls-client-ca", str(ca.cert),
    )  # fmt: skip
    plain, plain_port = serve(tmp_path / "plain")
    try:
        # Wide: the hints quote file paths, which a narrow terminal would wrap.
        at = {"LIVEML_REGISTRY": f"localhost:{port}", "LIVEML_TOKEN": "x", "COLUMNS": "1000"}
        cases = [
            (
                {"LIVEML_TLS_CA": str(other.cert)},
                "the server's certificate was refused: "
                f"certificate signature failure (checked against CA {other.cert}, "
                "for the name 'localhost')",
            ),
            (
                {"LIVEML_TLS_CA": str(ca.cert)},
                "the server requires a client certificate (mutual TLS): pass --tls-cert/--tls-key",
            ),
            (
                {
                    "LIVEML_TLS_CA": str(ca.cert),
                    "LIVEML_TLS_CERT": str(outsider.cert),
                    "LIVEML_TLS_KEY": str(outsider.key),
                },
                f"the server refused client certificate {outsider.cert}: it is not signed by "
                "a CA the server trusts (or has expired)",
            ),
        ]
        for env, hint in cases:
            done = liveml({**at, **env}, "models", "list", ok=False)
            assert done.returncode == 1
            said = " ".join(done.stderr.split())
            assert "error: UNAVAILABLE" in said, said
            assert f"hint: TLS to localhost:{port}: " in said and hint in said, said
        # The right files: the handshake is fine, and the token is what is wrong.
        good = {
            **at,
            "LIVEML_TLS_CA": str(ca.cert),
            "LIVEML_TLS_CERT": str(client.cert),
            "LIVEML_TLS_KEY": str(client.key),
        }
        done = liveml(good, "models", "list", ok=False)
        assert "error: UNAUTHENTICATED" in done.stderr
        # TLS options against a plaintext registry.
        at_plain = {"LIVEML_REGISTRY": f"localhost:{plain_port}", "LIVEML_TLS_CA": str(ca.cert)}
        done = liveml(
            {**at_plain, "LIVEML_TOKEN": "x", "COLUMNS": "1000"}, "models", "list", ok=False
        )
        said = " ".join(done.stderr.split())
        assert "the server does not speak TLS here (plaintext?)" in said, said
    finally:
        assert proc.stop() == 0
        assert plain.stop() == 0
