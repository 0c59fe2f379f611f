"""The gateway-to-worker transport: several requests per message, answers by number."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.common.gen.liveml.worker.v1 import worker_pb2_grpc as wpb_grpc
from services.gateway import wire
from services.gateway.upstream import Upstream, UpstreamDown
from tests.conftest import free_port
from tests.helpers import models
from tests.helpers.cluster import infer_request
from tests.helpers.procs import Proc, python_module, wait_port
from tests.helpers.wait import wait_until


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[Proc, int]]:
    (tmp_path / "m" / "clf" / "1").mkdir(parents=True)
    models.classifier(tmp_path / "m" / "clf" / "1" / "model.onnx")
    (tmp_path / "m" / "slow" / "1").mkdir(parents=True)
    models.slow_classifier(tmp_path / "m" / "slow" / "1" / "model.onnx", rounds=3000)
    port = free_port()
    proc = python_module(
        "services.cli.main",
        None,
        "worker", "serve", "--model-dir", str(tmp_path / "m"), "--port", str(port),
        "--metrics-port", "-1",
    )  # fmt: skip
    wait_port(port, proc)
    wait_until(
        lambda: all(f"{m} v1 READY" in "".join(proc.output) for m in ("clf", "slow")),
        60,
        "the models to load",
    )
    yield proc, port
    proc.stop()


def reply_of(data: bytes) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse.FromString(data)


async def test_each_request_is_answered_by_its_number(worker: tuple[Proc, int]) -> None:
    _, port = worker
    x = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    good = infer_request("clf", x, "ok").SerializeToString()
    unknown = infer_request("nope", x, "missing").SerializeToString()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = wpb_grpc.WorkerServiceStub(channel).Forward()
        await call.write(
            wpb.ForwardRequest(first_sequence=7, requests=[good, b"\xff\xff", unknown])
        )
        replies: dict[int, bytes] = {}
        while len(replies) < 3:
            message = await call.read()
            replies.update({r.sequence: r.response for r in message.replies})
        await call.done_writing()
        assert await call.read() == aio.EOF
    assert set(replies) == {7, 8, 9}
    answered = reply_of(replies[7])
    assert not answered.error_message and answered.infer_response.id == "ok"
    scores = np.frombuffer(answered.infer_response.raw_output_contents[0], dtype=np.float32)
    assert scores.argmax() == 1  # x . RULE = 1 > 0
    malformed, missing = reply_of(replies[8]), reply_of(replies[9])
    assert malformed.error_message.startswith("malformed ModelInferRequest")
    status = malformed.infer_response.parameters["liveml_status"].int64_param
    assert status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "'nope' is not found" in missing.error_message
    assert (
        missing.infer_response.parameters["liveml_status"].int64_param
        == (grpc.StatusCode.NOT_FOUND.value[0])
    )


async def test_concurrent_requests_share_messages(worker: tuple[Proc, int]) -> None:
    _, port = worker
    upstream = Upstream(f"127.0.0.1:{port}", aio.insecure_channel(f"127.0.0.1:{port}"))
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((300, 1, 4)).astype(np.float32)
    try:
        replies = await asyncio.gather(
            *(
                upstream.send(
                    wire.with_version(infer_request("clf", x, str(i)).SerializeToString(), 1), 10
                )
                for i, x in enumerate(xs)
            )
        )
        assert upstream._streams[False].messages < len(xs) / 4  # coalesced
    finally:
        await upstream.close()
    for i, (x, data) in enumerate(zip(xs, replies, strict=True)):
        answer = reply_of(data).infer_response
        assert answer.id == str(i) and answer.model_version == "1"
        scores = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
        assert scores.argmax() == int(float((x @ models.RULE)[0]) > 0)


async def test_requests_arriving_one_at_a_time_gather_into_messages(
    worker: tuple[Proc, int],
) -> None:
    """Unary calls reach the writer one at a time; under load they share messages."""
    _, port = worker
    upstream = Upstream(f"127.0.0.1:{port}", aio.insecure_channel(f"127.0.0.1:{port}"), 0.05)
    x = np.zeros((1, 4), dtype=np.float32)

    def request(i: int) -> bytes:
        return wire.with_version(infer_request("clf", x, str(i)).SerializeToString(), 1)

    try:
        lone = await upstream.send(request(0), 10)
        assert reply_of(lone).infer_response.id == "0"
        stream = upstream._streams[False]
        sends = []
        for i in range(1, 301):  # 300 clients, whose requests arrive one at a time
            sends.append(asyncio.ensure_future(upstream.send(request(i), 10)))
            await asyncio.sleep(0)  # one loop turn: the send queues it (noqa: sleep-ok)
            for _ in range(100_000):  # until it is written, or held for company
                if not stream.queue or stream.holding:
                    break
                await asyncio.sleep(0)  # one loop turn (noqa: sleep-ok)
        replies = await asyncio.gather(*sends)
        # Alone until the first probe (16 sends), then gathered: without it, 301 messages.
        assert stream.messages <= 60, stream.messages
        assert [reply_of(r).infer_response.id for r in replies] == [str(i) for i in range(1, 301)]
        # Shadow copies travel on their own stream, so they never hold a primary back.
        await upstream.send(request(301), 10, shadow=True)
        assert upstream._streams[True] is not stream
    finally:
        await upstream.close()


async def test_shadow_copies_run_on_an_idle_priority_thread(worker: tuple[Proc, int]) -> None:
    proc, port = worker
    tasks = Path(f"/proc/{proc.popen.pid}/task")

    def idle_threads() -> int:
        return sum(os.sched_getscheduler(int(t.name)) == os.SCHED_IDLE for t in tasks.iterdir())

    assert idle_threads() == 0  # the shadow thread starts with the first copy
    x = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    data = wire.with_version(infer_request("clf", x, "copy").SerializeToString(), 1)
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = wpb_grpc.WorkerServiceStub(channel).Forward()  # type: ignore[no-untyped-call]
        await call.write(wpb.ForwardRequest(first_sequence=0, requests=[data], shadow=True))
        reply = (await call.read()).replies[0]
        await call.done_writing()
    answer = reply_of(reply.response).infer_response
    assert answer.id == "copy" and answer.model_version == "1"
    assert np.frombuffer(answer.raw_output_contents[0], np.float32).argmax() == 1
    assert idle_threads() == 1  # the copy ran on a thread that yields to everything else


async def test_a_dead_worker_fails_what_waits_on_it(worker: tuple[Proc, int]) -> None:
    proc, port = worker
    upstream = Upstream(f"127.0.0.1:{port}", aio.insecure_channel(f"127.0.0.1:{port}"))
    x = np.zeros((1, 4), dtype=np.float32)
    data = infer_request("clf", x).SerializeToString()
    try:
        await upstream.send(data, 10)
        proc.popen.kill()
        proc.popen.wait()
        with pytest.raises(UpstreamDown, match=f"worker 127.0.0.1:{port}"):
            await upstream.send(data, 10)
    finally:
        await upstream.close()
