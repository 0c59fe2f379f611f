"""Mirror copies that wait too long: refused by the worker, dropped by the shadow process.

When clients' requests keep a core busy, a copy for it must not wait for a quiet moment
and run then (taking it from later requests); it is dropped and counted instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.common.gen.liveml.worker.v1 import worker_pb2_grpc as wpb_grpc
from services.gateway.links import Connector
from services.gateway.shadow import Copy, ShadowConfig
from services.gateway.shadow_process import Counting, _drain
from services.gateway.upstream import UpstreamPool
from tests.helpers import models
from tests.helpers.cluster import infer_request
from tests.helpers.wait import async_wait_until
from tests.integration.test_forward import Worker, start_worker

X = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    """A worker with `clf` and `slower`, whose one run keeps its shadow thread for seconds."""
    for name, build in (
        ("clf", models.classifier),
        ("slower", lambda path: models.slow_classifier(path, rounds=300_000)),
    ):
        (tmp_path / "m" / name / "1").mkdir(parents=True)
        build(tmp_path / "m" / name / "1" / "model.onnx")
    started = start_worker(tmp_path / "m", ("clf", "slower"))
    yield started
    started.proc.stop()


async def clf_statistics(port: int) -> pb.InferStatistics:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="clf"))
    return stats.model_stats[0].inference_stats


def copy_of(model: str, request_id: str) -> bytes:
    return infer_request(model, X, request_id).SerializeToString()


async def test_a_copy_not_started_in_time_is_refused_and_not_counted(worker: Worker) -> None:
    """A copy that waits for the shadow thread past its sender's time is refused then,
    never run later, and not counted against its version (the gateway counts it dropped)."""
    long = wpb.ForwardedInference(request=copy_of("slower", "long"), version=1)
    late = wpb.ForwardedInference(request=copy_of("clf", "late"), version=1)
    late.timeout.FromMilliseconds(100)
    async with aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        call = wpb_grpc.WorkerServiceStub(channel).Forward()  # type: ignore[no-untyped-call]
        await call.write(wpb.ForwardRequest(inferences=[long, late], shadow=True))
        order: list[wpb.ForwardReply] = []
        while len(order) < 2:
            order += (await call.read()).replies
        await call.done_writing()
    refused, answered = order  # refused while the long copy ran, not after it
    assert refused.sequence == 1
    assert refused.message.startswith("the caller's deadline passed while the request waited")
    assert refused.message.endswith("it was not run")
    assert refused.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert answered.sequence == 0 and answered.code == 0
    assert pb.ModelInferResponse.FromString(answered.response).id == "long"
    inference = await clf_statistics(worker.port)
    assert inference.success.count == 0 and inference.fail.count == 0


async def test_the_shadow_process_drops_copies_that_waited_too_long(worker: Worker) -> None:
    """Stale before sending: dropped unsent. Refused by the worker: dropped, not an error."""
    address = f"127.0.0.1:{worker.port}"
    pool = UpstreamPool(
        Connector(None, None, None, 4 << 20, lambda _: f"127.0.0.1:{worker.forward_port}").links
    )
    config = ShadowConfig(
        worker_ca=None,
        worker_cert=None,
        worker_key=None,
        worker_tls_name=None,
        worker_token=None,
        max_message_bytes=4 << 20,
        timeout=30.0,
        max_wait=0.3,
        capacity=8,
        priority="idle",
        log_level="INFO",
    )
    counting = Counting()
    queue: asyncio.Queue[Copy] = asyncio.Queue()
    now = time.monotonic()
    where = ((address, ""),)
    queue.put_nowait(Copy("slower", 1, copy_of("slower", "long"), b"", where, now))
    queue.put_nowait(Copy("clf", 1, copy_of("clf", "behind"), b"", where, now))  # refused
    queue.put_nowait(Copy("clf", 1, copy_of("clf", "stale"), b"", where, now - 10))  # unsent
    senders = [asyncio.create_task(_drain(queue, pool, counting, config)) for _ in range(2)]
    try:
        await async_wait_until(
            lambda: sum(counting.requests.counts.values()) + sum(counting.dropped.values()) == 3,
            60,
            "all three copies counted",
        )
    finally:
        for sender in senders:
            sender.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await pool.close()
    assert counting.dropped == {("clf", "1"): 2}
    assert counting.requests.counts == {("slower", "1", "shadow", "OK"): 1}
    inference = await clf_statistics(worker.port)
    assert inference.success.count == 0 and inference.fail.count == 0  # neither one ran
