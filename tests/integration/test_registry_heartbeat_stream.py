"""Registry: heartbeats on one long-lived stream (StreamHeartbeats), and the worker's
client of it.

Each streamed heartbeat is answered in order, as the unary Heartbeat answers it: a
renewal adds no revision and no audit event, a new state is published and audited.
An error ends the stream with Heartbeat's status and message; a revoked token ends it
UNAUTHENTICATED. The worker's `Heartbeats` keeps one stream across heartbeats, opens
another after an error or a registry that stopped answering (SIGSTOP), and falls back
to unary calls on a registry of an earlier release.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest
from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.worker.heartbeats import Heartbeats
from tests.helpers.older_registry import older_registry
from tests.helpers.procs import registry_process
from tests.helpers.registry import Client, RunningRegistry, auth
from tests.helpers.wait import async_wait_until

READY = rpb.WorkerVersionState(model="m", version=1, state=rpb.VERSION_LOAD_STATE_READY)
FAILED = rpb.WorkerVersionState(
    model="m", version=1, state=rpb.VERSION_LOAD_STATE_FAILED, error="bad bytes"
)


def beat(name: str, *versions: rpb.WorkerVersionState) -> rpb.StreamHeartbeatsRequest:
    return rpb.StreamHeartbeatsRequest(
        heartbeat=rpb.HeartbeatRequest(name=name, versions=list(versions))
    )


async def revision(client: Client) -> int:
    call = client.Watch(rpb.WatchRequest(since_revision=0))
    first = await asyncio.wait_for(call.read(), 10)
    call.cancel()
    return int(first.revision)


async def audited(client: Client) -> list[str]:
    reply = await client.ListAuditEvents(rpb.ListAuditEventsRequest(page_size=1000))
    return [e.action for e in reply.events]


async def register(client: Client, worker_id: str = "") -> str:
    reply = await client.RegisterWorker(
        rpb.RegisterWorkerRequest(
            worker=rpb.Worker(
                name=f"workers/{worker_id}" if worker_id else "", address="127.0.0.1:9001"
            )
        )
    )
    return str(reply.worker.name)


async def ended(call: aio.StreamStreamCall) -> aio.AioRpcError:
    """Read a stream to its end; the error it ended with."""
    with pytest.raises(aio.AioRpcError) as err:
        while await asyncio.wait_for(call.read(), 10) is not aio.EOF:
            pass
        await call  # an EOF carries its status on the call
        raise AssertionError("the stream ended OK")
    return err.value


async def test_streamed_heartbeats_renew_without_revisions_and_publish_changes(
    registry: RunningRegistry,
) -> None:
    admin = registry.client()
    name = await register(admin)
    call = admin.StreamHeartbeats()
    await call.write(beat(name, READY))  # a new state: published, audited
    first = await asyncio.wait_for(call.read(), 10)
    at, actions = await revision(admin), await audited(admin)
    assert actions.count("Heartbeat") == 1

    # Renewals on the same stream: one answer per heartbeat, each a later lease, and
    # nothing published or audited.
    leases = [first.heartbeat.lease_expire_time.ToMicroseconds()]
    for _ in range(20):
        await call.write(beat(name, READY))
        reply = await asyncio.wait_for(call.read(), 10)
        leases.append(reply.heartbeat.lease_expire_time.ToMicroseconds())
    assert leases == sorted(leases) and len(set(leases)) == len(leases), leases
    assert await revision(admin) == at
    assert await audited(admin) == actions

    # A new state on the stream is a change like a unary one.
    await call.write(beat(name, FAILED))
    await asyncio.wait_for(call.read(), 10)
    assert await revision(admin) == at + 1
    assert (await audited(admin)).count("Heartbeat") == 2
    (worker,) = (await admin.ListWorkers(rpb.ListWorkersRequest())).workers
    assert [(v.state, v.error) for v in worker.versions] == [(FAILED.state, "bad bytes")]
    await call.done_writing()
    assert await asyncio.wait_for(call.read(), 10) is aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_an_error_ends_the_stream_with_heartbeats_status(registry: RunningRegistry) -> None:
    admin = registry.client()
    name = await register(admin)
    one = registry.client(
        (
            await admin.CreateToken(
                rpb.CreateTokenRequest(display_name="w1", role=rpb.ROLE_WORKER, worker_id="w1")
            )
        ).secret
    )
    await register(one, "w1")
    viewer = registry.client(await registry.token(rpb.ROLE_VIEWER, "dash"))
    before = (await revision(admin), await audited(admin))
    cases: list[tuple[Client, rpb.StreamHeartbeatsRequest, grpc.StatusCode, str]] = [
        (
            admin,
            rpb.StreamHeartbeatsRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "heartbeat is required: each message carries one HeartbeatRequest",
        ),
        (
            admin,
            beat("workers/nobody", READY),
            grpc.StatusCode.NOT_FOUND,
            "worker workers/nobody is not registered (its lease expired?); register again",
        ),
        (
            admin,
            beat("workers/Not An Id"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "worker id 'Not An Id' is not valid: use 1-128 letters, digits",
        ),
        (
            one,
            beat(name, FAILED),
            grpc.StatusCode.PERMISSION_DENIED,
            f"may not heartbeat as {name}",
        ),
        (
            viewer,
            beat(name, FAILED),
            grpc.StatusCode.PERMISSION_DENIED,
            "may not call /liveml.registry.v1.RegistryService/StreamHeartbeats",
        ),
    ]
    for client, request, code, message in cases:
        call = client.StreamHeartbeats()
        # A good heartbeat first: it is answered, then the bad one ends the stream.
        if client is not viewer:
            await call.write(beat("workers/w1" if client is one else name))
            assert (await asyncio.wait_for(call.read(), 10)).heartbeat.HasField("lease_expire_time")
        await call.write(request)
        error = await ended(call)
        assert error.code() == code, error.details()
        assert message in (error.details() or ""), error.details()

    call = registry.client("not-a-token").StreamHeartbeats()
    await call.write(beat(name))
    error = await ended(call)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    # Nothing the refused heartbeats said was taken (the two accepted ones were renewals).
    assert (await revision(admin), await audited(admin)) == before


async def test_a_revoked_token_ends_its_heartbeat_stream(registry: RunningRegistry) -> None:
    admin = registry.client()
    made = await admin.CreateToken(
        rpb.CreateTokenRequest(display_name="w2", role=rpb.ROLE_WORKER, worker_id="w2")
    )
    worker = registry.client(made.secret)
    name = await register(worker, "w2")
    call = worker.StreamHeartbeats()
    await call.write(beat(name))
    await asyncio.wait_for(call.read(), 10)
    await admin.RevokeToken(rpb.RevokeTokenRequest(name=made.token.name))
    error = await ended(call)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert "has been revoked" in (error.details() or ""), error.details()


async def test_the_workers_client_keeps_one_stream_and_reopens_after_an_error(
    registry: RunningRegistry,
) -> None:
    admin = registry.client()
    name = await register(admin)
    beats = Heartbeats(rpb_grpc.RegistryServiceStub(registry.channel), auth(registry.admin_token))
    for _ in range(5):
        await beats.send(rpb.HeartbeatRequest(name=name, versions=[READY]))
    assert (beats.opened, beats.unary) == (1, False)
    await admin.DeleteWorker(rpb.DeleteWorkerRequest(name=name))
    with pytest.raises(aio.AioRpcError) as err:
        await beats.send(rpb.HeartbeatRequest(name=name, versions=[READY]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "register again" in (err.value.details() or "")
    name = await register(admin)  # as the worker does on NOT_FOUND
    await beats.send(rpb.HeartbeatRequest(name=name, versions=[READY]))
    assert beats.opened == 2
    beats.close()


async def test_the_workers_client_falls_back_to_unary_on_an_earlier_registry(
    registry: RunningRegistry,
) -> None:
    admin = registry.client()
    name = await register(admin)
    async with older_registry(registry.port, without={"StreamHeartbeats"}) as port:
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        beats = Heartbeats(rpb_grpc.RegistryServiceStub(channel), auth(registry.admin_token))
        try:
            reply = await beats.send(rpb.HeartbeatRequest(name=name, versions=[READY]))
            assert reply.HasField("lease_expire_time")
            assert beats.unary
            at = await revision(admin)
            await beats.send(rpb.HeartbeatRequest(name=name, versions=[FAILED]))
        finally:
            await channel.close()
    assert await revision(admin) == at + 1  # the unary heartbeat was taken
    (worker,) = (await admin.ListWorkers(rpb.ListWorkersRequest())).workers
    assert [v.state for v in worker.versions] == [FAILED.state]


async def test_a_paused_registry_fails_the_heartbeat_in_time_and_a_new_stream_resumes(
    tmp_path: Path,
) -> None:
    proc, port = registry_process(tmp_path)
    try:
        md = auth((tmp_path / "admin.token").read_text().strip())
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rpb_grpc.RegistryServiceStub(channel)
            reply = await stub.RegisterWorker(
                rpb.RegisterWorkerRequest(worker=rpb.Worker(address="127.0.0.1:9001")),
                metadata=md,
            )
            name = reply.worker.name
            beats = Heartbeats(stub, md, answer_seconds=1.0)
            await beats.send(rpb.HeartbeatRequest(name=name, versions=[READY]))
            os.kill(proc.popen.pid, signal.SIGSTOP)
            try:
                with pytest.raises(aio.AioRpcError) as err:
                    await beats.send(rpb.HeartbeatRequest(name=name, versions=[READY]))
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "no answer to a heartbeat within 1.0 s" in (err.value.details() or "")
            finally:
                os.kill(proc.popen.pid, signal.SIGCONT)

            async def answered() -> bool:
                try:
                    await beats.send(rpb.HeartbeatRequest(name=name, versions=[READY]))
                except aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
                    return False
                return True

            await async_wait_until(answered, 20, "a heartbeat answered after SIGCONT")
            assert beats.opened >= 2 and not beats.unary
            beats.close()
    finally:
        proc.stop()
