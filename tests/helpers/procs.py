"""Running liveml servers as real processes in tests, and reading what they print."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.conftest import port_open
from tests.helpers.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    """A child process whose combined output is read line by line in the background."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.args, self.env = list(args), dict(env or {})
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.popen = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.output.append(line)
            self.lines.put(line)

    def expect(self, fragment: str, timeout: float = 20.0) -> str:
        """Wait for a printed line containing `fragment`; return it."""
        # One deadline for the whole wait: a process printing other lines all along
        # must not keep it waiting for good.
        deadline = time.monotonic() + timeout
        try:
            while True:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
                if fragment in line:
                    return line
        except queue.Empty:
            raise TimeoutError(
                f"no line with {fragment!r} within {timeout} s; output:\n{''.join(self.output)}"
            ) from None

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                return self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()


def python_module(module: str, env: Mapping[str, str] | None = None, *args: str) -> Proc:
    return Proc([sys.executable, "-m", module, *args], env)


def restart(proc: Proc) -> Proc:
    return Proc(proc.args, proc.env)


def wait_port(port: int, proc: Proc | None = None, timeout: float = 30.0) -> None:
    def ready() -> bool:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"process exited early:\n{''.join(proc.output)}")
        return port_open("127.0.0.1", port)

    wait_until(ready, timeout, f"port {port}")


def registry_process(root: Path, *flags: str, **env: str) -> tuple[Proc, int]:
    """`liveml registry serve` on a free port: SQLite, artifacts and admin token under `root`
    unless `env` says otherwise (LIVEML_* variables)."""
    from tests.conftest import free_port

    port = free_port()
    proc = python_module(
        "services.cli.main",
        {
            "LIVEML_DATABASE_URL": f"sqlite+aiosqlite:///{root}/registry.db",
            "LIVEML_ARTIFACT_DIR": str(root / "artifacts"),
            "LIVEML_ADMIN_TOKEN_FILE": str(root / "admin.token"),
            **env,
        },
        "registry",
        "serve",
        "--port",
        str(port),
        "--metrics-port",
        "-1",
        *flags,
    )
    wait_port(port, proc)
    return proc, port
