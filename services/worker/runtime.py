"""One model version in onnxruntime: open it, check its signature, warm it up, run it.

Sessions are opened and run on worker threads, never on the event loop; onnxruntime
releases the GIL while it computes. Thread counts default to one intra-op thread,
which suits a small CPU box where parallelism comes from batching and several
versions, and are configurable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from services.common import codec, onnxsig
from services.common.errors import InvalidArgument

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Threads:
    intra_op: int = 1
    inter_op: int = 1


class Runtime:
    """An open onnxruntime session and the signature it serves."""

    def __init__(self, path: Path | bytes, threads: Threads = Threads()) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads.intra_op
        options.inter_op_num_threads = threads.inter_op
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(
                path if isinstance(path, bytes) else str(path),
                sess_options=options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime's exception types are not public
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidArgument(f"not a loadable ONNX model: {text[:400]}") from None
        self.signature = onnxsig.signature_of(self.session)
        bf16 = [
            t.name
            for t in (*self.signature.inputs, *self.signature.outputs)
            if t.datatype == "BF16"
        ]
        if bf16:
            # onnxruntime's Python API cannot exchange bfloat16 arrays with numpy.
            raise InvalidArgument(
                f"tensor(s) {bf16} are BF16, which onnxruntime's Python API cannot feed or "
                "return; cast them to FP16 or FP32 inside the model"
            )
        self.output_names = [t.name for t in self.signature.outputs]
        self.inputs = {t.name: t for t in self.signature.inputs}
        self.batchable = all(
            t.shape and t.shape[0] == -1 for t in (*self.signature.inputs, *self.signature.outputs)
        )

    def run(self, inputs: Arrays) -> list[npt.NDArray[Any]]:
        """Every output, in signature order."""
        result: list[npt.NDArray[Any]] = self.session.run(self.output_names, inputs)
        return result

    def synthetic_inputs(self, batch: int = 1) -> Arrays:
        """Inputs of the right dtype and shape (variable dims = 1, batch dim = `batch`)."""
        inputs: Arrays = {}
        for tensor in self.signature.inputs:
            shape = [max(d, 1) for d in tensor.shape]
            if self.batchable:
                shape[0] = batch
            if tensor.datatype == codec.BYTES:
                array = np.full(shape, b"", dtype=object)
            else:
                array = np.zeros(shape, dtype=codec.DTYPES[tensor.datatype])
            inputs[tensor.name] = array
        return inputs

    def warm_up(self, rounds: int = 20, budget: float = 1.0) -> float:
        """Run synthetic inputs so the first real request does not pay for lazy setup.

        At most `rounds` runs, and no more once the warm ones took `budget` seconds: a
        model that runs for seconds is warm after two, and must not take a minute to load.
        Returns the median seconds of one warm batch-1 run.
        """
        inputs = self.synthetic_inputs()
        times: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            self.run(inputs)
            times.append(time.perf_counter() - started)
            if len(times) >= 2 and sum(times[1:]) >= budget:
                break
        warm = times[1:] or times  # the first run pays for the lazy setup
        return sorted(warm)[len(warm) // 2]

    def close(self) -> None:
        del self.session
