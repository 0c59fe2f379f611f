"""A registry, a worker and a gateway as real processes, serving model `lin` v1 at 100%:
started once per test module (a sync fixture, so any test's event loop can use it)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from tests.conftest import free_port
from tests.helpers import models
from tests.helpers.procs import Proc, python_module, registry_process, wait_port
from tests.helpers.registry import auth
from tests.helpers.wait import wait_until


@dataclass
class Stack:
    registry_port: int
    worker_port: int
    gateway_port: int
    admin: str

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return auth(self.admin)


def _push(stub: rpb_grpc.RegistryServiceStub, md: tuple[tuple[str, str], ...], data: bytes) -> None:
    meta = rpb.CreateVersionRequest.Metadata(
        parent="models/lin",
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        format=rpb.ARTIFACT_FORMAT_ONNX,
    )
    messages = [rpb.CreateVersionRequest(metadata=meta), rpb.CreateVersionRequest(chunk=data)]
    stub.CreateVersion(iter(messages), metadata=md)


def _served(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=5)
        return any(m.name == "lin" for m in index.models)


@contextmanager
def serving_stack(root: Path) -> Iterator[Stack]:
    procs: list[Proc] = []
    registry, registry_port = registry_process(root, LIVEML_WATCH_POLL_SECONDS="0.2")
    procs.append(registry)
    try:
        admin = (root / "admin.token").read_text().strip()
        md = auth(admin)
        with grpc.insecure_channel(f"127.0.0.1:{registry_port}") as channel:
            stub = rpb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
            worker_token = stub.CreateToken(
                rpb.CreateTokenRequest(display_name="workers", role=rpb.ROLE_WORKER), metadata=md
            ).secret
            stub.CreateModel(rpb.CreateModelRequest(model_id="lin"), metadata=md)
            _push(stub, md, models.linear(root / "v1.onnx", seed=1).read_bytes())
            rollout = rpb.Rollout(
                name="models/lin/rollout", targets=[rpb.TrafficTarget(version=1, percent=100)]
            )
            stub.UpdateRollout(rpb.UpdateRolloutRequest(rollout=rollout), metadata=md)
        common = ["--registry", f"127.0.0.1:{registry_port}", "--metrics-port", "-1"]
        env = {"LIVEML_REGISTRY_TOKEN": worker_token}
        worker_port = free_port()
        worker = python_module(
            "services.cli.main",
            env,
            "worker",
            "serve",
            *common,
            "--port",
            str(worker_port),
            "--worker-id",
            "w0",
            "--cache-dir",
            str(root / "cache-w0"),
            "--heartbeat-seconds",
            "0.5",
        )
        procs.append(worker)
        wait_port(worker_port, worker)
        gateway_port = free_port()
        gateway = python_module(
            "services.cli.main", env, "gateway", "serve", *common, "--port", str(gateway_port)
        )
        procs.append(gateway)
        wait_port(gateway_port, gateway)
        wait_until(lambda: _served(gateway_port), 30, "the gateway to route lin v1")
        yield Stack(registry_port, worker_port, gateway_port, admin)
    finally:
        for proc in reversed(procs):
            proc.stop()
