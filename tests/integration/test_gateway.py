"""The gateway in front of real workers and a real registry (all processes on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from tests.conftest import free_port
from tests.helpers import models
from tests.helpers.cluster import Cluster, cluster, infer_request
from tests.helpers.wait import async_wait_until


async def two_versions(root: Path, c: Cluster, workers: int = 1) -> int:
    """Model `lin` with v1 and v2 READY on `workers` workers; returns a gateway port."""
    await c.create_model("lin")
    await c.push("lin", models.linear(root / "v1.onnx", seed=1))
    await c.push("lin", models.linear(root / "v2.onnx", seed=2))
    await c.route("lin", (1, 90), (2, 10), pinned=[1, 2])
    for i in range(workers):
        c.start_worker(f"w{i}")
    for i in range(workers):
        for v in (1, 2):
            await c.wait_state(f"w{i}", "lin", v, "READY")
    port = c.start_gateway()
    await wait_routable(port, "lin", workers)
    return port


async def wait_routable(port: int, model: str, workers: int = 1) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def ready() -> bool:
            index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
            return len([m for m in index.models if m.name == model]) >= 2

        await async_wait_until(ready, 30, "gateway to see READY versions")


async def stream_versions(port: int, requests: list[pb.ModelInferRequest]) -> list[str]:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()

        async def send() -> None:
            for request in requests:
                await call.write(request)
            await call.done_writing()

        sender = asyncio.create_task(send())
        versions = []
        async for response in call:
            assert not response.error_message, response.error_message
            versions.append(response.infer_response.model_version)
        await sender
    return versions


PER_KEY = 5


async def test_canary_split_and_sticky_keys(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        port = await two_versions(tmp_path, c)
        x = np.ones((1, 4), np.float32)
        plain = await stream_versions(
            port, [infer_request("lin", x, f"r{i}") for i in range(10_000)]
        )
        share = Counter(plain)["2"] / len(plain)
        assert 0.085 <= share <= 0.115, f"canary share {share:.3f}"

        # Five requests a key: a key the random split served would change sides with
        # probability 0.41 each, so 2000 keys that never do are sticky beyond doubt.
        keyed = []
        for key in range(2000):
            for n in range(PER_KEY):
                request = infer_request("lin", x, f"k{key}-{n}")
                request.parameters["user"].string_param = f"user-{key}"
                keyed.append(request)
        await c.route("lin", (1, 90), (2, 10), pinned=[1, 2], sticky_key="user")
        await wait_routable(port, "lin")
        await async_wait_until(lambda: _sticky_applied(port), 30, "sticky key in the table")
        versions = await stream_versions(port, keyed)
        per_key: dict[int, set[str]] = {}
        for i, version in enumerate(versions):
            per_key.setdefault(i // PER_KEY, set()).add(version)
        assert all(len(v) == 1 for v in per_key.values()), "a key changed sides"
        canary_keys = sum(1 for v in per_key.values() if v == {"2"}) / len(per_key)
        assert 0.08 <= canary_keys <= 0.12, f"share of keys on the canary {canary_keys:.3f}"


async def _sticky_applied(port: int) -> bool:
    """Ten keys, each on one side for 30 requests: the sticky table is live (by chance
    the random 90/10 table keeps one key on one side 4% of the time, ten keys ~never)."""
    requests = []
    for key in range(10):
        request = infer_request("lin", np.ones((1, 4), np.float32), "probe")
        request.parameters["user"].string_param = f"probe-{key}"
        requests += [request] * 30
    versions = await stream_versions(port, requests)
    return all(len(set(versions[i : i + 30])) == 1 for i in range(0, len(versions), 30))


async def test_pinning_and_its_errors(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        port = await two_versions(tmp_path, c)
        await c.route("lin", (2, 100), pinned=[1])
        x = np.ones((1, 4), np.float32)
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def only_v2() -> bool:
                # 20 in a row: the old table (90/10) answers 10% of requests with v2 too.
                for _ in range(20):
                    reply = await stub.ModelInfer(infer_request("lin", x))
                    if reply.model_version != "2":
                        return False
                return True

            await async_wait_until(only_v2, 30, "rollout 100% v2")
            pinned = await stub.ModelInfer(infer_request("lin", x, "p", version="1"))
            assert pinned.model_version == "1" and pinned.id == "p"
            for version, code, message in [
                ("7", grpc.StatusCode.NOT_FOUND, "'lin' version 7 is not found"),
                ("abc", grpc.StatusCode.INVALID_ARGUMENT, "positive integer"),
            ]:
                with pytest.raises(aio.AioRpcError) as err:
                    await stub.ModelInfer(infer_request("lin", x, version=version))
                assert err.value.code() == code and message in str(err.value.details())
            with pytest.raises(aio.AioRpcError) as err:
                await stub.ModelInfer(infer_request("nope", x))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            # Bad input is the worker's verdict, passed through with its status.
            with pytest.raises(aio.AioRpcError) as err:
                await stub.ModelInfer(infer_request("lin", np.ones((1, 5), np.float32)))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "expected shape [-1, 4]" in str(err.value.details())
            meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="lin"))
            # v1 is pinned, so still reachable by its number.
            assert meta.versions == ["1", "2"] and meta.inputs[0].name == "x"


async def test_feedback_is_joined_to_the_answering_version(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        port = await two_versions(tmp_path, c)
        x = np.ones((1, 4), np.float32)
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer_request("lin", x, "req-7")
            )
            scores = np.frombuffer(reply.raw_output_contents[0], np.float32)
            feedback = gpb_grpc.GatewayServiceStub(channel)
            answer = await feedback.SubmitFeedback(
                gpb.SubmitFeedbackRequest(
                    model_name="lin",
                    request_id="req-7",
                    ground_truth=gpb.Label(class_index=int(scores.argmax())),
                )
            )
            assert answer.matched and answer.correct and answer.model_version == reply.model_version
            again = await feedback.SubmitFeedback(
                gpb.SubmitFeedbackRequest(
                    model_name="lin", request_id="unknown", ground_truth=gpb.Label(class_index=0)
                )
            )
            assert not again.matched
            with pytest.raises(aio.AioRpcError) as err:
                await feedback.SubmitFeedback(
                    gpb.SubmitFeedbackRequest(model_name="lin", request_id="x")
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            ingested = await feedback.IngestExamples(
                gpb.IngestExamplesRequest(
                    model_name="lin",
                    examples=[gpb.Example(features=[1, 2, 3, 4], label=gpb.Label(number=1))] * 3,
                )
            )
            assert (ingested.accepted, ingested.duplicates) == (3, 0)


async def test_sigkill_of_a_worker_under_load_fails_nothing(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        port = await two_versions(tmp_path, c, workers=2)
        await c.route("lin", (1, 100), pinned=[2])
        from tests.helpers.cluster import Load

        load = Load(f"127.0.0.1:{port}", "lin", clients=16)
        load.start()
        await async_wait_until(lambda: len(load.answers) > 300, 30, "traffic through both workers")
        victim, _ = c.workers["w0"]
        victim.popen.kill()  # SIGKILL: no goodbye to the registry or the gateway
        served = len(load.answers)
        await async_wait_until(
            lambda: len(load.answers) > served + 1000, 60, "traffic after the kill"
        )
        await load.stop()
    assert load.failures == []


async def test_registry_outage_fails_nothing_and_later_changes_apply(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        port = await two_versions(tmp_path, c)
        await c.route("lin", (1, 100), pinned=[2])
        from tests.helpers.cluster import Load

        load = Load(f"127.0.0.1:{port}", "lin", clients=16)
        load.start()
        await async_wait_until(lambda: len(load.answers) > 200, 30, "traffic")
        stopped_at = len(load.answers)
        c.registry.popen.kill()
        c.registry.popen.wait()
        await asyncio.sleep(10)  # the outage itself, under load (noqa: sleep-ok)
        outage_end = len(load.answers)
        assert outage_end > stopped_at + 1000, "the data plane kept serving"
        c.restart_registry()
        await c.route("lin", (2, 100), pinned=[1])
        await async_wait_until(
            lambda: any(v == "2" for _, v in load.answers[outage_end:]), 60, "the new rollout"
        )
        await load.stop()
    assert load.failures == []


async def test_failing_and_slow_mirrors_never_touch_the_primary(tmp_path: Path) -> None:
    from tests.conftest import free_port
    from tests.helpers.cluster import Load

    async with cluster(tmp_path) as c:
        await c.create_model("lin")
        await c.push("lin", models.linear(tmp_path / "v1.onnx", seed=1))
        await c.push("lin", models.warmup_crash(tmp_path / "v2.onnx"))  # never READY: fails
        await c.push("lin", models.mlp(tmp_path / "v3.onnx", n_in=4, hidden=2048, n_out=3))  # slow
        await c.route("lin", (1, 100), mirrors=[rpb_target(2, 100), rpb_target(3, 100)])
        c.start_worker("w0")
        await c.wait_state("w0", "lin", 1, "READY")
        await c.wait_state("w0", "lin", 3, "READY")
        await c.wait_state("w0", "lin", 2, "FAILED")
        metrics_port = free_port()
        port = c.start_gateway("--shadow-queue", "4", "--metrics-port", str(metrics_port))
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def routable() -> bool:
                try:
                    await stub.ModelInfer(infer_request("lin", np.ones((1, 4), np.float32)))
                    return True
                except aio.AioRpcError:
                    return False

            await async_wait_until(routable, 30, "gateway routing")
        load = Load(f"127.0.0.1:{port}", "lin", clients=16)
        load.start()
        await async_wait_until(lambda: len(load.answers) > 2000, 60, "primary traffic")
        await load.stop()

        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def counted() -> str | None:
                # Under the 16 clients the idle-priority mirror may get no CPU at all, and
                # its copies then age out (--shadow-max-wait): one request at a time
                # leaves it the CPU to compare fresh copies. The shadow process reports
                # what it counted twice a second.
                await stub.ModelInfer(infer_request("lin", np.ones((1, 4), np.float32)))
                text = await asyncio.to_thread(_scrape, metrics_port)
                seen = (
                    total(text, "liveml_gateway_shadow_dropped_total", version="3"),  # dropped
                    total(text, "liveml_gateway_shadow_compared_total", version="3"),  # compared
                )
                return text if all(seen) else None

            text = await async_wait_until(counted, 30, "the slow mirror's copies counted")
    assert load.failures == []
    assert {v for _, v in load.answers} == {"1"}
    shadow_errors = total(
        text, "liveml_gateway_requests_total", version="2", role="shadow", status="ERROR"
    )
    assert shadow_errors > 0  # the mirror that never loaded
    primary = total(text, "liveml_gateway_requests_total", version="1", role="primary", status="OK")
    assert primary > 2000


def total(text: str, metric: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    found = 0.0
    for line in text.splitlines():
        if line.startswith(metric + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            found += float(line.rsplit(" ", 1)[1])
    return found


SCHED_IDLE = 5


def policies(pid: int) -> set[int]:
    """The scheduling policy of each thread of a process (field 41 of its stat)."""
    found = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            found.add(int(stat.rsplit(")", 1)[1].split()[38]))
    return found


def children(pid: int) -> list[int]:
    return [
        int(child)
        for tid in os.listdir(f"/proc/{pid}/task")
        for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
    ]


async def test_mirror_workers_take_the_copies_at_idle_priority(tmp_path: Path) -> None:
    """A mirror worker loads only mirror versions and takes only copies; a primary
    worker never loads them; the gateway's shadow process and the mirror worker run at
    idle CPU priority; a killed shadow process is replaced and copies go on."""
    async with cluster(tmp_path) as c:
        await c.create_model("clf")
        await c.push("clf", models.classifier(tmp_path / "v1.onnx"))
        await c.push("clf", models.classifier(tmp_path / "v2.onnx", flip=True))  # disagrees
        await c.route("clf", (1, 100), mirrors=[rpb_target(2, 100)])
        c.start_worker("w0", "--role", "primary")
        mirror_port = c.start_worker("m0", "--role", "mirror")
        await c.wait_state("w0", "clf", 1, "READY")
        await c.wait_state("m0", "clf", 2, "READY")
        assert set(await c.worker_states("w0")) == {("clf", 1)}
        assert set(await c.worker_states("m0")) == {("clf", 2)}
        assert policies(c.workers["m0"][0].popen.pid) == {SCHED_IDLE}
        # Readiness for clients' traffic does not count mirror workers.
        reply = await c.stub.GetVersionMetrics(
            rpb.GetVersionMetricsRequest(parent="models/clf"), metadata=c.md
        )
        ready = {m.version: m.ready_workers for m in reply.metrics}
        assert (ready.get(1), ready.get(2, 0)) == (1, 0)

        metrics_port = free_port()
        port = c.start_gateway("--metrics-port", str(metrics_port))
        gateway = c.gateways[-1].popen.pid
        x = np.array([[3.0, -1.0, 2.0, 0.5]], np.float32)  # v2 predicts the other class
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def answered_by_v1() -> bool:
                try:
                    reply = await stub.ModelInfer(infer_request("clf", x))
                except aio.AioRpcError:
                    return False
                return bool(reply.model_version == "1")

            async def compared(at_least: float) -> bool:
                for _ in range(20):
                    assert (await stub.ModelInfer(infer_request("clf", x))).model_version == "1"
                text = await asyncio.to_thread(_scrape, metrics_port)
                found = total(text, "liveml_gateway_shadow_compared_total", version="2", agree="no")
                return found >= at_least

            await async_wait_until(answered_by_v1, 30, "gateway routing")
            await async_wait_until(lambda: compared(20), 30, "copies compared")
            (shadow_process,) = children(gateway)
            assert policies(shadow_process) == {SCHED_IDLE}

            # A mirror worker takes no client's request, even a pinned one.
            with pytest.raises(aio.AioRpcError) as pinned:
                await stub.ModelInfer(infer_request("clf", x, version="2"))
            assert pinned.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "only on mirror workers" in str(pinned.value.details())

            os.kill(shadow_process, signal.SIGKILL)
            before = total(
                await asyncio.to_thread(_scrape, metrics_port),
                "liveml_gateway_shadow_compared_total",
                version="2",
            )
            await async_wait_until(lambda: compared(before + 20), 30, "copies after the kill")
            assert children(gateway) != [shadow_process]

        async with aio.insecure_channel(f"127.0.0.1:{mirror_port}") as channel:
            stats = await pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                pb.ModelStatisticsRequest(name="clf", version="2")
            )
        assert stats.model_stats[0].inference_stats.success.count >= before + 20


def _scrape(port: int) -> str:
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def rpb_target(version: int, percent: int) -> object:
    from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

    return rpb.TrafficTarget(version=version, percent=percent)


def forward_streams(metrics_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    found = re.findall(r'liveml_worker_forward_streams\{link="(\w+)"\} (\S+)', text.decode())
    return {link: float(value) for link, value in found}


async def test_workers_are_reached_over_frames_else_grpc(tmp_path: Path) -> None:
    """A worker's framed listener carries the gateway's requests; a worker that offers
    none (`--forward-port -1`) is reached over the gRPC Forward stream instead."""
    async with cluster(tmp_path) as c:
        await c.create_model("lin")
        await c.push("lin", models.linear(tmp_path / "v1.onnx", seed=1))
        await c.route("lin", (1, 100))
        metrics = {"framed": free_port(), "plain": free_port()}
        c.start_worker("framed", "--metrics-port", str(metrics["framed"]))
        c.start_worker("plain", "--metrics-port", str(metrics["plain"]), "--forward-port", "-1")
        for name in metrics:
            await c.wait_state(name, "lin", 1, "READY")
        workers = await c.stub.ListWorkers(rpb.ListWorkersRequest(), metadata=c.md)
        offered = {w.name: w.forward_address for w in workers.workers}
        assert offered["workers/plain"] == ""
        assert re.fullmatch(r"127\.0\.0\.1:\d+", offered["workers/framed"])
        port = c.start_gateway()
        x = np.ones((1, 4), np.float32)
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def both_used() -> bool:
                with contextlib.suppress(aio.AioRpcError):  # until the table has them
                    await asyncio.gather(
                        *(stub.ModelInfer(infer_request("lin", x)) for _ in range(8))
                    )
                return (
                    forward_streams(metrics["framed"]).get("frames") == 1
                    and forward_streams(metrics["plain"]).get("grpc") == 1
                )

            await async_wait_until(both_used, 30, "a frames stream and a gRPC stream")
        assert forward_streams(metrics["framed"]).get("grpc", 0) == 0
        assert forward_streams(metrics["plain"]).get("frames", 0) == 0


async def test_the_callers_deadline_reaches_the_worker(tmp_path: Path) -> None:
    """A request the gateway gave up on (DEADLINE_EXCEEDED, with why) is not run by the
    worker either: only the one already running when the deadline passed runs."""
    async with cluster(tmp_path) as c:
        await c.create_model("slow")
        # About a second a run here: far longer than the 0.25 s deadline below.
        await c.push("slow", models.slow_classifier(tmp_path / "s.onnx", rounds=250_000))
        await c.route("slow", (1, 100))
        worker_port = c.start_worker("w0", "--max-batch-size", "0", "--run-threads", "1")
        await c.wait_state("w0", "slow", 1, "READY")
        port = c.start_gateway("--default-timeout", "0.25")
        x = np.ones((1, 4), np.float32)
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def routable() -> bool:
                index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
                return any(m.name == "slow" for m in index.models)

            await async_wait_until(routable, 30, "the gateway to route 'slow'")
            calls = [stub.ModelInfer(infer_request("slow", x, str(i))) for i in range(4)]
            for outcome in await asyncio.gather(*calls, return_exceptions=True):
                assert isinstance(outcome, aio.AioRpcError), outcome
                assert outcome.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "deadline exceeded waiting for the worker" in str(outcome.details())
        async with aio.insecure_channel(f"127.0.0.1:{worker_port}") as channel:
            worker = pb_grpc.GRPCInferenceServiceStub(channel)

            async def settled() -> pb.ModelStatistics | None:
                reply = await worker.ModelStatistics(pb.ModelStatisticsRequest(name="slow"))
                stats = reply.model_stats[0]
                done = stats.inference_stats.success.count + stats.inference_stats.fail.count
                return stats if done == 4 else None

            stats = await async_wait_until(settled, 30, "the worker to answer all four")
        assert stats.execution_count == 1
        assert stats.inference_stats.fail.count == 3
