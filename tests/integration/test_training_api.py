"""TrainingService on the registry: policies validated field by field (nothing stored
when refused), roles, runs asked for, coalesced, cooled down, claimed, reported and
expired, and one version per run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import update

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc
from services.registry import training_runs
from services.registry.db import TrainingRunRow
from tests.helpers import training
from tests.helpers.models import linear
from tests.helpers.registry import RunningRegistry, auth
from tests.integration.test_registry_catalog import expect_error, push

Run = tpb.TrainingRun
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class Api:
    """TrainingService with one token."""

    def __init__(self, registry: RunningRegistry, token: str) -> None:
        self.stub = tpb_grpc.TrainingServiceStub(registry.channel)
        self.md = auth(token)

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.stub, method)
        return lambda request: call(request, metadata=self.md)


def lease(seconds: float = 10) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


@pytest.fixture
async def iris(registry: RunningRegistry, tmp_path: Path) -> RunningRegistry:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
    # Its first version fixes the signature: input 'x' [-1, 4].
    await push(client, "iris", linear(tmp_path / "v1.onnx").read_bytes())
    return registry


def good(tmp_path: Path, **fields: Any) -> tpb.TrainingPolicy:
    return training.policy("iris", tmp_path / "data.csv", **fields)


async def test_a_policy_is_stored_audited_and_read_back(
    iris: RunningRegistry, tmp_path: Path
) -> None:
    api = Api(iris, iris.admin_token)
    stored = (
        await api.SetTrainingPolicy(tpb.SetTrainingPolicyRequest(policy=good(tmp_path)))
    ).policy
    assert stored.name == "models/iris/trainingPolicy" and stored.updater.startswith("tokens/")
    read = await api.GetTrainingPolicy(tpb.GetTrainingPolicyRequest(name=stored.name))
    assert read.policy == stored
    listed = await api.ListTrainingPolicies(tpb.ListTrainingPoliciesRequest())
    assert [p.name for p in listed.policies] == [stored.name]
    events = await iris.client().ListAuditEvents(rpb.ListAuditEventsRequest(page_size=10))
    assert events.events[0].action == "SetTrainingPolicy"
    await api.DeleteTrainingPolicy(tpb.DeleteTrainingPolicyRequest(name=stored.name))
    await expect_error(
        api.GetTrainingPolicy(tpb.GetTrainingPolicyRequest(name=stored.name)),
        grpc.StatusCode.NOT_FOUND,
        "model 'iris' has no training policy",
    )


def _set(policy: tpb.TrainingPolicy, path: str, value: Any) -> tpb.TrainingPolicy:
    target: Any = policy
    *parents, leaf = path.split(".")
    for part in parents:
        target = getattr(target, part)
    if isinstance(value, dict):
        getattr(target, leaf).update(value)
    elif isinstance(value, Duration):
        getattr(target, leaf).CopyFrom(value)
    elif isinstance(value, list):
        del getattr(target, leaf)[:]
        getattr(target, leaf).extend(value)
    else:
        setattr(target, leaf, value)
    return policy


def negative(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


BAD = [
    (
        "task",
        tpb.TRAINING_TASK_UNSPECIFIED,
        "task must be TRAINING_TASK_CLASSIFICATION or TRAINING_TASK_REGRESSION",
    ),
    (
        "estimator.class_path",
        "sklearn.linear_model.LogistcRegression",
        "estimator.class_path 'sklearn.linear_model.LogistcRegression' cannot be imported: module 'sklearn.linear_model' has no attribute 'LogistcRegression'",
    ),
    (
        "estimator.class_path",
        "nowhere.Model",
        "estimator.class_path 'nowhere.Model' cannot be imported: No module named 'nowhere'",
    ),
    ("estimator.class_path", "os.path", "estimator.class_path 'os.path' is not a class"),
    (
        "estimator.class_path",
        "sklearn.linear_model.LinearRegression.fit",
        "estimator.class_path 'sklearn.linear_model.LinearRegression.fit' cannot be imported",
    ),
    (
        "estimator.params",
        {"C": "not json"},
        "estimator.params['C'] = 'not json' is not a JSON value",
    ),
    (
        "estimator.params",
        {"colour": "1"},
        "estimator sklearn.linear_model.LogisticRegression does not take these params",
    ),
    (
        "estimator.entry_point",
        "no colon here",
        "estimator.entry_point 'no colon here' must look like package.module:function",
    ),
    ("features", ["f0", "f1", "f2"], "features name 3 columns but the model's input 'x' has 4"),
    ("features", ["f0", "f0", "f1", "f2"], "features must be distinct, non-empty column names"),
    ("features", [], "features must name the input columns"),
    ("label", "", "label must name the column with the ground truth"),
    ("label", "f0", "label 'f0' is also listed among the features"),
    (
        "dataset_uri",
        "s3://bucket/data.csv",
        "dataset_uri 's3://bucket/data.csv': expected file:///path/to/data.csv or .parquet",
    ),
    ("window.last_rows", -1, "window.last_rows must not be negative"),
    ("window.last", negative(-60), "window.last must not be negative, got -60 s"),
    ("holdout.fraction", 1.5, "holdout.fraction must be in [0, 1), got 1.5"),
    ("holdout.rows", -3, "holdout.rows must not be negative"),
    ("triggers.cron", "every tuesday", "triggers.cron 'every tuesday' is not a cron expression"),
    ("triggers.interval", negative(0.5), "triggers.interval must be at least 1 s, got 0.5 s"),
    ("triggers.min_new_examples", -5, "triggers.min_new_examples must not be negative"),
    ("cooldown", negative(-1), "cooldown must not be negative"),
    (
        "gate.floors",
        {"rmse": 1.0},
        "gate.floors['rmse']: not a metric of this task; expected one of accuracy, precision, recall, f1, roc_auc, log_loss",
    ),
    (
        "gate.max_regression",
        {"accuracy": -0.1},
        "gate.max_regression['accuracy'] must not be negative",
    ),
    ("gate.primary_metric", "speed", "gate.primary_metric 'speed' is not a metric of this task"),
    ("gate.alpha", 0.7, "gate.alpha must be in (0, 0.5) (0 = 0.05), got 0.7"),
    ("gate.min_holdout_rows", -1, "gate.min_holdout_rows must not be negative"),
    ("approval", 7, "approval must be APPROVAL_MODE_AUTO or APPROVAL_MODE_MANUAL"),
    (
        "canary.steps",
        [50, 10],
        "canary.steps must ascend within 1-100 and end at 100, got [50, 10]",
    ),
    ("canary.candidate_version", 3, "canary.candidate_version is set by the run, leave it 0"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"), BAD, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(BAD)]
)
async def test_a_bad_policy_is_refused_with_why_and_nothing_is_stored(
    iris: RunningRegistry, tmp_path: Path, path: str, value: Any, message: str
) -> None:
    api = Api(iris, iris.admin_token)
    policy = good(tmp_path)
    if path == "estimator.entry_point":
        policy.estimator.ClearField("class_path")
    await expect_error(
        api.SetTrainingPolicy(tpb.SetTrainingPolicyRequest(policy=_set(policy, path, value))),
        INVALID,
        message,
    )
    await expect_error(
        api.GetTrainingPolicy(tpb.GetTrainingPolicyRequest(name="models/iris/trainingPolicy")),
        grpc.StatusCode.NOT_FOUND,
        "has no training policy",
    )


async def test_names_models_and_roles(iris: RunningRegistry, tmp_path: Path) -> None:
    admin = Api(iris, iris.admin_token)
    await expect_error(
        admin.SetTrainingPolicy(
            tpb.SetTrainingPolicyRequest(policy=training.policy("ghost", tmp_path / "d.csv"))
        ),
        grpc.StatusCode.NOT_FOUND,
        "model 'ghost' not found",
    )
    await expect_error(
        admin.GetTrainingPolicy(tpb.GetTrainingPolicyRequest(name="iris")),
        INVALID,
        "expected a policy name like 'models/iris/trainingPolicy', got 'iris'",
    )
    await expect_error(
        admin.GetTrainingRun(tpb.GetTrainingRunRequest(name="models/iris/trainingRuns/x")),
        INVALID,
        "expected a run name like 'models/iris/trainingRuns/3'",
    )
    publisher = Api(iris, await iris.token(rpb.ROLE_PUBLISHER, "p"))
    await expect_error(
        publisher.SetTrainingPolicy(tpb.SetTrainingPolicyRequest(policy=good(tmp_path))),
        grpc.StatusCode.PERMISSION_DENIED,
        "needs one of: deployer",
    )
    trainer = Api(iris, await iris.token(rpb.ROLE_TRAINER, "t"))
    await expect_error(
        trainer.SetTrainingPolicy(tpb.SetTrainingPolicyRequest(policy=good(tmp_path))),
        grpc.StatusCode.PERMISSION_DENIED,
        "(role trainer)",
    )
    viewer = Api(iris, await iris.token(rpb.ROLE_VIEWER, "v"))
    await expect_error(
        viewer.ClaimTrainingRun(
            tpb.ClaimTrainingRunRequest(trainer="trainers/v", lease_duration=lease())
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "needs one of: trainer",
    )
    await Api(iris, await iris.token(rpb.ROLE_DEPLOYER, "d")).SetTrainingPolicy(
        tpb.SetTrainingPolicyRequest(policy=good(tmp_path))
    )
    assert (await viewer.ListTrainingPolicies(tpb.ListTrainingPoliciesRequest())).policies


async def test_runs_coalesce_cool_down_and_are_claimed_once(
    iris: RunningRegistry, tmp_path: Path
) -> None:
    admin = Api(iris, iris.admin_token)
    trainer = Api(iris, await iris.token(rpb.ROLE_TRAINER, "t"))
    ask = tpb.RequestTrainingRunRequest(
        parent="models/iris", trigger=tpb.TRAINING_TRIGGER_MANUAL, reason="x"
    )
    await expect_error(
        admin.RequestTrainingRun(ask),
        grpc.StatusCode.FAILED_PRECONDITION,
        "model 'iris' has no training policy (liveml train policy set iris)",
    )
    await admin.SetTrainingPolicy(
        tpb.SetTrainingPolicyRequest(policy=good(tmp_path, cooldown=training.seconds(3600)))
    )
    await expect_error(
        admin.RequestTrainingRun(tpb.RequestTrainingRunRequest(parent="models/iris")),
        INVALID,
        "trigger must be TRAINING_TRIGGER_MANUAL, _SCHEDULE, _DATA_VOLUME or _ALERT",
    )
    first = await admin.RequestTrainingRun(ask)
    again = await trainer.RequestTrainingRun(
        tpb.RequestTrainingRunRequest(
            parent="models/iris", trigger=tpb.TRAINING_TRIGGER_SCHEDULE, reason="hourly"
        )
    )
    assert first.created and not again.created and again.run.name == first.run.name
    assert list(again.run.reasons) == ["manual: x", "schedule: hourly"]
    await expect_error(
        trainer.ClaimTrainingRun(tpb.ClaimTrainingRunRequest(trainer="trainers/a")),
        INVALID,
        "lease_duration must be within (0, 3600] s, got 0 s",
    )
    a = await trainer.ClaimTrainingRun(
        tpb.ClaimTrainingRunRequest(trainer="trainers/a", lease_duration=lease())
    )
    b = await trainer.ClaimTrainingRun(
        tpb.ClaimTrainingRunRequest(trainer="trainers/b", lease_duration=lease())
    )
    assert a.run.name == first.run.name and a.run.state == Run.STATE_RUNNING
    assert a.policy.name == "models/iris/trainingPolicy" and not b.run.name
    # Another trainer's report, or one for an attempt that is over, is refused.
    stolen = Run()
    stolen.CopyFrom(a.run)
    stolen.trainer = "trainers/b"
    await expect_error(
        trainer.UpdateTrainingRun(tpb.UpdateTrainingRunRequest(run=stolen, lease_duration=lease())),
        grpc.StatusCode.ABORTED,
        f"run {a.run.name} is no longer trainers/b's: it is RUNNING",
    )
    done = Run()
    done.CopyFrom(a.run)
    done.state = Run.STATE_SUCCEEDED
    await expect_error(
        trainer.UpdateTrainingRun(tpb.UpdateTrainingRunRequest(run=done)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "cannot succeed without a version",
    )
    done.state = Run.STATE_REJECTED
    finished = (await trainer.UpdateTrainingRun(tpb.UpdateTrainingRunRequest(run=done))).run
    assert finished.state == Run.STATE_REJECTED and finished.end_time.seconds
    # Automatic triggers wait out the cooldown; a person does not.
    await expect_error(
        trainer.RequestTrainingRun(
            tpb.RequestTrainingRunRequest(
                parent="models/iris", trigger=tpb.TRAINING_TRIGGER_SCHEDULE
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "within its 3600 s cooldown; run models/iris/trainingRuns/1 covers it",
    )
    assert (await admin.RequestTrainingRun(ask)).created


async def test_one_version_per_run_and_a_lost_lease(iris: RunningRegistry, tmp_path: Path) -> None:
    admin = Api(iris, iris.admin_token)
    trainer_token = await iris.token(rpb.ROLE_TRAINER, "t")
    trainer = Api(iris, trainer_token)
    await admin.SetTrainingPolicy(tpb.SetTrainingPolicyRequest(policy=good(tmp_path)))
    ask = tpb.RequestTrainingRunRequest(parent="models/iris", trigger=tpb.TRAINING_TRIGGER_MANUAL)
    await admin.RequestTrainingRun(ask)
    run = (
        await trainer.ClaimTrainingRun(
            tpb.ClaimTrainingRunRequest(trainer="trainers/a", lease_duration=lease())
        )
    ).run
    client = iris.client(trainer_token)
    data = linear(tmp_path / "v2.onnx", seed=2).read_bytes()
    lineage = rpb.Version(lineage=rpb.Lineage(pipeline_run=run.name))
    made = await push(client, "iris", data, version=lineage)
    assert made.number == 2
    await expect_error(
        push(client, "iris", data, version=lineage),
        grpc.StatusCode.ALREADY_EXISTS,
        f"run {run.name} already registered version 2",
    )
    # The trainer dies before it reports: the registry finishes the run (no retry: a
    # retry would make a second version) and starts the candidate's traffic.
    async with iris.registry.store.write_unversioned() as session:
        await session.execute(update(TrainingRunRow).values(lease_expire_us=1))
    async with iris.registry.store.write("test") as tx:
        assert await training_runs.expire(tx, iris.registry.controller.alerts) == [run.name]
    ended = (await admin.GetTrainingRun(tpb.GetTrainingRunRequest(name=run.name))).run
    assert ended.state == Run.STATE_SUCCEEDED and ended.version == 2
    assert (
        ended.error
        == "trainer trainers/a stopped answering (its lease expired) after registering v2; the registry finished the run"
    )
    runs = (await admin.ListTrainingRuns(tpb.ListTrainingRunsRequest(parent="models/iris"))).runs
    assert len(runs) == 1
    rollout = await iris.client().GetRollout(rpb.GetRolloutRequest(name="models/iris/rollout"))
    assert [(t.version, t.percent) for t in rollout.rollout.targets] == [(2, 100)]
    await expect_error(
        push(client, "iris", data, version=rpb.Version(lineage=rpb.Lineage(pipeline_run=run.name))),
        grpc.StatusCode.ALREADY_EXISTS,
        "already registered version 2",
    )


async def test_manual_approval_waits_for_a_deployer(iris: RunningRegistry, tmp_path: Path) -> None:
    admin = Api(iris, iris.admin_token)
    trainer_token = await iris.token(rpb.ROLE_TRAINER, "t")
    trainer = Api(iris, trainer_token)
    await iris.client().UpdateRollout(
        rpb.UpdateRolloutRequest(
            rollout=rpb.Rollout(
                name="models/iris/rollout", targets=[rpb.TrafficTarget(version=1, percent=100)]
            )
        )
    )
    await admin.SetTrainingPolicy(
        tpb.SetTrainingPolicyRequest(policy=good(tmp_path, approval=tpb.APPROVAL_MODE_MANUAL))
    )
    await admin.RequestTrainingRun(
        tpb.RequestTrainingRunRequest(parent="models/iris", trigger=tpb.TRAINING_TRIGGER_MANUAL)
    )
    run = (
        await trainer.ClaimTrainingRun(
            tpb.ClaimTrainingRunRequest(trainer="trainers/a", lease_duration=lease())
        )
    ).run
    data = linear(tmp_path / "v2.onnx", seed=2).read_bytes()
    await push(
        iris.client(trainer_token),
        "iris",
        data,
        version=rpb.Version(lineage=rpb.Lineage(pipeline_run=run.name)),
    )
    run.state = Run.STATE_SUCCEEDED
    ended = (await trainer.UpdateTrainingRun(tpb.UpdateTrainingRunRequest(run=run))).run
    assert ended.canary_decision == "waiting for approval (liveml versions review iris 2 --approve)"
    version = await iris.client().GetVersion(rpb.GetVersionRequest(name="models/iris/versions/2"))
    assert version.version.approval.state == rpb.APPROVAL_STATE_PENDING
    await iris.client().ReviewVersion(
        rpb.ReviewVersionRequest(
            name="models/iris/versions/2", decision=rpb.APPROVAL_STATE_APPROVED, reason="ok"
        )
    )
    after = (await admin.GetTrainingRun(tpb.GetTrainingRunRequest(name=run.name))).run
    assert after.canary_decision == "canary started: v2 at 10% against v1"
    rollout = await iris.client().GetRollout(rpb.GetRolloutRequest(name="models/iris/rollout"))
    assert [(t.version, t.percent) for t in rollout.rollout.targets] == [(1, 90), (2, 10)]
    assert rollout.rollout.analysis.candidate_version == 2
