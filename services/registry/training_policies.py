"""Training policies: how each model is retrained, validated before anything is stored.

A policy names what to fit (an importable estimator class with its parameters, or a
user entry point), which columns are features and label, where the examples come
from, the window and holdout, the triggers, the gate's thresholds, the approval mode
and the canary a passing candidate starts with. Everything the registry can check is
checked here, with INVALID_ARGUMENT naming the field; a user entry point is only
checked for its form, since it is imported where it runs (the trainer).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import re
from typing import Any

from croniter import croniter
from sqlalchemy import delete, select

from services.common.errors import InvalidArgument, NotFound
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.registry import catalog
from services.registry.db import ModelRow, TrainingPolicyRow
from services.registry.store import Tx, now_us

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_CLASS_PATH = re.compile(r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")


def policy_name(model_id: str) -> str:
    return f"models/{model_id}/trainingPolicy"


def model_of(name: str) -> str:
    """`models/{model}/trainingPolicy` -> model id."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "models" or parts[2] != "trainingPolicy" or not parts[1]:
        raise InvalidArgument(
            f"expected a policy name like 'models/iris/trainingPolicy', got {name!r}"
        )
    return parts[1]


def metrics_for(task: int) -> tuple[str, ...]:
    return (
        CLASSIFICATION_METRICS if task == tpb.TRAINING_TASK_CLASSIFICATION else REGRESSION_METRICS
    )


def params_of(estimator: tpb.Estimator) -> dict[str, Any]:
    """The constructor's keyword arguments, each parsed from its JSON text."""
    out = {}
    for key, text in sorted(estimator.params.items()):
        try:
            out[key] = json.loads(text)
        except ValueError:
            raise InvalidArgument(
                f"estimator.params[{key!r}] = {text!r} is not a JSON value "
                '(numbers as 0.5, strings quoted as "l2", true/false/null)'
            ) from None
    return out


def _import_class(path: str) -> type:
    module, _, attribute = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise InvalidArgument(f"estimator.class_path {path!r} cannot be imported: {exc}") from None
    if not inspect.isclass(found):
        raise InvalidArgument(f"estimator.class_path {path!r} is not a class")
    return found


def _check_estimator(estimator: tpb.Estimator) -> None:
    kind = estimator.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(
            "estimator needs a class_path (e.g. sklearn.linear_model.LogisticRegression) "
            "or an entry_point (package.module:function)"
        )
    params = params_of(estimator)
    if kind == "entry_point":
        if not _ENTRY_POINT.fullmatch(estimator.entry_point):
            raise InvalidArgument(
                f"estimator.entry_point {estimator.entry_point!r} must look like "
                "package.module:function"
            )
        return
    if estimator.returns_onnx:
        raise InvalidArgument("estimator.returns_onnx applies to an entry_point only")
    if not _CLASS_PATH.fullmatch(estimator.class_path):
        raise InvalidArgument(
            f"estimator.class_path {estimator.class_path!r} must look like module.Class"
        )
    cls = _import_class(estimator.class_path)
    if not hasattr(cls, "fit"):
        raise InvalidArgument(f"estimator.class_path {estimator.class_path!r} has no fit()")
    try:
        cls(**params)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"estimator {estimator.class_path} does not take these params: {exc}"
        ) from None


def _seconds(duration: Any, field: str) -> float:
    value: float = duration.ToNanoseconds() / 1e9
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative, got {value:g} s")
    return value


def _check_metric_map(values: Any, field: str, task: int, positive: bool = False) -> None:
    known = metrics_for(task)
    for metric, limit in values.items():
        if metric not in known:
            raise InvalidArgument(
                f"{field}[{metric!r}]: not a metric of this task; expected one of "
                f"{', '.join(known)}"
            )
        if positive and limit < 0:
            raise InvalidArgument(f"{field}[{metric!r}] must not be negative, got {limit:g}")


def _check_gate(gate: tpb.GatePolicy, task: int) -> None:
    if gate.min_holdout_rows < 0:
        raise InvalidArgument("gate.min_holdout_rows must not be negative")
    _check_metric_map(gate.floors, "gate.floors", task)
    _check_metric_map(gate.max_regression, "gate.max_regression", task, positive=True)
    _check_metric_map(
        gate.max_relative_regression, "gate.max_relative_regression", task, positive=True
    )
    if gate.primary_metric and gate.primary_metric not in metrics_for(task):
        raise InvalidArgument(
            f"gate.primary_metric {gate.primary_metric!r} is not a metric of this task; "
            f"expected one of {', '.join(metrics_for(task))}"
        )
    if gate.non_inferiority_margin < 0:
        raise InvalidArgument("gate.non_inferiority_margin must not be negative")
    if not 0 <= gate.alpha < 0.5:
        raise InvalidArgument(f"gate.alpha must be in (0, 0.5) (0 = 0.05), got {gate.alpha:g}")
    if gate.parity_tolerance < 0:
        raise InvalidArgument("gate.parity_tolerance must not be negative")
    if gate.max_latency_ratio < 0:
        raise InvalidArgument("gate.max_latency_ratio must not be negative")


def _check_canary(canary: rpb.AnalysisPolicy) -> None:
    steps = list(canary.steps)
    if steps and (steps != sorted(set(steps)) or steps[0] <= 0 or steps[-1] != 100):
        raise InvalidArgument(f"canary.steps must ascend within 1-100 and end at 100, got {steps}")
    if canary.candidate_version:
        raise InvalidArgument("canary.candidate_version is set by the run, leave it 0")
    _seconds(canary.step_interval, "canary.step_interval")


def _check_columns(policy: tpb.TrainingPolicy, model: rpb.Model) -> None:
    features = list(policy.features)
    if not features:
        raise InvalidArgument("features must name the input columns, in the model's order")
    if len(set(features)) != len(features) or any(not f for f in features):
        raise InvalidArgument("features must be distinct, non-empty column names")
    if not policy.label:
        raise InvalidArgument("label must name the column with the ground truth")
    if policy.label in features:
        raise InvalidArgument(f"label {policy.label!r} is also listed among the features")
    inputs = list(model.signature.inputs)
    if inputs:
        width = inputs[0].shape[-1] if inputs[0].shape else -1
        if len(inputs) != 1 or width <= 0:
            raise InvalidArgument(
                f"model '{model.name.split('/')[-1]}' does not take one [batch, n] input "
                "tensor: the trainer fits tabular models with one"
            )
        if width != len(features):
            raise InvalidArgument(
                f"features name {len(features)} columns but the model's input "
                f"'{inputs[0].name}' has {width}"
            )


def _check_source(policy: tpb.TrainingPolicy) -> None:
    uri = policy.dataset_uri
    if uri and not (uri.startswith("file://") and uri.endswith((".csv", ".parquet"))):
        raise InvalidArgument(
            f"dataset_uri {uri!r}: expected file:///path/to/data.csv or .parquet, or empty "
            "for the model's labelled examples in the event stream"
        )


def validate_static(policy: tpb.TrainingPolicy) -> None:
    """The checks that need no database (run off the event loop: imports the estimator)."""
    if policy.task not in (tpb.TRAINING_TASK_CLASSIFICATION, tpb.TRAINING_TASK_REGRESSION):
        raise InvalidArgument(
            "task must be TRAINING_TASK_CLASSIFICATION or TRAINING_TASK_REGRESSION"
        )
    _check_estimator(policy.estimator)
    _check_source(policy)
    if policy.window.last_rows < 0:
        raise InvalidArgument("window.last_rows must not be negative")
    _seconds(policy.window.last, "window.last")
    if not 0 <= policy.holdout.fraction < 1:
        raise InvalidArgument(
            f"holdout.fraction must be in [0, 1), got {policy.holdout.fraction:g}"
        )
    if policy.holdout.rows < 0:
        raise InvalidArgument("holdout.rows must not be negative")
    triggers = policy.triggers
    interval = _seconds(triggers.interval, "triggers.interval")
    if 0 < interval < 1:
        raise InvalidArgument(f"triggers.interval must be at least 1 s, got {interval:g} s")
    if triggers.cron and not croniter.is_valid(triggers.cron):
        raise InvalidArgument(
            f"triggers.cron {triggers.cron!r} is not a cron expression "
            "(minute hour day-of-month month day-of-week, e.g. '0 3 * * *')"
        )
    if triggers.min_new_examples < 0:
        raise InvalidArgument("triggers.min_new_examples must not be negative")
    _seconds(policy.cooldown, "cooldown")
    _check_gate(policy.gate, policy.task)
    if policy.approval not in tpb.ApprovalMode.values():
        raise InvalidArgument("approval must be APPROVAL_MODE_AUTO or APPROVAL_MODE_MANUAL")
    _check_canary(policy.canary)
    if policy.mode not in tpb.TrainingMode.values():
        raise InvalidArgument("mode must be TRAINING_MODE_BATCH or TRAINING_MODE_ONLINE")
    if policy.mode == tpb.TRAINING_MODE_ONLINE:
        _check_online(policy)


def _check_online(policy: tpb.TrainingPolicy) -> None:
    estimator = policy.estimator
    if estimator.WhichOneof("kind") != "class_path":
        raise InvalidArgument(
            "an online policy needs estimator.class_path: a scikit-learn estimator with "
            "partial_fit (SGDClassifier, SGDRegressor, PassiveAggressiveClassifier, Perceptron)"
        )
    if not hasattr(_import_class(estimator.class_path), "partial_fit"):
        raise InvalidArgument(
            f"estimator {estimator.class_path} has no partial_fit: it cannot learn online "
            "(try sklearn.linear_model.SGDClassifier)"
        )
    online = policy.online
    bounds = {
        "online.batch_size": (online.batch_size, 0, 100_000),
        "online.publish_every": (online.publish_every, 0, 10**12),
        "online.reservoir_per_class": (online.reservoir_per_class, 0, 100_000),
        "online.window": (online.window, 0, 10**7),
        "online.keep_versions": (online.keep_versions, 0, 10_000),
    }
    for field, (value, low, high) in bounds.items():
        if not low <= value <= high:
            raise InvalidArgument(f"{field} must be within {low}-{high}, got {value}")
    for field in ("publish_interval", "checkpoint_interval"):
        _seconds(getattr(online, field), f"online.{field}")
    if online.replay_ratio > 1:
        raise InvalidArgument(
            f"online.replay_ratio must be at most 1 (negative = no replay), got "
            f"{online.replay_ratio:g}"
        )
    for field in ("max_accuracy_gap", "max_forgetting", "max_weight_change"):
        if getattr(online, field) < 0:
            raise InvalidArgument(f"online.{field} must not be negative")
    if not 0 <= online.positive_rate_band <= 1:
        raise InvalidArgument("online.positive_rate_band must be within 0-1")
    if not 0 <= online.min_label_rate < 0.5:
        raise InvalidArgument("online.min_label_rate must be within [0, 0.5)")
    if len(set(online.classes)) != len(online.classes):
        raise InvalidArgument(f"online.classes must be distinct, got {list(online.classes)}")
    if online.rollout not in tpb.OnlineRollout.values():
        raise InvalidArgument("online.rollout must be ONLINE_ROLLOUT_CANARY or _DIRECT")


async def put(tx: Tx, requested: tpb.TrainingPolicy) -> tpb.TrainingPolicy:
    model_id = model_of(requested.name)
    row = await catalog.model_row(tx.session, model_id, lock=True)
    await asyncio.to_thread(validate_static, requested)
    _check_columns(requested, catalog.model_proto(row))
    current = await tx.session.get(TrainingPolicyRow, row.id)
    before = tpb.TrainingPolicy.FromString(current.proto) if current else None
    after = tpb.TrainingPolicy()
    after.CopyFrom(requested)
    after.name = policy_name(model_id)
    after.updater = tx.actor
    after.update_time.FromMicroseconds(now_us())
    if current is None:
        tx.session.add(TrainingPolicyRow(model_id=row.id, proto=after.SerializeToString()))
    else:
        current.proto = after.SerializeToString()
    estimator = after.estimator
    await tx.audit(
        "SetTrainingPolicy",
        after.name,
        before,
        after,
        {
            "estimator": estimator.class_path or estimator.entry_point,
            "dataset": after.dataset_uri or "events",
            "approval": tpb.ApprovalMode.Name(after.approval),
        },
    )
    return after


async def get(session: Any, name: str) -> tpb.TrainingPolicy:
    model_id = model_of(name)
    row = await catalog.model_row(session, model_id)
    found = await session.get(TrainingPolicyRow, row.id)
    if found is None:
        raise NotFound(f"model '{model_id}' has no training policy (liveml train policy set)")
    return tpb.TrainingPolicy.FromString(found.proto)


async def of_model(session: Any, model_row: ModelRow) -> tpb.TrainingPolicy | None:
    found = await session.get(TrainingPolicyRow, model_row.id)
    return tpb.TrainingPolicy.FromString(found.proto) if found else None


async def all_policies(session: Any) -> list[tpb.TrainingPolicy]:
    rows = (
        await session.execute(
            select(TrainingPolicyRow.proto)
            .join(ModelRow, ModelRow.id == TrainingPolicyRow.model_id)
            .order_by(ModelRow.name)
        )
    ).scalars()
    return [tpb.TrainingPolicy.FromString(p) for p in rows]


async def remove(tx: Tx, name: str) -> None:
    model_id = model_of(name)
    row = await catalog.model_row(tx.session, model_id, lock=True)
    found = await tx.session.get(TrainingPolicyRow, row.id)
    if found is None:
        raise NotFound(f"model '{model_id}' has no training policy")
    before = tpb.TrainingPolicy.FromString(found.proto)
    await tx.session.execute(delete(TrainingPolicyRow).where(TrainingPolicyRow.model_id == row.id))
    await tx.audit("DeleteTrainingPolicy", before.name, before, None)
