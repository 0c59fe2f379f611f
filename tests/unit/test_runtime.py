"""A version's warm-up: bounded in runs and in time, and measured on warm runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.worker.runtime import Runtime
from tests.helpers import models


def counted(runtime: Runtime) -> list[int]:
    calls = [0]
    run = runtime.run

    def counting(inputs: Any) -> Any:
        calls[0] += 1
        return run(inputs)

    runtime.run = counting  # type: ignore[method-assign]
    return calls


def test_warm_up_runs_its_rounds_while_within_budget(tmp_path: Path) -> None:
    runtime = Runtime(models.classifier(tmp_path / "c.onnx"))
    calls = counted(runtime)
    assert runtime.warm_up(rounds=5, budget=3600) > 0
    assert calls[0] == 5


def test_warm_up_stops_after_two_runs_once_the_budget_is_spent(tmp_path: Path) -> None:
    """A model whose runs take seconds is warm after the cold run and one more."""
    runtime = Runtime(models.classifier(tmp_path / "c.onnx"))
    calls = counted(runtime)
    assert runtime.warm_up(rounds=20, budget=0) > 0
    assert calls[0] == 2
