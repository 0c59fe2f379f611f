"""Benchmark: this checkout's gateway and worker against an earlier commit's, in one run.

One command (`make bench-gateway-before-after`, BEFORE=<git revision>, default
HEAD~1): checks the revision out into a scratch worktree and runs both code bases side
by side on one registry — each a worker (`--models` its own copy of the benchmark MLP,
so neither gateway ever routes to the other's worker) and a gateway, all four pinned
to core 0 as in `bench/gateway.py`, h2load and the registry on core 1. The cells of
`bench/gateway.py`'s throughput table (worker direct and through the gateway, unary
and streaming at 1 and 32 in flight) are measured for both, in interleaved rounds, so
each ratio compares cells minutes apart at most; the p99 at 1 in flight is pooled over
the rounds. It prints the gateway ÷ worker ratios of each code base and after ÷
before for every cell. A change that touches the gateway-to-worker contract may change
both ends, which is why both processes come from the same revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import pooled, publish, registry_env, route
from bench.h2bench import (
    CLIENT_CORE,
    SERVER_CORE,
    Result,
    check_with_client,
    free_port,
    mlp_request,
)
from bench.worker import SECONDS, key, measure, start
from tests.helpers.models import mlp

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
MODES = [(False, 1), (False, 32), (True, 1), (True, 32)]
ROUNDS = int(os.environ.get("LIVEML_BENCH_ROUNDS", "4"))
SIDES = {"before": "mlp-before", "after": "mlp-after"}  # side -> the model it serves


def liveml(tree: Path, *args: str) -> list[str]:
    """The CLI of the code in `tree`: run from it, with it ahead of the installed package
    on sys.path (for the processes it starts, such as the gateway's shadow process, too)."""
    return [
        "env",
        f"--chdir={tree}",
        f"PYTHONPATH={tree}",
        PYTHON,
        "-c",
        "import sys; from services.cli.main import app; sys.argv[0] = 'liveml'; app()",
        *args,
    ]


async def wait_serving(port: int, model: str) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            await check_with_client(port, mlp_request(model), expect_model_version="1")
            return
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


def revision(tree: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def main() -> int:
    before_rev = os.environ.get("BEFORE", "HEAD~1")
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="liveml-bench-ba-"))
    before_tree = work / "before"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before_tree), before_rev],
        check=True,
        capture_output=True,
    )
    trees = {"before": before_tree, "after": ROOT}
    revisions = {side: revision(tree) for side, tree in trees.items()}
    model_file = mlp(work / "v1.onnx", 64, 256, 10)
    reg_port = free_port()
    env = registry_env(work)
    procs = [
        start(
            liveml(ROOT, "registry", "serve", "--port", str(reg_port), "--metrics-port", "-1"),
            reg_port,
            env,
            CLIENT_CORE,
        )
    ]
    ports: dict[str, tuple[int, int]] = {}  # side -> (worker, gateway)
    cells: dict[tuple[str, str, str], list[Result]] = {}  # (side, path, mode) -> rounds
    try:
        token = (work / "admin.token").read_text().strip()
        for model in SIDES.values():
            asyncio.run(publish(reg_port, token, model, [model_file]))
            asyncio.run(route(reg_port, token, model, mirror=False))
        common = ["--registry", f"127.0.0.1:{reg_port}", "--registry-token", token]
        # The data plane without tokens (h2load sends none); what they cost is bench-auth's.
        common += ["--metrics-port", "-1", "--log-level", "WARNING", "--allow-anonymous"]
        for side, model in SIDES.items():
            worker_port, gateway_port = free_port(), free_port()
            ports[side] = (worker_port, gateway_port)
            worker = liveml(
                trees[side], "worker", "serve", "--port", str(worker_port),
                "--run-threads", "1", "--models", model,
                "--cache-dir", str(work / f"cache-{side}"), *common,
            )  # fmt: skip
            procs.append(start(worker, worker_port, core=SERVER_CORE))
            gateway = liveml(trees[side], "gateway", "serve", "--port", str(gateway_port), *common)
            procs.append(start(gateway, gateway_port, core=SERVER_CORE))
        for side, model in SIDES.items():
            asyncio.run(wait_serving(ports[side][1], model))
        print(f"{ROUNDS} rounds of {len(MODES) * 4} cells, {SECONDS:g} s each ...", flush=True)
        for _ in range(ROUNDS):
            for streaming, in_flight in MODES:
                for path in ("worker direct", "through gateway"):
                    for side, model in SIDES.items():
                        port = ports[side][0 if path == "worker direct" else 1]
                        result = measure(
                            port, 64, streaming, in_flight, model=model, seconds=SECONDS
                        )
                        cells.setdefault((side, path, key(streaming, in_flight)), []).append(result)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_tree)],
            check=False,
            capture_output=True,
        )
    report(cells, revisions, before_rev)
    return 0


def report(
    cells: dict[tuple[str, str, str], list[Result]], revisions: dict[str, str], before_rev: str
) -> None:
    modes = [key(s, n) for s, n in MODES]
    lines = [
        "## Gateway before ÷ after (`bench/gateway_before_after.py`)",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"grpcio {version('grpcio')}, onnxruntime {version('onnxruntime')}; load average "
        f"{os.getloadavg()[0]:.1f} at the end. before = {before_rev} "
        f"({revisions['before']}), after = this checkout ({revisions['after']}, with any "
        f"uncommitted changes). Median of "
        f"{ROUNDS} interleaved rounds of {SECONDS:g} s cells; p99 at 1 in flight pooled.",
        "",
        "| cell | " + " | ".join(f"{side} req/s" for side in SIDES) + " | after ÷ before |",
        "|---|---|---|---|",
    ]
    rate: dict[tuple[str, str, str], float] = {}
    for mode in modes:
        for path in ("worker direct", "through gateway"):
            for side in SIDES:
                rate[(side, path, mode)] = statistics.median(
                    r.rate for r in cells[(side, path, mode)]
                )
            b, a = rate[("before", path, mode)], rate[("after", path, mode)]
            lines.append(f"| {path}, {mode} | {b:,.0f} | {a:,.0f} | {a / b:.2f} |")
    lines += ["", "| gateway ÷ worker | before | after | after ÷ before |", "|---|---|---|---|"]
    for mode in modes:
        ratios = {
            side: statistics.median(
                g.rate / w.rate
                for g, w in zip(
                    cells[(side, "through gateway", mode)],
                    cells[(side, "worker direct", mode)],
                    strict=True,
                )
            )
            for side in SIDES
        }
        lines.append(
            f"| {mode} | {ratios['before']:.2f} | {ratios['after']:.2f} | "
            f"{ratios['after'] / ratios['before']:.2f} |"
        )
    lines += [
        "",
        "| p99 at 1 in flight, ms | before | after | after ÷ before |",
        "|---|---|---|---|",
    ]
    for mode in (key(False, 1), key(True, 1)):
        for path in ("worker direct", "through gateway"):
            p99 = {side: pooled(cells[(side, path, mode)]).p99_ms for side in SIDES}
            lines.append(
                f"| {path}, {mode} | {p99['before']:.2f} | {p99['after']:.2f} | "
                f"{p99['after'] / p99['before']:.2f} |"
            )
    text = "\n".join(lines) + "\n"
    (OUT / "gateway_before_after.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
