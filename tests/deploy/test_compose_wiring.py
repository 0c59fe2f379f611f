"""deploy/compose.yaml's wiring, run for real without Docker.

Every service built from the liveml image (registry, the one-shot `tokens`, both workers,
the gateway) is started as a local process with exactly the entry point, command and
environment the Compose file gives it, in its health-gated order. Only what cannot be the
same outside Docker is rewritten:

- host names and ports: `SERVICE:PORT` becomes 127.0.0.1 and a free port (the service's
  own LIVEML_PORT / LIVEML_FORWARD_PORT / LIVEML_METRICS_PORT too, and LIVEML_HOST 0.0.0.0 becomes 127.0.0.1);
  `postgres:5432` is the local PostgreSQL, in a fresh database (user and database name
  replaced: the local server has no `liveml` role), `nats:4222` the local NATS (in a
  JetStream stream and subjects of this test's own, removed afterwards), and the trace
  collector a receiver inside this test;
- file paths: /run/secrets/NAME holds a copy of exactly the secrets the service is
  granted, made by deploy/make_secrets.py; each volume is a folder shared by the
  services that mount it.

The image's entry point (`liveml` itself, which reads its secrets from the mounted files)
and HEALTHCHECK command run as the Dockerfile says. Then a model is registered, rolled out, and a V2 inference through
the gateway (over TLS, as Compose serves it) must answer what onnxruntime computes; the
Prometheus targets in deploy/prometheus/prometheus.yml must answer, and traces must
reach the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.js.errors
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from grpc import aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from sqlalchemy.engine import make_url

from services.common import codec
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.conftest import free_port, port_open, require
from tests.deploy import deployfiles as df
from tests.helpers import models
from tests.helpers.cluster import infer_request
from tests.helpers.procs import Proc
from tests.helpers.registry import auth, database, stream, upload
from tests.helpers.wait import async_wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

# What stands in for the Compose services that are not liveml: (name, port) -> local port.
LOCAL = {("postgres", 5432): 5432, ("nats", 4222): 4222}
PORT_SETTINGS = ("LIVEML_PORT", "LIVEML_FORWARD_PORT", "LIVEML_METRICS_PORT")
ADDRESS = re.compile(r"\b([A-Za-z0-9][A-Za-z0-9_.-]*):(\d+)\b")
VENV_BIN = Path(sys.executable).parent


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC collector that remembers which services sent spans."""

    def __init__(self) -> None:
        self.services: set[str] = set()

    def Export(self, request: Any, context: Any) -> Any:
        for spans in request.resource_spans:
            for attribute in spans.resource.attributes:
                if attribute.key == "service.name":
                    self.services.add(attribute.value.string_value)
        return trace_service_pb2.ExportTraceServiceResponse()


@dataclass
class Stack:
    root: Path
    compose: dict[str, Any]
    database_url: str
    ports: dict[tuple[str, int], int]
    secrets: Path
    receiver: TraceReceiver
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    procs: dict[str, Proc] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    _mounts: dict[str, dict[str, Path]] = field(default_factory=dict)

    def service(self, name: str) -> dict[str, Any]:
        return self.compose["services"][name]  # type: ignore[no-any-return]

    def workdir(self, name: str) -> Path:
        path = self.root / "containers" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mounts(self, name: str) -> dict[str, Path]:
        """In-container path -> local folder, as Compose would mount them for `name`."""
        if name not in self._mounts:
            self._mounts[name] = self._mount(name)
        return self._mounts[name]

    def _mount(self, name: str) -> dict[str, Path]:
        granted = self.root / "containers" / name / "run-secrets"
        granted.mkdir(parents=True)
        for secret, target in df.secret_mounts(self.service(name)):
            source = self.secrets / Path(self.compose["secrets"][secret]["file"]).name
            assert source.is_file(), f"make_secrets.py does not write {source.name}"
            shutil.copy(source, granted / target)
        mounts = {"/run/secrets": granted}
        for source, target, _ in df.volume_mounts(self.service(name)):
            if source.startswith((".", "/")):
                mounts[target] = (df.DEPLOY / source).resolve()
            else:
                mounts[target] = self.root / "volumes" / source
                mounts[target].mkdir(parents=True, exist_ok=True)
        return mounts

    def rewrite(self, name: str, value: str) -> str:
        def address(match: re.Match[str]) -> str:
            host, port = match[1], int(match[2])
            if host not in self.compose["services"]:
                return match[0]
            assert (host, port) in self.ports, f"{name} uses {host}:{port}, where nothing listens"
            return f"127.0.0.1:{self.ports[host, port]}"

        value = ADDRESS.sub(address, value)
        for target, local in sorted(self.mounts(name).items(), key=lambda m: -len(m[0])):
            value = re.sub(re.escape(target) + r"(?=/|$|[\s'\"])", str(local), value)
        return value

    def environment(self, name: str) -> dict[str, str]:
        """The environment the process sees: the Compose file's, rewritten."""
        env = {}
        for key, value in df.environment(self.service(name)).items():
            if key in PORT_SETTINGS:
                value = str(self.ports[name, int(value)])
            elif key == "LIVEML_HOST":
                assert value == "0.0.0.0", f"{name}: containers must listen on every address"
                value = "127.0.0.1"
            else:
                value = self.rewrite(name, value)
            if key == "LIVEML_DATABASE_URL":
                local = make_url(self.database_url)
                value = (
                    make_url(value)
                    .set(username=local.username, database=local.database)
                    .render_as_string(hide_password=False)
                )
            if value.startswith("/"):
                assert value.startswith(str(self.root)) or Path(value).exists(), (
                    f"{name}: {key}={value} is on no volume or secret"
                )
            env[key] = value
        if env.get("LIVEML_EVENT_STREAM", "sql") != "sql":
            env["LIVEML_EVENT_STREAM_NAME"] = self.stream_name
            env["LIVEML_EVENT_SUBJECT_PREFIX"] = f"wiring{self.tag}.events"
        return env

    @property
    def stream_name(self) -> str:
        """The local NATS is shared with other tests: this stack's stream is its own."""
        return f"WIRING_{self.tag}"

    def run_args(self, name: str, argv: list[str]) -> list[str]:
        """`argv` in `name`'s container: its environment alone, its working directory."""
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LIVEML_", "PG", "HEALTHCHECK_", "OTEL_"))
        }
        inherited["PATH"] = f"{VENV_BIN}:{inherited.get('PATH', '/usr/bin:/bin')}"
        env = {**inherited, **self.environment(name)}
        return [
            "env",
            "-i",
            "-C",
            str(self.workdir(name)),
            *(f"{k}={v}" for k, v in env.items()),
            *argv,
        ]

    def entrypoint(self, name: str) -> list[str]:
        given = self.service(name).get("entrypoint")
        if given is not None:
            return [self.rewrite(name, a) for a in df.command(given)]
        # The image's: a program on its PATH (the virtualenv's bin, as in the image).
        entry = df.image_entrypoint()
        assert (VENV_BIN / entry[0]).is_file(), f"the image's entry point {entry[0]} is missing"
        return entry

    def start(self, name: str) -> None:
        command = [self.rewrite(name, a) for a in df.command(self.service(name).get("command"))]
        self.procs[name] = Proc(self.run_args(name, [*self.entrypoint(name), *command]))
        self.order.append(name)

    def output(self, name: str) -> str:
        return "".join(self.procs[name].output)

    async def healthcheck(self, name: str) -> bool:
        """The image's HEALTHCHECK (or the service's own), run in the service's environment."""
        test = (self.service(name).get("healthcheck") or {}).get("test")
        argv = df.image_healthcheck() if test is None else df.command(test)[1:]
        if test is not None and df.command(test)[0] == "CMD-SHELL":
            argv = ["sh", "-c", argv[0]]
        check = await asyncio.create_subprocess_exec(
            *self.run_args(name, argv),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return await asyncio.wait_for(check.wait(), 10) == 0
        except TimeoutError:
            check.kill()
            await check.wait()
            return False

    async def wait_for(self, name: str, condition: str) -> None:
        if name not in self.procs:  # postgres, nats, the collector: here already
            return
        proc = self.procs[name]
        if condition == "service_completed_successfully":
            await async_wait_until(lambda: proc.popen.poll() is not None, 60, f"{name} to finish")
            assert proc.popen.returncode == 0, f"{name} failed:\n{self.output(name)}"
        elif condition == "service_healthy":

            async def healthy() -> bool:
                if proc.popen.poll() is not None:
                    raise AssertionError(f"{name} exited:\n{self.output(name)}")
                return await self.healthcheck(name)

            await async_wait_until(healthy, 60, f"{name} healthy")

    async def up(self) -> None:
        live = df.liveml_services(self.compose)
        for name in df.start_order(self.compose["services"]):
            if name not in live:
                continue
            for dep, condition in df.depends_on(self.service(name)).items():
                await self.wait_for(dep, condition)
            self.start(name)

    def down(self) -> None:
        for name in reversed(self.order):
            self.procs[name].stop()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    require(port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432")
    require(port_open("127.0.0.1", 4222), "NATS (JetStream) on 127.0.0.1:4222")
    compose = df.load_compose()
    live = df.liveml_services(compose)
    ports = dict(LOCAL)
    for name, service in live.items():
        env = df.environment(service)
        for key in PORT_SETTINGS:
            if key in env:
                ports[name, int(env[key])] = free_port()
    receiver = TraceReceiver()
    collector = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    otlp_host, otlp_port = df.environment(live["registry"])["LIVEML_OTLP_ENDPOINT"].split(":")
    ports[otlp_host, int(otlp_port)] = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    secrets = tmp_path / "secrets"
    df.make_secrets().make_secrets(secrets)
    async with database("postgres", tmp_path) as url:
        s = Stack(tmp_path, compose, url, ports, secrets, receiver)
        try:
            yield s
        finally:
            s.down()
            collector.stop(grace=None)
            await drop_nats_stream(s.stream_name)


async def drop_nats_stream(name: str) -> None:
    if not port_open("127.0.0.1", LOCAL["nats", 4222]):
        return
    connection = await nats.connect(f"nats://127.0.0.1:{LOCAL['nats', 4222]}")
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await connection.jetstream().delete_stream(name)
    finally:
        await connection.close()


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return response.read().decode()  # type: ignore[no-any-return]


async def test_compose_stack_serves_an_inference(stack: Stack, tmp_path: Path) -> None:
    await stack.up()
    for name in ("worker-1", "worker-2", "gateway", "trainer"):
        await stack.wait_for(name, "service_healthy")
    ca = (stack.secrets / "ca.pem").read_bytes()
    # The gateway's front door: TLS and a token. The registry (and the workers): mutual
    # TLS, so the operator shows the admin certificate make_secrets.py wrote.
    tls = grpc.ssl_channel_credentials(ca)
    operator = grpc.ssl_channel_credentials(
        ca,
        (stack.secrets / "admin-key.pem").read_bytes(),
        (stack.secrets / "admin.pem").read_bytes(),
    )
    registry_address = f"127.0.0.1:{stack.ports['registry', 50051]}"
    async with aio.secure_channel(registry_address, tls) as channel:
        with pytest.raises(aio.AioRpcError) as refused:
            await rpb_grpc.RegistryServiceStub(channel).ListModels(
                rpb.ListModelsRequest(), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # no client certificate
    worker_address = f"127.0.0.1:{stack.ports['worker-1', 9001]}"
    async with aio.secure_channel(worker_address, tls) as channel:
        with pytest.raises(aio.AioRpcError) as refused:
            await pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                pb.ServerLiveRequest(), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    # The operator: admin token from the registry's volume, then a model and a rollout.
    registry_env = stack.environment("registry")
    admin = Path(registry_env["LIVEML_ADMIN_TOKEN_FILE"]).read_text().strip()
    model = models.linear(tmp_path / "lin.onnx", seed=7)
    async with aio.secure_channel(registry_address, operator) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        md = auth(admin)
        await registry.CreateModel(rpb.CreateModelRequest(model_id="lin"), metadata=md)
        await registry.CreateVersion(stream(upload("models/lin", model.read_bytes())), metadata=md)
        target = rpb.TrafficTarget(version=1, percent=100)
        await registry.UpdateRollout(
            rpb.UpdateRolloutRequest(
                rollout=rpb.Rollout(name="models/lin/rollout", targets=[target])
            ),
            metadata=md,
        )

        # Both workers hold v1, each at the address its Compose service advertises, with
        # its framed forward listener (which the gateway uses, over TLS) on the same host.
        advertised = {
            f"workers/{env['LIVEML_WORKER_ID']}": (
                env["LIVEML_ADVERTISE"],
                f"127.0.0.1:{env['LIVEML_FORWARD_PORT']}",
            )
            for env in (stack.environment(w) for w in ("worker-1", "worker-2"))
        }

        async def both_ready() -> bool:
            reply = await registry.ListWorkers(rpb.ListWorkersRequest(), metadata=md)
            ready = {
                w.name: (w.address, w.forward_address)
                for w in reply.workers
                if any(
                    (v.model, v.version, v.state) == ("lin", 1, rpb.VERSION_LOAD_STATE_READY)
                    for v in w.versions
                )
            }
            return ready == advertised

        await async_wait_until(both_ready, 30, "lin v1 READY on both workers")
        # The application's own token: the gateway serves inference to role client.
        client = await registry.CreateToken(
            rpb.CreateTokenRequest(display_name="deploy test app", role=rpb.ROLE_CLIENT),
            metadata=md,
        )

    # A client: V2 inference through the gateway, over TLS, with its token.
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    async with aio.secure_channel(f"127.0.0.1:{stack.ports['gateway', 8001]}", tls) as channel:
        gateway = pb_grpc.GRPCInferenceServiceStub(channel)

        async def answer() -> Any:
            try:
                return await gateway.ModelInfer(
                    infer_request("lin", x, "deploy-1"), timeout=5, metadata=auth(client.secret)
                )
            except aio.AioRpcError as exc:
                waiting = (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.UNAUTHENTICATED,  # the new token not yet in its feed
                )
                if exc.code() in waiting:
                    return None  # the gateway's routing table has not caught up yet
                raise

        reply = await async_wait_until(answer, 30, "an answer through the gateway")
    assert reply.model_name == "lin" and reply.model_version == "1"
    (output,) = reply.outputs
    got = codec.decode_raw(output.name, output.datatype, output.shape, reply.raw_output_contents[0])
    (expected,) = ort.InferenceSession(str(model)).run(None, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    # The answer was logged to the event stream on NATS, and the registry reads it back.
    async with aio.secure_channel(registry_address, operator) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)

        async def logged() -> Any:
            stats = await registry.GetEventStats(
                rpb.GetEventStatsRequest(model="models/lin"), metadata=md
            )
            counts = {c.kind: c.count for c in stats.counts}
            return stats if counts.get(epb.EVENT_KIND_PREDICTION, 0) >= 1 else None

        stats = await async_wait_until(logged, 30, "the prediction logged to the event stream")
    assert stats.backend == "nats"

    # Prometheus' scrape targets are the services' metrics endpoints.
    config = yaml.safe_load(df.PROMETHEUS.read_text())
    scraped = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                if host in stack.procs:
                    body = await asyncio.to_thread(metrics, stack.ports[host, int(port)])
                    assert "# TYPE" in body, target
                    scraped.add(host)
    assert scraped == {"registry", "worker-1", "worker-2", "gateway", "trainer"}

    # The trainer reaches the registry (TLS, its own trainer token): it lists policies.
    trainer_metrics = stack.ports["trainer", 9302]

    async def polled() -> bool:
        body = await asyncio.to_thread(metrics, trainer_metrics)
        polled_at = re.search(r"^liveml_trainer_last_poll_timestamp_seconds (\S+)", body, re.M)
        return polled_at is not None and float(polled_at[1]) > 0

    await async_wait_until(polled, 30, "the trainer listing policies from the registry")

    # Traces reach the collector named by LIVEML_OTLP_ENDPOINT.
    await async_wait_until(
        lambda: {"liveml-gateway", "liveml-worker", "liveml-registry"} <= stack.receiver.services,
        20,
        "spans from the gateway, a worker and the registry",
    )
    # The one-shot minted each data-plane token once, into the volume of its service:
    # each worker's bound to its id, the gateway's of role gateway.
    for name in ("worker-1", "worker-2", "gateway"):
        assert f"{name} token created" in stack.output("tokens")
    # The database password came from its secret file and was never printed.
    password = (stack.secrets / "postgres_password").read_text().strip()
    assert password not in stack.output("registry")
