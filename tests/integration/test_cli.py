"""The `liveml` command against a real registry process: output, --json, errors, audit."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.models import linear
from tests.helpers.procs import ROOT, Proc
from tests.helpers.wait import wait_until
from tests.integration.test_registry_serve import serve


@pytest.fixture
def registry_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    proc, port = serve(tmp_path)
    token = (tmp_path / "admin.token").read_text().strip()
    yield {"LIVEML_REGISTRY": f"127.0.0.1:{port}", "LIVEML_TOKEN": token, "COLUMNS": "200"}
    assert proc.stop() == 0


def liveml(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("LIVEML_")}, **env},
    )
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_publish_and_roll_out_with_the_cli(registry_env: dict[str, str], tmp_path: Path) -> None:
    liveml(registry_env, "models", "create", "iris", "--description", "flowers")
    for seed in (1, 2):
        model = linear(tmp_path / f"v{seed}.onnx", seed=seed)
        pushed = liveml(
            registry_env,
            "versions",
            "push",
            str(model),
            "--model",
            "iris",
            "--metric",
            "accuracy=0.9",
            "--tag",
            "team=ml",
            "--json",
        )
        version = json.loads(pushed.stdout)["version"]  # --json prints the RPC's response
        assert version["number"] == seed and version["metrics"] == {"accuracy": 0.9}
    listed = json.loads(liveml(registry_env, "versions", "list", "iris", "--json").stdout)
    assert [v["number"] for v in listed] == [2, 1]

    liveml(registry_env, "rollout", "set", "iris", "--target", "1=100")
    shown = liveml(
        registry_env,
        "rollout",
        "set",
        "iris",
        "--target",
        "1=90",
        "--target",
        "2=10",
        "--sticky-key",
        "user",
    )
    assert "v1 90%" in shown.stdout and "v2 10%" in shown.stdout
    history = json.loads(liveml(registry_env, "rollout", "history", "iris", "--json").stdout)
    assert len(history) == 2
    liveml(registry_env, "rollout", "rollback", "iris")
    rollout = json.loads(liveml(registry_env, "rollout", "show", "iris", "--json").stdout)[
        "rollout"
    ]
    assert rollout["targets"] == [{"version": 1, "percent": 100}]

    downloaded = tmp_path / "copy.onnx"
    liveml(registry_env, "versions", "download", "iris", "2", str(downloaded))
    assert downloaded.read_bytes() == (tmp_path / "v2.onnx").read_bytes()


def test_cli_errors_are_clear(registry_env: dict[str, str], tmp_path: Path) -> None:
    bad_sum = liveml(registry_env, "rollout", "set", "nope", "--target", "1=50", ok=False)
    assert bad_sum.returncode == 1
    assert "error: NOT_FOUND: model 'nope' not found" in bad_sum.stderr
    no_token = liveml({**registry_env, "LIVEML_TOKEN": ""}, "models", "list", ok=False)
    assert no_token.returncode == 1 and "UNAUTHENTICATED" in no_token.stderr
    down = liveml({**registry_env, "LIVEML_REGISTRY": "127.0.0.1:1"}, "models", "list", ok=False)
    assert down.returncode == 1 and "is the registry running at 127.0.0.1:1" in down.stderr


def test_tokens_with_the_cli(registry_env: dict[str, str]) -> None:
    created = liveml(
        registry_env, "token", "create", "dashboard", "--role", "viewer", "--ttl", "1d"
    )
    secret = next(line for line in created.stdout.split() if line.startswith("lml_"))
    viewer = {**registry_env, "LIVEML_TOKEN": secret}
    assert liveml(viewer, "models", "list").returncode == 0
    denied = liveml(viewer, "models", "create", "x", ok=False)
    assert "PERMISSION_DENIED" in denied.stderr and "needs one of: publisher" in denied.stderr
    tokens = json.loads(liveml(registry_env, "token", "list", "--json").stdout)
    name = next(t["name"] for t in tokens if t["display_name"] == "dashboard")
    liveml(registry_env, "token", "revoke", name)
    revoked = liveml(viewer, "models", "list", ok=False)
    assert "has been revoked" in revoked.stderr


def test_audit_verify_names_an_edited_row(registry_env: dict[str, str], tmp_path: Path) -> None:
    liveml(registry_env, "models", "create", "iris")
    liveml(registry_env, "models", "create", "churn")
    intact = liveml(registry_env, "audit", "verify")
    assert "audit trail intact: 3 events" in intact.stdout
    listed = json.loads(liveml(registry_env, "audit", "list", "--json").stdout)
    assert [e["action"] for e in listed] == ["CreateModel", "CreateModel", "CreateToken"]
    with sqlite3.connect(tmp_path / "registry.db") as conn:
        conn.execute("UPDATE audit_events SET target = 'models/evil' WHERE sequence = 2")
    broken = liveml(registry_env, "audit", "verify", ok=False)
    assert broken.returncode == 1
    assert "audit trail BROKEN at event #2" in broken.stderr
    assert "CreateModel on models/evil" in broken.stderr


def test_canary_status_control_and_alerts_with_the_cli(
    registry_env: dict[str, str], tmp_path: Path
) -> None:
    liveml(registry_env, "models", "create", "iris")
    for seed in (1, 2):
        liveml(
            registry_env,
            "versions",
            "push",
            str(linear(tmp_path / f"v{seed}.onnx", seed=seed)),
            "--model",
            "iris",
        )
    refused = liveml(registry_env, "rollout", "canary", "iris", "2", ok=False)
    assert refused.returncode != 0
    assert "a canary starts from one version serving all of 'iris' traffic" in refused.stderr
    liveml(registry_env, "rollout", "set", "iris", "--target", "1=100")
    bad = liveml(registry_env, "rollout", "canary", "iris", "2", "--interval", "soon", ok=False)
    assert "'soon': expected e.g. 30s, 5m or 1h" in bad.stderr

    started = liveml(
        registry_env,
        "rollout",
        "canary",
        "iris",
        "2",
        "--steps",
        "10,50,100",
        "--interval",
        "30s",
        "--json",
    )
    rollout = json.loads(started.stdout)["rollout"]
    assert rollout["analysis"]["steps"] == [10, 50, 100]
    assert rollout["status"]["phase"] == "PROGRESSING"
    assert [(t["version"], t["percent"]) for t in rollout["targets"]] == [(1, 90), (2, 10)]

    status = liveml(registry_env, "rollout", "status", "iris")
    for text in ("progressing", "v2 at 10%", "started at 10%", "last 5 minutes"):
        assert text in status.stdout, status.stdout
    # The live view refreshes until Ctrl-C, then exits cleanly.
    live = Proc(
        [sys.executable, "-m", "services.cli.main", "rollout", "status", "iris", "--watch",
         "--every", "0.2"],
        {**{k: v for k, v in os.environ.items() if not k.startswith("LIVEML_")}, **registry_env},
    )  # fmt: skip
    live.expect("v2 at 10%")
    live.popen.send_signal(signal.SIGINT)
    assert live.popen.wait(timeout=20) == 0
    paused = liveml(registry_env, "rollout", "pause", "iris", "--reason", "checking")
    assert "paused" in paused.stdout and "pause by" in paused.stdout
    again = liveml(registry_env, "rollout", "pause", "iris", ok=False)
    assert "already paused" in again.stderr
    liveml(registry_env, "rollout", "resume", "iris")
    promoted = liveml(registry_env, "rollout", "promote", "iris", "--json")
    final = json.loads(promoted.stdout)["rollout"]
    assert final["status"]["phase"] == "PROMOTED"
    assert [(t["version"], t["percent"]) for t in final["targets"]] == [(2, 100)]

    listed = liveml(registry_env, "alerts", "--json")
    kinds = [json.loads(line)["alert"] for line in listed.stdout.splitlines()]
    assert kinds == ["CanaryPromoted", "CanaryResumed", "CanaryPaused"]
    table = liveml(registry_env, "alerts")
    assert "CanaryPromoted" in table.stdout and "resolved" in table.stdout
    assert "CanaryPromoted" not in liveml(registry_env, "alerts", "--firing").stdout


def _unread_bytes(port: int) -> int:
    """Bytes received on local `port`'s connections that its process has not read (a
    dual-stack listener's connections from 127.0.0.1 are in tcp6)."""
    unread = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, queues = row.split()[1], row.split()[4]
            if local.endswith(f":{port:04X}"):
                unread += int(queues.split(":")[1], 16)
    return unread


def test_ctrl_c_ends_a_live_view_whose_refresh_waits_on_a_stopped_registry(
    tmp_path: Path,
) -> None:
    """Ctrl-C lands mid-refresh (the registry SIGSTOPped, the request unread): the view
    stops waiting for it and exits 0, the call cancelled by the channel's close."""
    proc, port = serve(tmp_path)
    env = {
        "LIVEML_REGISTRY": f"127.0.0.1:{port}",
        "LIVEML_TOKEN": (tmp_path / "admin.token").read_text().strip(),
        "COLUMNS": "200",
    }
    liveml(env, "models", "create", "iris")
    liveml(env, "versions", "push", str(linear(tmp_path / "v1.onnx", seed=1)), "--model", "iris")
    liveml(env, "rollout", "set", "iris", "--target", "1=100")
    live = Proc(
        [sys.executable, "-m", "services.cli.main", "rollout", "status", "iris", "--watch",
         "--every", "0.1"],
        {**{k: v for k, v in os.environ.items() if not k.startswith("LIVEML_")}, **env},
    )  # fmt: skip
    try:
        live.expect("targets")
        os.kill(proc.popen.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: _unread_bytes(port) > 0, 20, "a refresh's request, unread")
            live.popen.send_signal(signal.SIGINT)
            assert live.popen.wait(timeout=20) == 0
        finally:
            os.kill(proc.popen.pid, signal.SIGCONT)
    finally:
        live.stop()
        assert proc.stop() == 0


def test_a_worker_role_needs_the_registry(tmp_path: Path) -> None:
    """Roles split a rollout's versions; a folder of models has no rollout to split."""
    done = liveml({}, "worker", "serve", "--model-dir", str(tmp_path), "--role", "mirror", ok=False)
    assert done.returncode == 2
    assert "--role primary or mirror needs --registry" in done.stderr


def test_json_has_numbers_for_64_bit_integers_and_short_enums(
    registry_env: dict[str, str], tmp_path: Path
) -> None:
    liveml(registry_env, "models", "create", "iris")
    model = linear(tmp_path / "v1.onnx", seed=1)
    pushed = liveml(registry_env, "versions", "push", str(model), "-m", "iris", "--json")
    version = json.loads(pushed.stdout)["version"]
    # int64 fields: proto3 JSON would write "1" and "192"; scripts want numbers.
    assert version["number"] == 1
    assert version["artifact"]["size_bytes"] == model.stat().st_size
    assert version["artifact"]["format"] == "ONNX"  # not ARTIFACT_FORMAT_ONNX
    assert version["approval"]["state"] == "PENDING"
    staged = liveml(registry_env, "versions", "stage", "iris", "1", "production", "--json")
    assert json.loads(staged.stdout)["version"]["stage"] == "PRODUCTION"
    liveml(registry_env, "rollout", "set", "iris", "--target", "1=100", "--force")
    shown = json.loads(liveml(registry_env, "rollout", "show", "iris", "--json").stdout)
    assert isinstance(shown["rollout"]["revision"], int)
    assert shown["rollout"]["targets"] == [{"version": 1, "percent": 100}]
    tokens = json.loads(liveml(registry_env, "token", "list", "--json").stdout)
    assert [t["role"] for t in tokens] == ["ADMIN"]
    events = json.loads(liveml(registry_env, "audit", "list", "--json").stdout)
    assert [e["sequence"] for e in events] == sorted((e["sequence"] for e in events), reverse=True)
    assert all(isinstance(e["sequence"], int) for e in events)
    verified = json.loads(liveml(registry_env, "audit", "verify", "--json").stdout)
    assert verified["ok"] is True and verified["events_checked"] == len(events)

    versions = json.loads(liveml(registry_env, "version", "--json").stdout)
    assert set(versions) == {"liveml", "grpcio", "onnxruntime"}
    assert liveml(registry_env, "version").stdout.startswith(f"liveml {versions['liveml']}  ")


def test_a_piped_table_keeps_its_full_headers(registry_env: dict[str, str], tmp_path: Path) -> None:
    liveml(registry_env, "models", "create", "iris", "--description", "flowers " * 12)
    liveml(registry_env, "versions", "push", str(linear(tmp_path / "v1.onnx")), "-m", "iris")
    # Piped, with the COLUMNS=80 a parent left behind (pytest-xdist's workers do):
    # rich alone would squeeze the table into 80 columns and cut its headers.
    piped = {**registry_env, "COLUMNS": "80"}
    listed = liveml(piped, "versions", "list", "iris").stdout
    header = next(line for line in listed.splitlines() if "number" in line)
    for column in ("number", "stage", "approval", "sha256", "size", "creator", "created"):
        assert f" {column} " in header, listed
    assert "description" in header and "…" not in listed
    assert max(len(line) for line in listed.splitlines()) > 80
    models = liveml(piped, "models", "list").stdout
    assert ("flowers " * 12).strip() in models and "…" not in models
