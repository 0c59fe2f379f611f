"""The gateway's writes to the event stream under real processes and faults: feedback
joined across gateways into the canary's accuracy, ingested examples that survive a
SIGKILL, and inference that never fails while the sink is away."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.gen.liveml.events.v1 import events_pb2 as epb
from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb
from services.common.gen.liveml.gateway.v1 import gateway_pb2_grpc as gpb_grpc
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from tests.conftest import free_port
from tests.helpers.cluster import Cluster, Load, cluster, infer_request
from tests.helpers.events import nats_server
from tests.helpers.procs import Proc, restart, wait_port
from tests.helpers.wait import async_wait_until
from tests.integration.test_gateway import _scrape, total, two_versions, wait_routable

BACKENDS = ["sql", pytest.param("nats", marks=pytest.mark.nats)]
X = np.ones((1, 4), np.float32)


@asynccontextmanager
async def events_cluster(root: Path, backend: str) -> AsyncIterator[tuple[Cluster, list[str]]]:
    """A cluster whose event stream is the registry's table or a NATS server of its own;
    yields it and the flags a gateway needs for that stream."""
    env = {"LIVEML_JOIN_COMMIT_SECONDS": "0.3"}
    nats: Proc | None = None
    flags: list[str] = []
    if backend == "nats":
        nats, port = nats_server(root)
        env["LIVEML_EVENT_STREAM"] = f"nats://127.0.0.1:{port}"
        flags = ["--event-stream", env["LIVEML_EVENT_STREAM"]]
    c: Cluster | None = None
    try:
        async with cluster(root, **env) as c:
            c.nats = nats  # type: ignore[attr-defined]
            yield c, flags
    finally:
        # A test may have restarted it (`c.nats` is then the new process): stop that one.
        running = getattr(c, "nats", nats) if c is not None else nats
        for proc in {id(p): p for p in (nats, running) if p is not None}.values():
            proc.stop()


async def stream_events(c: Cluster, model: str, kind: int) -> list[epb.Event]:
    request = rpb.ReadEventsRequest(model=model, kinds=[kind])  # type: ignore[list-item]
    out: list[epb.Event] = []
    async for reply in c.stub.ReadEvents(request, metadata=c.md):
        out += reply.events
    return out


@pytest.mark.parametrize("backend", BACKENDS)
async def test_feedback_sent_to_another_gateway_joins_and_counts_for_the_canary(
    tmp_path: Path, backend: str
) -> None:
    async with events_cluster(tmp_path, backend) as (c, flags):
        port_a = await two_versions(tmp_path, c)
        c.gateways[-1].stop()  # two_versions' gateway: start both with the stream's flags
        port_a = c.start_gateway(*flags)
        port_b = c.start_gateway(*flags)
        await wait_routable(port_a, "lin")
        await wait_routable(port_b, "lin")
        async with (
            aio.insecure_channel(f"127.0.0.1:{port_a}") as a,
            aio.insecure_channel(f"127.0.0.1:{port_b}") as b,
        ):
            reply = await pb_grpc.GRPCInferenceServiceStub(a).ModelInfer(
                infer_request("lin", X, "req-ab", version="2")
            )
            predicted = int(np.frombuffer(reply.raw_output_contents[0], np.float32).argmax())
            wrong = await pb_grpc.GRPCInferenceServiceStub(a).ModelInfer(
                infer_request("lin", X, "req-wrong", version="2")
            )
            assert wrong.model_version == "2"
            feedback = gpb_grpc.GatewayServiceStub(b)
            answer = await feedback.SubmitFeedback(
                gpb.SubmitFeedbackRequest(
                    model_name="lin",
                    request_id="req-ab",
                    ground_truth=gpb.Label(class_index=predicted),
                    groups={"group": "eu"},
                )
            )
            assert not answer.matched  # B never saw it: the joiner joins it
            await feedback.SubmitFeedback(
                gpb.SubmitFeedbackRequest(
                    model_name="lin",
                    request_id="req-wrong",
                    ground_truth=gpb.Label(class_index=(predicted + 1) % 3),
                )
            )

        async def counted() -> rpb.VersionMetrics | None:
            reply = await c.stub.GetVersionMetrics(
                rpb.GetVersionMetricsRequest(parent="models/lin"), metadata=c.md
            )
            found = {m.version: m for m in reply.metrics}.get(2)
            return found if found is not None and found.feedback_total == 2 else None

        metrics = await async_wait_until(counted, 30, "v2's joined feedback in its metrics")
        assert metrics.accuracy == 0.5
        assert [(g.group, g.feedback_correct, g.feedback_total) for g in metrics.groups] == [
            ("eu", 1, 1)
        ]
        joined = await stream_events(c, "lin", epb.EVENT_KIND_EXAMPLE)
        by_id = {e.example.request_id: e.example for e in joined}
        assert set(by_id) == {"req-ab", "req-wrong"}
        right = by_id["req-ab"]
        assert right.origin == epb.EXAMPLE_ORIGIN_JOINED
        assert (right.version, right.correct, right.label.class_index) == (2, True, predicted)
        assert list(right.features) == [1.0, 1.0, 1.0, 1.0]
        assert not by_id["req-wrong"].correct
        stats = await c.stub.GetEventStats(
            rpb.GetEventStatsRequest(model="models/lin"), metadata=c.md
        )
        counts = {k.kind: k.count for k in stats.counts}
        assert counts[epb.EVENT_KIND_FEEDBACK] == 2
        assert counts[epb.EVENT_KIND_PREDICTION] >= 2
        assert (stats.joined, stats.feedback_unmatched, stats.joined_fraction) == (2, 0, 1.0)
        assert stats.backend == ("nats" if backend == "nats" else "sql")


async def test_ingested_examples_survive_a_sigkill_right_after_the_answer(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        port = await two_versions(tmp_path, c)
        gateway = c.gateways[-1]
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gpb_grpc.GatewayServiceStub(channel)
            for batch in range(10):
                reply = await stub.IngestExamples(
                    gpb.IngestExamplesRequest(
                        model_name="lin",
                        examples=[
                            gpb.Example(
                                features=[batch, i, 0, 1],
                                label=gpb.Label(class_index=i % 3),
                                key=f"e{batch}-{i}",
                            )
                            for i in range(100)
                        ],
                    )
                )
                assert (reply.accepted, reply.duplicates) == (100, 0)
            gateway.popen.kill()  # SIGKILL, right after the last answer
            gateway.popen.wait()
        stored = await stream_events(c, "lin", epb.EVENT_KIND_EXAMPLE)
        keys = sorted(e.key for e in stored)
        assert keys == sorted(f"ingest:lin:e{b}-{i}" for b in range(10) for i in range(100))
        assert all(e.example.origin == epb.EXAMPLE_ORIGIN_INGESTED for e in stored)

        port = c.start_gateway()
        await wait_routable(port, "lin")
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gpb_grpc.GatewayServiceStub(channel)
            again = await stub.IngestExamples(
                gpb.IngestExamplesRequest(
                    model_name="lin",
                    examples=[
                        gpb.Example(features=[0, i, 0, 1], label=gpb.Label(class_index=0), key=k)
                        for i, k in enumerate(["e0-0", "e0-1", "new"])
                    ],
                )
            )
            assert (again.accepted, again.duplicates) == (3, 2)
            for request, code, message in [
                (
                    gpb.IngestExamplesRequest(model_name="nope", examples=[gpb.Example()]),
                    grpc.StatusCode.NOT_FOUND,
                    "model 'nope' not found",
                ),
                (
                    gpb.IngestExamplesRequest(model_name="lin"),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "examples is empty: send at least one",
                ),
                (
                    gpb.IngestExamplesRequest(
                        model_name="lin",
                        examples=[gpb.Example(features=[1, 2], label=gpb.Label(number=1))],
                    ),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "examples[0]: 2 features, the model takes 4",
                ),
                (
                    gpb.IngestExamplesRequest(
                        model_name="lin", examples=[gpb.Example(features=[1, 2, 3, 4])]
                    ),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "examples[0]: no label (a class_index, a number or a text)",
                ),
                (
                    gpb.IngestExamplesRequest(
                        model_name="lin",
                        examples=[
                            gpb.Example(features=[1, 2, 3, 4], label=gpb.Label(number=float("nan")))
                        ],
                    ),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "examples[0]: the label is nan, not a finite number",
                ),
            ]:
                with pytest.raises(aio.AioRpcError) as err:
                    await stub.IngestExamples(request)
                assert (err.value.code(), err.value.details()) == (code, message)
            with pytest.raises(aio.AioRpcError) as err:
                await stub.SubmitFeedback(
                    gpb.SubmitFeedbackRequest(
                        model_name="nope", request_id="r", ground_truth=gpb.Label(class_index=1)
                    )
                )
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.NOT_FOUND,
                "model 'nope' not found",
            )
        after = await stream_events(c, "lin", epb.EVENT_KIND_EXAMPLE)
        assert len(after) == 1001  # the bad requests stored nothing


@pytest.mark.parametrize("backend", BACKENDS)
async def test_inference_never_fails_while_the_sink_is_away(tmp_path: Path, backend: str) -> None:
    async with events_cluster(tmp_path, backend) as (c, flags):
        await two_versions(tmp_path, c)
        c.gateways[-1].stop()
        metrics_port = free_port()
        port = c.start_gateway(*flags, "--log-buffer", "200", "--metrics-port", str(metrics_port))
        await wait_routable(port, "lin")
        load = Load(f"127.0.0.1:{port}", "lin", clients=16)
        load.start()
        await async_wait_until(lambda: len(load.answers) > 300, 60, "traffic")

        def scraped(metric: str) -> float:
            return total(_scrape(metrics_port), metric, model="lin")

        await async_wait_until(
            lambda: scraped("liveml_gateway_predictions_logged_total") > 0, 30, "logging"
        )
        nats: Proc | None = getattr(c, "nats", None)
        if nats is None:
            c.registry.stop()  # the sink is the registry's table
        else:
            nats.stop()
        before = scraped("liveml_gateway_predictions_dropped_total")
        answered = len(load.answers)
        await async_wait_until(
            lambda: scraped("liveml_gateway_predictions_dropped_total") > before + 100,
            60,
            "predictions dropped and counted while the sink is away",
        )
        assert len(load.answers) > answered + 100  # inference went on meanwhile
        if nats is None:
            c.restart_registry()
        else:
            c.nats = restart(nats)  # type: ignore[attr-defined]
            wait_port(int(nats.args[nats.args.index("-p") + 1]), c.nats)  # type: ignore[attr-defined]
        logged = scraped("liveml_gateway_predictions_logged_total")
        await async_wait_until(
            lambda: scraped("liveml_gateway_predictions_logged_total") > logged + 500,
            60,
            "logging to resume without a restart",
        )
        await load.stop()
        assert load.failures == []
        since = time.time() - 120

        async def predictions() -> int:
            return sum(
                1
                for e in await stream_events(c, "lin", epb.EVENT_KIND_PREDICTION)
                if e.time.seconds > since
            )

        assert await async_wait_until(predictions, 30, "predictions in the stream") > 500
