"""The gateway-to-worker transport: several requests per message, answers by number.

Over both links a worker offers: its framed forward listener and the gRPC Forward call.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from services.common import pki, tls
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.common.gen.liveml.worker.v1 import worker_pb2_grpc as wpb_grpc
from services.common.windows import WindowBook
from services.dataplane import frames
from services.gateway.after import Bookkeeping
from services.gateway.feedback import FeedbackBook
from services.gateway.links import GrpcLink, Links, reachable
from services.gateway.router import Router
from services.gateway.routing import ModelRoute, RoutingTable
from services.gateway.settings import GatewaySettings
from services.gateway.shadow import Shadow, config_of
from services.gateway.upstream import Outgoing, Upstream, UpstreamDown, UpstreamPool
from tests.conftest import free_port
from tests.helpers import models
from tests.helpers.cluster import infer_request
from tests.helpers.procs import Proc, python_module, wait_port
from tests.helpers.wait import async_wait_until, wait_until


@dataclass
class Worker:
    proc: Proc
    port: int  # gRPC
    forward_port: int  # the framed listener

    def upstream(self, transport: str, hold: float = 0.0) -> Upstream:
        address = f"127.0.0.1:{self.port}"
        return Upstream(
            address,
            Links(
                lambda: aio.insecure_channel(address),
                lambda: f"127.0.0.1:{self.forward_port}" if transport == "frames" else None,
            ),
            hold,
        )


def start_worker(model_dir: Path, loaded: tuple[str, ...], *flags: str) -> Worker:
    """A standalone worker on free ports, once every model in `loaded` is READY."""
    port, forward_port = free_port(), free_port()
    proc = python_module(
        "services.cli.main",
        None,
        "worker", "serve", "--model-dir", str(model_dir), "--port", str(port),
        "--forward-port", str(forward_port), "--metrics-port", "-1", *flags,
    )  # fmt: skip
    try:
        wait_port(port, proc)
        wait_until(
            lambda: all(f"{m} v1 READY" in "".join(proc.output) for m in loaded),
            60,
            "the models to load",
        )
    except BaseException:
        proc.stop()
        raise
    return Worker(proc, port, forward_port)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    (tmp_path / "m" / "clf" / "1").mkdir(parents=True)
    models.classifier(tmp_path / "m" / "clf" / "1" / "model.onnx")
    (tmp_path / "m" / "slow" / "1").mkdir(parents=True)
    models.slow_classifier(tmp_path / "m" / "slow" / "1" / "model.onnx", rounds=3000)
    started = start_worker(tmp_path / "m", ("clf", "slow"))
    yield started
    started.proc.stop()


def answer_of(reply: wpb.ForwardReply) -> pb.ModelInferResponse:
    assert reply.code == 0, (reply.code, reply.message)
    return pb.ModelInferResponse.FromString(reply.response)


def inferences(*requests: bytes, version: int = 0) -> list[wpb.ForwardedInference]:
    return [wpb.ForwardedInference(request=r, version=version) for r in requests]


def to_clf(request_id: int | str, x: np.ndarray) -> Outgoing:
    """A request for clf v1, as a gateway hands it to an upstream."""
    return Outgoing(infer_request("clf", x, str(request_id)).SerializeToString(), 1, None)


async def forward(
    port: int, message: wpb.ForwardRequest, count: int
) -> dict[int, wpb.ForwardReply]:
    """Send one message down a gRPC Forward stream; its `count` replies by sequence."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = wpb_grpc.WorkerServiceStub(channel).Forward()  # type: ignore[no-untyped-call]
        await call.write(message)
        replies: dict[int, wpb.ForwardReply] = {}
        while len(replies) < count:
            got = await call.read()
            replies.update({r.sequence: r for r in got.replies})
        await call.done_writing()
        assert await call.read() == aio.EOF
    return replies


async def test_each_request_is_answered_by_its_number(worker: Worker) -> None:
    x = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    good = infer_request("clf", x, "ok").SerializeToString()
    unknown = infer_request("nope", x, "missing").SerializeToString()
    message = wpb.ForwardRequest(
        first_sequence=7, inferences=inferences(good, b"\xff\xff", unknown)
    )
    replies = await forward(worker.port, message, 3)
    assert set(replies) == {7, 8, 9}
    answered = answer_of(replies[7])
    assert answered.id == "ok"
    # The worker's answer as its own unary clients get it: no stream marker in it.
    assert "triton_final_response" not in answered.parameters
    scores = np.frombuffer(answered.raw_output_contents[0], dtype=np.float32)
    assert scores.argmax() == 1  # x . RULE = 1 > 0
    malformed, missing = replies[8], replies[9]
    assert malformed.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and not malformed.response
    assert malformed.message.startswith("malformed ModelInferRequest")
    assert missing.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "'nope' is not found" in missing.message


async def test_the_forwarded_version_and_timeout_are_obeyed(worker: Worker) -> None:
    """The version beside the bytes wins over the request's own model_version; a
    request whose forwarded timeout has run out is not run."""
    x = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    says_v9 = infer_request("clf", x, "v9").SerializeToString()
    says_v9 += pb.ModelInferRequest(model_version="9").SerializeToString()
    chosen = wpb.ForwardedInference(request=says_v9, version=1)
    as_sent = wpb.ForwardedInference(request=says_v9)
    late = wpb.ForwardedInference(
        request=infer_request("slow", x, "late").SerializeToString(), version=1
    )
    late.timeout.FromNanoseconds(0)
    message = wpb.ForwardRequest(first_sequence=0, inferences=[chosen, as_sent, late])
    replies = await forward(worker.port, message, 3)
    answered = answer_of(replies[0])
    assert answered.id == "v9" and answered.model_version == "1"
    assert replies[1].code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "version 9" in replies[1].message, replies[1].message
    assert replies[2].code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], replies[2]


@pytest.mark.parametrize("transport", ["frames", "grpc"])
async def test_concurrent_requests_share_messages(worker: Worker, transport: str) -> None:
    upstream = worker.upstream(transport)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((300, 1, 4)).astype(np.float32)
    try:
        replies = await asyncio.gather(*(upstream.send(to_clf(i, x), 10) for i, x in enumerate(xs)))
        assert upstream._streams[False].messages < len(xs) / 4  # coalesced
    finally:
        await upstream.close()
    for i, (x, reply) in enumerate(zip(xs, replies, strict=True)):
        answer = answer_of(reply)
        assert answer.id == str(i) and answer.model_version == "1"
        scores = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
        assert scores.argmax() == int(float((x @ models.RULE)[0]) > 0)


async def test_requests_arriving_one_at_a_time_gather_into_messages(worker: Worker) -> None:
    """Unary calls reach the writer one at a time; under load they share messages."""
    upstream = worker.upstream("frames", 0.05)
    x = np.zeros((1, 4), dtype=np.float32)

    def request(i: int) -> Outgoing:
        return to_clf(i, x)

    try:
        lone = await upstream.send(request(0), 10)
        assert answer_of(lone).id == "0"
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
        assert [answer_of(r).id for r in replies] == [str(i) for i in range(1, 301)]
        # Shadow copies travel on their own stream, so they never hold a primary back.
        await upstream.send(request(301), 10, shadow=True)
        assert upstream._streams[True] is not stream
    finally:
        await upstream.close()


async def test_shadow_copies_run_on_an_idle_priority_thread(worker: Worker) -> None:
    proc, port = worker.proc, worker.port
    tasks = Path(f"/proc/{proc.popen.pid}/task")

    def idle_threads() -> int:
        return sum(os.sched_getscheduler(int(t.name)) == os.SCHED_IDLE for t in tasks.iterdir())

    assert idle_threads() == 0  # the shadow thread starts with the first copy
    x = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    data = infer_request("clf", x, "copy").SerializeToString()
    message = wpb.ForwardRequest(inferences=inferences(data, version=1), shadow=True)
    answer = answer_of((await forward(port, message, 1))[0])
    assert answer.id == "copy" and answer.model_version == "1"
    assert np.frombuffer(answer.raw_output_contents[0], np.float32).argmax() == 1
    assert idle_threads() == 1  # the copy ran on a thread that yields to everything else


@pytest.mark.parametrize("transport", ["frames", "grpc"])
async def test_a_dead_worker_fails_what_waits_on_it(worker: Worker, transport: str) -> None:
    proc, port = worker.proc, worker.port
    upstream = worker.upstream(transport)
    x = np.zeros((1, 4), dtype=np.float32)
    data = to_clf(0, x)
    try:
        await upstream.send(data, 10)
        proc.popen.kill()
        proc.popen.wait()
        with pytest.raises(UpstreamDown, match=f"worker 127.0.0.1:{port}"):
            await upstream.send(data, 10)
    finally:
        await upstream.close()


async def _frames_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_framed_listener_answers_each_request_by_its_number(worker: Worker) -> None:
    x = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    good = infer_request("clf", x, "ok").SerializeToString()
    reader, writer = await _frames_client(worker.forward_port)
    await frames.expect_preamble(reader)  # the worker accepted the connection
    message = wpb.ForwardRequest(first_sequence=3, inferences=inferences(good, b"\xff\xff"))
    writer.write(frames.PREAMBLE + frames.frame(message.SerializeToString()))
    replies: dict[int, wpb.ForwardReply] = {}
    while len(replies) < 2:
        data = await frames.read(reader, 1 << 20)
        assert data is not None
        replies.update({r.sequence: r for r in wpb.ForwardResponse.FromString(data).replies})
    writer.write_eof()  # the gateway is done: the worker answers what it read, then closes
    assert await frames.read(reader, 1 << 20) is None
    writer.close()
    assert answer_of(replies[3]).id == "ok"
    assert replies[4].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert replies[4].message.startswith("malformed ModelInferRequest")


@pytest.mark.parametrize(
    ("sent", "logged"),
    [
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "expected the preamble"),
        (frames.PREAMBLE + (1 << 30).to_bytes(4, "big"), "over the limit"),
        (frames.PREAMBLE + frames.frame(b"\xff\xff"), "Error parsing message"),
    ],
    ids=["grpc-client", "oversized", "garbage"],
)
async def test_framed_listener_closes_on_a_broken_sender(
    worker: Worker, sent: bytes, logged: str
) -> None:
    """What is not our framing (a gRPC client on the wrong port, a huge or garbled frame)
    ends that connection, with the reason in the worker's log; the worker serves on."""
    reader, writer = await _frames_client(worker.forward_port)
    writer.write(sent)
    assert await reader.read() == frames.PREAMBLE  # accepted, then closed by the worker
    writer.close()
    wait_until(lambda: logged in "".join(worker.proc.output), 10, f"the log to say {logged!r}")
    upstream = worker.upstream("frames")
    try:
        data = to_clf("after", np.zeros((1, 4), np.float32))
        assert answer_of(await upstream.send(data, 10)).id == "after"
    finally:
        await upstream.close()


async def test_framed_listener_speaks_the_workers_mutual_tls(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "pki")
    server, client = (pki.issue(ca, name, tmp_path / "pki") for name in ("worker", "gateway"))
    (tmp_path / "m" / "clf" / "1").mkdir(parents=True)
    models.classifier(tmp_path / "m" / "clf" / "1" / "model.onnx")
    tls_worker = start_worker(
        tmp_path / "m",
        ("clf",),
        "--tls-cert", str(server.cert), "--tls-key", str(server.key),
        "--tls-client-ca", str(ca.cert),
    )  # fmt: skip
    port, forward_port = tls_worker.port, tls_worker.forward_port
    try:
        data = to_clf("tls", np.zeros((1, 4), np.float32))

        def upstream(context: ssl.SSLContext) -> Upstream:
            return Upstream(
                f"localhost:{port}",
                Links(
                    lambda: aio.insecure_channel("unused"),
                    lambda: f"localhost:{forward_port}",
                    context,
                ),
            )

        trusted = upstream(tls.client_context(ca.cert, client.cert, client.key))
        try:
            assert answer_of(await trusted.send(data, 10)).id == "tls"
        finally:
            await trusted.close()
        anonymous = upstream(tls.client_context(ca.cert))  # no client certificate
        try:
            # TLS 1.3 checks the client's certificate after the client's handshake is
            # done: the refusal shows as the worker's preamble never arriving.
            refused = f"localhost:{forward_port} did not accept the connection .*certificate"
            with pytest.raises(UpstreamDown, match=refused):
                await anonymous.send(data, 10)
        finally:
            await anonymous.close()
    finally:
        tls_worker.proc.stop()


def _unreachable_frames(worker: Worker) -> Links:
    """Links to the worker whose framed listener is advertised at a port nobody serves."""
    closed = free_port()
    address = f"127.0.0.1:{worker.port}"
    return Links(lambda: aio.insecure_channel(address), lambda: f"127.0.0.1:{closed}")


async def test_an_unreachable_framed_listener_falls_back_to_grpc(worker: Worker) -> None:
    upstream = Upstream(f"127.0.0.1:{worker.port}", _unreachable_frames(worker))
    data = to_clf("fb", np.zeros((1, 4), np.float32))
    try:
        with pytest.raises(UpstreamDown, match=r"cannot connect to 127\.0\.0\.1:\d+"):
            await upstream.send(data, 10)
        # The next stream takes the gRPC Forward call to the same worker.
        assert answer_of(await upstream.send(data, 10)).id == "fb"
        assert isinstance(upstream._streams[False].link, GrpcLink)
    finally:
        await upstream.close()


async def test_a_lone_worker_whose_stream_broke_gets_one_more_try(worker: Worker) -> None:
    """With one worker, a request whose stream failed is tried once more on it (the new
    stream here takes gRPC), instead of failing with UNAVAILABLE."""
    address = f"127.0.0.1:{worker.port}"
    route = ModelRoute(((1, 100),), (), frozenset(), "", {1: (address,)})
    table = RoutingTable({"clf": route})
    pool = UpstreamPool(lambda _: _unreachable_frames(worker))
    after = Bookkeeping(
        WindowBook(rpb.WINDOW_SOURCE_GATEWAY, ""),
        FeedbackBook(10, 60),
        Shadow(config_of(GatewaySettings())),
    )
    router = Router(lambda: table, pool, "x-liveml-route-key", 10, after)
    router.table_changed()
    request = infer_request("clf", np.zeros((1, 4), np.float32), "again").SerializeToString()
    try:
        answer, version = await router.infer(request, (), None)
        assert (pb.ModelInferResponse.FromString(answer).id, version) == ("again", "1")
    finally:
        await pool.close()


def _links(grpc_address: str, framed: str | None) -> Links:
    return Links(
        lambda: aio.insecure_channel(grpc_address), lambda: framed, grpc_address=grpc_address
    )


async def test_a_dead_worker_is_ejected_probed_and_readmitted(worker: Worker) -> None:
    """Nothing answers at either port: ejected at the first failure (not a fallback to
    gRPC), left out of the choice while others answer, and back once it accepts
    connections again."""
    live, dead = f"127.0.0.1:{worker.port}", f"127.0.0.1:{free_port()}"
    framed = {live: f"127.0.0.1:{worker.forward_port}", dead: f"127.0.0.1:{free_port()}"}
    pool = UpstreamPool(lambda a: _links(a, framed[a]), probe=reachable)
    data = to_clf("e", np.zeros((1, 4), np.float32))
    server = None
    try:
        with pytest.raises(UpstreamDown, match=r"worker down: neither its framed listener"):
            await pool.get(dead).send(data, 10)
        assert pool.ejected(dead) and pool.ejections == 1
        assert not pool.answering(dead)
        for _ in range(20):
            chosen = pool.pick([dead, live], set())
            assert chosen is not None and chosen.address == live
        # Only the dead one left to try: it is tried anyway (a fresh connection).
        last = pool.pick([dead], set())
        assert last is not None and last.address == dead
        host, port = dead.split(":")
        server = await asyncio.start_server(lambda r, w: w.close(), host, int(port))
        pool.kick([dead])
        await async_wait_until(lambda: not pool.ejected(dead), 10, "the worker readmitted")
    finally:
        if server is not None:
            server.close()
        await pool.close()


async def test_a_blocked_framed_listener_is_not_a_dead_worker(worker: Worker) -> None:
    """The framed port refuses but the gRPC port answers: a fallback to gRPC, no ejection."""
    address = f"127.0.0.1:{worker.port}"
    pool = UpstreamPool(lambda a: _links(a, f"127.0.0.1:{free_port()}"), probe=reachable)
    data = to_clf("b", np.zeros((1, 4), np.float32))
    try:
        with pytest.raises(UpstreamDown, match=r"cannot connect to 127\.0\.0\.1:\d+"):
            await pool.get(address).send(data, 10)
        assert not pool.ejected(address) and pool.ejections == 0
        assert answer_of(await pool.get(address).send(data, 10)).id == "b"
    finally:
        await pool.close()
