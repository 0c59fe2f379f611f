"""The /metrics endpoint: a bearer token when told, TLS when told, bound where told."""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.common import pki
from services.common.config import ServerSettings
from services.common.server import RunningServer, start_server
from tests.helpers import echo_server


async def serve(**settings: object) -> RunningServer:
    return await start_server(
        "test",
        ServerSettings(port=0, metrics_port=0, **settings),  # type: ignore[arg-type]
        echo_server.register,
    )


def scrape(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> str:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10, context=context) as reply:
        return str(reply.read().decode())


async def test_a_token_file_makes_every_scrape_send_it(tmp_path: Path) -> None:
    (tmp_path / "metrics.token").write_text("s3cret-metrics\n")
    running = await serve(metrics_token_file=tmp_path / "metrics.token")
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    try:
        for token in (None, "wrong", ""):
            with pytest.raises(urllib.error.HTTPError) as refused:
                await asyncio.to_thread(scrape, url, token)
            assert refused.value.code == 401
            assert b"send the metrics token" in refused.value.read()
        text = await asyncio.to_thread(scrape, url, "s3cret-metrics")
        assert "python_info" in text or "process_" in text or "# HELP" in text
    finally:
        await running.stop(0)


async def test_tls_metrics_are_https_only(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path)
    cert = pki.issue(ca, "worker", tmp_path)
    running = await serve(metrics_tls_cert=cert.cert, metrics_tls_key=cert.key)
    try:
        context = ssl.create_default_context(cafile=str(ca.cert))
        text = await asyncio.to_thread(
            scrape, f"https://localhost:{running.metrics_port}/metrics", None, context
        )
        assert "# HELP" in text
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            await asyncio.to_thread(scrape, f"http://127.0.0.1:{running.metrics_port}/metrics")
    finally:
        await running.stop(0)


async def test_metrics_host_binds_where_told_and_bad_settings_are_refused(
    tmp_path: Path,
) -> None:
    running = await serve(host="127.0.0.1", metrics_host="127.0.0.2")
    try:
        text = await asyncio.to_thread(scrape, f"http://127.0.0.2:{running.metrics_port}/metrics")
        assert "# HELP" in text
        with pytest.raises(urllib.error.URLError):
            await asyncio.to_thread(scrape, f"http://127.0.0.1:{running.metrics_port}/metrics")
    finally:
        await running.stop(0)
    ca = pki.create_ca(tmp_path)
    cert = pki.issue(ca, "worker", tmp_path)
    with pytest.raises(ValueError, match="--metrics-tls-cert and --metrics-tls-key go together"):
        await serve(metrics_tls_cert=cert.cert)
    (tmp_path / "empty.token").write_text("\n")
    with pytest.raises(ValueError, match=r"empty.token is empty: it must hold the bearer token"):
        await serve(metrics_token_file=tmp_path / "empty.token")
