"""The trainer's pure parts: triggers, the dataset split, and the gate's checks."""

from __future__ import annotations

import numpy as np

from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.trainer import data, gate, triggers
from tests.helpers import training

NOON = 1_767_268_800.0  # 2026-01-01 12:00:00 UTC


def policy(**fields: object) -> tpb.TrainingPolicy:
    p = tpb.TrainingPolicy(
        task=tpb.TRAINING_TASK_CLASSIFICATION, features=["a"], label="y", **fields
    )  # type: ignore[arg-type]
    p.update_time.FromMicroseconds(int(NOON * 1e6))
    return p


def run_at(seconds: float, **fields: object) -> tpb.TrainingRun:
    run = tpb.TrainingRun(number=4, **fields)  # type: ignore[arg-type]
    run.create_time.FromMicroseconds(int(seconds * 1e6))
    return run


def test_schedule_by_interval_and_by_cron() -> None:
    hourly = policy(triggers=tpb.TrainingTriggers(interval=training.seconds(3600)))
    assert triggers.schedule(hourly, None, NOON + 3599) is None
    fired = triggers.schedule(hourly, run_at(NOON), NOON + 3600)
    assert fired is not None and fired.trigger == tpb.TRAINING_TRIGGER_SCHEDULE
    daily = policy(triggers=tpb.TrainingTriggers(cron="0 3 * * *"))
    assert triggers.schedule(daily, run_at(NOON), NOON + 14 * 3600) is None  # 02:00 next day
    due = triggers.schedule(daily, run_at(NOON), NOON + 15 * 3600)  # 03:00 next day
    assert due is not None and due.reason == "cron '0 3 * * *' was due"


def test_volume_counts_from_what_the_last_run_read() -> None:
    p = policy(triggers=tpb.TrainingTriggers(min_new_examples=100))
    assert triggers.volume(p, None, 99) is None
    assert triggers.volume(p, run_at(NOON, source_rows=1000), 1099) is None
    fired = triggers.volume(p, run_at(NOON, source_rows=1000), 1100)
    assert (
        fired is not None and fired.reason == "100 new labelled examples since run 4 (at least 100)"
    )
    assert triggers.volume(policy(), None, 10**6) is None  # not asked for


def test_alerts_retrain_only_for_the_serving_version_and_only_new_ones() -> None:
    from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

    p = policy(triggers=tpb.TrainingTriggers(on_alert=True))

    def alert(kind: str, version: int, at: float) -> rpb.Alert:
        a = rpb.Alert(alert=kind, version=version, summary="s")
        a.start_time.FromMicroseconds(int(at * 1e6))
        return a

    last = run_at(NOON)
    assert triggers.alerted(p, last, [alert("DriftHigh", 2, NOON + 1)], serving=3) is None
    assert triggers.alerted(p, last, [alert("DriftHigh", 3, NOON - 1)], serving=3) is None
    assert triggers.alerted(p, last, [alert("NoReadyWorker", 3, NOON + 1)], serving=3) is None
    fired = triggers.alerted(p, last, [alert("AccuracyDrop", 3, NOON + 1)], serving=3)
    assert fired is not None and fired.trigger == tpb.TRAINING_TRIGGER_ALERT


def table(**columns: list[object]) -> data.Table:
    return data.Table({k: list(v) for k, v in columns.items()}, "file:///t.csv")


def test_the_holdout_is_the_newest_slice_of_the_window() -> None:
    p = policy(time_column="t", window=tpb.TrainingWindow(last_rows=8), holdout=tpb.Holdout(rows=2))
    t = table(a=list(range(10)), y=[0, 1] * 5, t=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    split = data.split(t, p)
    # By event time the rows run 9..0 in `a`; the window keeps the newest 8, the
    # holdout is the newest 2.
    assert split.x_train[:, 0].tolist() == [7, 6, 5, 4, 3, 2]
    assert split.x_holdout[:, 0].tolist() == [1, 0]
    assert split.rows == 8 and len(split.digest) == 64


def test_rows_with_gaps_are_dropped_and_counted() -> None:
    split = data.split(table(a=["1", "", "nan", "4"], y=[1, 0, 1, 0]), policy())
    assert split.dropped == 2 and split.rows == 2


def test_a_classification_label_must_be_a_class_index() -> None:
    try:
        data.split(table(a=[1, 2, 3], y=[0.5, 1, 0]), policy())
    except data.DataError as exc:
        assert "must hold class indices (integers)" in str(exc)
    else:
        raise AssertionError("a fractional label was accepted")


def test_non_inferiority_sees_a_worse_candidate_that_a_point_check_would_pass() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=400)
    production = gate.Scored(labels=np.where(rng.random(400) < 0.90, y, 1 - y))
    candidate = gate.Scored(labels=np.where(rng.random(400) < 0.87, y, 1 - y))
    g = tpb.GatePolicy(non_inferiority_margin=0.01)
    check = gate.non_inferiority(g, tpb.TRAINING_TASK_CLASSIFICATION, y, candidate, production)
    assert not check.passed and "may be worse" in check.text
    same = gate.non_inferiority(g, tpb.TRAINING_TASK_CLASSIFICATION, y, production, production)
    assert same.passed


def test_floors_and_regressions_name_their_numbers() -> None:
    g = tpb.GatePolicy(
        floors={"accuracy": 0.9, "log_loss": 0.3}, max_relative_regression={"f1": 0.05}
    )
    checks = gate.bounds(
        g,
        tpb.TRAINING_TASK_CLASSIFICATION,
        {"accuracy": 0.85, "log_loss": 0.2, "f1": 0.80},
        {"f1": 0.90},
    )
    by = {c.name: c for c in checks}
    assert (
        not by["floor:accuracy"].passed
        and by["floor:accuracy"].text == "accuracy 0.8500 (at least 0.9)"
    )
    assert by["floor:log_loss"].passed and "at most 0.3" in by["floor:log_loss"].text
    relative = by["relative_regression:f1"]
    assert not relative.passed and "worse by +11.11%" in relative.text
    none = gate.bounds(
        g, tpb.TRAINING_TASK_CLASSIFICATION, {"accuracy": 0.95, "log_loss": 0.1, "f1": 0.8}, None
    )
    assert [c.name for c in none if "no production version" in c.text] == ["relative_regression:f1"]
