"""Benchmark: from a trigger to a started canary, for 100k rows x 20 features.

One command (`make bench-trainer`). A registry and a trainer run as processes on the
embedded default (SQLite, a local artifact folder); the data is a CSV file of
100,000 labelled rows with 20 features and an event-time column; the policy fits a
LogisticRegression. A first run makes the production version (it takes all the
traffic: there is nothing to canary against); the measured run then goes from
`RequestTrainingRun` to the candidate's canary started, against that production
version, through the whole gate (floors, regression, non-inferiority by paired
bootstrap, parity, single-row latency). Printed: the end-to-end seconds of each
measured run and the trainer's seconds per stage, and the goal (<= 30 s). Results go
to bench/out/trainer.md (copied into bench/RESULTS.md with the machine).
"""

from __future__ import annotations

import asyncio
import csv
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from grpc import aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc
from tests.helpers.procs import Proc, python_module, registry_process, wait_port
from tests.helpers.training import seconds

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
ROWS = int(os.environ.get("LIVEML_BENCH_ROWS", "100000"))
FEATURES = int(os.environ.get("LIVEML_BENCH_FEATURES", "20"))
RUNS = int(os.environ.get("LIVEML_BENCH_RUNS", "3"))
GOAL_SECONDS = 30.0


def write_data(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES))
    w = rng.normal(size=FEATURES)
    y = (x @ w + rng.normal(scale=0.5, size=ROWS) > 0).astype(int)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow([*(f"f{i}" for i in range(FEATURES)), "y", "t"])
        for i in range(ROWS):
            out.writerow([*(f"{v:.5f}" for v in x[i]), y[i], 1_700_000_000 + i])


async def until_done(
    training: tpb_grpc.TrainingServiceStub, md: tuple, name: str
) -> tpb.TrainingRun:
    while True:
        run = (await training.GetTrainingRun(tpb.GetTrainingRunRequest(name=name), metadata=md)).run
        if run.state in (tpb.TrainingRun.STATE_REJECTED, tpb.TrainingRun.STATE_FAILED):
            raise RuntimeError(f"{name} ended {tpb.TrainingRun.State.Name(run.state)}: {run.error}")
        if run.state == tpb.TrainingRun.STATE_SUCCEEDED and run.canary_decision:
            return run
        await asyncio.sleep(0.02)  # the poll interval of the measurement


async def main() -> int:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="liveml-bench-trainer-") as folder:
        root = Path(folder)
        data = root / "data.csv"
        write_data(data)
        registry, port = registry_process(root)
        trainer: Proc | None = None
        try:
            md = (("authorization", f"Bearer {(root / 'admin.token').read_text().strip()}"),)
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                reg = rpb_grpc.RegistryServiceStub(channel)
                training = tpb_grpc.TrainingServiceStub(channel)
                token = await reg.CreateToken(
                    rpb.CreateTokenRequest(display_name="bench", role=rpb.ROLE_TRAINER), metadata=md
                )
                await reg.CreateModel(rpb.CreateModelRequest(model_id="bench"), metadata=md)
                policy = tpb.TrainingPolicy(
                    name="models/bench/trainingPolicy",
                    task=tpb.TRAINING_TASK_CLASSIFICATION,
                    estimator=tpb.Estimator(
                        class_path="sklearn.linear_model.LogisticRegression",
                        params={"max_iter": "1000"},
                    ),
                    features=[f"f{i}" for i in range(FEATURES)],
                    label="y",
                    dataset_uri=data.as_uri(),
                    time_column="t",
                    gate=tpb.GatePolicy(
                        floors={"accuracy": 0.7}, max_regression={"accuracy": 0.02}
                    ),
                    cooldown=seconds(1),
                )
                await training.SetTrainingPolicy(
                    tpb.SetTrainingPolicyRequest(policy=policy), metadata=md
                )
                trainer_port = free_port()
                trainer = python_module(
                    "services.cli.main",
                    {"LIVEML_REGISTRY_TOKEN": token.secret},
                    "trainer", "serve", "--registry", f"127.0.0.1:{port}", "--port", str(trainer_port),
                    "--metrics-port", "-1", "--poll-seconds", "0.1", "--work-dir", str(root / "work"),
                )  # fmt: skip
                wait_port(trainer_port, trainer)
                results = []
                for attempt in range(RUNS + 1):
                    started = time.perf_counter()
                    asked = await training.RequestTrainingRun(
                        tpb.RequestTrainingRunRequest(
                            parent="models/bench",
                            trigger=tpb.TRAINING_TRIGGER_MANUAL,
                            reason="bench",
                        ),
                        metadata=md,
                    )
                    run = await until_done(training, md, asked.run.name)
                    took = time.perf_counter() - started
                    if attempt:  # the first run makes the production version
                        results.append((took, run))
                    await reg.UpdateRollout(  # the candidate becomes production for the next
                        rpb.UpdateRolloutRequest(
                            rollout=rpb.Rollout(
                                name="models/bench/rollout",
                                targets=[rpb.TrafficTarget(version=run.version, percent=100)],
                            )
                        ),
                        metadata=md,
                    )
        finally:
            if trainer is not None:
                trainer.stop()
            registry.stop()
    report = render(results)
    print(report)
    (OUT / "trainer.md").write_text(report)
    worst = max(t for t, _ in results)
    return 0 if worst <= GOAL_SECONDS else 1


def free_port() -> int:
    from tests.conftest import free_port as port

    return port()


def render(results: list[tuple[float, tpb.TrainingRun]]) -> str:
    stages = ["dataset", "split", "production", "fit", "gate", "register"]
    lines = [
        f"# Trainer: trigger to canary started, {ROWS:,} rows x {FEATURES} features, LogisticRegression",
        "",
        f"{platform.node()} · {platform.platform()} · Python {platform.python_version()} · "
        f"scikit-learn {version('scikit-learn')} · skl2onnx {version('skl2onnx')} · "
        f"onnxruntime {version('onnxruntime')} · {os.cpu_count()} cores",
        "",
        "| run | trigger → canary, s | " + " | ".join(f"{s}, s" for s in stages) + " | canary |",
        "|---|---:|" + "---:|" * len(stages) + "---|",
    ]
    for i, (took, run) in enumerate(results, start=1):
        cells = " | ".join(f"{run.stage_seconds.get(s, 0):.2f}" for s in stages)
        lines.append(f"| {i} | {took:.2f} | {cells} | {run.canary_decision} |")
    median = statistics.median(t for t, _ in results)
    worst = max(t for t, _ in results)
    verdict = "met" if worst <= GOAL_SECONDS else "MISSED"
    lines += [
        "",
        f"Median {median:.2f} s, worst {worst:.2f} s; goal <= {GOAL_SECONDS:g} s: {verdict}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
