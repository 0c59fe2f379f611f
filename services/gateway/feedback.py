"""Recent predictions by request id, so ground truth sent later finds the version that answered."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.gateway import metrics
from services.gateway.outputs import first_output, prediction


@dataclass(frozen=True)
class Remembered:
    model: str
    version: str
    response: bytes  # the serialized answer, decoded only if feedback arrives
    at: float


class FeedbackBook:
    def __init__(self, size: int, seconds: float) -> None:
        self.size = size
        self.seconds = seconds
        self._entries: OrderedDict[tuple[str, str], Remembered] = OrderedDict()
        self.correct: dict[tuple[str, str], tuple[int, int]] = {}  # (model, version) -> (ok, all)

    def remember(self, model: str, request_id: str, version: str, response: bytes) -> None:
        key = (model, request_id)
        self._entries[key] = Remembered(model, version, response, time.monotonic())
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def _expire(self) -> None:
        horizon = time.monotonic() - self.seconds
        while self._entries:
            key, first = next(iter(self._entries.items()))
            if first.at >= horizon:
                return
            del self._entries[key]

    def join(self, request: gpb.SubmitFeedbackRequest) -> gpb.SubmitFeedbackResponse:
        self._expire()
        found = self._entries.pop((request.model_name, request.request_id), None)
        if found is None:
            return gpb.SubmitFeedbackResponse(matched=False)
        output = first_output(found.response)
        predicted = prediction(output) if output is not None else None
        truth = request.ground_truth
        kind = truth.WhichOneof("value")
        if kind == "class_index":
            correct = predicted == truth.class_index
        elif kind == "number" and isinstance(predicted, int | float):
            correct = abs(float(predicted) - truth.number) <= 0.1 * max(abs(truth.number), 1e-9)
        else:
            correct = kind == "text" and predicted == truth.text
        ok, total = self.correct.get((found.model, found.version), (0, 0))
        self.correct[(found.model, found.version)] = (ok + int(correct), total + 1)
        metrics.FEEDBACK.labels(found.model, found.version, "correct" if correct else "wrong").inc()
        return gpb.SubmitFeedbackResponse(
            matched=True, model_version=found.version, correct=correct
        )
