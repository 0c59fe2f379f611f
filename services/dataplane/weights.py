"""Choosing among weighted versions (a rollout's targets)."""

from __future__ import annotations

from collections.abc import Sequence


def pick(weighted: Sequence[tuple[int, float]], point: float) -> int:
    """The option under `point`, a position in [0, 100) spread over the weights' total."""
    total = sum(weight for _, weight in weighted)
    scaled = point * total / 100
    for option, weight in weighted:
        scaled -= weight
        if scaled < 0:
            return option
    return weighted[-1][0]
