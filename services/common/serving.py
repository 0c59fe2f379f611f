"""Make before break: the split a rollout is served with, given where its versions are READY.

A target's share goes to its version only once that version is READY on some worker
that takes clients' requests. Until then the share stays with the rollout's
`fallback` — the split that served when the rollout was written — spread over those
of its versions still READY, in their proportions; without one, it goes to the other
READY targets; failing that, nowhere (those requests fail). The registry (to record
the fallback and explain held shares), the gateway (to route) and a worker (for
callers that name no version) all follow this one rule.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass

Shares = tuple[tuple[int, float], ...]  # (version, percent)


@dataclass(frozen=True)
class Held:
    """A target's share that its version cannot take yet, and who answers for it."""

    version: int
    percent: float
    held_on: tuple[int, ...]  # empty: nothing can answer for it


@dataclass(frozen=True)
class Split:
    shares: Shares  # over READY versions only; sums to 100 unless a share found no taker
    held: tuple[Held, ...] = ()

    @property
    def redistributed(self) -> bool:
        """Some target's share is answered by other versions than its own."""
        return bool(self.held)


def split(
    targets: Iterable[tuple[int, float]],
    fallback: Iterable[tuple[int, float]],
    ready: Container[int],
) -> Split:
    wanted = [(v, p) for v, p in targets if p > 0]
    live = [(v, p) for v, p in wanted if v in ready]
    backups = [(v, p) for v, p in fallback if p > 0 and v in ready]
    shares: dict[int, float] = {}
    for version, percent in live:
        shares[version] = shares.get(version, 0.0) + percent
    held = []
    for version, percent in wanted:
        if version in ready:
            continue
        takers = backups or live
        total = sum(p for _, p in takers)
        for taker, weight in takers:
            shares[taker] = shares.get(taker, 0.0) + percent * weight / total
        held.append(Held(version, percent, tuple(v for v, _ in takers)))
    return Split(tuple(shares.items()), tuple(held))


def settled(targets: Iterable[tuple[int, float]], ready: Container[int]) -> bool:
    """Every target with traffic is READY somewhere: nothing needs a fallback."""
    return all(v in ready for v, p in targets if p > 0)
