"""`liveml <service> serve` on a port already taken: one line naming it and its flag, exit 2."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procs import ROOT, registry_process


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def serve(tmp_path: Path, service: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEML_")}
    env.update(
        LIVEML_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/registry.db",
        LIVEML_ARTIFACT_DIR=str(tmp_path / "artifacts"),
        LIVEML_ADMIN_TOKEN_FILE=str(tmp_path / "admin.token"),
    )
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", service, "serve", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def the_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_a_taken_grpc_port_names_port_and_flag(taken: int, tmp_path: Path) -> None:
    done = serve(tmp_path, "registry", "--port", str(taken), "--metrics-port", "-1")
    assert the_error(done) == (
        f"error: registry: cannot listen on 127.0.0.1:{taken} (address already in use): "
        "choose another with --port (LIVEML_PORT)"
    )


def test_a_taken_metrics_port_names_port_and_flag(taken: int, tmp_path: Path) -> None:
    done = serve(tmp_path, "registry", "--port", "0", "--metrics-port", str(taken))
    assert the_error(done) == (
        f"error: registry: cannot listen on 127.0.0.1:{taken} (address already in use): "
        "choose another with --metrics-port (LIVEML_METRICS_PORT)"
    )


def test_every_service_says_it_the_same_way(taken: int, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    done = serve(
        tmp_path, "worker", "--model-dir", str(tmp_path / "models"), "--port", str(taken),
        "--metrics-port", "-1",
    )  # fmt: skip
    assert the_error(done).startswith(f"error: worker: cannot listen on 127.0.0.1:{taken} (")
    assert the_error(done).endswith("choose another with --port (LIVEML_PORT)")
    done = serve(
        tmp_path, "worker", "--model-dir", str(tmp_path / "models"), "--metrics-port", str(taken)
    )
    assert the_error(done).endswith("choose another with --metrics-port (LIVEML_METRICS_PORT)")


def test_the_listening_line_says_metrics_off_or_on_a_port(tmp_path: Path) -> None:
    proc, port = registry_process(tmp_path)  # --metrics-port -1
    try:
        line = proc.expect("registry listening on")
        assert f"127.0.0.1:{port} (plaintext), metrics off" in line  # not "metrics on off"
    finally:
        assert proc.stop() == 0
    (tmp_path / "again").mkdir()
    proc, port = registry_process(tmp_path / "again", "--metrics-port", "0")
    try:
        assert re.search(r", metrics on \d+$", proc.expect("registry listening on").rstrip())
    finally:
        assert proc.stop() == 0
