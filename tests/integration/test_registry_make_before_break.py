"""Registry: a rollout's fallback (make before break), its settling on confirmed READY
reports, `force`, what GetRollout says is served and held, and leases judged fairly."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from sqlalchemy import update

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.registry import workers
from services.registry.db import WorkerRow
from services.registry.lease_sweep import LeaseSweep
from tests.helpers.models import linear
from tests.helpers.registry import RunningRegistry
from tests.helpers.wait import async_wait_until
from tests.integration.test_registry_catalog import push

READY = rpb.VERSION_LOAD_STATE_READY
FAILED = rpb.VERSION_LOAD_STATE_FAILED


def rollout(*targets: tuple[int, int], force: bool = False) -> rpb.UpdateRolloutRequest:
    return rpb.UpdateRolloutRequest(
        rollout=rpb.Rollout(
            name="models/iris/rollout",
            targets=[rpb.TrafficTarget(version=v, percent=p) for v, p in targets],
        ),
        force=force,
    )


def states(*pairs: tuple[int, int], error: str = "") -> list[rpb.WorkerVersionState]:
    return [rpb.WorkerVersionState(model="iris", version=v, state=s, error=error) for v, s in pairs]


@pytest.fixture
async def iris(registry: RunningRegistry, tmp_path: Path) -> RunningRegistry:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="iris"))
    for seed in range(3):
        await push(client, "iris", linear(tmp_path / f"v{seed}.onnx", seed=seed).read_bytes())
    return registry


async def shown(client: object) -> rpb.GetRolloutResponse:
    reply: rpb.GetRolloutResponse = await client.GetRollout(  # type: ignore[attr-defined]
        rpb.GetRolloutRequest(name="models/iris/rollout")
    )
    return reply


async def settled_view(client: object) -> rpb.GetRolloutResponse | None:
    view = await shown(client)
    return None if view.rollout.fallback else view


async def test_a_share_moves_only_once_a_worker_that_saw_it_reports_ready(
    iris: RunningRegistry,
) -> None:
    client = iris.client()
    first = (await client.UpdateRollout(rollout((1, 100)))).rollout
    assert not first.fallback  # a model's first rollout has nothing to fall back on
    worker = (
        await client.RegisterWorker(
            rpb.RegisterWorkerRequest(
                worker=rpb.Worker(
                    address="127.0.0.1:9001",
                    versions=states((1, READY)),
                    observed_revision=first.revision,
                )
            )
        )
    ).worker
    swapped = (await client.UpdateRollout(rollout((2, 100)))).rollout
    assert [(f.version, f.percent) for f in swapped.fallback] == [(1, 100.0)]
    view = await shown(client)
    assert [(s.version, s.percent) for s in view.serving] == [(1, 100.0)]
    (held,) = view.held
    assert (held.version, held.percent, list(held.held_on)) == (2, 100, [1])
    assert held.reason == "not loaded on any worker"

    # v2 READY, but reported by a worker that had not seen the swap yet: may be stale.
    await client.Heartbeat(
        rpb.HeartbeatRequest(
            name=worker.name,
            versions=states((1, READY), (2, READY)),
            observed_revision=swapped.revision - 1,
        )
    )
    assert (await shown(client)).rollout.fallback
    # The same report from a worker that has seen it settles the rollout (soon after:
    # heartbeats that only report a newer observed revision settle together).
    await client.Heartbeat(
        rpb.HeartbeatRequest(
            name=worker.name,
            versions=states((1, READY), (2, READY)),
            observed_revision=swapped.revision,
        )
    )
    settled = await async_wait_until(
        lambda: settled_view(client), within=10, what="the rollout to settle"
    )
    assert not settled.rollout.fallback and not settled.held
    assert settled.rollout.revision == swapped.revision  # not a new desired state
    assert [(s.version, s.percent) for s in settled.serving] == [(2, 100.0)]
    history = await client.ListRolloutHistory(
        rpb.ListRolloutHistoryRequest(name="models/iris/rollout")
    )
    assert len(history.rollouts) == 2
    events = (await client.ListAuditEvents(rpb.ListAuditEventsRequest(page_size=50))).events
    (settle,) = [e for e in events if e.action == "SettleRollout"]
    assert settle.target == "models/iris/rollout" and '"released":{"1":100.0}' in settle.details


async def test_a_failed_target_is_explained_and_force_breaks_on_purpose(
    iris: RunningRegistry,
) -> None:
    client = iris.client()
    first = (await client.UpdateRollout(rollout((1, 100)))).rollout
    await client.RegisterWorker(
        rpb.RegisterWorkerRequest(
            worker=rpb.Worker(
                name="workers/w1",
                address="127.0.0.1:9001",
                versions=states((1, READY)),
                observed_revision=first.revision,
            )
        )
    )
    swapped = (await client.UpdateRollout(rollout((2, 100)))).rollout
    await client.Heartbeat(
        rpb.HeartbeatRequest(
            name="workers/w1",
            versions=[*states((1, READY)), *states((2, FAILED), error="warm-up failed: boom")],
            observed_revision=swapped.revision,
        )
    )
    (held,) = (await shown(client)).held
    assert held.reason == "FAILED on workers/w1: warm-up failed: boom"
    assert list(held.held_on) == [1]

    # A swap from a held state holds on what actually served, not on the last wish.
    third = (await client.UpdateRollout(rollout((3, 100)))).rollout
    assert [(f.version, f.percent) for f in third.fallback] == [(1, 100.0)]

    forced = (await client.UpdateRollout(rollout((2, 100), force=True))).rollout
    assert not forced.fallback
    view = await shown(client)
    assert not view.serving and list(view.held[0].held_on) == []
    events = (await client.ListAuditEvents(rpb.ListAuditEventsRequest(page_size=50))).events
    assert '"force":true' in events[0].details


async def test_a_lapsed_lease_is_renewed_until_the_sweep_removes_it(
    iris: RunningRegistry,
) -> None:
    # This test sweeps by hand: the registry's own sweep stops first.
    (background,) = [t for t in iris.registry.tasks if t.get_name() == "lease sweep"]
    background.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await background
    client = iris.client()
    worker = (
        await client.RegisterWorker(
            rpb.RegisterWorkerRequest(worker=rpb.Worker(address="127.0.0.1:9001"))
        )
    ).worker
    store = iris.registry.store
    async with store.write_unversioned() as session:
        await session.execute(update(WorkerRow).values(lease_expire_us=1))
    # Lapsed, not yet swept: still a member, and its heartbeat renews it.
    listed = (await client.ListWorkers(rpb.ListWorkersRequest())).workers
    assert [w.name for w in listed] == [worker.name]
    renewed = await client.Heartbeat(rpb.HeartbeatRequest(name=worker.name))
    assert renewed.lease_expire_time.seconds > 1

    sweep = LeaseSweep(store, 1.0)
    # That renewal is held in memory until written (the sweep would count it): from
    # here on the database alone says how the lease stands.
    leases = store.leases
    assert leases is not None
    await leases.flush()

    async def written() -> bool:
        return leases.held(worker.name.split("/")[1]) == 0

    await async_wait_until(written, 10, "the renewal written")
    async with store.write_unversioned() as session:
        await session.execute(update(WorkerRow).values(lease_expire_us=1))
    # A sweep that woke late (the registry itself stalled) renews every lease instead.
    await sweep.sweep(late=2.0, cutoff_us=workers.now_us())
    assert sweep.renewals == 1
    assert [w.name for w in (await client.ListWorkers(rpb.ListWorkersRequest())).workers] == [
        worker.name
    ]
    async with store.write_unversioned() as session:
        await session.execute(update(WorkerRow).values(lease_expire_us=1))
    # A registry behind (its event loop busy 90% of the interval) judges no lease: the
    # lapsed one stays until a sweep finds it keeping up.
    for _ in range(3):
        await sweep.sweep(late=0.0, cutoff_us=workers.now_us(), busy=0.95)
    assert sweep.postponed == 3 and sweep.renewals == 1
    assert [w.name for w in (await client.ListWorkers(rpb.ListWorkersRequest())).workers] == [
        worker.name
    ]
    await sweep.sweep(late=0.0, cutoff_us=workers.now_us(), busy=0.5)
    assert not (await client.ListWorkers(rpb.ListWorkersRequest())).workers
    events = (await client.ListAuditEvents(rpb.ListAuditEventsRequest(page_size=50))).events
    assert [e.action for e in events].count("ExpireWorker") == 1


async def test_a_swap_while_the_registry_sees_nothing_ready_keeps_what_served(
    iris: RunningRegistry,
) -> None:
    """No worker READY in the registry's picture (a lease lapsed under load while the
    worker still answers): the fallback still names what served, for the data plane to
    judge, never nothing."""
    client = iris.client()
    await client.UpdateRollout(rollout((1, 100)))
    swapped = (await client.UpdateRollout(rollout((2, 100)))).rollout
    assert [(f.version, f.percent) for f in swapped.fallback] == [(1, 100.0)]
    # Again before anything was READY: v1 is still what answers, not v2.
    again = (await client.UpdateRollout(rollout((3, 100)))).rollout
    assert [(f.version, f.percent) for f in again.fallback] == [(1, 100.0)]
    forced = (await client.UpdateRollout(rollout((2, 100), force=True))).rollout
    assert not forced.fallback
