"""The gateway's routing table: which version answers a request, and on which worker.

Built from the registry's picture (rollouts, and the workers with their version
states) and replaced as a whole on every change, so a request always sees one
consistent table. Without a pinned version the rollout's split decides — by a
stable hash of the sticky key when the request carries one, else at random. A
target with no READY worker gets no traffic: make before break
(services/common/serving.py), its share stays with the rollout's fallback (the
versions that served it before), else goes to the other targets, and is reported as
redistributed. Shadow copies go to mirror workers when one holds the mirror
version, else to workers of role ALL; mirror workers never answer a client.

Workers that left the registry's picture while their connection still answers
(`lingering`: the registry expired a lease it could not renew, not evidence of a
dead worker) keep answering for versions no other worker holds READY, so a lease
event alone never empties a model's routes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.common import serving
from services.common.errors import NotFound, Unavailable
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.dataplane import versions as versions_
from services.dataplane import weights
from services.dataplane.watcher import Picture

READY = rpb.VERSION_LOAD_STATE_READY
ALL, PRIMARY, MIRROR = rpb.WORKER_ROLE_ALL, rpb.WORKER_ROLE_PRIMARY, rpb.WORKER_ROLE_MIRROR
ROLES = (ALL, PRIMARY, MIRROR)


@dataclass(frozen=True)
class ModelRoute:
    targets: tuple[tuple[int, int], ...]  # (version, percent)
    mirrors: tuple[tuple[int, int], ...]
    pinned: frozenset[int]
    sticky_key: str
    ready: dict[int, tuple[str, ...]]  # version -> workers where it is READY for clients
    # version -> workers for shadow copies: mirror workers holding it READY, else those
    # of role ALL (a primary-only worker never takes a copy)
    shadow: dict[int, tuple[str, ...]] = field(default_factory=dict)
    fallback: tuple[tuple[int, float], ...] = ()
    # What serves now: the targets over READY versions, held shares on the fallback
    # (derived from the fields above).
    split: serving.Split = field(init=False)

    def __post_init__(self) -> None:
        ready = {v for v, workers in self.ready.items() if workers}
        targets = [(v, float(p)) for v, p in self.targets]
        object.__setattr__(self, "split", serving.split(targets, self.fallback, ready))

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
    def build(
        cls, picture: Picture, revision: int, lingering: Iterable[rpb.Worker] = ()
    ) -> RoutingTable:
        # role -> model -> version -> addresses of workers where it is READY
        ready: dict[int, dict[str, dict[int, list[str]]]] = {r: {} for r in ROLES}
        present = sorted(picture.workers.values(), key=lambda w: w.name)
        _add_ready(ready, present, only_missing=False)
        lingering = sorted(lingering, key=lambda w: w.name)
        _add_ready(ready, lingering, only_missing=True)
        models = {}
        for model, rollout in picture.rollouts.items():
            answering = _merge(ready[ALL].get(model, {}), ready[PRIMARY].get(model, {}))
            targets = tuple((t.version, t.percent) for t in rollout.targets)
            fallback = tuple((f.version, f.percent) for f in rollout.fallback)
            models[model] = ModelRoute(
                targets=targets,
                mirrors=tuple((m.version, m.percent) for m in rollout.mirrors),
                pinned=frozenset(rollout.pinned),
                sticky_key=rollout.sticky_key,
                ready=answering,
                shadow={
                    **_merge(ready[ALL].get(model, {})),
                    **_merge(ready[MIRROR].get(model, {})),
                },
                fallback=fallback,
            )
        forward = {w.address: w.forward_address for w in (*present, *lingering)}
        return cls(models, revision, {a: f for a, f in forward.items() if f})

    def route(self, model: str) -> ModelRoute:
        found = self.models.get(model)
        if found is None or not (found.targets or found.pinned):
            raise NotFound(f"Request for unknown model: '{model}' is not found")
        return found

    def known_version(self, model: str, version: str) -> int:
        """The number of a version the request names, if the model's rollout knows it."""
        number = versions_.number(version)
        if not self.route(model).known(number):
            raise NotFound(
                f"Request for unknown model: '{model}' version {number} is not found "
                "(not a target, mirror or pinned version of its rollout)"
            )
        return number

    def choose(self, model: str, version: str, sticky: str | None) -> Choice:
        route = self.route(model)
        if version:
            number = self.known_version(model, version)
            if not route.ready.get(number):
                only = " (only on mirror workers, which take no client's request)"
                raise Unavailable(
                    f"model '{model}' version {number} is not READY on any worker"
                    + (only if route.shadow.get(number) else "")
                )
            return Choice(number, False)
        shares = route.split.shares
        if not shares:
            wanted = ", ".join(f"v{v} {p}%" for v, p in route.targets if p > 0)
            raise Unavailable(
                f"model '{model}' has no READY version on any worker (targets: {wanted})"
            )
        redistributed = route.split.redistributed
        if len(shares) == 1:
            return Choice(shares[0][0], redistributed)
        point = bucket(sticky) if sticky else random.random() * 100
        return Choice(weights.pick(shares, point), redistributed)

    def reachable(self, model: str) -> list[int]:
        """Versions a client can ask for by number: known to the rollout, READY for clients."""
        route = self.models.get(model)
        if route is None:
            return []
        return sorted(v for v, workers in route.ready.items() if workers and route.known(v))

    def workers(self, model: str, version: int, shadow: bool = False) -> tuple[str, ...]:
        route = self.models.get(model)
        if route is None:
            return ()
        return (route.shadow if shadow else route.ready).get(version, ())


def _add_ready(
    ready: dict[int, dict[str, dict[int, list[str]]]],
    workers: Iterable[rpb.Worker],
    only_missing: bool,
) -> None:
    """Add where each worker holds a version READY (`only_missing`: only versions that
    no worker found so far holds READY for the same kind of traffic)."""

    def kind(role: int) -> bool:  # True: takes clients' requests
        return role != MIRROR

    found = {
        (kind(role), model, version)
        for role, models in ready.items()
        for model, versions in models.items()
        for version, addresses in versions.items()
        if addresses and only_missing
    }
    for worker in workers:
        role = worker.role or rpb.WORKER_ROLE_ALL
        for state in worker.versions:
            if state.state != READY or role not in ready:
                continue
            if (kind(role), state.model, state.version) in found:
                continue
            held = ready[role].setdefault(state.model, {})
            held.setdefault(state.version, []).append(worker.address)


def _merge(*held: dict[int, list[str]]) -> dict[int, tuple[str, ...]]:
    merged: dict[int, list[str]] = {}
    for versions in held:
        for version, addresses in versions.items():
            merged.setdefault(version, []).extend(addresses)
    return {v: tuple(a) for v, a in merged.items()}
