"""Recent predictions by request id: this gateway's own quick answer to SubmitFeedback.

It is a cache: the event stream's joiner is what joins feedback to its prediction
(whichever gateway answered it) and counts live accuracy. The book only lets the
gateway say at once whether it remembers the request, and which version answered.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.outputs import first_output, matches, prediction
from services.gateway import metrics


@dataclass(frozen=True)
class Remembered:
    model: str
    version: str
    response: bytes  # the serialized answer, decoded only if feedback arrives
    at: float
    group: str = ""


class FeedbackBook:
    def __init__(self, size: int, seconds: float) -> None:
        self.size = size
        self.seconds = seconds
        self._entries: OrderedDict[tuple[str, str], Remembered] = OrderedDict()

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
        correct = predicted is not None and matches(predicted, request.ground_truth)
        metrics.FEEDBACK.labels(found.model, found.version, "correct" if correct else "wrong").inc()
        return gpb.SubmitFeedbackResponse(
            matched=True, model_version=found.version, correct=correct
        )
