"""Prediction logging: sampled answers to the event stream, never in the request's way.

The request path only samples and appends a tuple of bytes it already holds to a
bounded buffer (`--log-buffer`); a background task turns batches of them into events
and appends them. A batch that fails (the registry or NATS away) is kept and tried
again with the same keys (a retry after a lost answer is stored once); meanwhile the
buffer fills, and predictions that find it full are dropped and counted
(`liveml_gateway_predictions_dropped_total`, which an alert watches). Logging picks
up again by itself once the sink answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable

from services.common.errors import ServiceError
from services.common.events import Encoded, EventStream, wire
from services.common.events import metrics as event_metrics
from services.common.events.metrics import append_counted
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

log = logging.getLogger(__name__)

Logged = tuple[str, int, str, bytes, bytes, str, int]  # model, version, id, req, resp, group, ns
RETRY_SECONDS = 0.5


def sampling_rate(model: rpb.Model | None, default: float) -> float:
    """A model's own rate (set in the registry) or the gateway's `--log-predictions`."""
    if model is not None and model.HasField("prediction_log_rate"):
        return model.prediction_log_rate
    return default


class PredictionLog:
    def __init__(
        self,
        sink: EventStream,
        source: str,
        rate: Callable[[str], float],
        *,
        buffer: int = 10_000,
        batch: int = 500,
        flush_seconds: float = 0.1,
        max_request_bytes: int = 64 * 1024,
    ) -> None:
        self.sink = sink
        self.source = source
        self.rate = rate
        self.buffer = buffer
        self.batch = batch
        self.flush_seconds = flush_seconds
        self.max_request_bytes = max_request_bytes
        self._queue: deque[Logged] = deque()
        self._retry: list[Encoded] = []  # a batch the sink refused, sent again as it was
        self._full = asyncio.Event()
        self._prefix = f"pred:{source}:{secrets.token_hex(6)}:"  # one run of one gateway
        self._count = 0
        self.logged = 0
        self.dropped = 0
        self._failing_since = 0.0

    def offer(
        self,
        model: str,
        version: int,
        request_id: str,
        request: bytes,
        response: bytes,
        group: str,
    ) -> None:
        """On the request path: sample, and buffer or drop (counted). Never raises."""
        rate = self.rate(model)
        if rate <= 0 or (rate < 1 and random.random() >= rate):
            return
        if len(self._queue) + len(self._retry) >= self.buffer:
            self.dropped += 1
            event_metrics.PREDICTIONS_DROPPED.labels(model, "buffer_full").inc()
            return
        self._queue.append((model, version, request_id, request, response, group, time.time_ns()))
        if len(self._queue) >= self.batch:
            self._full.set()

    def _encode(self, item: Logged) -> Encoded:
        model, version, request_id, request, response, group, time_ns = item
        self._count += 1
        key = f"{self._prefix}{self._count}"
        omitted = len(request) > self.max_request_bytes
        data = wire.prediction_event(
            model,
            key,
            time_ns,
            request_id,
            version,
            b"" if omitted else request,
            response,
            group,
            self.source,
            omitted,
        )
        return Encoded(epb.EVENT_KIND_PREDICTION, model, key, data)

    async def flush(self) -> bool:
        """Send what is buffered, one batch at a time; whether everything went."""
        while self._retry or self._queue:
            if not self._retry:
                take = min(self.batch, len(self._queue))
                self._retry = [self._encode(self._queue.popleft()) for _ in range(take)]
            try:
                await append_counted(self.sink, self._retry)
            except ServiceError as exc:
                # Kept (same keys) and tried again first; the buffer takes the strain.
                event_metrics.PREDICTION_BUFFER.set(len(self._queue) + len(self._retry))
                if not self._failing_since:
                    self._failing_since = time.monotonic()
                    log.warning("prediction log: the event stream refused a batch: %s", exc)
                return False
            if self._failing_since:
                log.info(
                    "prediction log: the event stream answers again (after %.1f s)",
                    time.monotonic() - self._failing_since,
                )
                self._failing_since = 0.0
            self.logged += len(self._retry)
            for model, count in Counter(event.model for event in self._retry).items():
                event_metrics.PREDICTIONS_LOGGED.labels(model).inc(count)
            self._retry = []
            event_metrics.PREDICTION_BUFFER.set(len(self._queue))
        return True

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_seconds):
                    await self._full.wait()
            self._full.clear()
            try:
                if not await self.flush():
                    await asyncio.sleep(RETRY_SECONDS)
            except Exception:  # logging must never stop for good
                log.exception("prediction log: flush failed")
                await asyncio.sleep(RETRY_SECONDS)

    async def stop(self) -> None:
        """A last flush, bounded, so a gateway that stops takes little along."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.flush()
