"""Everything the gateway books about one answer, in one place, after the answer.

The router chooses, sends and retries; once a request has its outcome (the worker's
answer, the worker's error, or no answer at all from the chosen version) it hands one
`Answered` to `Bookkeeping.record`, which counts it in the metrics and the version's
window, counts the prediction per fairness group, remembers it for feedback, offers it
to the prediction log and copies it to the rollout's mirrors. Keeping this apart from
the sending keeps the path a request takes readable, and keeps every counter in step:
each of them sees the same outcome.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from services.common.outputs import first_output, is_positive, prediction
from services.common.windows import WindowBook
from services.gateway import metrics, wire
from services.gateway.feedback import FeedbackBook
from services.gateway.predictions import PredictionLog
from services.gateway.routing import RoutingTable
from services.gateway.shadow import Shadow


@dataclass(frozen=True)
class Answered:
    """One request's outcome, for the version that was chosen for it."""

    routing: wire.Routing
    version: int
    code: grpc.StatusCode
    # The worker answered (OK or its own error). False: no worker of the version could
    # answer (or the deadline passed) — only the version's window counts that.
    replied: bool
    seconds: float = 0.0
    request: bytes = b""  # the client's bytes
    response: bytes = b""  # the worker's answer, when OK
    table: RoutingTable | None = None  # the table the request was sent by (for mirrors)
    mirrors: tuple[tuple[int, int], ...] = ()  # the route's (version, percent) mirrors


class Bookkeeping:
    """The per-answer books: metrics, windows, fairness, feedback, predictions, shadow."""

    def __init__(
        self,
        book: WindowBook,
        feedback: FeedbackBook,
        shadow: Shadow,
        group_key: str = "group",
        predictions: PredictionLog | None = None,
    ) -> None:
        self.book = book
        self.feedback = feedback
        self.shadow = shadow
        self.group_key = group_key
        self.predictions = predictions

    def record(self, answered: Answered) -> None:
        """Book one outcome; called once per request that had a version chosen."""
        model, version = answered.routing.model_name, answered.version
        if answered.code is not grpc.StatusCode.OK:
            if answered.replied:
                metrics.REQUESTS.record(model, str(version), "primary", answered.code.name, 0.0)
            self.book.request(model, version, 0.0, answered.code.name)
            return
        metrics.REQUESTS.record(model, str(version), "primary", "OK", answered.seconds)
        self.book.request(model, version, answered.seconds)
        routing, answer = answered.routing, answered.response
        group = routing.parameters.get(self.group_key, "") if routing.parameters else ""
        if group:
            self._count_group(model, version, group, answer)
        if routing.id:
            self.feedback.remember(model, routing.id, str(version), answer, group)
        if self.predictions is not None:
            self.predictions.offer(model, version, routing.id, answered.request, answer, group)
        if answered.table is None:
            return
        for mirror, percent in answered.mirrors:
            if percent >= 100 or random.random() * 100 < percent:
                workers = answered.table.workers(model, mirror, shadow=True)
                self.shadow.offer(model, mirror, answered.request, answer, workers)

    def _count_group(self, model: str, version: int, group: str, answer: bytes) -> None:
        """Fairness: what each group was predicted. The one decode on the request path,
        and only for requests that name a group."""
        output = first_output(answer)
        if output is None:
            return
        positive = is_positive(prediction(output))
        row = self.book.tally(model, version).group(group)
        row[0] += 1
        row[1] += int(positive)
        outcome = "positive" if positive else "negative"
        metrics.GROUP_PREDICTIONS.labels(model, str(version), group, outcome).inc()
