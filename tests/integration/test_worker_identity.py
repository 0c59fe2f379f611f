"""Per-worker identity: a worker token acts as its one worker id; PRODUCTION needs deployer.

Each worker RPC (RegisterWorker, Heartbeat, ReportWindows, DeleteWorker) made with one
worker's token for another worker is PERMISSION_DENIED, names the bound id and
changes nothing; unbound tokens bind on first RegisterWorker; the gateway role
reports gateway windows only.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from tests.helpers.models import linear
from tests.helpers.registry import Client, RunningRegistry
from tests.integration.test_cli import liveml
from tests.integration.test_registry_catalog import expect_error, push

READY, FAILED = rpb.VERSION_LOAD_STATE_READY, rpb.VERSION_LOAD_STATE_FAILED


async def bound(registry: RunningRegistry, worker_id: str = "") -> Client:
    reply = await registry.client().CreateToken(
        rpb.CreateTokenRequest(
            display_name=f"worker {worker_id}", role=rpb.ROLE_WORKER, worker_id=worker_id
        )
    )
    assert reply.token.worker_id == worker_id
    return registry.client(reply.secret)


def register(worker_id: str, state: int = READY) -> rpb.RegisterWorkerRequest:
    return rpb.RegisterWorkerRequest(
        worker=rpb.Worker(
            name=f"workers/{worker_id}" if worker_id else "",
            address="127.0.0.1:9001",
            versions=[rpb.WorkerVersionState(model="iris", version=1, state=state)],
        )
    )


def window(reporter: str, source: int = rpb.WINDOW_SOURCE_WORKER) -> rpb.Window:
    w = rpb.Window(model="iris", version=1, source=source, reporter=reporter, requests=5)  # type: ignore[arg-type]
    w.end_time.FromNanoseconds(time.time_ns())
    w.start_time.FromNanoseconds(time.time_ns() - 1_000_000_000)
    return w


async def picture(registry: RunningRegistry) -> tuple[object, ...]:
    admin = registry.client()
    workers = (await admin.ListWorkers(rpb.ListWorkersRequest())).workers
    metrics = await admin.GetVersionMetrics(rpb.GetVersionMetricsRequest(parent="models/iris"))
    return (
        [(w.name, [(v.version, v.state) for v in w.versions]) for w in workers],
        [(m.version, m.requests) for m in metrics.metrics],
    )


@pytest.fixture
async def iris(registry: RunningRegistry, tmp_path: Path) -> RunningRegistry:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
    await push(client, "iris", linear(tmp_path / "v1.onnx").read_bytes())
    return registry


async def test_a_worker_token_cannot_act_for_another_worker(iris: RunningRegistry) -> None:
    one, two = await bound(iris, "w1"), await bound(iris, "w2")
    await one.RegisterWorker(register("w1"))
    await two.RegisterWorker(register("w2"))
    before = await picture(iris)
    name = "tokens/"
    cases = [
        (one.RegisterWorker(register("w2", FAILED)), "may not register as workers/w2"),
        (
            one.Heartbeat(
                rpb.HeartbeatRequest(
                    name="workers/w2",
                    versions=[rpb.WorkerVersionState(model="iris", version=1, state=FAILED)],
                )
            ),
            "may not heartbeat as workers/w2",
        ),
        (
            one.DeleteWorker(rpb.DeleteWorkerRequest(name="workers/w2")),
            "may not delete as workers/w2",
        ),
    ]
    for call, message in cases:
        details = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED, message, name)
        assert "is bound to worker workers/w1" in details
    await expect_error(
        one.ReportWindows(rpb.ReportWindowsRequest(windows=[window("workers/w2")])),
        grpc.StatusCode.PERMISSION_DENIED,
        "may report only its own worker windows (source WINDOW_SOURCE_WORKER, reporter "
        "workers/w1); got WINDOW_SOURCE_WORKER from 'workers/w2'",
    )
    await expect_error(
        one.ReportWindows(
            rpb.ReportWindowsRequest(windows=[window("workers/w1", rpb.WINDOW_SOURCE_GATEWAY)])
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "got WINDOW_SOURCE_GATEWAY from 'workers/w1'",
    )
    assert await picture(iris) == before

    # As itself, all of it works; an empty name registers as the bound id.
    await one.Heartbeat(rpb.HeartbeatRequest(name="workers/w1"))
    await one.ReportWindows(rpb.ReportWindowsRequest(windows=[window("workers/w1")]))
    again = await one.RegisterWorker(register(""))
    assert again.worker.name == "workers/w1"
    await one.DeleteWorker(rpb.DeleteWorkerRequest(name="workers/w1"))
    # Bound at creation: the binding never moves, even once its worker has left.
    await expect_error(
        one.RegisterWorker(register("w9")),
        grpc.StatusCode.PERMISSION_DENIED,
        "is bound to worker workers/w1; it may not register as workers/w9",
    )
    # An admin acts for any worker.
    await iris.client().DeleteWorker(rpb.DeleteWorkerRequest(name="workers/w2"))


async def test_unbound_worker_tokens_bind_on_first_register(iris: RunningRegistry) -> None:
    first = await bound(iris)
    await expect_error(
        first.Heartbeat(rpb.HeartbeatRequest(name="workers/w3")),
        grpc.StatusCode.PERMISSION_DENIED,
        "is not bound to a worker yet: RegisterWorker first",
    )
    await first.RegisterWorker(register("w3"))
    tokens = (await iris.client().ListTokens(rpb.ListTokensRequest())).tokens
    assert [t.worker_id for t in tokens if t.role == rpb.ROLE_WORKER] == ["w3"]
    await expect_error(
        first.RegisterWorker(register("w4")),
        grpc.StatusCode.PERMISSION_DENIED,
        "is bound to worker workers/w3; it may not register as workers/w4",
    )
    # Another unbound token cannot take an id a live token is bound to...
    second = await bound(iris)
    await expect_error(
        second.RegisterWorker(register("w3", FAILED)),
        grpc.StatusCode.PERMISSION_DENIED,
        "may not register as workers/w3: that worker id is bound to another worker token",
    )
    # ... nor was it bound by trying; with no name it gets an id of its own.
    mine = await second.RegisterWorker(register(""))
    assert mine.worker.name not in ("workers/w3", "workers/")
    states = {
        w.name: w.versions[0].state
        for w in (await iris.client().ListWorkers(rpb.ListWorkersRequest())).workers
    }
    assert states["workers/w3"] == READY
    # Bound on first use, a token moves once its worker has left (a pod restarted
    # under a new name), one worker at a time.
    await first.DeleteWorker(rpb.DeleteWorkerRequest(name="workers/w3"))
    assert (await first.RegisterWorker(register("w5"))).worker.name == "workers/w5"
    await expect_error(
        first.Heartbeat(rpb.HeartbeatRequest(name="workers/w3")),
        grpc.StatusCode.PERMISSION_DENIED,
        "is bound to worker workers/w5; it may not heartbeat as workers/w3",
    )
    events = (await iris.client().ListAuditEvents(rpb.ListAuditEventsRequest())).events
    binds = [e.details for e in events if e.action == "BindWorkerToken"]
    assert len(binds) == 3 and '"previous":"w3"' in binds[0]  # newest first


async def test_token_binding_is_checked_at_creation(iris: RunningRegistry) -> None:
    admin = iris.client()
    await expect_error(
        admin.CreateToken(
            rpb.CreateTokenRequest(display_name="v", role=rpb.ROLE_VIEWER, worker_id="w1")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "worker_id binds a token of role worker to one worker; this token's role is viewer",
    )
    await expect_error(
        admin.CreateToken(
            rpb.CreateTokenRequest(display_name="w", role=rpb.ROLE_WORKER, worker_id="-bad")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "worker id '-bad' is not valid",
    )


async def test_the_gateway_role_reports_gateway_windows_only(iris: RunningRegistry) -> None:
    gateway = iris.client(await iris.token(rpb.ROLE_GATEWAY, "gw"))
    accepted = await gateway.ReportWindows(
        rpb.ReportWindowsRequest(windows=[window("gateways/g1", rpb.WINDOW_SOURCE_GATEWAY)])
    )
    assert accepted.accepted == 1
    await expect_error(
        gateway.ReportWindows(rpb.ReportWindowsRequest(windows=[window("workers/w1")])),
        grpc.StatusCode.PERMISSION_DENIED,
        "(role gateway) may report only WINDOW_SOURCE_GATEWAY windows; got WINDOW_SOURCE_WORKER",
    )
    await expect_error(
        gateway.RegisterWorker(register("w1")),
        grpc.StatusCode.PERMISSION_DENIED,
        "(role gateway) may not call /liveml.registry.v1.RegistryService/RegisterWorker; "
        "it needs one of: worker",
    )
    await gateway.GetRollout(rpb.GetRolloutRequest(name="models/iris/rollout"))
    await expect_error(
        gateway.DownloadArtifact(rpb.DownloadArtifactRequest(name="models/iris/versions/1")).read(),
        grpc.StatusCode.PERMISSION_DENIED,
        "(role gateway) may not call",
    )


async def test_production_needs_a_deployer(iris: RunningRegistry) -> None:
    publisher = iris.client(await iris.token(rpb.ROLE_PUBLISHER, "pub"))
    deployer = iris.client(await iris.token(rpb.ROLE_DEPLOYER, "dep"))

    def stage(value: int) -> rpb.UpdateVersionRequest:
        return rpb.UpdateVersionRequest(
            version=rpb.Version(name="models/iris/versions/1", stage=value),  # type: ignore[arg-type]
            update_mask=FieldMask(paths=["stage"]),
        )

    await expect_error(
        publisher.UpdateVersion(stage(rpb.STAGE_PRODUCTION)),
        grpc.StatusCode.PERMISSION_DENIED,
        "(pub) (role publisher) may not set a version's stage to STAGE_PRODUCTION; "
        "it needs one of: admin, deployer",
    )
    got = await iris.client().GetVersion(rpb.GetVersionRequest(name="models/iris/versions/1"))
    assert got.version.stage == rpb.STAGE_NONE
    assert (await publisher.UpdateVersion(stage(rpb.STAGE_STAGING))).version.stage == (
        rpb.STAGE_STAGING
    )
    done = await deployer.UpdateVersion(stage(rpb.STAGE_PRODUCTION))
    assert done.version.stage == rpb.STAGE_PRODUCTION


async def test_cli_creates_a_bound_worker_token(iris: RunningRegistry) -> None:
    env = {"LIVEML_REGISTRY": f"127.0.0.1:{iris.port}", "LIVEML_TOKEN": iris.admin_token}
    args = ("token", "create", "w7", "--role", "worker", "--worker-id", "w7")
    done = await asyncio.to_thread(liveml, env, *args)  # the registry runs on this loop
    assert "workers/w7" in done.stdout
    secret = done.stdout.strip().splitlines()[-1]
    await expect_error(
        iris.client(secret).RegisterWorker(register("w8")),
        grpc.StatusCode.PERMISSION_DENIED,
        "is bound to worker workers/w7; it may not register as workers/w8",
    )
