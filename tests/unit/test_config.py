"""Settings come from flags and LIVEML_* variables; the flag wins; bad values are explained."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from services.common.config import ServerSettings, settings_options

seen: list[ServerSettings] = []
app = typer.Typer()


@app.command()
@settings_options(ServerSettings)
def serve(settings: ServerSettings) -> None:
    """Record the settings."""
    seen.append(settings)


@app.command()
def other() -> None:
    """Keeps typer from collapsing the app into its only command."""


@pytest.fixture(autouse=True)
def _clear() -> None:
    seen.clear()


def test_defaults_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert (seen[-1].host, seen[-1].port, seen[-1].max_message_bytes) == ("127.0.0.1", 0, 256 << 20)

    monkeypatch.setenv("LIVEML_PORT", "7001")
    monkeypatch.setenv("LIVEML_TLS_CERT", "/etc/cert.pem")
    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert seen[-1].port == 7001 and seen[-1].tls_cert == Path("/etc/cert.pem")

    result = runner.invoke(
        app, ["serve", "--port", "7002", "--metrics-port", "9100", "--host", "0.0.0.0"]
    )
    assert result.exit_code == 0, result.output
    assert (seen[-1].port, seen[-1].metrics_port, seen[-1].host) == (7002, 9100, "0.0.0.0")


def test_help_lists_every_setting_with_its_variable() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ServerSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in result.output
        assert f"LIVEML_{name.upper()}" in result.output


def test_out_of_range_value_is_explained() -> None:
    result = CliRunner().invoke(app, ["serve", "--port", "70000"])
    # One line naming the flag and its variable, exit 2 (since #19), not an exception.
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --port (LIVEML_PORT): Input should be less than or equal to 65535 (given: 70000)\n"
    )
