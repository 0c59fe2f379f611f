"""Recent predictions by request id, so ground truth sent later finds the version that answered."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.windows import WindowBook
from services.gateway import metrics
from services.gateway.outputs import first_output, is_positive, prediction


@dataclass(frozen=True)
class Remembered:
    model: str
    version: str
    response: bytes  # the serialized answer, decoded only if feedback arrives
    at: float
    group: str = ""


class FeedbackBook:
    def __init__(
        self, size: int, seconds: float, book: WindowBook | None = None, group_key: str = "group"
    ) -> None:
        self.size = size
        self.seconds = seconds
        self.book = book
        self.group_key = group_key
        self._entries: OrderedDict[tuple[str, str], Remembered] = OrderedDict()
        self.correct: dict[tuple[str, str], tuple[int, int]] = {}  # (model, version) -> (ok, all)

    def remember(
        self, model: str, request_id: str, version: str, response: bytes, group: str = ""
    ) -> None:
        key = (model, request_id)
        self._entries[key] = Remembered(model, version, response, time.monotonic(), group)
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
        if self.book is not None:
            tally = self.book.tally(found.model, int(found.version))
            tally.feedback[0] += int(correct)
            tally.feedback[1] += 1
            group = found.group or request.groups.get(self.group_key, "")
            if group:
                row = tally.group(group)
                if not found.group:  # its prediction was not counted when it was made
                    row[0] += 1
                    row[1] += int(predicted is not None and is_positive(predicted))
                row[2] += int(correct)
                row[3] += 1
        return gpb.SubmitFeedbackResponse(
            matched=True, model_version=found.version, correct=correct
        )
