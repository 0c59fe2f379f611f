"""Registry: a heartbeat whose only news is a newer observed revision is held in memory.

It takes no revision and no audit event (after a rollout every worker sends one), and
still counts: a rollout's fallback is released once a worker that saw the rollout
reports its targets READY — settled once, by settler.Settler. A held observed revision
a SIGKILLed registry had not written is lost with it (the fallback stays), and is
honoured again when the worker reports it to the restarted registry.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from tests.helpers.models import linear
from tests.helpers.procs import Proc
from tests.helpers.registry import RunningRegistry, stream, upload
from tests.helpers.wait import async_wait_until
from tests.integration.test_registry_catalog import push
from tests.integration.test_registry_leases import Registry

READY = rpb.VERSION_LOAD_STATE_READY


def states(*versions: int) -> list[rpb.WorkerVersionState]:
    return [rpb.WorkerVersionState(model="m", version=v, state=READY) for v in versions]


def target(version: int) -> rpb.UpdateRolloutRequest:
    return rpb.UpdateRolloutRequest(
        rollout=rpb.Rollout(
            name="models/m/rollout", targets=[rpb.TrafficTarget(version=version, percent=100)]
        )
    )


def db_observed(db: Path, worker: str) -> int:
    """The observed revision the database holds for `worker`."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (proto,) = conn.execute(
            "SELECT proto FROM workers WHERE id = ?", (worker.split("/")[-1],)
        ).fetchone()
    return rpb.Worker.FromString(proto).observed_revision


async def test_an_observed_revision_alone_is_no_revision_and_still_settles(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    client = registry.client()
    await client.CreateModel(rpb.CreateModelRequest(model_id="m"))
    for seed in (1, 2):
        await push(client, "m", linear(tmp_path / f"v{seed}.onnx", seed=seed).read_bytes())
    first = (await client.UpdateRollout(target(1))).rollout
    worker = (
        await client.RegisterWorker(
            rpb.RegisterWorkerRequest(
                worker=rpb.Worker(
                    address="127.0.0.1:9001", versions=states(1), observed_revision=first.revision
                )
            )
        )
    ).worker
    swapped = (await client.UpdateRollout(target(2))).rollout
    assert swapped.fallback
    seen = first.revision

    async def beat(observed: int) -> None:
        await client.Heartbeat(
            rpb.HeartbeatRequest(
                name=worker.name, versions=states(1, 2), observed_revision=observed
            )
        )

    await beat(seen)  # v2 READY: a change (published), from before the swap: not settled
    await beat(seen)  # the same: a renewal, read in the database (now known in memory)

    async def revision() -> int:
        call = client.Watch(rpb.WatchRequest(since_revision=0))
        reply = await call.read()
        call.cancel()
        return int(reply.revision)

    async def audited() -> list[str]:
        reply = await client.ListAuditEvents(rpb.ListAuditEventsRequest(page_size=1000))
        return [e.action for e in reply.events]

    before, actions = await revision(), await audited()
    # A newer observed revision, short of the swap's: held in memory, no revision, no
    # audit event; ListWorkers shows it.
    await beat(swapped.revision - 1)
    assert await revision() == before
    assert await audited() == actions
    (listed,) = (await client.ListWorkers(rpb.ListWorkersRequest())).workers
    assert listed.observed_revision == swapped.revision - 1
    view = await client.GetRollout(rpb.GetRolloutRequest(name="models/m/rollout"))
    assert view.rollout.fallback

    # The swap's revision: still no heartbeat audited, and the rollout settles.
    await beat(swapped.revision)

    async def settled() -> bool:
        view = await client.GetRollout(rpb.GetRolloutRequest(name="models/m/rollout"))
        return not view.rollout.fallback

    await async_wait_until(settled, 10, "the rollout to settle")
    after = await audited()
    assert len(after) == len(actions) + 1 and after.count("SettleRollout") == 1, after
    assert after.count("Heartbeat") == actions.count("Heartbeat")


async def test_a_held_observed_revision_lost_in_a_sigkill_is_honoured_when_reported_again(
    tmp_path: Path,
) -> None:
    db = tmp_path / "registry.db"
    # Nothing is flushed while the first registry lives: what it holds dies with it.
    first = Registry(tmp_path, LIVEML_LEASE_FLUSH_SECONDS="3600")
    second: Registry | None = None
    procs: list[Proc] = [first.proc]
    try:
        stub, md = first.stub, first.md
        await stub.CreateModel(rpb.CreateModelRequest(model_id="m"), metadata=md)
        for seed in (1, 2):
            data = linear(tmp_path / f"v{seed}.onnx", seed=seed).read_bytes()
            await stub.CreateVersion(stream(upload("models/m", data)), metadata=md)
        seen = (await stub.UpdateRollout(target(1), metadata=md)).rollout.revision
        worker = (
            await stub.RegisterWorker(
                rpb.RegisterWorkerRequest(
                    worker=rpb.Worker(
                        address="127.0.0.1:9001", versions=states(1), observed_revision=seen
                    )
                ),
                metadata=md,
            )
        ).worker
        swapped = (await stub.UpdateRollout(target(2), metadata=md)).rollout
        assert swapped.fallback

        async def beat(registry: Registry, observed: int) -> None:
            await registry.stub.Heartbeat(
                rpb.HeartbeatRequest(
                    name=worker.name, versions=states(1, 2), observed_revision=observed
                ),
                metadata=registry.md,
                timeout=10,
            )

        await beat(first, seen)  # v2 READY (written), seen before the swap
        await beat(first, seen)  # known in memory from here
        revision, audited = await first.revision(), await first.audited()
        await beat(first, swapped.revision - 1)  # held, not written
        assert (await first.revision(), await first.audited()) == (revision, audited)

        first.proc.popen.kill()  # SIGKILL: the held observed revision is lost with it
        first.proc.popen.wait(10)
        assert db_observed(db, worker.name) == seen

        second = Registry(tmp_path, LIVEML_LEASE_FLUSH_SECONDS="3600")
        procs.append(second.proc)
        rollout = await second.stub.GetRollout(
            rpb.GetRolloutRequest(name="models/m/rollout"), metadata=second.md
        )
        assert rollout.rollout.fallback  # nothing the worker saw was taken for granted
        (listed,) = (
            await second.stub.ListWorkers(rpb.ListWorkersRequest(), metadata=second.md)
        ).workers
        assert listed.observed_revision == seen

        audited = await second.audited()
        # The restarted registry hears it again, with the swap's revision: a renewal
        # (the worker as read at start, its database behind), and the rollout settles.
        await beat(second, swapped.revision)
        registry = second

        async def settled() -> bool:
            view = await registry.stub.GetRollout(
                rpb.GetRolloutRequest(name="models/m/rollout"), metadata=registry.md
            )
            return not view.rollout.fallback

        await async_wait_until(settled, 10, "the rollout to settle after the restart")
        assert await second.audited() == audited + 1  # SettleRollout, no Heartbeat
        # Held in the restarted registry's memory (written with its next flush).
        (listed,) = (
            await second.stub.ListWorkers(rpb.ListWorkersRequest(), metadata=second.md)
        ).workers
        assert listed.observed_revision == swapped.revision
        assert db_observed(db, worker.name) == seen
    finally:
        for registry_ in (first, second):
            if registry_ is not None:
                await registry_.close()
        for proc in procs:
            proc.stop()
