"""Benchmark: what data-plane authentication costs a worker (unary@32, on ÷ off).

One command (`make bench-auth`): a registry and two workers in registry mode serving
the benchmark MLP (64->256->256->10, batch-1, batching off), one authenticating its
callers (the default) and one started with --allow-anonymous; h2load drives unary
ModelInfer at 32 in flight against each in turn, alternating, several rounds, with a
gateway-role bearer token for the authenticating one. A real client first proves the
token is accepted (and that a call without it is refused), and each worker's OK
counter proves h2load's 200s were answers, not gRPC errors. The ratio of the median
rounds is the cost; the goal is >= 0.97. Results go to bench/out/auth.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
from importlib.metadata import version
from pathlib import Path

import grpc
from grpc import aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.h2bench import Result, frame, free_port, h2load, mlp_request
from bench.worker import ok_count
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from tests.helpers.cluster import cluster
from tests.helpers.models import mlp

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SECONDS = float(os.environ.get("LIVEML_BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("LIVEML_BENCH_ROUNDS", "3"))
GOAL = 0.97


async def _answers(port: int, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                mlp_request(), timeout=10, metadata=metadata
            )
        except aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def run(root: Path) -> dict[str, object]:
    async with cluster(root) as c:
        await c.create_model("mlp")
        await c.push("mlp", mlp(root / "mlp.onnx", 64, 256, 10))
        await c.route("mlp", (1, 100))
        ports: dict[str, tuple[int, int]] = {}
        for name, anonymous in (("auth-on", "false"), ("auth-off", "true")):
            os.environ["LIVEML_ALLOW_ANONYMOUS"] = anonymous
            metrics = free_port()
            port = c.start_worker(
                name,
                "--metrics-port", str(metrics), "--run-threads", "1",
                "--max-batch-size", "0", "--log-level", "WARNING",
            )  # fmt: skip
            ports[name] = (port, metrics)
        for name in ports:
            await c.wait_state(name, "mlp", 1, "READY")
        token = c.mint("bench gateway", rpb.ROLE_GATEWAY)
        bearer = (("authorization", f"Bearer {token}"),)
        on, off = ports["auth-on"][0], ports["auth-off"][0]
        # Wait for the worker to know the new token (the registry's feed).
        for _ in range(100):
            if await _answers(on, bearer) == grpc.StatusCode.OK:
                break
            await asyncio.sleep(0.1)
        assert await _answers(on, bearer) == grpc.StatusCode.OK
        assert await _answers(on, ()) == grpc.StatusCode.UNAUTHENTICATED
        assert await _answers(off, ()) == grpc.StatusCode.OK
        body = frame(mlp_request().SerializeToString())
        results: dict[str, list[Result]] = {"auth-on": [], "auth-off": []}
        for _ in range(ROUNDS):
            for name, headers in (
                ("auth-on", (f"authorization: Bearer {token}",)),
                ("auth-off", ()),
            ):
                port, metrics = ports[name]
                before = ok_count(metrics)
                result = h2load(port, "ModelInfer", body, 32, SECONDS, headers=headers)
                if ok_count(metrics) - before < result.requests:
                    raise RuntimeError(f"{name}: h2load counted gRPC errors as answers")
                results[name].append(result)
                print(f"{name}: {result.rate:,.0f} req/s, p99 {result.p99_ms:.2f} ms", flush=True)
    best = {name: max(r.rate for r in rs) for name, rs in results.items()}
    # The median round of each: on a shared machine one lucky round decides a best.
    median = {name: statistics.median(r.rate for r in rs) for name, rs in results.items()}
    ratio = median["auth-on"] / median["auth-off"]
    return {
        "rounds": {n: [round(r.rate) for r in rs] for n, rs in results.items()},
        "best": {n: round(v) for n, v in best.items()},
        "median": {n: round(v) for n, v in median.items()},
        "best_ratio": round(best["auth-on"] / best["auth-off"], 4),
        "p99_ms": {n: round(min(r.p99_ms for r in rs), 3) for n, rs in results.items()},
        "ratio": round(ratio, 4),
        "goal": GOAL,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "versions": {
            "python": platform.python_version(),
            "grpcio": version("grpcio"),
            "onnxruntime": version("onnxruntime"),
        },
        "seconds_per_round": SECONDS,
    }


def main() -> int:
    import tempfile

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        out = asyncio.run(run(Path(scratch)))
    (OUT / "auth.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    ok = float(out["ratio"]) >= GOAL  # type: ignore[arg-type]
    print(
        f"worker unary@32 auth on / off = {out['ratio']} (goal >= {GOAL}): {'OK' if ok else 'BELOW'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
