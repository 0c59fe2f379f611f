"""Registry: the change feed (snapshot, resume, progress, compaction) and worker leases."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry.watch import FeedCompaction
from tests.helpers.models import linear
from tests.helpers.registry import RunningRegistry, registry_settings, running_registry
from tests.helpers.wait import async_wait_until
from tests.integration.test_registry_catalog import push
from tests.integration.test_registry_rollouts import rollout

KIND = rpb.WatchResponse


async def setup_iris(registry: RunningRegistry, tmp_path: Path, versions: int = 2) -> None:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
    for seed in range(versions):
        await push(client, "iris", linear(tmp_path / f"v{seed}.onnx", seed=seed).read_bytes())


async def register_iris_worker(client: Any) -> rpb.Worker:
    """A worker serving iris on 127.0.0.1:9001 with a 30 s lease."""
    reply = await client.RegisterWorker(
        rpb.RegisterWorkerRequest(
            worker=rpb.Worker(address="127.0.0.1:9001", models=["iris"], capacity=4),
            lease_duration=Duration(seconds=30),
        )
    )
    return reply.worker  # type: ignore[no-any-return]


async def next_kind(call: object, kind: int, within: float = 10) -> rpb.WatchResponse:
    """Read responses until one of `kind` arrives (skipping progress)."""

    async def read() -> rpb.WatchResponse:
        while True:
            response = await call.read()  # type: ignore[attr-defined]
            if response.kind == kind:
                return response  # type: ignore[no-any-return]

    return await asyncio.wait_for(read(), within)


async def test_snapshot_then_changes(registry: RunningRegistry, tmp_path: Path) -> None:
    await setup_iris(registry, tmp_path)
    client = registry.client()
    await client.UpdateRollout(rollout((1, 100)))
    call = client.Watch(rpb.WatchRequest(since_revision=0))
    snapshot = await next_kind(call, KIND.KIND_SNAPSHOT)
    assert snapshot.snapshot_complete
    kinds = sorted(e.WhichOneof("resource") for e in snapshot.events)
    # The admin is told credentials (as workers and gateways are): its own token's.
    assert kinds == ["credential", "model", "rollout", "version", "version"]
    [credential] = [e.credential for e in snapshot.events if e.HasField("credential")]
    assert credential.role == rpb.ROLE_ADMIN and len(credential.secret_sha256) == 64
    assert credential.secret_sha256 == hashlib.sha256(registry.admin_token.encode()).hexdigest()
    rollout_event = next(e for e in snapshot.events if e.HasField("rollout"))
    assert [t.version for t in rollout_event.rollout.targets] == [1]

    updated = (await client.UpdateRollout(rollout((1, 90), (2, 10)))).rollout
    change = await next_kind(call, KIND.KIND_EVENTS)
    assert change.revision == updated.revision > snapshot.revision
    [event] = change.events
    assert event.type == rpb.WatchEvent.TYPE_PUT and event.resource_name == "models/iris/rollout"
    assert [(t.version, t.percent) for t in event.rollout.targets] == [(1, 90), (2, 10)]
    call.cancel()


async def test_credentials_reach_data_plane_watchers_only(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """Token digests go to worker and gateway watchers (and admins), never to a viewer;
    a new token and a revocation arrive as credential events."""
    viewer = registry.client(await registry.token(rpb.ROLE_VIEWER))
    gateway = registry.client(await registry.token(rpb.ROLE_GATEWAY))
    seen = viewer.Watch(rpb.WatchRequest())
    told = gateway.Watch(rpb.WatchRequest())
    for call in (seen, told):
        await next_kind(call, KIND.KIND_SNAPSHOT)
    made = await registry.client().CreateToken(
        rpb.CreateTokenRequest(display_name="app", role=rpb.ROLE_CLIENT)
    )
    await registry.client().RevokeToken(rpb.RevokeTokenRequest(name=made.token.name))
    events: list[rpb.WatchEvent] = []
    while len(events) < 2:
        events += (await next_kind(told, KIND.KIND_EVENTS)).events
    assert [(e.credential.name, e.credential.revoked) for e in events] == [
        (made.token.name, False),
        (made.token.name, True),
    ]
    assert events[0].credential.secret_sha256 == hashlib.sha256(made.secret.encode()).hexdigest()
    assert made.secret not in str(events)
    # The viewer's feed moved past both revisions with no credential in it.
    last = events[-1].revision
    while True:
        response = await seen.read()
        assert all(not e.HasField("credential") for e in response.events)
        if response.revision >= last:
            break
    for call in (seen, told):
        call.cancel()


async def test_resume_misses_nothing_and_repeats_nothing(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    await setup_iris(registry, tmp_path)
    client = registry.client()
    call = client.Watch(rpb.WatchRequest(since_revision=0))
    last = (await next_kind(call, KIND.KIND_SNAPSHOT)).revision
    written: list[int] = []
    seen: list[int] = []
    for percent in (10, 20):
        written.append(
            (await client.UpdateRollout(rollout((1, 100 - percent), (2, percent)))).rollout.revision
        )
    while len(seen) < 2:
        response = await next_kind(call, KIND.KIND_EVENTS)
        seen += [e.revision for e in response.events]
        last = response.revision
    call.cancel()
    # Changes while disconnected, then resume from the last revision seen.
    for percent in (30, 40, 50):
        written.append(
            (await client.UpdateRollout(rollout((1, 100 - percent), (2, percent)))).rollout.revision
        )
    call = client.Watch(rpb.WatchRequest(since_revision=last))
    while len(seen) < 5:
        response = await asyncio.wait_for(call.read(), 10)
        assert response.kind != KIND.KIND_SNAPSHOT
        seen += [e.revision for e in response.events]
    assert seen == written
    percents = []
    written.append((await client.UpdateRollout(rollout((2, 100)))).rollout.revision)
    response = await next_kind(call, KIND.KIND_EVENTS)
    percents = [(t.version, t.percent) for t in response.events[0].rollout.targets]
    assert response.revision == written[-1] and percents == [(2, 100)]
    call.cancel()


async def test_progress_messages_when_idle(registry: RunningRegistry) -> None:
    call = registry.client().Watch(
        rpb.WatchRequest(since_revision=0, progress_interval=Duration(nanos=100_000_000))
    )
    snapshot = await next_kind(call, KIND.KIND_SNAPSHOT)
    progress = await next_kind(call, KIND.KIND_PROGRESS, within=5)
    assert progress.revision >= snapshot.revision and not progress.events
    call.cancel()


async def test_compacted_revision_gets_a_snapshot(db_url: str, tmp_path: Path) -> None:
    settings = registry_settings(db_url, tmp_path, watch_keep_revisions=10)
    async with running_registry(settings) as registry:
        await setup_iris(registry, tmp_path)
        client = registry.client()
        for percent in range(1, 16):
            await client.UpdateRollout(rollout((1, 100 - percent), (2, percent)))
        floor = await registry.registry.store.compact(10)
        assert floor > 2
        call = client.Watch(rpb.WatchRequest(since_revision=2))
        first = await asyncio.wait_for(call.read(), 10)
        assert first.kind == KIND.KIND_SNAPSHOT
        rollout_event = next(e for e in first.events if e.HasField("rollout"))
        assert [t.percent for t in rollout_event.rollout.targets] == [85, 15]
        call.cancel()


async def test_worker_lease_heartbeat_and_expiry(db_url: str, tmp_path: Path) -> None:
    settings = registry_settings(db_url, tmp_path, lease_seconds=0.5)
    async with running_registry(settings) as registry:
        await setup_iris(registry, tmp_path, versions=1)
        client = registry.client()
        call = client.Watch(rpb.WatchRequest(since_revision=0))
        await next_kind(call, KIND.KIND_SNAPSHOT)
        worker = await register_iris_worker(client)
        joined = await next_kind(call, KIND.KIND_EVENTS)
        assert joined.events[0].worker.name == worker.name

        ready = rpb.WorkerVersionState(model="iris", version=1, state=rpb.VERSION_LOAD_STATE_READY)
        await client.Heartbeat(rpb.HeartbeatRequest(name=worker.name, versions=[ready]))
        state = await next_kind(call, KIND.KIND_EVENTS)
        assert state.events[0].worker.versions[0].state == rpb.VERSION_LOAD_STATE_READY
        listed = (await client.ListWorkers(rpb.ListWorkersRequest())).workers
        assert [w.name for w in listed] == [worker.name]

        # A second worker with a short lease that stops heartbeating is removed.
        short = (
            await client.RegisterWorker(
                rpb.RegisterWorkerRequest(worker=rpb.Worker(address="127.0.0.1:9002"))
            )
        ).worker
        await next_kind(call, KIND.KIND_EVENTS)
        gone = await next_kind(call, KIND.KIND_EVENTS, within=15)
        assert gone.events[0].type == rpb.WatchEvent.TYPE_DELETE
        assert gone.events[0].resource_name == short.name

        async def only_first() -> bool:
            workers = (await client.ListWorkers(rpb.ListWorkersRequest())).workers
            return [w.name for w in workers] == [worker.name]

        await async_wait_until(only_first, 5, "expired worker to leave the list")
        with pytest.raises(Exception, match="lease expired"):
            await client.Heartbeat(rpb.HeartbeatRequest(name=short.name))
        call.cancel()


async def test_a_quiet_heartbeat_renews_the_lease_and_nothing_else(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """A heartbeat that reports what the registry already knows moves the lease and
    nothing else: no revision, no audit event, no watch event (fleet-scale heartbeats
    would otherwise wake every watcher); one that reports a change still publishes it."""
    await setup_iris(registry, tmp_path, versions=1)
    client = registry.client()
    store = registry.registry.store
    worker = await register_iris_worker(client)
    ready = rpb.WorkerVersionState(model="iris", version=1, state=rpb.VERSION_LOAD_STATE_READY)
    await client.Heartbeat(rpb.HeartbeatRequest(name=worker.name, versions=[ready]))
    revision, _ = await store.revision()
    audited = len((await client.ListAuditEvents(rpb.ListAuditEventsRequest())).events)
    call = client.Watch(rpb.WatchRequest(since_revision=revision))
    lease = (await client.ListWorkers(rpb.ListWorkersRequest())).workers[0].lease_expire_time

    for _ in range(20):
        reply = await client.Heartbeat(
            rpb.HeartbeatRequest(name=worker.name, versions=[ready], observed_revision=revision)
        )
    assert (await store.revision())[0] == revision
    assert len((await client.ListAuditEvents(rpb.ListAuditEventsRequest())).events) == audited
    (listed,) = (await client.ListWorkers(rpb.ListWorkersRequest())).workers
    assert listed.lease_expire_time.ToMicroseconds() > lease.ToMicroseconds()
    assert listed.lease_expire_time == reply.lease_expire_time

    # The watcher's first event is the next real change, a state the worker reports.
    failed = rpb.WorkerVersionState(
        model="iris", version=1, state=rpb.VERSION_LOAD_STATE_FAILED, error="out of memory"
    )
    await client.Heartbeat(
        rpb.HeartbeatRequest(name=worker.name, versions=[failed], observed_revision=revision)
    )
    changed = await next_kind(call, KIND.KIND_EVENTS)
    assert changed.events[0].revision == revision + 1
    assert changed.events[0].worker.versions[0].error == "out of memory"
    call.cancel()


async def test_one_read_of_a_change_serves_every_watcher(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """Watchers at the same point of the feed are handed one cached read of a change
    (the same message), not a database read each; one resuming from an older revision
    is served from the cache too."""
    await setup_iris(registry, tmp_path)
    client = registry.client()
    feed = registry.registry.feed
    calls = [client.Watch(rpb.WatchRequest(since_revision=0)) for _ in range(12)]
    for call in calls:
        await next_kind(call, KIND.KIND_SNAPSHOT)
    reads, fallback = feed.reads, feed.fallback_reads
    await client.UpdateRollout(rollout((1, 70), (2, 30)))
    seen = [await next_kind(call, KIND.KIND_EVENTS) for call in calls]
    assert {s.revision for s in seen} == {seen[0].revision}
    assert all([t.percent for t in s.events[0].rollout.targets] == [70, 30] for s in seen)
    # One read for the change (a second at most, for a revision after it), not twelve.
    assert feed.reads - reads <= 2, feed.reads - reads
    assert feed.fallback_reads == fallback
    for call in calls:
        call.cancel()

    # Resuming just before the change: from the cache, no database read of its own.
    resumed = client.Watch(rpb.WatchRequest(since_revision=seen[0].revision - 1))
    again = await next_kind(resumed, KIND.KIND_EVENTS)
    assert [t.percent for t in again.events[0].rollout.targets] == [70, 30]
    assert feed.fallback_reads == fallback
    resumed.cancel()


async def test_history_is_kept_by_time_as_well_as_by_count(db_url: str, tmp_path: Path) -> None:
    """A revision goes only once it is older than --watch-keep-seconds and not among the
    newest --watch-keep-revisions: a watcher resuming from one not yet that old resumes,
    no snapshot."""
    settings = registry_settings(db_url, tmp_path, watch_keep_revisions=10)
    async with running_registry(settings) as registry:
        store = registry.registry.store
        compaction = FeedCompaction(store, keep_revisions=10, keep_seconds=300)
        await setup_iris(registry, tmp_path)
        client = registry.client()
        assert await compaction.tick(1000.0) is None  # nothing is 300 s old yet
        marked = (await store.revision())[0]
        for percent in range(1, 31):
            await client.UpdateRollout(rollout((1, 100 - percent), (2, percent)))
        # 30 revisions later, 299 s on: only the count would drop the marked revision.
        assert await compaction.tick(1299.0) is None
        call = client.Watch(rpb.WatchRequest(since_revision=marked))
        first = await next_kind(call, KIND.KIND_EVENTS)
        assert first.revision > marked  # resumed: the changes since, not a snapshot
        call.cancel()
        # 300 s after the first mark: history through it goes, the newest 10 stay.
        now = (await store.revision())[0]
        floor = await compaction.tick(1300.0)
        assert floor == marked < now - 10
        call = client.Watch(rpb.WatchRequest(since_revision=marked - 1))
        assert (await asyncio.wait_for(call.read(), 10)).kind == KIND.KIND_SNAPSHOT
        call.cancel()
        # The next tick 300 s later drops all but the newest 10.
        assert await compaction.tick(1600.0) == now - 10
