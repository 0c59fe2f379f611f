"""Registry: the change feed at fleet scale: filtered watches (models, kinds), progress
while everything changing is filtered out, compaction never costing a connected
watcher a snapshot, and a watcher that stops reading ended without slowing others."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.dataplane.watcher import Picture, RegistryWatcher
from services.registry.watch import FeedCompaction
from tests.helpers.models import linear
from tests.helpers.registry import (
    Client,
    RunningRegistry,
    auth,
    registry_settings,
    running_registry,
)
from tests.helpers.wait import async_wait_until
from tests.integration.test_registry_catalog import push
from tests.integration.test_registry_rollouts import rollout
from tests.integration.test_registry_watch import next_kind, register_iris_worker, setup_iris

KIND = rpb.WatchResponse
WK = rpb.WatchRequest.Kind
TENTH = Duration(nanos=100_000_000)


def wine_rollout(percent_v1: int = 100) -> rpb.UpdateRolloutRequest:
    targets = [rpb.TrafficTarget(version=1, percent=percent_v1)]
    if percent_v1 < 100:
        targets.append(rpb.TrafficTarget(version=2, percent=100 - percent_v1))
    return rpb.UpdateRolloutRequest(
        rollout=rpb.Rollout(name="models/wine/rollout", targets=targets)
    )


async def setup_wine(registry: RunningRegistry, tmp_path: Path) -> None:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="wine"))
    for seed in (7, 8):
        await push(client, "wine", linear(tmp_path / f"w{seed}.onnx", seed=seed).read_bytes())
    await client.UpdateRollout(wine_rollout())


async def snapshot_names(call: Any) -> tuple[int, list[str]]:
    names: list[str] = []
    while True:
        response = await asyncio.wait_for(call.read(), 10)
        assert response.kind == KIND.KIND_SNAPSHOT
        names += [e.resource_name for e in response.events]
        if response.snapshot_complete:
            return response.revision, sorted(names)


async def names_through(call: Any, revision: int) -> list[str]:
    """Resource names of the events `call` sends until it has seen `revision`."""
    names: list[str] = []
    while True:
        response = await asyncio.wait_for(call.read(), 10)
        assert response.kind != KIND.KIND_SNAPSHOT
        names += [e.resource_name for e in response.events]
        if response.revision >= revision:
            return names


async def test_filters_narrow_the_snapshot_and_every_event(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """`models` narrows models, versions and rollouts (not workers, not credentials);
    `kinds` narrows by kind; revisions stay global, so each watcher reaches the newest
    one (by a progress message when the last change was filtered out)."""
    client = registry.client()
    await setup_iris(registry, tmp_path)
    await setup_wine(registry, tmp_path)
    await client.UpdateRollout(rollout((1, 100)))
    worker = await register_iris_worker(client)
    iris = client.Watch(rpb.WatchRequest(models=["models/iris"], progress_interval=TENTH))
    rollouts = client.Watch(rpb.WatchRequest(kinds=[WK.KIND_ROLLOUT], progress_interval=TENTH))
    wine = client.Watch(
        rpb.WatchRequest(
            models=["wine"], kinds=[WK.KIND_VERSION, WK.KIND_WORKER], progress_interval=TENTH
        )
    )
    revision, names = await snapshot_names(iris)
    credential = next(n for n in names if n.startswith("tokens/"))
    assert names == sorted(
        [
            "models/iris",
            "models/iris/versions/1",
            "models/iris/versions/2",
            "models/iris/rollout",
            worker.name,
            credential,
        ]
    )
    assert (await snapshot_names(rollouts))[1] == ["models/iris/rollout", "models/wine/rollout"]
    assert (await snapshot_names(wine))[1] == sorted(
        ["models/wine/versions/1", "models/wine/versions/2", worker.name]
    )

    await client.UpdateRollout(wine_rollout(50))
    await client.UpdateRollout(rollout((1, 50), (2, 50)))
    # A model no rollout serves, deleted: its DELETE takes its versions and rollout with it.
    await client.CreateModel(rpb.CreateModelRequest(model_id="tmp"))
    await client.DeleteModel(rpb.DeleteModelRequest(name="models/tmp"))
    await client.UpdateRollout(wine_rollout(100))
    newest = (await registry.registry.store.revision())[0]
    assert await names_through(iris, newest) == ["models/iris/rollout"]
    assert await names_through(rollouts, newest) == [
        "models/wine/rollout",
        "models/iris/rollout",
        "models/tmp",
        "models/wine/rollout",
    ]
    assert await names_through(wine, newest) == []
    for call in (iris, rollouts, wine):
        call.cancel()
    assert revision < newest


async def test_a_filter_that_is_not_understood_is_refused(registry: RunningRegistry) -> None:
    cases: list[tuple[rpb.WatchRequest, grpc.StatusCode, str]] = [
        (
            rpb.WatchRequest(kinds=[WK.KIND_ROLLOUT, 99]),  # type: ignore[list-item]
            grpc.StatusCode.INVALID_ARGUMENT,
            "kinds[1]: unknown kind 99; expected one of KIND_MODEL, KIND_VERSION",
        ),
        (
            rpb.WatchRequest(kinds=[WK.KIND_UNSPECIFIED]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "kinds[0]: unknown kind 0; expected one of",
        ),
        (
            rpb.WatchRequest(models=["models/iris", "models/iris/versions/1"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "models[1]: expected a model name like 'models/iris' (or 'iris'), got "
            "'models/iris/versions/1'",
        ),
        (
            rpb.WatchRequest(models=["no spaces"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "models[0]: expected a model name like 'models/iris' (or 'iris'), got 'no spaces'",
        ),
    ]
    viewer = registry.client(await registry.token(rpb.ROLE_VIEWER))
    for request, code, message in cases:
        with pytest.raises(aio.AioRpcError) as failed:
            await asyncio.wait_for(viewer.Watch(request).read(), 10)
        assert failed.value.code() == code, request
        assert message in (failed.value.details() or ""), failed.value.details()
    # A viewer may watch, but is not told token digests, and asking for them is refused.
    with pytest.raises(aio.AioRpcError) as failed:
        await asyncio.wait_for(
            viewer.Watch(rpb.WatchRequest(kinds=[WK.KIND_CREDENTIAL])).read(), 10
        )
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "KIND_CREDENTIAL is sent only to watchers whose role is worker, gateway or admin" in (
        failed.value.details() or ""
    )


async def test_watchers_with_one_filter_share_one_cut_of_each_read(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    await setup_iris(registry, tmp_path)
    await setup_wine(registry, tmp_path)
    client = registry.client()
    feed = registry.registry.feed
    calls = [client.Watch(rpb.WatchRequest(models=["iris"])) for _ in range(10)]
    for call in calls:
        await snapshot_names(call)
    reads, fallback = feed.reads, feed.fallback_reads
    written = (await client.UpdateRollout(rollout((1, 60), (2, 40)))).rollout.revision
    for call in calls:
        assert await names_through(call, written) == ["models/iris/rollout"]
    assert feed.reads - reads <= 2 and feed.fallback_reads == fallback
    # The read of that change was cut once for the ten (the feed's cache, looked into).
    [read] = [b for b in feed._batches if b.after < written <= b.upto]
    assert len(read.cuts) == 1
    for call in calls:
        call.cancel()


async def test_progress_while_busy_with_other_models_and_no_snapshot_while_connected(
    db_url: str, tmp_path: Path
) -> None:
    """A watcher of iris, idle while wine changes all the time, gets progress messages at
    its interval (not only once the whole feed is quiet), each at the global revision;
    compaction by time runs meanwhile and never costs it a snapshot."""
    settings = registry_settings(db_url, tmp_path, watch_keep_revisions=10)
    async with running_registry(settings) as registry:
        await setup_iris(registry, tmp_path)
        await setup_wine(registry, tmp_path)
        client = registry.client()
        store = registry.registry.store
        compaction = FeedCompaction(store, keep_revisions=10, keep_seconds=0.0)
        call = client.Watch(
            rpb.WatchRequest(models=["iris"], progress_interval=Duration(nanos=200_000_000))
        )
        start, _ = await snapshot_names(call)
        got: list[tuple[float, rpb.WatchResponse]] = []

        async def follow() -> None:
            while (response := await call.read()) is not aio.EOF:
                got.append((time.monotonic(), response))

        following = asyncio.create_task(follow())
        began = time.monotonic()
        updates = 0
        while time.monotonic() - began < 2.5 or updates < 30:
            await client.UpdateRollout(wine_rollout(100 - updates % 2 * 50))
            await compaction.tick(time.monotonic())
            updates += 1
        newest = (await store.revision())[0]
        await async_wait_until(
            lambda: got and got[-1][1].revision >= newest,
            5,
            "the watcher to reach the newest revision",
        )
        ended = time.monotonic()
        following.cancel()
        assert (await store.revision())[1] > start + updates // 2  # compacted past its start
        assert all(r.kind == KIND.KIND_PROGRESS and not r.events for _, r in got), [
            r.kind for _, r in got
        ]
        revisions = [r.revision for _, r in got]
        assert revisions == sorted(revisions) and revisions[0] > start
        # At 0.2 s, while wine changed about every few ms: a message at least every ~second.
        times = [began] + [t for t, _ in got]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < 1.5, gaps
        assert len(got) >= (ended - began) / 0.2 / 3, (len(got), ended - began)


def stuck_client(registry: RunningRegistry) -> tuple[aio.Channel, Client]:
    """A client on a connection of its own with a small HTTP/2 window (16 KB, no BDP
    growth): flow control is real, it only fills after fewer changes."""
    channel = aio.insecure_channel(
        f"127.0.0.1:{registry.port}",
        options=[
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", 16384),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )
    return channel, Client(rpb_grpc.RegistryServiceStub(channel), registry.admin_token)


async def test_a_watcher_that_stops_reading_is_ended_and_holds_up_no_one(
    db_url: str, tmp_path: Path
) -> None:
    settings = registry_settings(db_url, tmp_path, watch_slow_seconds=2.0)
    async with running_registry(settings) as registry:
        await setup_iris(registry, tmp_path)
        client = registry.client()
        feed = registry.registry.feed
        channel, stuck_one = stuck_client(registry)
        stuck = stuck_one.Watch(rpb.WatchRequest())  # never read until the end
        live = client.Watch(rpb.WatchRequest())
        await snapshot_names(live)
        await async_wait_until(lambda: feed._watching == 2, 10, "both watches to start")
        seen: dict[int, float] = {}

        async def follow() -> None:
            while (response := await live.read()) is not aio.EOF:
                for event in response.events:
                    seen[event.revision] = time.monotonic()

        following = asyncio.create_task(follow())
        written: list[int] = []
        delays: list[float] = []
        after_end = 0
        while after_end < 20:
            assert len(written) < 3000, "the stuck watcher was never ended"
            percent = len(written) % 100
            written.append(
                (
                    await client.UpdateRollout(rollout((1, 100 - percent), (2, percent)))
                ).rollout.revision
            )
            wrote = time.monotonic()
            await async_wait_until(lambda: written[-1] in seen, 5, "the live watcher to see it")
            delays.append(seen[written[-1]] - wrote)
            after_end += feed.slow_watchers.ended > 0
        following.cancel()
        assert feed.slow_watchers.ended == 1
        assert set(written) <= set(seen)  # every change, none missed
        delays.sort()
        # Never held up by the stuck one's write (that waits 2 s before it is ended).
        assert delays[-1] < 2.0, delays[-5:]
        # Its handler is gone while its client still reads nothing: no task, no queue held.
        await async_wait_until(lambda: feed._watching == 1, 5, "the stuck watch to end")

        # Its client, reading at last, gets what was sent, then the status, and resumes.
        revisions: list[int] = []
        with pytest.raises(aio.AioRpcError) as failed:
            async for response in stuck:
                revisions.append(response.revision)
        assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = failed.value.details() or ""
        assert "watcher fell behind: its stream went unread for 2 s" in details, details
        assert f"this stream's last message has revision {revisions[-1]}" in details, details
        assert revisions == sorted(revisions) and len(revisions) > 10
        resumed = stuck_one.Watch(rpb.WatchRequest(since_revision=revisions[-1]))
        first = await next_kind(resumed, KIND.KIND_EVENTS)
        assert first.events[0].revision == revisions[-1] + 1
        resumed.cancel()
        await channel.close()


async def test_a_workers_watch_sees_its_models_and_reports_only_what_it_applied(
    db_url: str, tmp_path: Path
) -> None:
    """The data plane's watcher as a worker runs it (its models; rollouts, versions,
    credentials): no other model, no workers; progress moves `revision` past other
    models' changes, `applied_revision` (what its heartbeats report as seen, so they
    stay quiet renewals) moves only with a change it applied."""
    settings = registry_settings(db_url, tmp_path, watch_progress_seconds=0.1)
    async with running_registry(settings) as registry:
        await setup_iris(registry, tmp_path)
        await setup_wine(registry, tmp_path)
        client = registry.client()
        await register_iris_worker(client)
        changes = 0

        def changed(_: Picture) -> None:
            nonlocal changes
            changes += 1

        watcher = RegistryWatcher(
            client.stub,
            auth(registry.admin_token),
            changed,
            models=["iris"],
            kinds=[WK.KIND_ROLLOUT, WK.KIND_VERSION, WK.KIND_CREDENTIAL],
        )
        running = asyncio.create_task(watcher.run())
        try:
            await asyncio.wait_for(watcher.synced.wait(), 10)
            picture = watcher.picture
            assert sorted(picture.versions) == [("iris", 1), ("iris", 2)]
            assert not picture.rollouts and not picture.workers and not picture.models
            assert picture.credentials  # the admin token's
            synced_at = watcher.applied_revision
            for percent in (50, 100, 50):
                await client.UpdateRollout(wine_rollout(percent))
            newest = (await registry.registry.store.revision())[0]
            await async_wait_until(lambda: watcher.revision >= newest, 10, "progress past wine")
            assert watcher.applied_revision == synced_at and changes == 1
            written = (await client.UpdateRollout(rollout((1, 100)))).rollout.revision
            await async_wait_until(lambda: "iris" in watcher.picture.rollouts, 10, "iris rollout")
            assert watcher.applied_revision == written and list(watcher.picture.rollouts) == [
                "iris"
            ]
        finally:
            running.cancel()
