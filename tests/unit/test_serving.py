"""Make before break: the split a rollout is served with, and the gateway's table built on it."""

from __future__ import annotations

import pytest

from services.common import serving
from services.common.errors import Unavailable
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.dataplane.watcher import Picture
from services.gateway.routing import RoutingTable

READY = rpb.VERSION_LOAD_STATE_READY


def test_a_target_not_ready_leaves_its_share_with_the_fallback() -> None:
    split = serving.split([(2, 100)], [(1, 100)], ready={1})
    assert split.shares == ((1, 100.0),)
    (held,) = split.held
    assert (held.version, held.percent, held.held_on) == (2, 100, (1,))
    assert split.redistributed


def test_a_held_share_is_spread_over_the_fallback_in_its_proportions() -> None:
    split = serving.split([(1, 70), (3, 30)], [(1, 50), (2, 50)], ready={1, 2})
    assert dict(split.shares) == {1: 85.0, 2: 15.0}


def test_fallback_versions_gone_too_then_the_other_targets_take_it() -> None:
    split = serving.split([(1, 90), (2, 10)], [(3, 100)], ready={1})
    assert split.shares == ((1, 100.0),)
    assert split.held[0].held_on == (1,)


def test_nothing_ready_nothing_served() -> None:
    split = serving.split([(2, 100)], [(1, 100)], ready=set())
    assert split.shares == () and split.held[0].held_on == ()


def test_settled_needs_every_target_with_traffic() -> None:
    assert serving.settled([(1, 90), (2, 10), (3, 0)], {1, 2})
    assert not serving.settled([(1, 90), (2, 10)], {1})


def _picture(targets: list[tuple[int, int]], fallback: list[tuple[int, float]]) -> Picture:
    picture = Picture()
    picture.rollouts["m"] = rpb.Rollout(
        name="models/m/rollout",
        targets=[rpb.TrafficTarget(version=v, percent=p) for v, p in targets],
        fallback=[rpb.ServingShare(version=v, percent=p) for v, p in fallback],
    )
    return picture


def _worker(name: str, *ready: int) -> rpb.Worker:
    return rpb.Worker(
        name=f"workers/{name}",
        address=f"{name}:1",
        versions=[rpb.WorkerVersionState(model="m", version=v, state=READY) for v in ready],
    )


def test_the_table_routes_a_held_share_to_the_fallback() -> None:
    picture = _picture([(2, 100)], [(1, 100)])
    picture.workers["workers/a"] = _worker("a", 1)
    table = RoutingTable.build(picture, 1)
    choice = table.choose("m", "", None)
    assert (choice.version, choice.redistributed) == (1, True)
    assert table.workers("m", 1) == ("a:1",)


def test_without_a_fallback_a_target_not_ready_fails_with_why() -> None:
    picture = _picture([(2, 100)], [])
    picture.workers["workers/a"] = _worker("a", 1)
    with pytest.raises(Unavailable, match=r"no READY version on any worker \(targets: v2 100%\)"):
        RoutingTable.build(picture, 1).choose("m", "", None)


def test_lingering_workers_answer_only_for_what_nobody_else_holds() -> None:
    picture = _picture([(1, 50), (2, 50)], [])
    picture.workers["workers/a"] = _worker("a", 1)
    table = RoutingTable.build(picture, 1, lingering=[_worker("gone", 1, 2)])
    assert table.workers("m", 1) == ("a:1",)
    assert table.workers("m", 2) == ("gone:1",)
