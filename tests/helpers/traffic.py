"""Client traffic through a gateway with ground truth sent back, for canary and drift tests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from grpc import aio

from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from tests.helpers.cluster import infer_request
from tests.helpers.models import RULE

FEEDBACK_IN_FLIGHT = 32  # per client: labels sent but not yet answered


@dataclass
class Traffic:
    """Unary clients sending x ~ N(mean, 1) and, for each answer, the true class."""

    address: str
    model: str
    clients: int = 8
    mean: float = 0.0
    feedback: bool = True
    group_key: str = ""
    # With groups: group a's inputs are shifted by +group_shift, group b's by -group_shift.
    group_shift: float = 0.0
    answers: list[tuple[float, str]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _client(self, index: int) -> None:
        rng = np.random.default_rng(index)
        async with aio.insecure_channel(self.address) as channel:
            infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            feedback = gpb_grpc.GatewayServiceStub(channel).SubmitFeedback
            n = 0
            room = asyncio.Semaphore(FEEDBACK_IN_FLIGHT)
            pending: set[asyncio.Task[None]] = set()
            while not self._stop.is_set():
                group = "ab"[n % 2]
                x = rng.normal(self.mean, 1.0, size=(1, 4)).astype(np.float32)
                if self.group_shift:  # along the rule, so the groups' classes differ
                    x += (self.group_shift if group == "a" else -self.group_shift) * RULE
                request = infer_request(self.model, x, f"{index}-{n}")
                if self.group_key:
                    request.parameters[self.group_key].string_param = group
                n += 1
                try:
                    reply = await infer(request, timeout=10)
                except aio.AioRpcError as exc:
                    self.failures.append((time.monotonic(), f"{exc.code().name}: {exc.details()}"))
                    continue
                self.answers.append((time.monotonic(), reply.model_version))
                if self.feedback:
                    truth = int(float((x @ RULE)[0]) > 0)
                    # Labels travel beside the requests, as a real client's would: a
                    # durable SubmitFeedback costs more than an inference, and waiting
                    # for each would cut the traffic a canary step sees by half or more.
                    await room.acquire()
                    sent = asyncio.create_task(
                        self._feedback(feedback, request.id, truth, room), name="feedback"
                    )
                    pending.add(sent)
                    sent.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)

    async def _feedback(
        self, feedback: Any, request_id: str, truth: int, room: asyncio.Semaphore
    ) -> None:
        try:
            await feedback(
                gpb.SubmitFeedbackRequest(
                    model_name=self.model,
                    request_id=request_id,
                    ground_truth=gpb.Label(class_index=truth),
                ),
                timeout=10,
            )
        except aio.AioRpcError as exc:
            self.failures.append((time.monotonic(), f"feedback {exc.code().name}: {exc.details()}"))
        finally:
            room.release()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def versions_after(self, moment: float) -> set[str]:
        return {version for at, version in self.answers if at > moment}
