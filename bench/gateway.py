"""Benchmark: requests through the gateway vs straight to one worker vs KServe direct.

One command (`make bench-gateway`). A registry, a worker, a mirror worker
(`--role mirror`) and the gateway run as processes; the gateway and both workers are
pinned together to core 0 (a whole extra Python hop on the same core), h2load runs
on core 1, and so does the registry, which serves no request and would otherwise add
its heartbeats, watch and controller ticks to the measured core. Measured in one
run: unary and streaming at 1 and 32 in flight through the gateway and straight to
the worker, KServe's ModelServer direct, and the primary's latency through the
gateway with a 20x slower mirror (on the mirror worker, and for comparison on the
primary's own worker) and with a failing mirror. `LIVEML_BENCH_ONLY=latency` runs
only the latency rounds. Results go to bench/out/gateway.md (copied into
bench/RESULTS.md with the machine).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from grpc import aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.h2bench import CLIENT_CORE, SERVER_CORE, Result, free_port, mlp_request
from bench.worker import key, kserve_rows, measure, start
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.helpers.models import mlp

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
LIVEML = str(ROOT / ".venv" / "bin" / "liveml")
MODES = [(False, 1), (False, 32), (True, 1), (True, 32)]
LATENCY_ROUNDS = int(os.environ.get("LIVEML_BENCH_LATENCY_ROUNDS", "12"))
LATENCY_SECONDS = float(os.environ.get("LIVEML_BENCH_LATENCY_SECONDS", "3"))
# One model per mirror setup, each with a rollout that never changes while measured:
# model -> (its versions' files by index into `files`, its mirror version or None).
MIRRORED = "mlp-mirrored"  # its mirror runs on the mirror worker
FAILING = "mlp-failing"  # its mirror's artifact is corrupted: it never loads
SHARED = "mlp-shared"  # not served by the mirror worker: its mirror runs on the primary's
MODELS = {"mlp": [0], MIRRORED: [0, 1], FAILING: [0, 2], SHARED: [0, 1]}
# Mirror copies of MIRRORED go to this worker, on the same core as the primary's.
MIRROR_WORKER = ["--role", "mirror", "--models", MIRRORED]
SLOW = "gateway, 20x slower mirror (mirror worker)"
FAILING_LABEL = "gateway, failing mirror"
SLOW_SHARED = "gateway, 20x slower mirror on the primary's worker"
CELLS = [  # (label, through the gateway?, model)
    ("worker direct", False, "mlp"),
    ("through gateway", True, "mlp"),
    (SLOW, True, MIRRORED),
    (FAILING_LABEL, True, FAILING),
    (SLOW_SHARED, True, SHARED),
]


def median(results: list[Result]) -> Result:
    """Rate over all runs; p50 and p99 the median of the runs'."""
    return Result(
        sum(r.requests for r in results),
        sum(r.seconds for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
    )


async def publish(port: int, token: str, model: str, files: list[Path]) -> list[rpb.Version]:
    md = (("authorization", f"Bearer {token}"),)
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        await stub.CreateModel(rpb.CreateModelRequest(model_id=model), metadata=md)
        versions = []
        for path in files:
            data = path.read_bytes()

            async def parts(data: bytes = data) -> object:
                yield rpb.CreateVersionRequest(
                    metadata=rpb.CreateVersionRequest.Metadata(
                        parent=f"models/{model}",
                        sha256=hashlib.sha256(data).hexdigest(),
                        size_bytes=len(data),
                    )
                )
                yield rpb.CreateVersionRequest(chunk=data)

            versions.append((await stub.CreateVersion(parts(), metadata=md)).version)
        return versions


async def route(port: int, token: str, model: str, mirror: bool) -> None:
    """Point `model`'s rollout at v1, with v2 as its mirror."""
    md = (("authorization", f"Bearer {token}"),)
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        rollout = rpb.Rollout(
            name=f"models/{model}/rollout",
            targets=[rpb.TrafficTarget(version=1, percent=100)],
            mirrors=[rpb.TrafficTarget(version=2, percent=100)] if mirror else [],
        )
        await rpb_grpc.RegistryServiceStub(channel).UpdateRollout(
            rpb.UpdateRolloutRequest(rollout=rollout), metadata=md
        )


async def wait_mirrors(port: int, token: str) -> None:
    """Until the slow mirrors are READY where their copies go."""
    md = (("authorization", f"Bearer {token}"),)
    wanted = {(MIRRORED, rpb.WORKER_ROLE_MIRROR), (SHARED, rpb.WORKER_ROLE_ALL)}
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        deadline = time.monotonic() + 60
        while True:
            workers = (await stub.ListWorkers(rpb.ListWorkersRequest(), metadata=md)).workers
            ready = {
                (s.model, w.role)
                for w in workers
                for s in w.versions
                if s.version == 2 and s.state == rpb.VERSION_LOAD_STATE_READY
            }
            if wanted <= ready:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"slow mirrors not READY: {workers}")
            await asyncio.sleep(0.2)


async def wait_serving(port: int) -> None:
    from bench.h2bench import check_with_client

    deadline = time.monotonic() + 60
    while True:
        try:
            for model in MODELS:
                await check_with_client(port, mlp_request(model), expect_model_version="1")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="liveml-bench-"))
    files = [
        mlp(work / "v1.onnx", 64, 256, 10),
        mlp(work / "v2.onnx", 64, 2048, 10, seed=1),  # the slow mirror
        mlp(work / "v3.onnx", 64, 2048, 10, seed=2),  # the failing one (corrupted below)
    ]
    reg_port = free_port()
    env = {
        "LIVEML_DATABASE_URL": f"sqlite+aiosqlite:///{work}/r.db",
        "LIVEML_ARTIFACT_DIR": str(work / "a"),
        "LIVEML_ADMIN_TOKEN_FILE": str(work / "admin.token"),
        "LIVEML_LOG_LEVEL": "WARNING",
    }
    procs = [
        start(
            [LIVEML, "registry", "serve", "--port", str(reg_port), "--metrics-port", "-1"],
            reg_port,
            env,
            CLIENT_CORE,  # the control plane stays off the measured core
        )
    ]
    rows: dict[str, dict[str, Result]] = {}
    only_latency = os.environ.get("LIVEML_BENCH_ONLY") == "latency"
    try:
        token = (work / "admin.token").read_text().strip()
        for model, indices in MODELS.items():
            versions = asyncio.run(publish(reg_port, token, model, [files[i] for i in indices]))
            if model == FAILING:
                blob = next((work / "a" / "blobs").rglob(versions[1].artifact.sha256))
                blob.write_bytes(blob.read_bytes()[:-8] + b"corrupt!")
            asyncio.run(route(reg_port, token, model, mirror=len(indices) > 1))
        common = [
            "--registry",
            f"127.0.0.1:{reg_port}",
            "--registry-token",
            token,
            "--metrics-port",
            "-1",
            "--log-level",
            "WARNING",
        ]
        worker_port, mirror_port, gateway_port = free_port(), free_port(), free_port()
        for port, role in [(worker_port, ["--role", "all"]), (mirror_port, MIRROR_WORKER)]:
            procs.append(
                start(
                    [
                        LIVEML,
                        "worker",
                        "serve",
                        "--port",
                        str(port),
                        "--run-threads",
                        "1",
                        "--cache-dir",
                        str(work / f"cache-{port}"),
                        *role,
                        *common,
                    ],
                    port,
                )
            )
        procs.append(
            start([LIVEML, "gateway", "serve", "--port", str(gateway_port), *common], gateway_port)
        )
        asyncio.run(wait_serving(gateway_port))
        asyncio.run(wait_mirrors(reg_port, token))
        if not only_latency:
            print("straight to the worker / through the gateway ...", flush=True)
            rows["worker direct"] = {key(s, m): measure(worker_port, 64, s, m) for s, m in MODES}
            rows["through gateway"] = {key(s, m): measure(gateway_port, 64, s, m) for s, m in MODES}
        # This box's speed moves by a factor of two within minutes (other tenants of the
        # host), so the latency comparisons are paired and short: each of LATENCY_ROUNDS
        # rounds measures every cell once for LATENCY_SECONDS, one right after another,
        # and the goals take the median over rounds of each round's own difference or
        # ratio. Each setup is its own model, so no rollout changes between cells.
        print("latency at 1 in flight, with and without mirrors ...", flush=True)
        rounds: dict[str, list[Result]] = {}
        for _ in range(LATENCY_ROUNDS):
            for label, gateway, model in CELLS:
                port = gateway_port if gateway else worker_port
                result = measure(port, 64, False, 1, model=model, seconds=LATENCY_SECONDS)
                rounds.setdefault(label, []).append(result)
        for label, results in rounds.items():
            rows.setdefault(label, {})[key(False, 1)] = median(results)
        paired = paired_ratios(rounds)
        kserve = None if only_latency else kserve_rows(files[0])
        if kserve:
            rows["KServe direct"] = kserve
    finally:
        for proc in reversed(procs):  # gateway, workers, then the registry they talk to
            proc.terminate()
            proc.wait(30)
    report(rows, paired)
    return 0


def paired_ratios(rounds: dict[str, list[Result]]) -> dict[str, float]:
    """Median over rounds of each round's p99 added by the gateway, and mirror ratios."""
    base, direct = rounds["through gateway"], rounds["worker direct"]
    paired = {
        "added": statistics.median(g.p99_ms - d.p99_ms for g, d in zip(base, direct, strict=True))
    }
    for label in (SLOW, FAILING_LABEL, SLOW_SHARED):
        paired[label] = statistics.median(
            m.p99_ms / g.p99_ms for m, g in zip(rounds[label], base, strict=True)
        )
    return paired


def report(rows: dict[str, dict[str, Result]], paired: dict[str, float]) -> None:
    def get(name: str, k: str) -> Result | None:
        return rows.get(name, {}).get(k)

    def rate(name: str, k: str) -> float:
        r = get(name, k)
        return r.rate if r else float("nan")

    lines = ["| path | mode | in flight | req/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for name, results in rows.items():
        for k, r in results.items():
            mode, in_flight = k.split("@")
            lines.append(
                f"| {name} | {mode} | {in_flight} | {r.rate:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} |"
            )
    goals = [
        (
            "gateway unary@32 / KServe direct unary@32",
            rate("through gateway", "unary@32") / rate("KServe direct", "unary@32"),
            0.75,
            True,
        ),
        (
            "gateway stream@32 / KServe direct unary@32",
            rate("through gateway", "stream@32") / rate("KServe direct", "unary@32"),
            2.0,
            True,
        ),
        ("p99 added by the gateway at 1 in flight (ms)", paired["added"], 0.5, False),
        ("primary p99 with a 20x slower mirror / without", paired[SLOW], 1.2, False),
        ("primary p99 with a failing mirror / without", paired[FAILING_LABEL], 1.2, False),
        (
            "(for comparison) 20x slower mirror on the primary's worker / without",
            paired[SLOW_SHARED],
            float("nan"),
            False,
        ),
    ]
    lines += [
        "",
        f"Latency goals: median over {LATENCY_ROUNDS} rounds of each round's own difference or ratio.",
        "",
        "| ratio (same run) | measured | goal |",
        "|---|---|---|",
    ]
    for label, value, goal, at_least in goals:
        if goal != goal:  # nan: no goal, shown to compare with
            lines.append(f"| {label} | {value:.2f} | — |")
            continue
        ok = value >= goal if at_least else value <= goal
        lines.append(
            f"| {label} | {value:.2f} | {'≥' if at_least else '≤'} {goal:g} {'✓' if ok else '✗'} |"
        )
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; grpcio {version('grpcio')}, "
        f"onnxruntime {version('onnxruntime')}; gateway and worker on core {SERVER_CORE}, h2load on the other"
    )
    text = machine + "\n\n" + "\n".join(lines)
    print()
    print(text)
    (OUT / "gateway.md").write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
