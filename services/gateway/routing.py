"""The gateway's routing table: which version answers a request, and on which worker.

Built from the registry's picture (rollouts, and the workers with their version
states) and replaced as a whole on every change, so a request always sees one
consistent table. Without a pinned version the rollout's weights decide — by a
stable hash of the sticky key when the request carries one, else at random. A
target with no READY worker gets no traffic; its share goes to the others and is
reported as redistributed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from services.common import versions as versions_
from services.common import weights
from services.common.errors import NotFound, Unavailable
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.watcher import Picture

READY = rpb.VERSION_LOAD_STATE_READY


@dataclass(frozen=True)
class ModelRoute:
    targets: tuple[tuple[int, int], ...]  # (version, percent)
    mirrors: tuple[tuple[int, int], ...]
    pinned: frozenset[int]
    sticky_key: str
    ready: dict[int, tuple[str, ...]]  # version -> addresses of workers where it is READY

    def known(self, version: int) -> bool:
        return (
            version in self.pinned
            or any(v == version for v, _ in self.targets)
            or any(v == version for v, _ in self.mirrors)
        )


@dataclass(frozen=True)
class Choice:
    version: int
    redistributed: bool  # the weights had to skip a target with no READY worker


def bucket(key: str) -> float:
    """A stable position in [0, 100) for a sticky key."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


@dataclass(frozen=True)
class RoutingTable:
    models: dict[str, ModelRoute] = field(default_factory=dict)
    revision: int = 0
    forward: dict[str, str] = field(default_factory=dict)  # address -> framed listener's

    @classmethod
    def build(cls, picture: Picture, revision: int) -> RoutingTable:
        ready: dict[str, dict[int, list[str]]] = {}
        for worker in sorted(picture.workers.values(), key=lambda w: w.name):
            for state in worker.versions:
                if state.state == READY:
                    ready.setdefault(state.model, {}).setdefault(state.version, []).append(
                        worker.address
                    )
        models = {}
        for model, rollout in picture.rollouts.items():
            models[model] = ModelRoute(
                targets=tuple((t.version, t.percent) for t in rollout.targets),
                mirrors=tuple((m.version, m.percent) for m in rollout.mirrors),
                pinned=frozenset(rollout.pinned),
                sticky_key=rollout.sticky_key,
                ready={v: tuple(a) for v, a in ready.get(model, {}).items()},
            )
        forward = {w.address: w.forward_address for w in picture.workers.values()}
        return cls(models, revision, {a: f for a, f in forward.items() if f})

    def route(self, model: str) -> ModelRoute:
        found = self.models.get(model)
        if found is None or not (found.targets or found.pinned):
            raise NotFound(f"Request for unknown model: '{model}' is not found")
        return found

    def choose(self, model: str, version: str, sticky: str | None) -> Choice:
        route = self.route(model)
        if version:
            number = versions_.number(version)
            if not route.known(number):
                raise NotFound(
                    f"Request for unknown model: '{model}' version {number} is not found "
                    "(not a target, mirror or pinned version of its rollout)"
                )
            if not route.ready.get(number):
                raise Unavailable(f"model '{model}' version {number} is not READY on any worker")
            return Choice(number, False)
        live = [(v, p) for v, p in route.targets if p > 0 and route.ready.get(v)]
        if not live:
            raise Unavailable(f"model '{model}' has no READY version on any worker")
        redistributed = len(live) < len([t for t in route.targets if t[1] > 0])
        if len(live) == 1:
            return Choice(live[0][0], redistributed)
        point = bucket(sticky) if sticky else random.random() * 100
        return Choice(weights.pick(live, point), redistributed)

    def workers(self, model: str, version: int) -> tuple[str, ...]:
        route = self.models.get(model)
        return route.ready.get(version, ()) if route else ()
