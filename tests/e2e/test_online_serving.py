"""Serving while the online learner publishes a version every second: clients sending
through the gateway the whole time, two workers swapping to each new version as it is
published (direct rollout), examples streaming in; not one request fails."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from services.common import codec
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from tests.e2e.test_online import Online, examples, online_policy
from tests.helpers.cluster import cluster
from tests.helpers.wait import async_wait_until

pytestmark = pytest.mark.timeout(300)


def request(x: np.ndarray) -> pb.ModelInferRequest:
    out = pb.ModelInferRequest(model_name="clf")
    datatype, shape, raw = codec.encode_raw(x.astype(np.float32))
    out.inputs.add(name="X", datatype=datatype, shape=shape)  # as skl2onnx names it
    out.raw_input_contents.append(raw)
    return out


async def test_publishing_every_second_fails_no_request(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        o = Online(c)
        await o.setup(
            online_policy(
                publish_every=10**9,  # by time only
                publish_interval=Duration(seconds=1),
                rollout=tpb.ONLINE_ROLLOUT_DIRECT,
            )
        )
        c.start_worker("w1")
        c.start_worker("w2")
        address = f"127.0.0.1:{c.start_gateway()}"
        await o.append(examples(2000, seed=1))
        await c.start_trainer("t1")

        async def published_beyond(version: int) -> int | None:
            status = await o.status()
            return (
                status.published_version if status and status.published_version > version else None
            )

        first = await async_wait_until(lambda: published_beyond(0), 60, "a first version")
        # It answers through the gateway before the clients start counting.
        async with aio.insecure_channel(address) as channel:
            infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer

            async def answers() -> bool:
                try:
                    await infer(request(np.ones((1, 4))), timeout=5)
                except aio.AioRpcError:
                    return False
                return True

            await async_wait_until(answers, 60, "the first version to answer")

        stop = asyncio.Event()
        seen: Counter[str] = Counter()
        failures: list[str] = []

        async def client(index: int) -> None:
            rng = np.random.default_rng(index)
            async with aio.insecure_channel(address) as channel:
                infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
                while not stop.is_set():
                    try:
                        reply = await infer(request(rng.normal(size=(1, 4))), timeout=10)
                        seen[reply.model_version] += 1
                    except aio.AioRpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")

        async def feed() -> None:
            start = 10_000
            while not stop.is_set():
                await o.append(examples(100, seed=3, start=start))
                start += 100
                await asyncio.sleep(0.2)  # the stream's pace, 500 examples/s (noqa: sleep-ok)

        tasks = [asyncio.create_task(client(i)) for i in range(4)]
        tasks.append(asyncio.create_task(feed()))
        try:
            last = await async_wait_until(
                lambda: published_beyond(first + 5), 120, "five more versions published"
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert not failures, failures[:3]
        assert sum(seen.values()) > 100
        # Answers came from several of the versions published meanwhile, not only one.
        assert len(seen) >= 3, seen
        assert max(int(v) for v in seen) <= last
