"""Routing and sending: choose a version and a worker for one request, send, retry.

Inference requests arrive as bytes and leave as bytes: the router reads the routing
fields, chooses a version, sends the client's bytes down a worker's long-lived stream
with that version, the caller's deadline and the trace context beside them
(`upstream.Outgoing`), and hands the worker's answer back unchanged. A
request whose worker died, is draining or stalls is retried on another worker of the
same version within the caller's deadline. What happens after the answer (metrics,
windows, fairness, feedback, shadow copies) is `after.Bookkeeping`'s, called once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import propagate

from services.common import decoding, telemetry
from services.common.errors import InvalidArgument, ServiceError, Unavailable
from services.common.gen.inference import grpc_predict_v2_pb2 as pb
from services.common.gen.liveml.worker.v1 import worker_pb2 as wpb
from services.gateway import metrics, wire
from services.gateway.after import Answered, Bookkeeping
from services.gateway.routing import RoutingTable
from services.gateway.upstream import Outgoing, UpstreamDown, UpstreamPool, UpstreamStalled

# A worker's answer that says "not here" (draining, loading, or a version it no longer
# or not yet holds, which the table believed READY there): another worker may have it.
ELSEWHERE = {grpc.StatusCode.UNAVAILABLE.value[0], grpc.StatusCode.NOT_FOUND.value[0]}
CODES = {code.value[0]: code for code in grpc.StatusCode}
INFER_REQUEST = pb.ModelInferRequest.DESCRIPTOR.full_name
# Longest a request waits for a newer routing table when its version was just retired.
TABLE_WAIT = 2.0
# Longest a request waits for the first routing table of a gateway that just started.
FIRST_TABLE_WAIT = 10.0


class Router:
    """Chooses, sends, retries; shared by the unary and streaming front doors."""

    def __init__(
        self,
        table: Callable[[], RoutingTable],
        pool: UpstreamPool,
        route_key_header: str,
        default_timeout: float,
        after: Bookkeeping,
        stall: float = 1.0,
    ) -> None:
        self.table = table
        self.stall = stall
        self.pool = pool
        self.route_key_header = route_key_header
        self.default_timeout = default_timeout
        self.after = after
        self._changed = asyncio.Event()
        self._first = asyncio.Event()

    async def _first_table(self, deadline: float | None) -> None:
        """A gateway that just started has no routing table: wait for it rather than
        tell the caller its model does not exist."""
        if self._first.is_set():
            return
        wait = FIRST_TABLE_WAIT
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._first.wait()
        if not self._first.is_set():
            raise Unavailable(
                "the gateway has no routing table yet: the registry has not been reached"
            )

    async def _send(self, model: str, outgoing: Outgoing, deadline: float) -> wpb.ForwardReply:
        version = outgoing.version
        tried: set[str] = set()
        broken: set[str] = set()  # their stream failed: the next send opens a new one
        retried: set[str] = set()  # each worker gets at most one such second try
        last = "no READY worker"
        while True:
            workers = self.table().workers(model, version)
            upstream = self.pool.pick(workers, tried)
            if upstream is None and broken:
                # Every worker was tried; those whose stream broke (a reset connection, a
                # framed listener out of reach: the next stream may take gRPC) get one
                # more try each, which matters most when there is only one.
                upstream = self.pool.pick([w for w in workers if w in broken], set())
                broken.clear()
            remaining = deadline - time.monotonic()
            if upstream is None or remaining <= 0:
                raise Unavailable(
                    f"model '{model}' version {version}: no worker could answer ({last})"
                )
            tried.add(upstream.address)
            # Waiting out a frozen worker pays only when another one could answer.
            others = any(w not in tried for w in workers)
            try:
                reply = await upstream.send(
                    outgoing, remaining, stall=self.stall if others else None
                )
            except UpstreamStalled as exc:
                last = str(exc)
                self.pool.eject(upstream.address, last)
                metrics.RETRIES.labels(model).inc()
                continue
            except UpstreamDown as exc:
                last = str(exc)
                if upstream.address not in retried:
                    broken.add(upstream.address)
                retried.add(upstream.address)
                metrics.RETRIES.labels(model).inc()
                continue
            except TimeoutError:
                raise ServiceError(
                    "deadline exceeded waiting for the worker", grpc.StatusCode.DEADLINE_EXCEEDED
                ) from None
            if reply.code in ELSEWHERE:
                last = reply.message
                metrics.RETRIES.labels(model).inc()
                continue
            return reply

    def table_changed(self) -> None:
        """A new routing table is in place: wake requests waiting for one."""
        self._first.set()
        self._changed.set()
        self._changed = asyncio.Event()

    async def _newer_table(self, seen: RoutingTable, deadline: float) -> bool:
        if self.table() is not seen:
            return True
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(TABLE_WAIT, max(0.0, deadline - time.monotonic()))):
                await changed.wait()
        return self.table() is not seen

    def _sticky(self, routing: wire.Routing, sticky_key: str, metadata: Any) -> str | None:
        """The key that keeps one client on one side: the route's parameter, else metadata."""
        sticky = routing.parameters.get(sticky_key) if sticky_key else None
        where = f"parameter {sticky_key!r}"
        if sticky is None and metadata:
            sticky = next((v for k, v in metadata if k == self.route_key_header), None)
            where = f"metadata {self.route_key_header!r}"
        if sticky and not sticky.strip():
            # Every blank key would hash to the same side: refused rather than pinned there.
            raise InvalidArgument(
                f"sticky key ({where}) is blank: send a value that identifies the client, or none"
            )
        return sticky

    async def infer(self, data: bytes, metadata: Any, deadline: float | None) -> tuple[bytes, str]:
        """Route one request; return (reply bytes, answering version) or raise ServiceError."""
        try:
            routing = wire.routing(data)
        except wire.WireError as exc:
            raise InvalidArgument(decoding.Malformed(INFER_REQUEST, str(exc)).message) from None
        await self._first_table(deadline)
        table = self.table()
        route = table.route(routing.model_name)
        sticky = self._sticky(routing, route.sticky_key, metadata)
        traceparent = ""
        if telemetry.tracing_enabled():
            # The worker stream is shared, so the trace context travels in the request.
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            traceparent = carrier.get("traceparent", "")  # the W3C propagator's key
        started = time.perf_counter()
        model = routing.model_name
        deadline = deadline or time.monotonic() + self.default_timeout
        version = 0
        failed: ServiceError | None = None
        reply: wpb.ForwardReply | None = None
        metrics.REQUESTS.in_flight += 1
        try:
            while True:
                choice = table.choose(model, routing.model_version, sticky)
                version = choice.version
                if choice.redistributed:
                    metrics.REDISTRIBUTED.labels(model).inc()
                # The worker is told the version and how long the caller still waits
                # (it does not start what it can no longer answer in time).
                outgoing = Outgoing(data, version, deadline, traceparent)
                try:
                    reply = await self._send(model, outgoing, deadline)
                    break
                except Unavailable:
                    # Every worker of the chosen version is draining or gone: the rollout
                    # moved on and this gateway's table has not caught up yet. A request
                    # the rollout routes (not one pinned by the caller) waits for the new
                    # table and is routed again.
                    if routing.model_version or not await self._newer_table(table, deadline):
                        raise
                    table = self.table()
        except ServiceError as exc:
            failed = exc
        finally:
            metrics.REQUESTS.in_flight -= 1
        # One outcome, booked once, whichever way the request ended.
        answered: Answered | None = None
        if reply is None:
            assert failed is not None  # any other exception has left already
            if version:  # failures before a version was chosen belong to no version
                answered = Answered(routing, version, failed.code, replied=False)
        elif reply.code:
            failed = ServiceError(reply.message, CODES.get(reply.code, grpc.StatusCode.UNKNOWN))
            answered = Answered(routing, version, failed.code, replied=True)
        else:
            seconds = time.perf_counter() - started
            answered = Answered(
                routing,
                version,
                grpc.StatusCode.OK,
                replied=True,
                seconds=seconds,
                request=data,
                response=reply.response,
                table=table,
                mirrors=route.mirrors,
            )
        if answered is not None:
            self.after.record(answered)
        if failed is not None:
            raise failed
        assert answered is not None
        return answered.response, str(version)
