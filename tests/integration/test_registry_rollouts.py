"""Registry: rollouts (validation, history, rollback), tokens and roles, audit trail."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from tests.helpers.models import linear
from tests.helpers.registry import RunningRegistry
from tests.integration.test_registry_catalog import expect_error, push, snapshot_state


def rollout(*targets: tuple[int, int], **kwargs: object) -> rpb.UpdateRolloutRequest:
    return rpb.UpdateRolloutRequest(
        rollout=rpb.Rollout(
            name="models/iris/rollout",
            targets=[rpb.TrafficTarget(version=v, percent=p) for v, p in targets],
            **kwargs,  # type: ignore[arg-type]
        )
    )


@pytest.fixture
async def iris(registry: RunningRegistry, tmp_path: Path) -> RunningRegistry:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
    for seed in range(3):
        await push(client, "iris", linear(tmp_path / f"v{seed}.onnx", seed=seed).read_bytes())
    return registry


async def test_rollout_set_history_and_rollback(iris: RunningRegistry) -> None:
    client = iris.client()
    empty = await client.GetRollout(rpb.GetRolloutRequest(name="models/iris/rollout"))
    assert not empty.rollout.targets and empty.rollout.revision == 0
    one = (await client.UpdateRollout(rollout((1, 100)))).rollout
    canary = (
        await client.UpdateRollout(
            rollout(
                (1, 90),
                (2, 10),
                mirrors=[rpb.TrafficTarget(version=3, percent=50)],
                pinned=[1],
                sticky_key="user",
                analysis=rpb.AnalysisPolicy(
                    steps=[10, 50, 100], min_requests=100, candidate_version=2
                ),
            )
        )
    ).rollout
    assert canary.revision > one.revision and canary.updater.startswith("tokens/")
    assert [(t.version, t.percent) for t in canary.targets] == [(1, 90), (2, 10)]
    # The registry starts the canary's status; a client's own status is ignored.
    assert canary.status.phase == rpb.AnalysisStatus.PHASE_PROGRESSING
    assert (canary.status.stable_version, canary.status.candidate_version) == (1, 2)
    assert canary.status.step_index == 0 and canary.status.start_time.seconds > 0

    history = await client.ListRolloutHistory(
        rpb.ListRolloutHistoryRequest(name="models/iris/rollout")
    )
    assert [r.revision for r in history.rollouts] == [canary.revision, one.revision]

    back = (
        await client.RollbackRollout(rpb.RollbackRolloutRequest(name="models/iris/rollout"))
    ).rollout
    assert [(t.version, t.percent) for t in back.targets] == [(1, 100)]
    assert back.revision > canary.revision and not back.mirrors
    again = (
        await client.RollbackRollout(rpb.RollbackRolloutRequest(name="models/iris/rollout"))
    ).rollout
    assert [(t.version, t.percent) for t in again.targets] == [(1, 90), (2, 10)]

    await expect_error(
        client.UpdateRollout(
            rpb.UpdateRolloutRequest(
                rollout=rollout((1, 100)).rollout, expected_revision=one.revision
            )
        ),
        grpc.StatusCode.ABORTED,
        f"expected revision {one.revision}, it is at {again.revision}",
    )


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            rollout((1, 60), (2, 30)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "target percentages must sum to 100, got 90 (v1=60%, v2=30%)",
        ),
        (
            rollout((1, 50), (9, 50)),
            grpc.StatusCode.NOT_FOUND,
            "model 'iris' has no version 9; its latest version is 3",
        ),
        (rollout((1, 100), pinned=[7]), grpc.StatusCode.NOT_FOUND, "has no version 7"),
        (rollout((1, 50), (1, 50)), grpc.StatusCode.INVALID_ARGUMENT, "version 1 is listed twice"),
        (
            rollout((1, 100), analysis=rpb.AnalysisPolicy(steps=[50, 10])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "analysis steps must ascend within 1-100 and end at 100",
        ),
        (
            rollout((1, 90), (2, 10), analysis=rpb.AnalysisPolicy(steps=[10, 100])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs exactly two targets, the stable version and analysis.candidate_version "
            "(got candidate 0, targets [1, 2])",
        ),
        (
            rollout(
                (1, 75),
                (2, 25),
                analysis=rpb.AnalysisPolicy(steps=[10, 100], candidate_version=2),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "candidate version 2 must start at the first step's weight, 10%, got 25%",
        ),
        (
            rpb.UpdateRolloutRequest(rollout=rpb.Rollout(name="models/nope/rollout")),
            grpc.StatusCode.NOT_FOUND,
            "model 'nope' not found",
        ),
    ],
)
async def test_bad_rollouts_are_refused_and_change_nothing(
    iris: RunningRegistry, request_: rpb.UpdateRolloutRequest, code: grpc.StatusCode, message: str
) -> None:
    client = iris.client()
    await client.UpdateRollout(rollout((1, 100)))
    before = await snapshot_state(iris)
    await expect_error(client.UpdateRollout(request_), code, message)
    assert await snapshot_state(iris) == before


async def test_rejected_version_cannot_be_rolled_out(iris: RunningRegistry) -> None:
    client = iris.client()
    await client.UpdateRollout(rollout((1, 100)))
    await client.ReviewVersion(
        rpb.ReviewVersionRequest(
            name="models/iris/versions/2", decision=rpb.APPROVAL_STATE_REJECTED, reason="bias"
        )
    )
    await expect_error(
        client.UpdateRollout(rollout((1, 90), (2, 10))),
        grpc.StatusCode.FAILED_PRECONDITION,
        "version 2 of 'iris' was rejected",
    )
    await expect_error(
        client.ReviewVersion(
            rpb.ReviewVersionRequest(
                name="models/iris/versions/1", decision=rpb.APPROVAL_STATE_REJECTED
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "version 1 of 'iris' serves traffic",
    )


async def test_rollback_without_history(iris: RunningRegistry) -> None:
    await expect_error(
        iris.client().RollbackRollout(rpb.RollbackRolloutRequest(name="models/iris/rollout")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "has no previous state to roll back to",
    )


# --- tokens and roles ----------------------------------------------------------------


async def test_bad_credentials_are_refused_and_change_nothing(iris: RunningRegistry) -> None:
    viewer = await iris.token(rpb.ROLE_VIEWER, "dash")
    expired = await iris.token(rpb.ROLE_DEPLOYER, "old", ttl_seconds=0.001)
    revoked = await iris.token(rpb.ROLE_DEPLOYER, "leaked")
    tokens = (await iris.client().ListTokens(rpb.ListTokensRequest())).tokens
    leaked = next(t for t in tokens if t.display_name == "leaked")
    await iris.client().RevokeToken(rpb.RevokeTokenRequest(name=leaked.name))
    before = await snapshot_state(iris)
    cases = [
        (None, grpc.StatusCode.UNAUTHENTICATED, "missing credentials"),
        ("lml_nope_x", grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid"),
        (iris.admin_token + "x", grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid"),
        (expired, grpc.StatusCode.UNAUTHENTICATED, "(old) expired at"),
        (
            revoked,
            grpc.StatusCode.UNAUTHENTICATED,
            f"token {leaked.name} (leaked) has been revoked",
        ),
        (
            viewer,
            grpc.StatusCode.PERMISSION_DENIED,
            "(role viewer) may not call /liveml.registry.v1.RegistryService/UpdateRollout; "
            "it needs one of: deployer",
        ),
    ]
    for token, code, message in cases:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        await expect_error(
            iris.client().stub.UpdateRollout(rollout((1, 100)), metadata=metadata), code, message
        )
    assert await snapshot_state(iris) == before
    # The viewer may read.
    got = await iris.client(viewer).GetModel(rpb.GetModelRequest(name="models/iris"))
    assert got.model.latest_version == 3


async def test_roles_grant_their_rpcs(iris: RunningRegistry, tmp_path: Path) -> None:
    publisher = iris.client(await iris.token(rpb.ROLE_PUBLISHER))
    deployer = iris.client(await iris.token(rpb.ROLE_DEPLOYER))
    worker = iris.client(await iris.token(rpb.ROLE_WORKER))
    await push(publisher, "iris", linear(tmp_path / "p.onnx", seed=9).read_bytes())
    await expect_error(
        publisher.UpdateRollout(rollout((1, 100))),
        grpc.StatusCode.PERMISSION_DENIED,
        "needs one of: deployer",
    )
    await deployer.UpdateRollout(rollout((4, 100)))
    await expect_error(
        deployer.CreateToken(rpb.CreateTokenRequest(display_name="x", role=rpb.ROLE_ADMIN)),
        grpc.StatusCode.PERMISSION_DENIED,
        "needs one of: admin",
    )
    registered = await worker.RegisterWorker(
        rpb.RegisterWorkerRequest(worker=rpb.Worker(address="127.0.0.1:9001", models=["iris"]))
    )
    assert registered.worker.name.startswith("workers/")
    await expect_error(
        worker.UpdateRollout(rollout((1, 100))), grpc.StatusCode.PERMISSION_DENIED, "(role worker)"
    )


# --- audit trail -------------------------------------------------------------------------


async def test_every_change_is_audited_and_an_edit_is_caught(iris: RunningRegistry) -> None:
    client = iris.client()
    await client.UpdateRollout(rollout((1, 100)))
    events = (await client.ListAuditEvents(rpb.ListAuditEventsRequest(page_size=100))).events
    actions = [e.action for e in reversed(events)]
    assert actions[:2] == ["CreateToken", "CreateModel"]
    assert actions.count("CreateVersion") == 3 and actions[-1] == "UpdateRollout"
    last = events[0]
    assert last.target == "models/iris/rollout" and last.actor.startswith("tokens/")
    assert last.before_digest == "" and len(last.after_digest) == 64
    assert '"targets":{"1":100}' in last.details
    verdict = await client.VerifyAudit(rpb.VerifyAuditRequest())
    assert verdict.ok and verdict.events_checked == len(events)

    async with iris.registry.store.engine.begin() as conn:
        await conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE sequence = 3"))
    verdict = await client.VerifyAudit(rpb.VerifyAuditRequest())
    assert not verdict.ok and verdict.first_bad_sequence == 3
    assert "event #3 (CreateVersion on models/iris/versions/1) was altered" in verdict.problem


@pytest.mark.parametrize("which", ["middle", "last"])
async def test_a_deleted_audit_event_is_caught(iris: RunningRegistry, which: str) -> None:
    client = iris.client()
    count = (await client.VerifyAudit(rpb.VerifyAuditRequest())).events_checked
    victim = 2 if which == "middle" else count
    async with iris.registry.store.engine.begin() as conn:
        await conn.execute(text(f"DELETE FROM audit_events WHERE sequence = {victim}"))
    verdict = await client.VerifyAudit(rpb.VerifyAuditRequest())
    assert not verdict.ok and verdict.first_bad_sequence == victim
    assert "missing" in verdict.problem
