"""Benchmark: the liveml worker vs raw onnxruntime, the grpc.aio ceiling and KServe.

One command (`make bench-worker`): builds the benchmark MLP (64->256->256->10, FP32,
batch-1 requests) and a heavier one (1024 wide), pins each server to core 0 and the
h2load client to core 1, and measures requests/s and p50/p99 at 1 and 32 in flight,
unary and streaming (100 messages per ModelStreamInfer stream), batching off and
on. Every number in the printed table comes from this one run, and the goals are
checked as ratios between them. Results go to bench/out/worker.json and a markdown
table to bench/out/worker.md (copied into bench/RESULTS.md with the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.h2bench import (
    SERVER_CORE,
    Result,
    check_with_client,
    frame,
    free_port,
    h2load,
    mlp_request,
    pinned,
    wait_port,
)
from tests.helpers.models import mlp

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
KSERVE_VENV = ROOT / "bench" / ".kserve-venv"
SECONDS = float(os.environ.get("LIVEML_BENCH_SECONDS", "5"))
STREAM_MESSAGES = 100


def raw_onnxruntime(path: Path, n_in: int, calls: int = 20000) -> float:
    """Requests/s of session.run on batch-1 inputs, in process: the compute floor."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, n_in)).astype(np.float32)
    for _ in range(500):
        session.run(None, {"x": x})
    started = time.perf_counter()
    for _ in range(calls):
        session.run(None, {"x": x})
    return calls / (time.perf_counter() - started)


def ensure_kserve() -> Path | None:
    python = KSERVE_VENV / "bin" / "python"
    if not python.exists():
        print("installing KServe into bench/.kserve-venv (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(KSERVE_VENV)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "kserve", "onnxruntime"])
        if done.returncode != 0:
            print("KServe could not be installed; its rows are skipped")
            return None
    return python


@contextlib.contextmanager
def kserve_server(model: Path) -> Iterator[int | None]:
    """KServe's ModelServer serving `model` on core 0; its gRPC port (None if unavailable)."""
    kserve = ensure_kserve()
    if kserve is None:
        yield None
        return
    port, http = free_port(), free_port()
    server = ROOT / "bench" / "kserve_server.py"
    proc = start([str(kserve), str(server), str(model), str(port), str(http)], port)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def kserve_rows(model: Path) -> dict[str, Result]:
    """KServe's ModelServer serving `model`, unary at 1 and 32 in flight ({} if unavailable)."""
    with kserve_server(model) as port:
        if port is None:
            return {}
        print("KServe ModelServer ...", flush=True)
        return {key(False, m): measure(port, 64, False, m) for m in (1, 32)}


def start(
    args: list[str], port: int, env: dict[str, str] | None = None, core: str = SERVER_CORE
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        pinned(core, args),
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc


def ok_count(metrics_port: int) -> float:
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    return sum(
        float(v)
        for v in re.findall(r'liveml_worker_requests_total\{[^}]*status="OK"[^}]*\} (\S+)', text)
    )


def measure(
    port: int,
    n_in: int,
    streaming: bool,
    in_flight: int,
    metrics_port: int | None = None,
    model: str = "mlp",
    seconds: float = SECONDS,
) -> Result:
    request = mlp_request(model, n_in=n_in)
    asyncio.run(check_with_client(port, request))
    before = ok_count(metrics_port) if metrics_port else 0.0
    body = frame(request.SerializeToString())
    if streaming:
        result = h2load(
            port, "ModelStreamInfer", body * STREAM_MESSAGES, in_flight, seconds, STREAM_MESSAGES
        )
    else:
        result = h2load(port, "ModelInfer", body, in_flight, seconds)
    if metrics_port and ok_count(metrics_port) - before < result.requests:
        raise RuntimeError("h2load counted more successes than the worker served")
    return result


def worker_rows(
    model_dir: Path, n_in: int, batching: bool, modes: list[tuple[bool, int]]
) -> dict[str, Result]:
    port, metrics = free_port(), free_port()
    args = [
        str(ROOT / ".venv" / "bin" / "liveml"),
        "worker",
        "serve",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--metrics-port",
        str(metrics),
        "--run-threads",
        "1",
        "--max-batch-size",
        "32" if batching else "0",
        "--log-level",
        "WARNING",
        *os.environ.get("LIVEML_BENCH_WORKER_FLAGS", "").split(),
    ]
    proc = start(args, port)
    try:
        asyncio.run(_wait_ready(port))
        return {
            key(streaming, in_flight): measure(port, n_in, streaming, in_flight, metrics)
            for streaming, in_flight in modes
        }
    finally:
        proc.terminate()
        proc.wait(30)


async def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            await check_with_client(port, mlp_request())
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def key(streaming: bool, in_flight: int) -> str:
    return f"{'stream' if streaming else 'unary'}@{in_flight}"


MODES = [(False, 1), (False, 32), (True, 1), (True, 32)]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    models = OUT / "models"
    light = mlp(models / "mlp" / "1" / "model.onnx", 64, 256, 10)
    heavy_dir = OUT / "models-heavy"
    mlp(heavy_dir / "mlp" / "1" / "model.onnx", 64, 1024, 10)
    rows: dict[str, dict[str, Result | float]] = {}
    only = os.environ.get("LIVEML_BENCH_ONLY", "")
    print("raw onnxruntime ...", flush=True)
    floor = raw_onnxruntime(light, 64)
    print("liveml worker, batching off / on ...", flush=True)
    rows["liveml (batching off)"] = dict(worker_rows(models, 64, False, MODES))
    rows["liveml (batching on)"] = dict(worker_rows(models, 64, True, MODES))
    print("heavy model (1024 wide), batching off / on ...", flush=True)
    rows["liveml heavy (batching off)"] = dict(worker_rows(heavy_dir, 64, False, [(False, 32)]))
    rows["liveml heavy (batching on)"] = dict(worker_rows(heavy_dir, 64, True, [(False, 32)]))
    if only == "liveml":
        report(rows, floor)
        return 0
    print("grpc.aio canned-answer ceiling ...", flush=True)
    port = free_port()
    proc = start(
        [sys.executable, str(ROOT / "bench" / "canned_server.py"), str(port)],
        port,
        {"PYTHONPATH": str(ROOT)},
    )
    try:
        rows["grpc.aio ceiling"] = {key(s, m): measure(port, 64, s, m) for s, m in MODES}
    finally:
        proc.terminate()
        proc.wait(30)
    kserve = kserve_rows(light)
    if kserve:
        rows["KServe ModelServer"] = kserve
    report(rows, floor)
    return 0


def report(rows: dict[str, dict[str, Result | float]], floor: float) -> None:
    def rate(name: str, k: str) -> float:
        r = rows.get(name, {}).get(k)
        return r.rate if isinstance(r, Result) else float("nan")

    lines = [
        f"raw onnxruntime in-process (compute floor): {floor:,.0f} calls/s",
        "",
        "| server | mode | in flight | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, results in rows.items():
        for k, r in results.items():
            assert isinstance(r, Result)
            mode, in_flight = k.split("@")
            lines.append(
                f"| {name} | {mode} | {in_flight} | {r.rate:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} |"
            )
    kserve32 = rate("KServe ModelServer", "unary@32")
    ceiling32 = rate("grpc.aio ceiling", "unary@32")
    best_unary = max(
        rate("liveml (batching off)", "unary@32"), rate("liveml (batching on)", "unary@32")
    )
    best_stream = max(
        rate("liveml (batching off)", "stream@32"), rate("liveml (batching on)", "stream@32")
    )
    goals = [
        ("unary@32 / KServe unary@32", best_unary / kserve32, 1.5),
        ("unary@32 / grpc.aio ceiling unary@32", best_unary / ceiling32, 0.8),
        ("stream@32 / KServe unary@32", best_stream / kserve32, 4.0),
        (
            "batching on / off, unary@32",
            rate("liveml (batching on)", "unary@32") / rate("liveml (batching off)", "unary@32"),
            1.0,
        ),
        (
            "batching on / off, worst of unary and stream at 1 and 32",
            min(
                rate("liveml (batching on)", key(s, m)) / rate("liveml (batching off)", key(s, m))
                for s, m in MODES
            ),
            1.0,
        ),
        (
            "heavy: batching on / off, unary@32",
            rate("liveml heavy (batching on)", "unary@32")
            / rate("liveml heavy (batching off)", "unary@32"),
            1.0,
        ),
        (
            "unary@1 / raw onnxruntime",
            rate("liveml (batching off)", "unary@1") / floor,
            float("nan"),
        ),
    ]
    lines += ["", "| ratio (same run) | measured | goal |", "|---|---|---|"]
    for label, value, goal in goals:
        verdict = "" if goal != goal else (" ✓" if value >= goal else " ✗")
        lines.append(
            f"| {label} | {value:.2f} | {'—' if goal != goal else f'≥ {goal:g}'}{verdict} |"
        )
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"grpcio {version('grpcio')}, onnxruntime {version('onnxruntime')}, numpy {version('numpy')}; "
        f"{SECONDS:g} s per cell; server on core {SERVER_CORE}, h2load on the other"
    )
    text = "\n".join(lines)
    print()
    print(machine)
    print(text)
    (OUT / "worker.md").write_text(machine + "\n\n" + text + "\n")
    (OUT / "worker.json").write_text(
        json.dumps(
            {
                name: {
                    k: {f: v for f, v in vars(r).items() if f != "latencies_ms"}
                    for k, r in res.items()
                    if isinstance(r, Result)
                }
                for name, res in rows.items()
            }
            | {"raw_onnxruntime": floor},
            indent=2,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
