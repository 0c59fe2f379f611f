"""Benchmark: the registry's Watch fan-out per change: unfiltered vs filtered watchers,
and one watcher that stops reading (issue #22, "Watch fan-out that scales").

One command (`python bench/watch_fanout.py`): a registry process (SQLite), `--models`
models with a rollout each, and cells interleaved round by round in the same run,
each `--seconds` long with changes at `--rate` per second: rollout changes spread
over the models (`--changes rollouts`), or heartbeats of `--models` simulated workers
each flipping a version's state (`--changes heartbeats`, a fleet during a rollout):

- none: no watcher (what a change costs the registry by itself);
- unfiltered: `--watchers` watchers of the whole feed (gateways);
- filtered: as many watchers, each of one model (`models=[m{i % models}]`; with
  `--changes heartbeats`, as workers watch: also `kinds` rollout, version, credential);
- unfiltered+stuck: the unfiltered cell plus one watcher that never reads its stream
  (own connection, a 16 KB HTTP/2 window: real flow control), ended by the registry
  after LIVEML_WATCH_SLOW_SECONDS (2 s here).

Per cell: the registry's CPU per change (from /proc) and its fan-out part (minus the
`none` cell of the same round), responses written per change, and how long after each
change every watcher that should see it did (p50/p99 over change x watcher). Ratios
unfiltered / filtered and stuck / unfiltered come from the same run. Results go to
bench/out/watch_fanout.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.registry_scale import cpu_seconds, pct
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.helpers.models import linear
from tests.helpers.procs import registry_process
from tests.helpers.registry import stream, upload

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
CELLS = ("none", "unfiltered", "filtered", "unfiltered+stuck")
SLOW_SECONDS = 2.0


WORKER_KINDS = [
    rpb.WatchRequest.KIND_ROLLOUT,
    rpb.WatchRequest.KIND_VERSION,
    rpb.WatchRequest.KIND_CREDENTIAL,
]


class Watcher:
    """One watch stream, recording when each change (by revision) arrived."""

    def __init__(
        self,
        stub: rpb_grpc.RegistryServiceStub,
        md: Any,
        models: list[str],
        kinds: list[rpb.WatchRequest.Kind],
    ) -> None:
        self.call = stub.Watch(rpb.WatchRequest(models=models, kinds=kinds), metadata=md)
        self.seen: dict[int, float] = {}
        self.synced = asyncio.Event()
        self.responses = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while (response := await self.call.read()) is not aio.EOF:
                now = time.monotonic()
                if response.snapshot_complete:
                    self.synced.set()
                if response.kind == rpb.WatchResponse.KIND_EVENTS:
                    self.responses += 1
                    for event in response.events:
                        self.seen[event.revision] = now
                        for state in event.worker.versions:
                            if state.error.startswith("#"):
                                self.seen[-int(state.error[1:]) - 1] = now
        except (aio.AioRpcError, asyncio.CancelledError):
            pass

    def stop(self) -> None:
        self.call.cancel()
        self.task.cancel()


async def change(
    stub: rpb_grpc.RegistryServiceStub, md: Any, args: argparse.Namespace, i: int, fleet: list[str]
) -> tuple[int, str]:
    """The i-th change: (its key in Watcher.seen, the model it is of; "" for a worker's)."""
    model = f"m{i % args.models}"
    flip = (i // args.models) % 2
    if args.changes == "heartbeats":
        state = (rpb.VERSION_LOAD_STATE_READY, rpb.VERSION_LOAD_STATE_LOADING)[flip]
        # A heartbeat answers no revision: the change is told by a marker in its state.
        await stub.Heartbeat(
            rpb.HeartbeatRequest(
                name=fleet[i % len(fleet)],
                versions=[
                    rpb.WorkerVersionState(model=model, version=1, state=state, error=f"#{i}")
                ],
            ),
            metadata=md,
        )
        return -i - 1, ""
    targets = [rpb.TrafficTarget(version=1, percent=100 - 50 * flip)]
    if flip:
        targets.append(rpb.TrafficTarget(version=2, percent=50))
    reply = await stub.UpdateRollout(
        rpb.UpdateRolloutRequest(
            rollout=rpb.Rollout(name=f"models/{model}/rollout", targets=targets)
        ),
        metadata=md,
    )
    return int(reply.rollout.revision), model


async def cell(
    name: str,
    stub: rpb_grpc.RegistryServiceStub,
    md: Any,
    args: argparse.Namespace,
    pid: int,
    fleet: list[str],
) -> dict[str, Any]:
    models = [f"m{i}" for i in range(args.models)]
    kinds = WORKER_KINDS if args.changes == "heartbeats" else []
    watchers: list[tuple[Watcher, str | None]] = []
    if name != "none":
        for i in range(args.watchers):
            model = models[i % len(models)] if name == "filtered" else None
            if model is None:
                watchers.append((Watcher(stub, md, [], []), None))
            else:
                watchers.append((Watcher(stub, md, [f"models/{model}"], kinds), model))
        await asyncio.wait_for(asyncio.gather(*(w.synced.wait() for w, _ in watchers)), 60)
    stuck_channel = stuck = None
    if name.endswith("+stuck"):
        # Its own connection with a small window, and never read: a stuck gateway.
        stuck_channel = aio.insecure_channel(
            args.target,
            options=[
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", 16384),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        stuck = rpb_grpc.RegistryServiceStub(stuck_channel).Watch(rpb.WatchRequest(), metadata=md)
    sent: list[tuple[int, str, float]] = []  # revision, model, when written
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    period = 1 / args.rate
    for i in range(int(args.seconds * args.rate)):
        began = time.monotonic()
        revision, model = await change(stub, md, args, i, fleet)
        sent.append((revision, model, began))
        await asyncio.sleep(max(0.0, began + period - time.monotonic()))  # pacing
    # Every watcher that should see the last change saw it (or 10 s passed).
    last, last_model, _ = sent[-1]
    deadline = time.monotonic() + 10
    # A poll of a condition with a deadline (sleep-ok).
    while time.monotonic() < deadline and not all(  # noqa: ASYNC110
        last in w.seen for w, m in watchers if m in (None, last_model)
    ):
        await asyncio.sleep(0.01)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    delays = [
        w.seen.get(revision, float("inf")) - when
        for revision, model, when in sent
        for w, m in watchers
        if m in (None, model)
    ]
    result: dict[str, Any] = {
        "cell": name,
        "changes": len(sent),
        "registry_cpu_ms_per_change": round(1e3 * (cpu1 - cpu0) / len(sent), 3),
        "registry_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "responses_per_change": round(sum(w.responses for w, _ in watchers) / len(sent), 1),
        "seen_p50_ms": round(pct(delays, 0.5) * 1e3, 2) if delays else None,
        "seen_p99_ms": round(pct(delays, 0.99) * 1e3, 2) if delays else None,
        "missed": sum(d == float("inf") for d in delays),
    }
    if stuck is not None and stuck_channel is not None:
        # Read at last: what it was sent, then its status (or, if it never filled its
        # window, every change and no status: it was never stuck).
        got, status = 0, "never stuck: still open after it read every change"
        try:
            async with asyncio.timeout(10):
                newest = max(k for w, _ in watchers for k in w.seen)  # rollouts' keys
                while (response := await stuck.read()) is not aio.EOF:
                    got += 1
                    if response.revision >= newest:
                        break
        except aio.AioRpcError as exc:
            status = f"{exc.code().name}: {exc.details()}"
        except TimeoutError:
            status = "timed out reading"
        stuck.cancel()
        result["stuck_watcher"] = {"messages_it_was_sent": got, "ended_with": status}
        await stuck_channel.close()
    for w, _ in watchers:
        w.stop()
    return result


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        proc, port = registry_process(
            root, LIVEML_LOG_LEVEL="WARNING", LIVEML_WATCH_SLOW_SECONDS=str(SLOW_SECONDS)
        )
        stack.callback(proc.stop)
        args.target = f"127.0.0.1:{port}"
        md = (("authorization", f"Bearer {(root / 'admin.token').read_text().strip()}"),)
        channel = aio.insecure_channel(args.target)
        stack.push_async_callback(channel.close)
        stub = rpb_grpc.RegistryServiceStub(channel)
        for i in range(args.models):
            await stub.CreateModel(rpb.CreateModelRequest(model_id=f"m{i}"), metadata=md)
            for seed in (1, 2):
                data = linear(root / f"v{i}-{seed}.onnx", seed=seed).read_bytes()
                await stub.CreateVersion(stream(upload(f"models/m{i}", data)), metadata=md)
        fleet: list[str] = []
        if args.changes == "heartbeats":
            for i in range(args.models):
                reply = await stub.RegisterWorker(
                    rpb.RegisterWorkerRequest(
                        worker=rpb.Worker(address=f"127.0.0.1:{20000 + i}", models=[f"m{i}"])
                    ),
                    metadata=md,
                )
                fleet.append(reply.worker.name)
            # Their leases (the server's default) are renewed by the changes themselves.
        rounds: list[list[dict[str, Any]]] = []
        for r in range(args.rounds):
            order = CELLS if r % 2 == 0 else (CELLS[0], *reversed(CELLS[1:]))
            results = {
                name: await cell(name, stub, md, args, proc.popen.pid, fleet) for name in order
            }
            base = results["none"]["registry_cpu_ms_per_change"]
            for row in results.values():
                row["fanout_cpu_ms_per_change"] = round(row["registry_cpu_ms_per_change"] - base, 3)
            rounds.append([results[name] for name in CELLS])
            print(
                f"round {r + 1}: "
                + ", ".join(
                    f"{row['cell']} {row['fanout_cpu_ms_per_change']} ms" for row in rounds[-1]
                ),
                flush=True,
            )
    return {"rounds": rounds}


def median(rounds: list[list[dict[str, Any]]], cell: str, key: str) -> float | None:
    values = [r[CELLS.index(cell)][key] for r in rounds]
    return statistics.median(values) if None not in values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--rate", type=float, default=25.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--changes", choices=("rollouts", "heartbeats"), default="rollouts")
    args = parser.parse_args()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    rounds = result["rounds"]
    fan: dict[str, Any] = {c: median(rounds, c, "fanout_cpu_ms_per_change") for c in CELLS}
    p99: dict[str, Any] = {c: median(rounds, c, "seen_p99_ms") for c in CELLS[1:]}

    def paired(a: str, b: str) -> float:
        """Median over rounds of cell a's CPU per change minus cell b's (same round)."""
        key = "registry_cpu_ms_per_change"
        return round(
            statistics.median(r[CELLS.index(a)][key] - r[CELLS.index(b)][key] for r in rounds), 3
        )

    result["summary"] = {
        "median_paired_cpu_ms_per_change_unfiltered_minus_filtered": paired(
            "unfiltered", "filtered"
        ),
        "median_paired_cpu_ms_per_change_stuck_minus_unfiltered": paired(
            "unfiltered+stuck", "unfiltered"
        ),
        "median_responses_per_change": {
            c: median(rounds, c, "responses_per_change") for c in CELLS[1:]
        },
        "median_fanout_cpu_ms_per_change": fan,
        "median_seen_p99_ms": p99,
        "ratio_fanout_cpu_unfiltered_over_filtered": round(fan["unfiltered"] / fan["filtered"], 2)
        if fan["filtered"] > 0
        else None,
        "ratio_seen_p99_stuck_over_unfiltered": round(
            p99["unfiltered+stuck"] / p99["unfiltered"], 2
        ),
    }
    result["args"] = {k: v for k, v in vars(args).items() if k != "target"}
    result["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load0],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "grpcio": grpc.__version__,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "watch_fanout.json").write_text(json.dumps(result, indent=2))
    cols = [k for k in rounds[0][1] if k != "stuck_watcher"]
    print(" | ".join(["round", *cols]))
    for i, r in enumerate(rounds):
        for row in r:
            print(" | ".join([str(i + 1), *(str(row.get(c, "")) for c in cols)]))
    for r in rounds:
        print("stuck watcher:", r[3].get("stuck_watcher"))
    print(json.dumps(result["summary"], indent=2))
    print(
        "load average before/after:",
        result["machine"]["load_avg_before"],
        result["machine"]["load_avg_after"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
