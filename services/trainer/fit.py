"""Fitting a candidate and exporting it to ONNX, named as the model's signature wants.

The estimator is an importable class with its parameters, or a user entry point
(`package.module:function`) that returns an unfitted estimator — or, marked
`returns_onnx`, trains on (X, y) itself and returns ONNX bytes (PyTorch, XGBoost,
LightGBM...). Whatever comes out is exported (scikit-learn through skl2onnx) with the
model's input and output names, so the registry takes it as a version of that model.
"""

from __future__ import annotations

import importlib
import io
import json
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb

TARGET_OPSET = 17


class FitError(Exception):
    """Fitting or exporting failed: the message says which step and why."""


@dataclass
class Fitted:
    onnx_bytes: bytes
    estimator: Any | None  # the fitted original (None when the entry point made ONNX itself)
    params: dict[str, str]


def _params(spec: tpb.Estimator) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in spec.params.items()}


def _entry_point(path: str) -> Any:
    module, _, function = path.partition(":")
    try:
        found = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        raise FitError(f"entry point {path!r} cannot be imported: {exc}") from None
    if not callable(found):
        raise FitError(f"entry point {path!r} is not a function")
    return found


def _raised(where: str, exc: BaseException) -> FitError:
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return FitError(f"{where} raised {type(exc).__name__}: {exc}{at}")


def estimator_of(spec: tpb.Estimator) -> Any:
    """An unfitted estimator (not for `returns_onnx` entry points)."""
    params = _params(spec)
    if spec.WhichOneof("kind") == "class_path":
        module, _, name = spec.class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise FitError(f"estimator {spec.class_path!r} cannot be imported: {exc}") from None
        try:
            return cls(**params)
        except Exception as exc:
            raise _raised(f"estimator {spec.class_path}(...)", exc) from None
    build = _entry_point(spec.entry_point)
    try:
        made = build(**params)
    except Exception as exc:
        raise _raised(f"entry point {spec.entry_point}", exc) from None
    if not hasattr(made, "fit"):
        raise FitError(
            f"entry point {spec.entry_point} returned {type(made).__name__}, not an unfitted "
            "estimator (mark it returns_onnx if it trains and returns ONNX bytes)"
        )
    return made


def _names(signature: rpb.Signature, task: int) -> tuple[str, list[str]]:
    """The input name and output names the export must carry."""
    input_name = signature.inputs[0].name if signature.inputs else "X"
    outputs = [o.name for o in signature.outputs]
    wanted = 2 if task == tpb.TRAINING_TASK_CLASSIFICATION else 1
    if len(outputs) != wanted:
        outputs = ["label", "probabilities"] if wanted == 2 else ["variable"]
    return input_name, outputs


def export(
    estimator: Any, width: int, signature: rpb.Signature, task: int, classifier: Any = None
) -> bytes:
    """ONNX of `estimator` (a Pipeline too: `classifier` is then its final step)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType

    input_name, outputs = _names(signature, task)
    if task == tpb.TRAINING_TASK_CLASSIFICATION:
        final: list[Any] = [
            (outputs[0], Int64TensorType([None])),
            (outputs[1], FloatTensorType([None, None])),
        ]
        options: dict[Any, Any] | None = {id(classifier or estimator): {"zipmap": False}}
    else:
        final = [(outputs[0], FloatTensorType([None, 1]))]
        options = None
    try:
        model = to_onnx(
            estimator,
            initial_types=[(input_name, FloatTensorType([None, width]))],
            target_opset=TARGET_OPSET,
            options=options,
            final_types=final,
        )
    except Exception as exc:
        raise _raised(f"ONNX export of {type(estimator).__name__} (skl2onnx)", exc) from None
    return bytes(model.SerializeToString())


def fit(
    spec: tpb.Estimator,
    task: int,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[Any],
    signature: rpb.Signature,
) -> Fitted:
    """Fit on (x, y) and export; runs on a worker thread (CPU-bound)."""
    params = {k: v for k, v in sorted(spec.params.items())}
    if spec.returns_onnx:
        train = _entry_point(spec.entry_point)
        try:
            made = train(x, y, **_params(spec))
        except Exception as exc:
            raise _raised(f"entry point {spec.entry_point}", exc) from None
        if isinstance(made, onnx.ModelProto):
            made = made.SerializeToString()
        if not isinstance(made, (bytes, bytearray)):
            raise FitError(
                f"entry point {spec.entry_point} is marked returns_onnx but returned "
                f"{type(made).__name__}, not ONNX bytes"
            )
        try:
            onnx.load_model(io.BytesIO(bytes(made)))
        except Exception as exc:
            raise FitError(
                f"entry point {spec.entry_point} returned bytes that are not ONNX: {exc}"
            ) from None
        return Fitted(bytes(made), None, params)
    estimator = estimator_of(spec)
    try:
        estimator.fit(x, y)
    except Exception as exc:
        raise _raised(f"{type(estimator).__name__}.fit", exc) from None
    return Fitted(export(estimator, x.shape[1], signature, task), estimator, params)
