"""Model statistics for the whole fleet: the workers' `ModelStatistics`, added up.

A client asking the gateway (Triton's statistics extension) sees what one server
carrying every worker's load would report: counts and durations summed per version
the routing table serves (to clients, or to mirrors: the copies a mirror ran count
too), the last inference the latest of any worker's. A worker that does not answer
fails the call with UNAVAILABLE rather than being left out, because tools take the
difference of two snapshots and a missing worker would make the totals go down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import grpc
from google.protobuf.message import Message
from grpc import aio

from services.common.errors import Unavailable
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.gateway.routing import RoutingTable

# One worker's statistics for a request: (address, request) -> response.
Ask = Callable[[str, pb.ModelStatisticsRequest], Awaitable[pb.ModelStatisticsResponse]]


def served(table: RoutingTable, name: str, version: str) -> dict[tuple[str, str], set[str]]:
    """(model, version) -> the workers holding it READY, for what the request names.

    A named model or version the rollout does not know is NOT_FOUND; one that no worker
    holds READY is UNAVAILABLE, as for inference. As a worker does, a version counts
    only with a model's name.
    """
    if name:
        wanted = table.known_version(name, version) if version else None
        routes = {name: table.route(name)}
    else:
        wanted, routes = None, table.models
    found: dict[tuple[str, str], set[str]] = {}
    for model, route in routes.items():
        for held in (route.ready, route.shadow):
            for number, addresses in held.items():
                if addresses and (wanted is None or number == wanted):
                    found.setdefault((model, str(number)), set()).update(addresses)
    if name and not found:
        what = f"'{name}' version {version}" if version else f"'{name}'"
        raise Unavailable(f"model {what} is not READY on any worker")
    return found


async def gather(
    table: RoutingTable, request: pb.ModelStatisticsRequest, ask: Ask
) -> pb.ModelStatisticsResponse:
    wanted = served(table, request.name, request.version)

    async def one(address: str) -> pb.ModelStatisticsResponse:
        try:
            return await ask(address, request)
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return pb.ModelStatisticsResponse()  # unloaded since the table was built
            raise Unavailable(
                f"worker {address} did not give its statistics ({exc.code().name}: "
                f"{exc.details()}); try again"
            ) from None

    addresses = sorted(set().union(*wanted.values()))
    parts = await asyncio.gather(*(one(a) for a in addresses), return_exceptions=True)
    for part in parts:
        if isinstance(part, BaseException):
            raise part
    # Only each version's READY holders count: a worker asked for another version may
    # also report this one draining, and it was not asked everywhere it drains.
    return combine(
        pb.ModelStatisticsResponse(
            model_stats=[
                m for m in part.model_stats if address in wanted.get((m.name, m.version), set())
            ]
        )
        for address, part in zip(addresses, parts, strict=True)
        if isinstance(part, pb.ModelStatisticsResponse)
    )


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
