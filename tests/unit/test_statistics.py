"""The gateway's fleet statistics: what it asks, how it adds up, and when it refuses."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from services.common.errors import NotFound, Unavailable
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.gateway import statistics
from services.gateway.routing import ModelRoute, RoutingTable
from tests.conftest import free_port

TABLE = RoutingTable(
    {
        "lin": ModelRoute(
            targets=((1, 90), (2, 10)),
            mirrors=((3, 100),),
            pinned=frozenset(),
            sticky_key="",
            ready={1: ("a", "b"), 2: ("b",), 4: ("a",)},  # 4: held, no longer in the rollout
            shadow={3: ("m",)},
        ),
        "idle": ModelRoute(
            targets=((1, 100),), mirrors=(), pinned=frozenset(), sticky_key="", ready={}
        ),
    }
)


def test_what_is_asked_of_whom() -> None:
    everything = statistics.served(TABLE, "", "")
    assert everything == {
        ("lin", "1"): {"a", "b"},
        ("lin", "2"): {"b"},
        ("lin", "4"): {"a"},
        ("lin", "3"): {"m"},  # a mirror's copies count too
    }
    assert statistics.served(TABLE, "lin", "2") == {("lin", "2"): {"b"}}
    assert statistics.served(TABLE, "", "2") == everything  # a version needs a name
    with pytest.raises(NotFound, match="unknown model: 'nope' is not found"):
        statistics.served(TABLE, "nope", "")
    with pytest.raises(NotFound, match="'lin' version 7 is not found"):
        statistics.served(TABLE, "lin", "7")
    with pytest.raises(Unavailable, match="model 'idle' is not READY on any worker"):
        statistics.served(TABLE, "idle", "")


def _stats(version: str, n: int, last: int) -> pb.ModelStatistics:
    duration = pb.StatisticDuration(count=n, ns=n * 1000)
    return pb.ModelStatistics(
        name="lin",
        version=version,
        last_inference=last,
        inference_count=n,
        execution_count=n,
        inference_stats=pb.InferStatistics(success=duration, compute_infer=duration),
        batch_stats=[pb.InferBatchStatistics(batch_size=n, compute_infer=duration)],
        memory_usage=[pb.MemoryUsage(type="CPU", id=0, byte_size=n)],
        response_stats={"ok": pb.InferResponseStatistics(success=duration)},
    )


def test_workers_add_up_to_one_server() -> None:
    total = statistics.combine(
        [
            pb.ModelStatisticsResponse(model_stats=[_stats("1", 2, 50), _stats("10", 1, 9)]),
            pb.ModelStatisticsResponse(model_stats=[_stats("1", 3, 40)]),
            pb.ModelStatisticsResponse(model_stats=[_stats("2", 2, 70)]),
        ]
    )
    assert [(m.version, m.inference_count) for m in total.model_stats] == [
        ("1", 5),
        ("2", 2),
        ("10", 1),  # versions in number order
    ]
    one = total.model_stats[0]
    assert one.last_inference == 50 and one.execution_count == 5
    assert (one.inference_stats.success.count, one.inference_stats.success.ns) == (5, 5000)
    assert [(b.batch_size, b.compute_infer.count) for b in one.batch_stats] == [(2, 2), (3, 3)]
    assert [(m.type, m.byte_size) for m in one.memory_usage] == [("CPU", 5)]
    assert one.response_stats["ok"].success.ns == 5000


async def test_a_worker_that_does_not_answer_fails_the_call() -> None:
    # Nothing listens there: a real connection refused, as from a worker that just died.
    dead = f"127.0.0.1:{free_port()}"
    table = RoutingTable(
        {
            "lin": ModelRoute(
                targets=((1, 100),),
                mirrors=(),
                pinned=frozenset(),
                sticky_key="",
                ready={1: (dead,)},
            )
        }
    )
    async with aio.insecure_channel(dead) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]

        async def ask(
            address: str, request: pb.ModelStatisticsRequest
        ) -> pb.ModelStatisticsResponse:
            reply: pb.ModelStatisticsResponse = await stub.ModelStatistics(request, timeout=5)
            return reply

        with pytest.raises(Unavailable) as err:
            await statistics.gather(table, pb.ModelStatisticsRequest(name="lin"), ask)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert f"worker {dead} did not give its statistics (UNAVAILABLE" in err.value.message
