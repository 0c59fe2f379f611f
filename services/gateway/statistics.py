"""Model statistics for the whole fleet: the workers' `ModelStatistics`, added up.

A client asking the gateway (Triton's statistics extension) sees what one server
carrying every worker's load would report: counts and durations summed per model
version, the last inference the latest of any worker's. A worker that does not
answer in time is left out rather than failing the call: statistics are for looking,
and a worker that just died has none to give.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from google.protobuf.message import Message
from grpc import aio

from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.gateway.routing import RoutingTable

# One worker's statistics for a request: (address, request) -> response.
Ask = Callable[[str, pb.ModelStatisticsRequest], Awaitable[pb.ModelStatisticsResponse]]


def holders(table: RoutingTable, name: str, version: str) -> list[str]:
    """Workers that hold what the request names (for a named model: NOT_FOUND if unknown)."""
    if not name:
        models, wanted = list(table.models.values()), None
    else:  # as a worker does, a version counts only with a model's name
        wanted = {table.known_version(name, version)} if version else None
        models = [table.route(name)]
    return sorted(
        {
            address
            for route in models
            for held in (route.ready, route.shadow)
            for number, addresses in held.items()
            if wanted is None or number in wanted
            for address in addresses
        }
    )


async def gather(
    table: RoutingTable, request: pb.ModelStatisticsRequest, ask: Ask
) -> pb.ModelStatisticsResponse:
    async def one(address: str) -> pb.ModelStatisticsResponse | None:
        try:
            return await ask(address, request)
        except (aio.AioRpcError, TimeoutError):
            return None  # gone, or no longer holding the version: nothing to add

    parts = await asyncio.gather(*(one(a) for a in holders(table, request.name, request.version)))
    return combine(part for part in parts if part is not None)


def combine(parts: Iterable[pb.ModelStatisticsResponse]) -> pb.ModelStatisticsResponse:
    totals: dict[tuple[str, str], pb.ModelStatistics] = {}
    for part in parts:
        for stats in part.model_stats:
            total = totals.get((stats.name, stats.version))
            if total is None:
                totals[(stats.name, stats.version)] = total = pb.ModelStatistics(
                    name=stats.name, version=stats.version
                )
            add(total, stats)
    order = sorted(totals, key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else 0))
    return pb.ModelStatisticsResponse(model_stats=[totals[k] for k in order])


def add(total: pb.ModelStatistics, part: pb.ModelStatistics) -> None:
    total.last_inference = max(total.last_inference, part.last_inference)
    total.inference_count += part.inference_count
    total.execution_count += part.execution_count
    _add_durations(total.inference_stats, part.inference_stats)
    for batch in part.batch_stats:
        same = [b for b in total.batch_stats if b.batch_size == batch.batch_size]
        _add_durations(same[0] if same else total.batch_stats.add(), batch)
    for usage in part.memory_usage:
        found = [m for m in total.memory_usage if (m.type, m.id) == (usage.type, usage.id)]
        into = found[0] if found else total.memory_usage.add(type=usage.type, id=usage.id)
        into.byte_size += usage.byte_size
    for key, response in part.response_stats.items():
        _add_durations(total.response_stats[key], response)


def _add_durations(total: Message, part: Message) -> None:
    """Sum every StatisticDuration of `part` into `total`; copy its other (key) fields."""
    for field, value in part.ListFields():
        if isinstance(value, pb.StatisticDuration):
            into = getattr(total, field.name)
            into.count += value.count
            into.ns += value.ns
        else:
            setattr(total, field.name, value)
