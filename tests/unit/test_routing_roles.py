"""Which workers the routing table offers clients' requests and shadow copies, by role."""

from __future__ import annotations

import pytest

from services.common.errors import Unavailable
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.dataplane.watcher import Picture
from services.gateway.routing import RoutingTable

READY = rpb.VERSION_LOAD_STATE_READY


def picture(*workers: tuple[str, int, list[int]]) -> Picture:
    """Model m: v1 the target, v2 a mirror; workers as (name, role, READY versions)."""
    p = Picture()
    p.rollouts["m"] = rpb.Rollout(
        name="models/m/rollout",
        targets=[rpb.TrafficTarget(version=1, percent=100)],
        mirrors=[rpb.TrafficTarget(version=2, percent=100)],
    )
    for name, role, versions in workers:
        p.workers[name] = rpb.Worker(
            name=f"workers/{name}",
            address=f"{name}:9001",
            role=role,
            versions=[rpb.WorkerVersionState(model="m", version=v, state=READY) for v in versions],
        )
    return p


def test_copies_prefer_mirror_workers_and_clients_never_reach_them() -> None:
    table = RoutingTable.build(
        picture(
            ("all", rpb.WORKER_ROLE_ALL, [1, 2]),
            ("old", rpb.WORKER_ROLE_UNSPECIFIED, [1, 2]),  # predates roles: ALL
            ("mirror", rpb.WORKER_ROLE_MIRROR, [2]),
            ("primary", rpb.WORKER_ROLE_PRIMARY, [1]),
        ),
        1,
    )
    assert set(table.workers("m", 1)) == {"all:9001", "old:9001", "primary:9001"}
    assert set(table.workers("m", 2)) == {"all:9001", "old:9001"}
    assert table.workers("m", 2, shadow=True) == ("mirror:9001",)


def test_without_a_mirror_worker_copies_go_to_workers_of_role_all_only() -> None:
    table = RoutingTable.build(
        picture(("all", rpb.WORKER_ROLE_ALL, [1, 2]), ("primary", rpb.WORKER_ROLE_PRIMARY, [1, 2])),
        1,
    )
    assert table.workers("m", 2, shadow=True) == ("all:9001",)


def test_a_version_only_mirror_workers_hold_cannot_be_pinned() -> None:
    table = RoutingTable.build(
        picture(("primary", rpb.WORKER_ROLE_PRIMARY, [1]), ("mirror", rpb.WORKER_ROLE_MIRROR, [2])),
        1,
    )
    with pytest.raises(Unavailable, match=r"version 2 is not READY on any worker \(only on mirror"):
        table.choose("m", "2", None)
    assert table.choose("m", "", None).version == 1
