"""The registry's fleet RPCs: the change feed (Watch) and workers' membership —
register, heartbeat (a lease renewal answered from memory when nothing changed;
unary, or many on one stream: StreamHeartbeats), list, delete. Mixed into the
RegistryServicer, whose store and feed they share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from services.common.auth import current_principal
from services.common.errors import InvalidArgument, ServiceError, abort_on_error
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import (
    names,
    rollouts,
    security,
    watch_filter,
    worker_identity,
    workers,
)
from services.registry.leases import acts_as_itself
from services.registry.security import actor
from services.registry.settings import RegistrySettings
from services.registry.store import Store
from services.registry.watch import Feed

Ctx = Any  # grpc.aio.ServicerContext (untyped)


class FleetService:
    """RPC handlers mixed into the RegistryServicer (they share its store and feed)."""

    settings: RegistrySettings
    store: Store
    feed: Feed

    # --- change feed ------------------------------------------------------------------------

    @abort_on_error
    async def Watch(
        self, request: rpb.WatchRequest, context: Ctx
    ) -> AsyncIterator[rpb.WatchResponse]:
        if request.since_revision < 0:
            raise InvalidArgument("since_revision must not be negative")
        interval = names.seconds(request.progress_interval, "progress_interval", most=3600)
        caller = current_principal()
        # Token hashes go only to the data plane's servers (and admins), which check
        # callers against them; a viewer watching the picture is not told them.
        credentials = caller is None or caller.role in security.CREDENTIAL_WATCHERS
        wanted = watch_filter.parse(request, credentials)
        responses = self.feed.watch(
            request.since_revision, interval or self.settings.watch_progress_seconds, wanted
        )
        async for response in self.feed.slow_watchers.bounded(responses, context):
            yield response

    # --- workers ----------------------------------------------------------------------------

    @abort_on_error
    async def RegisterWorker(self, request: rpb.RegisterWorkerRequest, context: Ctx) -> Any:
        lease = names.seconds(request.lease_duration, "lease_duration", most=86400)
        requested = names.simple("workers", request.worker.name) if request.worker.name else ""
        async with self.store.write(actor()) as tx:
            request.worker.name = f"workers/{await worker_identity.register_as(tx, requested)}"
            worker = await workers.register(
                tx, request.worker, lease or self.settings.lease_seconds
            )
            await rollouts.settle(tx, {v.model for v in worker.versions})
        return rpb.RegisterWorkerResponse(worker=worker)

    @abort_on_error
    async def Heartbeat(self, request: rpb.HeartbeatRequest, context: Ctx) -> Any:
        return await self.beat(request)

    async def StreamHeartbeats(
        self, requests: AsyncIterator[rpb.StreamHeartbeatsRequest], context: Ctx
    ) -> AsyncIterator[rpb.StreamHeartbeatsResponse]:
        # Not abort_on_error: an abort raised while the client is still sending can
        # reach it as INTERNAL; the status is set and the stream returns instead.
        async for request in requests:
            try:
                if not request.HasField("heartbeat"):
                    raise InvalidArgument(
                        "heartbeat is required: each message carries one HeartbeatRequest"
                    )
                reply = await self.beat(request.heartbeat)
            except ServiceError as exc:
                context.set_code(exc.code)
                context.set_details(exc.message)
                return
            yield rpb.StreamHeartbeatsResponse(heartbeat=reply)

    async def beat(self, request: rpb.HeartbeatRequest) -> rpb.HeartbeatResponse:
        """One heartbeat, unary or streamed: a renewal answered from memory when this
        process knows the worker as reported, else read and written in the database."""
        worker_id = names.simple("workers", request.name)
        leases = self.store.leases
        versions = list(request.versions)
        # A renewal this process can answer from memory (leases.Leases), a newer
        # observed revision included; a worker it does not know yet is read once first.
        memory = leases if leases is not None and acts_as_itself(worker_id) else None
        expire = (
            memory.quiet(worker_id, versions, request.observed_revision)
            if memory is not None
            else None
        )
        if expire is None:
            names.check_id("worker", worker_id)  # only off the quiet path: it knows the id
            if memory is not None and memory.flush_seconds and not memory.knows(worker_id):
                await memory.learn(worker_id)
                expire = memory.quiet(worker_id, versions, request.observed_revision)
        if expire is not None:
            reply = rpb.HeartbeatResponse()
            reply.lease_expire_time.FromMicroseconds(expire)
            return reply
        async with self.store.write_unversioned() as session:
            await worker_identity.check_acts_as(session, worker_id, "heartbeat")
            if leases is not None:
                renewed, advanced = await leases.renew(
                    session, request.name, versions, request.observed_revision
                )
            else:
                renewed, _, advanced = await workers.renew_row(
                    session, request.name, versions, request.observed_revision
                )
        if renewed is not None:
            if advanced and leases is not None:
                leases.advanced(versions, request.observed_revision)  # settled once, later
            elif advanced:
                async with self.store.write(actor()) as tx:
                    await rollouts.settle(tx, {v.model for v in versions})
            return rpb.HeartbeatResponse(lease_expire_time=renewed.lease_expire_time)
        async with self.store.write(actor()) as tx:
            await worker_identity.check_acts_as(tx.session, worker_id, "heartbeat")
            worker, changed, advanced = await workers.heartbeat(
                tx, request.name, versions, request.observed_revision
            )
            if changed or advanced:
                await rollouts.settle(tx, {v.model for v in worker.versions})
        return rpb.HeartbeatResponse(lease_expire_time=worker.lease_expire_time)

    @abort_on_error
    async def ListWorkers(self, request: rpb.ListWorkersRequest, context: Ctx) -> Any:
        async with self.store.read() as session:
            return rpb.ListWorkersResponse(workers=await workers.live(session))

    @abort_on_error
    async def DeleteWorker(self, request: rpb.DeleteWorkerRequest, context: Ctx) -> Any:
        async with self.store.write(actor()) as tx:
            await worker_identity.check_acts_as(
                tx.session, names.simple("workers", request.name), "delete"
            )
            await workers.remove(tx, request.name)
        return rpb.DeleteWorkerResponse()
