"""Benchmark of the online learner: learning speed, freshness, and serving while it publishes.

One command (`make bench-online`; `--duration 30` for a trial, the recorded run is 300 s):

(a) examples learned per second on one core (this process pinned to core 0) by the
    learner core alone (`OnlineLearner.step`: checks, prequential scoring, drift
    detector, running standardiser, replay from the reservoir, `partial_fit`) for an
    SGDClassifier on 20 features in batches of 256 (the policy default), next to a
    plain scikit-learn `partial_fit` loop on the same batches, as their ratio (goal
    >= 50k examples/s);
(b) freshness: a registry, two workers, a gateway and a trainer as processes (SQLite,
    local artifacts); examples are ingested through the gateway (`IngestExamples`) all
    the time; the learner publishes every second (`publish_interval` 1 s, direct
    rollout); for each example, the time from sending it to the moment the first version
    that learned it (its `last_sequence` >= the example's) answered a request pinned to
    it on every worker (each worker polled directly) — p50 / p95 / max (goal p95 <= 3 s);
(c) meanwhile clients send inference requests through the gateway the whole time:
    failed requests counted (goal 0), and which versions answered.

Prints the tables and writes them to bench/out/online.md (copied into bench/RESULTS.md
with the machine). Exit 1 when a goal is missed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core means one core, BLAS included
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc import aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common import codec
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc
from services.trainer.online.learner import OnlineLearner
from services.trainer.online.runner import DEFAULT_BATCH, settings_of
from tests.helpers.cluster import Cluster, cluster
from tests.helpers.training import seconds

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODEL = "fresh"
FEATURES = 20
SGD = "sklearn.linear_model.SGDClassifier"
PARAMS = {"loss": '"log_loss"', "learning_rate": '"constant"', "eta0": "0.01"}
GOAL_RATE = 50_000.0
GOAL_P95 = 3.0


def policy(publish_interval: float = 1.0) -> tpb.TrainingPolicy:
    return tpb.TrainingPolicy(
        name=f"models/{MODEL}/trainingPolicy",
        task=tpb.TRAINING_TASK_CLASSIFICATION,
        estimator=tpb.Estimator(class_path=SGD, params=PARAMS),
        features=[f"f{i}" for i in range(FEATURES)],
        label="y",
        mode=tpb.TRAINING_MODE_ONLINE,
        online=tpb.OnlinePolicy(
            publish_every=10**9,  # by time only: one version a second
            publish_interval=seconds(publish_interval),
            rollout=tpb.ONLINE_ROLLOUT_DIRECT,
        ),
        cooldown=seconds(60),
    )


class Concept:
    """A fixed linear rule on 20 standard-normal features, with 5% label noise."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.w = np.random.default_rng(1000).normal(size=FEATURES)

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = self.rng.normal(size=(n, FEATURES))
        y = (x @ self.w > 0).astype(np.int64)
        flip = self.rng.random(n) < 0.05
        return x, np.where(flip, 1 - y, y)


# --- (a) the learner core on one core ----------------------------------------------------


def core_rates(rows: int, repeats: int) -> list[tuple[str, float]]:
    """Examples per second: the learner core with its defaults, without replay, and a plain
    partial_fit loop, on the same batches; best of `repeats`."""
    from sklearn.linear_model import SGDClassifier

    x, y = Concept(seed=1).draw(rows)
    seqs = np.arange(1, rows + 1, dtype=np.int64)
    b = DEFAULT_BATCH
    bounds = [(i, min(i + b, rows)) for i in range(0, rows, b)]

    def learner(replay: bool) -> float:
        p = policy()
        if not replay:
            p.online.replay_ratio = -1
        online = OnlineLearner(settings_of(p))
        started = time.perf_counter()
        for i, j in bounds:
            online.step(seqs[i:j], x[i:j], y[i:j], int(seqs[j - 1]))
        took = time.perf_counter() - started
        assert online.applied == rows
        return rows / took

    def plain() -> float:
        estimator = SGDClassifier(
            loss="log_loss", learning_rate="constant", eta0=0.01, random_state=0
        )
        classes = np.array([0, 1])
        started = time.perf_counter()
        for i, j in bounds:
            estimator.partial_fit(x[i:j], y[i:j], classes=classes)
        return rows / (time.perf_counter() - started)

    results: dict[str, list[float]] = {"learner": [], "learner, replay off": [], "plain": []}
    for _ in range(repeats):  # interleaved: the box's noise hits each alike
        results["learner"].append(learner(True))
        results["learner, replay off"].append(learner(False))
        results["plain"].append(plain())
    return [(name, max(rates)) for name, rates in results.items()]


# --- (b) and (c) a cluster ----------------------------------------------------------------


@dataclass
class Run:
    sent: list[tuple[str, float]] = field(default_factory=list)  # key, monotonic when sent
    versions: dict[int, int] = field(default_factory=dict)  # version -> last_sequence
    published_at: dict[int, float] = field(default_factory=dict)  # seen in the registry
    ready: dict[int, float] = field(default_factory=dict)  # answering on every worker
    answers: dict[str, int] = field(default_factory=dict)  # by version
    failures: list[str] = field(default_factory=list)
    ingest_failures: list[str] = field(default_factory=list)
    ingest_seconds: list[float] = field(default_factory=list)  # per IngestExamples call
    lags: list[int] = field(default_factory=list)  # the learner's, sampled once a second
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    first_ready: asyncio.Event = field(default_factory=asyncio.Event)


def infer_request(x: np.ndarray, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, model_version=version)
    datatype, shape, raw = codec.encode_raw(x.astype(np.float32))
    request.inputs.add(name="X", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


async def clients(address: str, run: Run, count: int, rate: float) -> None:
    """`count` clients through the gateway, `rate` requests per second in all."""
    interval = count / rate

    async def one(index: int) -> None:
        rng = np.random.default_rng(100 + index)
        async with aio.insecure_channel(address) as channel:
            infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            next_at = time.monotonic()
            while not run.stop.is_set():
                x = rng.normal(size=(1, FEATURES))
                try:
                    reply = await infer(infer_request(x), timeout=10)
                    run.answers[reply.model_version] = run.answers.get(reply.model_version, 0) + 1
                except aio.AioRpcError as exc:
                    run.failures.append(f"{exc.code().name}: {exc.details()}")
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    await asyncio.gather(*(one(i) for i in range(count)))


async def ingest(address: str, run: Run, per_second: int, batch: int) -> None:
    concept = Concept(seed=2)
    interval = batch / per_second
    n = 0
    async with aio.insecure_channel(address) as channel:
        stub = gpb_grpc.GatewayServiceStub(channel)
        next_at = time.monotonic()
        while not run.stop.is_set():
            x, y = concept.draw(batch)
            keys = [f"b{n + i}" for i in range(batch)]
            n += batch
            sent = time.monotonic()
            request = gpb.IngestExamplesRequest(
                model_name=MODEL,
                examples=[
                    gpb.Example(
                        features=x[i].tolist(), label=gpb.Label(class_index=int(y[i])), key=k
                    )
                    for i, k in enumerate(keys)
                ],
            )
            try:
                await stub.IngestExamples(request, timeout=10)
                run.ingest_seconds.append(time.monotonic() - sent)
                run.sent += [(k, sent) for k in keys]
            except aio.AioRpcError as exc:
                run.ingest_failures.append(f"{exc.code().name}: {exc.details()}")
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def watch_versions(c: Cluster, run: Run, done: asyncio.Event) -> None:
    """Each new online version, and when it answers (pinned) on every worker."""
    probes: list[asyncio.Task[None]] = []
    channels = {
        name: aio.insecure_channel(f"127.0.0.1:{port}") for name, (_, port) in c.workers.items()
    }

    async def probe(number: int) -> None:
        pending = set(channels)
        x = np.zeros((1, FEATURES))
        x[0, 0] = 1.0
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                stub = pb_grpc.GRPCInferenceServiceStub(channels[name])
                try:
                    await stub.ModelInfer(infer_request(x, str(number)), timeout=2)
                    pending.discard(name)
                except aio.AioRpcError:
                    pass  # not loaded there yet (or already unloaded: then never ready)
            if pending:
                await asyncio.sleep(0.005)  # the probe's poll interval
        if not pending:
            run.ready[number] = time.monotonic()
            run.first_ready.set()

    number = 1
    try:
        while not done.is_set():
            try:
                reply = await c.stub.GetVersion(
                    rpb.GetVersionRequest(name=f"models/{MODEL}/versions/{number}"), metadata=c.md
                )
            except aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                await asyncio.sleep(0.05)  # the watcher's poll interval (adds <= 50 ms)
                continue
            run.versions[number] = int(reply.version.params.get("last_sequence", "0"))
            run.published_at[number] = time.monotonic()
            probes.append(asyncio.create_task(probe(number)))
            number += 1
        await asyncio.gather(*probes)
    finally:
        for channel in channels.values():
            await channel.close()


async def sequences_of(c: Cluster) -> dict[str, int]:
    request = rpb.ReadEventsRequest(model=MODEL, kinds=[epb.EVENT_KIND_EXAMPLE])
    out: dict[str, int] = {}
    async for reply in c.stub.ReadEvents(request, metadata=c.md):
        for event in reply.events:
            out[event.key.removeprefix(f"ingest:{MODEL}:")] = event.sequence
    return out


def freshness(run: Run, sequences: dict[str, int]) -> tuple[list[float], int, list[float]]:
    """Per example: seconds from its sending to the first version that learned it
    answering everywhere, and to that version's registration; and how many examples no
    ready version had learned."""
    ready = sorted((run.versions[v], t, v) for v, t in run.ready.items())
    out, uncovered, registered = [], 0, []
    for key, sent in run.sent:
        s = sequences.get(key)
        found = [(t, v) for last, t, v in ready if s is not None and last >= s]
        if not found:
            uncovered += 1
            continue
        t, v = min(found)
        out.append(t - sent)
        registered.append(run.published_at[v] - sent)
    return out, uncovered, registered


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))] if ordered else float("nan")


async def serve_and_publish(args: argparse.Namespace, root: Path) -> tuple[Run, dict[str, Any]]:
    async with cluster(root) as c:
        training = tpb_grpc.TrainingServiceStub(c.channel)
        await c.create_model(MODEL)
        await training.SetTrainingPolicy(
            tpb.SetTrainingPolicyRequest(policy=policy(args.publish_interval)), metadata=c.md
        )
        ingest_token = await c.stub.CreateToken(
            rpb.CreateTokenRequest(display_name="bench", role=rpb.ROLE_INGEST), metadata=c.md
        )
        x, y = Concept(seed=3).draw(2000)  # a first version to serve
        await c.stub.AppendEvents(
            rpb.AppendEventsRequest(
                events=[
                    epb.Event(
                        kind=epb.EVENT_KIND_EXAMPLE,
                        model=MODEL,
                        key=f"seed-{i}",
                        example=epb.Example(
                            features=x[i].tolist(),
                            label=gpb.Label(class_index=int(y[i])),
                            origin=epb.EXAMPLE_ORIGIN_INGESTED,
                        ),
                    )
                    for i in range(len(y))
                ]
            ),
            metadata=(("authorization", f"Bearer {ingest_token.secret}"),),
        )
        for name in ("w1", "w2"):
            c.start_worker(name)
        gateway = f"127.0.0.1:{c.start_gateway('--log-predictions', str(args.log_predictions))}"
        await c.start_trainer("t1", "--poll-seconds", "2")  # the default: runs are not measured
        run = Run()
        done = asyncio.Event()
        watcher = asyncio.create_task(watch_versions(c, run, done))
        deadline = time.monotonic() + 60
        try:
            await asyncio.wait_for(run.first_ready.wait(), 60)  # v1 everywhere
        except TimeoutError:
            raise RuntimeError("no online version answered on both workers within 60 s") from None
        first = max(run.ready)
        async with aio.insecure_channel(gateway) as channel:  # the gateway routes it too
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while True:
                try:
                    await stub.ModelInfer(infer_request(np.ones((1, FEATURES))), timeout=5)
                    break
                except aio.AioRpcError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)  # poll of a deadline wait
        started = time.monotonic()
        load = [
            asyncio.create_task(clients(gateway, run, args.clients, args.request_rate)),
            asyncio.create_task(ingest(gateway, run, args.ingest_rate, args.ingest_batch)),
        ]
        await asyncio.sleep(args.duration)  # the measured run lasts this long
        run.stop.set()
        await asyncio.gather(*load)
        elapsed = time.monotonic() - started
        # The last examples sent are learned and served within a few seconds more.
        last = len(run.sent)
        drain = time.monotonic() + 20
        while time.monotonic() < drain:
            sequences = await sequences_of(c)
            fresh, uncovered, _ = freshness(run, sequences)
            if not uncovered and len(fresh) == last:
                break
            await asyncio.sleep(0.5)  # poll of a deadline wait
        done.set()
        await watcher
        sequences = await sequences_of(c)
        status = (
            await training.GetLearnerStatus(
                tpb.GetLearnerStatusRequest(parent=f"models/{MODEL}"), metadata=c.md
            )
        ).status
        during = [v for v in run.versions if v > first and run.published_at[v] <= started + elapsed]
        facts = {
            "elapsed": elapsed,
            "sequences": sequences,
            "published": len(during),
            "ready": len([v for v in during if v in run.ready]),
            "status": status,
            "first": first,
        }
        if args.logs:
            keep_logs(c, Path(args.logs))
        return run, facts


def keep_logs(c: Cluster, folder: Path) -> None:
    """What each process printed (e.g. the learner's stage times of every publish)."""
    folder.mkdir(parents=True, exist_ok=True)
    procs = {"registry": c.registry, **c.trainers}
    procs.update({f"worker-{n}": p for n, (p, _) in c.workers.items()})
    procs.update({f"gateway-{i}": p for i, p in enumerate(c.gateways)})
    for name, proc in procs.items():
        (folder / f"{name}.log").write_text("".join(proc.output))


def render(
    args: argparse.Namespace,
    rates: list[tuple[str, float]],
    run: Run | None,
    facts: dict[str, Any] | None,
) -> tuple[str, bool]:
    versions = (
        f"Python {platform.python_version()} · scikit-learn {dist_version('scikit-learn')} · "
        f"numpy {dist_version('numpy')} · skl2onnx {dist_version('skl2onnx')} · onnxruntime "
        f"{dist_version('onnxruntime')} · grpcio {dist_version('grpcio')}"
    )
    lines = [
        "# Online learner",
        "",
        f"{platform.node()} · {platform.platform()} · {os.cpu_count()} cores · {versions}",
        "",
        f"## (a) Examples learned per second, one core, SGDClassifier, {FEATURES} features, "
        f"batches of {DEFAULT_BATCH}, {args.rows:,} examples, best of {args.repeats}",
        "",
        "| what | examples/s | / plain partial_fit |",
        "|---|---:|---:|",
    ]
    plain = dict(rates)["plain"]
    for name, rate in rates:
        lines.append(f"| {name} | {rate:,.0f} | {rate / plain:.2f} |")
    learner = dict(rates)["learner"]
    ok = learner >= GOAL_RATE
    lines += ["", f"Goal >= {GOAL_RATE:,.0f}/s: {'met' if ok else 'MISSED'}.", ""]
    if run is None or facts is None:
        return "\n".join(lines) + "\n", ok
    sent = len(run.sent)
    fresh, uncovered, registered = freshness(run, facts["sequences"])
    p50, p95, worst = pct(fresh, 0.5), pct(fresh, 0.95), pct(fresh, 1.0)
    loads = [run.ready[v] - run.published_at[v] for v in run.ready if v > facts["first"]]
    total = sum(run.answers.values())
    seen = sorted(int(v) for v in run.answers if v)
    fresh_ok = bool(fresh) and p95 <= GOAL_P95 and not uncovered
    serve_ok = not run.failures and total > 0 and not run.ingest_failures
    status = facts["status"]
    load_lines = [
        f"## (b) Freshness and (c) serving while publishing, {facts['elapsed']:.0f} s",
        "",
        f"Registry (SQLite, watch poll 0.2 s), 2 workers, gateway, trainer as processes on "
        f"this box; publish interval {args.publish_interval:g} s, direct rollout; examples "
        f"ingested through the gateway, {args.ingest_rate}/s in calls of "
        f"{args.ingest_batch}; {args.clients} clients sending {args.request_rate:g} "
        "inference requests/s through the gateway the whole time (a share of "
        f"{args.log_predictions:g} of them logged to the event stream).",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| examples ingested (sent → answered by a version that learned them) | {sent:,} |",
        f"| freshness p50, s | {p50:.2f} |",
        f"| freshness p95, s | {p95:.2f} |",
        f"| freshness max, s | {worst:.2f} |",
        f"| examples no served version learned by the end | {uncovered} |",
        f"| of it: sent → registered in a version, p50 / p95, s | {pct(registered, 0.5):.2f} / "
        f"{pct(registered, 0.95):.2f} |",
        f"| of it: registered → answering on both workers, p50 / p95, s | {pct(loads, 0.5):.2f} / "
        f"{pct(loads, 0.95):.2f} |",
        f"| IngestExamples call, p50 / p95, s | {pct(run.ingest_seconds, 0.5):.3f} / "
        f"{pct(run.ingest_seconds, 0.95):.3f} |",
        f"| online versions published during the run | {facts['published']} |",
        f"| of them answering on both workers | {facts['ready']} |",
        f"| publish held by the gate | {status.publish_decision if status.publishing_stopped else 'never at the end'} |",
        f"| client requests answered | {total:,} |",
        f"| client requests failed | {len(run.failures)} |",
        f"| ingest calls failed | {len(run.ingest_failures)} |",
        f"| versions that answered clients | {len(seen)} (v{seen[0]} … v{seen[-1]}) |"
        if seen
        else "| versions that answered clients | none |",
        "",
        f"Goals: freshness p95 <= {GOAL_P95:g} s: {'met' if fresh_ok else 'MISSED'}; "
        f"0 failed client requests: {'met' if serve_ok else 'MISSED'}.",
    ]
    if run.failures:
        load_lines.append(f"First failures: {run.failures[:3]}")
    if run.ingest_failures:
        load_lines.append(f"First ingest failures: {run.ingest_failures[:3]}")
    lines += load_lines
    return "\n".join(lines) + "\n", ok and fresh_ok and serve_ok


async def main(args: argparse.Namespace) -> int:
    import tempfile

    OUT.mkdir(exist_ok=True)
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        rates = core_rates(args.rows, args.repeats)
    finally:
        os.sched_setaffinity(0, cores)
    print(render(args, rates, None, None)[0])
    run: Run | None = None
    facts: dict[str, Any] | None = None
    if args.duration > 0:
        with tempfile.TemporaryDirectory(prefix="liveml-bench-online-") as folder:
            run, facts = await serve_and_publish(args, Path(folder))
    report, ok = render(args, rates, run, facts)
    print(report)
    (OUT / "online.md").write_text(report)
    return 0 if ok else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=300, help="seconds of (b) and (c); 0 = only (a)"
    )
    parser.add_argument("--rows", type=int, default=200_000, help="examples learned in (a)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of (a), best kept")
    parser.add_argument("--publish-interval", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--request-rate", type=float, default=200.0, help="client requests/s in all"
    )
    parser.add_argument("--ingest-rate", type=int, default=200, help="examples/s ingested")
    parser.add_argument(
        "--log-predictions",
        type=float,
        default=1.0,
        help="the gateway's share of predictions logged",
    )
    parser.add_argument("--ingest-batch", type=int, default=20, help="examples per IngestExamples")
    parser.add_argument("--logs", default="", help="a folder for each process's output")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse())))
