"""Benchmark: requests through the gateway vs straight to one worker vs KServe direct.

One command (`make bench-gateway`). A registry, a worker, a mirror worker
(`--role mirror`) and the gateway run as processes; the gateway and both workers are
pinned together to core 0 (a whole extra Python hop on the same core), h2load runs
on core 1, and so does the registry, which serves no request and would otherwise add
its heartbeats, watch and controller ticks to the measured core. Measured in one
run, in interleaved rounds so that each ratio compares cells measured minutes
apart at most: unary and streaming at 1 and 32 in flight through the gateway and
straight to the worker, KServe's ModelServer direct, and the primary's latency
through the gateway with a 20x slower mirror (on the mirror worker, and for
comparison on the primary's own worker) and with a failing mirror (which sends no
copy: it measures the noise). `LIVEML_BENCH_ONLY=latency` runs only the latency
rounds; `LIVEML_BENCH_MIRROR_CORE=1` moves the mirror worker to the client's core (a
mirror worker with a core of its own, as deployed, but sharing it with h2load). Results go to bench/out/gateway.md (copied into bench/RESULTS.md with the
machine).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from bench.worker import key, kserve_server, measure, start
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.helpers.models import mlp

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
LIVEML = str(ROOT / ".venv" / "bin" / "liveml")
MODES = [(False, 1), (False, 32), (True, 1), (True, 32)]
THROUGHPUT_ROUNDS = int(os.environ.get("LIVEML_BENCH_THROUGHPUT_ROUNDS", "3"))
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
MIRROR_CORE = os.environ.get("LIVEML_BENCH_MIRROR_CORE", SERVER_CORE)
SLOW = "gateway, 20x slower mirror (mirror worker)"
FAILING_LABEL = "gateway, failing mirror"
SLOW_SHARED = "gateway, 20x slower mirror on the primary's worker"
KSERVE = "KServe direct"
KSERVE_MODES = [(False, 1), (False, 32)]
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


def pooled(results: list[Result]) -> Result:
    """Rate over all runs; p50 and p99 of all their requests together: the whole run's."""
    samples = [x for r in results for x in r.latencies_ms]
    quantiles = statistics.quantiles(samples, n=100)
    return Result(
        sum(r.requests for r in results),
        sum(r.seconds for r in results),
        quantiles[49],
        quantiles[98],
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


async def copies_run(port: int, model: str) -> int:
    """Requests a worker ran for `model` v2, the mirror: every one of them a copy."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stats = await pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name=model, version="2")
        )
    return sum(s.inference_stats.success.count for s in stats.model_stats)


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


def registry_env(work: Path) -> dict[str, str]:
    """A benchmark registry's settings: SQLite, artifacts and admin token in `work`."""
    return {
        "LIVEML_DATABASE_URL": f"sqlite+aiosqlite:///{work}/r.db",
        "LIVEML_ARTIFACT_DIR": str(work / "a"),
        "LIVEML_ADMIN_TOKEN_FILE": str(work / "admin.token"),
        "LIVEML_LOG_LEVEL": "WARNING",
    }


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="liveml-bench-"))
    files = [
        mlp(work / "v1.onnx", 64, 256, 10),
        mlp(work / "v2.onnx", 64, 2048, 10, seed=1),  # the slow mirror
        mlp(work / "v3.onnx", 64, 2048, 10, seed=2),  # the failing one (corrupted below)
    ]
    reg_port = free_port()
    env = registry_env(work)
    procs = [
        start(
            [LIVEML, "registry", "serve", "--port", str(reg_port), "--metrics-port", "-1"],
            reg_port,
            env,
            CLIENT_CORE,  # the control plane stays off the measured core
        )
    ]
    rows: dict[str, dict[str, Result]] = {}
    throughput: dict[str, dict[str, list[Result]]] = {}
    stack = contextlib.ExitStack()
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
            # The data plane without tokens (h2load sends none): bench-auth measures them.
            "--allow-anonymous",
        ]
        worker_port, mirror_port, gateway_port = free_port(), free_port(), free_port()
        placement = [
            (worker_port, ["--role", "all"], SERVER_CORE),
            (mirror_port, MIRROR_WORKER, MIRROR_CORE),
        ]
        for port, role, core in placement:
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
                    core=core,
                )
            )
        procs.append(
            start([LIVEML, "gateway", "serve", "--port", str(gateway_port), *common], gateway_port)
        )
        asyncio.run(wait_serving(gateway_port))
        asyncio.run(wait_mirrors(reg_port, token))
        # This box's speed moves by a factor of two within minutes (other tenants of the
        # host), so cells are measured in rounds, each cell once a round, one right after
        # another: a throughput goal is the median over rounds of each round's own ratio;
        # a latency goal compares the p99 of all of a setup's requests over the rounds
        # (a p99 of one short cell swings by ±25% on its own; interleaving exposes every
        # setup to the same drift). KServe's server idles while the others are
        # measured, and theirs while it is.
        if not only_latency:
            print("throughput: straight to the worker, through the gateway, KServe ...", flush=True)
            kserve_port = stack.enter_context(kserve_server(files[0]))
            paths = [
                ("worker direct", worker_port, MODES),
                ("through gateway", gateway_port, MODES),
            ]
            if kserve_port is not None:
                paths.append((KSERVE, kserve_port, KSERVE_MODES))
            for _ in range(THROUGHPUT_ROUNDS):
                for label, port, modes in paths:
                    for streaming, in_flight in modes:
                        result = measure(port, 64, streaming, in_flight)
                        cells = throughput.setdefault(label, {})
                        cells.setdefault(key(streaming, in_flight), []).append(result)
            for label, by_mode in throughput.items():
                rows[label] = {k: median(results) for k, results in by_mode.items()}
        # Each latency setup is its own model, so no rollout changes between cells.
        print("latency at 1 in flight, with and without mirrors ...", flush=True)
        rounds: dict[str, list[Result]] = {}
        for _ in range(LATENCY_ROUNDS):
            for label, gateway, model in CELLS:
                port = gateway_port if gateway else worker_port
                result = measure(port, 64, False, 1, model=model, seconds=LATENCY_SECONDS)
                rounds.setdefault(label, []).append(result)
        latency = {label: pooled(results) for label, results in rounds.items()}
        for label, result in latency.items():
            rows.setdefault(label, {})[key(False, 1)] = result
        paired = latency_goals(latency) | throughput_ratios(throughput)
        # A shadow path that sent nothing would flatter the mirror rows: prove it worked.
        copies = {
            SLOW: asyncio.run(copies_run(mirror_port, MIRRORED)),
            SLOW_SHARED: asyncio.run(copies_run(worker_port, SHARED)),
        }
        if not all(copies.values()):
            raise RuntimeError(f"a slow mirror ran no copy, so its rows mean nothing: {copies}")
    finally:
        stack.close()
        for proc in reversed(procs):  # gateway, workers, then the registry they talk to
            proc.terminate()
            proc.wait(30)
    report(rows, paired, copies)
    return 0


def latency_goals(latency: dict[str, Result]) -> dict[str, float]:
    """p99 added by the gateway, and each mirror setup's p99 / the gateway's without one."""
    base = latency["through gateway"]
    goals = {"added": base.p99_ms - latency["worker direct"].p99_ms}
    for label in (SLOW, FAILING_LABEL, SLOW_SHARED):
        goals[label] = latency[label].p99_ms / base.p99_ms
    return goals


def throughput_ratios(throughput: dict[str, dict[str, list[Result]]]) -> dict[str, float]:
    """Median over rounds of each round's gateway rate / KServe's unary@32 rate."""
    if KSERVE not in throughput:
        return {}
    kserve = throughput[KSERVE][key(False, 32)]
    gateway = throughput["through gateway"]
    return {
        mode: statistics.median(g.rate / k.rate for g, k in zip(gateway[mode], kserve, strict=True))
        for mode in (key(False, 32), key(True, 32))
    }


def report(
    rows: dict[str, dict[str, Result]], paired: dict[str, float], copies: dict[str, int]
) -> None:
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
            paired.get("unary@32", float("nan")),
            0.75,
            True,
        ),
        (
            "gateway stream@32 / KServe direct unary@32",
            paired.get("stream@32", float("nan")),
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
        f"Throughput goals: the median over {THROUGHPUT_ROUNDS} rounds of each round's own ratio."
        f" Latency goals: p99 of all requests of each setup's cells over {LATENCY_ROUNDS}"
        " interleaved rounds (the unary@1 rows).",
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
    lines += [
        "",
        "Copies the slow mirrors ran: " + ", ".join(f"{n:,} ({k})" for k, n in copies.items()),
    ]
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
