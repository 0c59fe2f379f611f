"""Training data written to files, training policies, and user entry points for the trainer.

The entry points stand in for a user's own code (`package.module:function`), so the
trainer imports them as it would a user's.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.duration_pb2 import Duration

from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from tests.helpers.models import RULE

FEATURES = ["f0", "f1", "f2", "f3"]


def write_csv(
    path: Path,
    rows: int,
    seed: int = 0,
    start: float = 1.7e9,
    flip: bool = False,
    append: bool = False,
) -> Path:
    """Rows x ~ N(0, 1) with y = [x @ RULE > 0] (or its opposite: `flip`), one per second."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    y = (x @ RULE > 0).astype(int)
    if flip:
        y = 1 - y
    new = not append or not path.exists()
    with path.open("a" if append else "w", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow([*FEATURES, "y", "t"])
        for i in range(rows):
            writer.writerow([*(f"{v:.5f}" for v in x[i]), int(y[i]), f"{start + i:.0f}"])
    return path


def seconds(value: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def policy(
    model: str,
    data: Path,
    estimator: str = "sklearn.linear_model.LogisticRegression",
    **fields: Any,
) -> tpb.TrainingPolicy:
    params = fields.pop("params", {})
    spec: dict[str, Any] = {
        "name": f"models/{model}/trainingPolicy",
        "task": tpb.TRAINING_TASK_CLASSIFICATION,
        "features": FEATURES,
        "label": "y",
        "dataset_uri": data.as_uri(),
        "time_column": "t",
        "gate": tpb.GatePolicy(floors={"accuracy": 0.55}, max_regression={"accuracy": 0.02}),
        "cooldown": seconds(1),
    }
    kind = "entry_point" if ":" in estimator else "class_path"
    spec["estimator"] = tpb.Estimator(
        **{kind: estimator},
        params={k: json.dumps(v) for k, v in params.items()},
        returns_onnx=fields.pop("returns_onnx", False),
    )
    spec.update(fields)
    return tpb.TrainingPolicy(**spec)


# --- entry points ---------------------------------------------------------------------


def logistic() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=500)


def raises() -> Any:
    raise ValueError("the data team's bug")


def onnx_bytes(x: np.ndarray, y: np.ndarray, hold: str = "") -> bytes:
    """Trains and exports itself (as PyTorch or XGBoost code would), with the names a
    model first registered by a run carries. While the file `hold` exists it waits:
    a slow fit, for tests that stop a trainer mid-run."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.linear_model import LogisticRegression

    while hold and Path(hold).exists():
        time.sleep(0.05)  # a long training job (noqa: sleep-ok)
    model = LogisticRegression(max_iter=500).fit(x, y)
    exported = to_onnx(
        model,
        initial_types=[("X", FloatTensorType([None, x.shape[1]]))],
        final_types=[
            ("label", Int64TensorType([None])),
            ("probabilities", FloatTensorType([None, None])),
        ],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    return bytes(exported.SerializeToString())
