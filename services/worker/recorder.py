"""One version's record of the requests it answered, fed by one call per request.

Three things count a version's answered requests: its V2 ModelStatistics and
Prometheus series (services/worker/stats.py), the registry's windows (requests,
errors and latency per report interval, services/common/windows.py; registry mode
only) and the drift histograms of its inputs and outputs (the windows' FeatureCounts,
once the loader tracks the version). The executor calls `answered` or `failed` once
per request and this feeds all three, so none is forgotten on one path or counted
twice on another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy.typing as npt

from services.common.windows import WindowBook
from services.worker.batcher import rows
from services.worker.runtime import Arrays
from services.worker.stats import VersionStats


class Recorder:
    def __init__(self, model: str, version: int, book: WindowBook | None) -> None:
        self.model = model
        self.version = version
        self.key = (model, version)
        self.book = book
        self.stats = VersionStats(model, version)
        # Per batch, not per request: the batcher (or a lone run) reports each run.
        self.batch = self.stats.batch

    def answered(
        self,
        inputs: Arrays,
        names: Sequence[str],
        outputs: Sequence[npt.NDArray[Any]],
        seconds: float,
    ) -> None:
        """A request answered in `seconds`; `names` are its outputs' names, in order."""
        self.stats.request(rows(inputs), seconds)
        book = self.book
        if book is None:
            return
        book.request(self.model, self.version, seconds)
        # Looked up each time: the loader starts counting a version's features only
        # once it is READY, and replaces the counts when a reference arrives.
        features = book.features.get(self.key)
        if features is not None:
            features.observe(inputs, dict(zip(names, outputs, strict=True)))

    def failed(self, status: str, seconds: float) -> None:
        """A request refused or failed with `status` (a gRPC code's name)."""
        self.stats.failure(status, seconds)
        if self.book is not None:
            # The windows' latency histogram is of answers only.
            self.book.request(self.model, self.version, 0.0, status)

    def forget(self, current: bool) -> None:
        """The version is gone: drop its metric series, and its feature counts when it
        is still the one held under its number (`current`): the counts are the
        number's, and a version loaded again under it while this one drained keeps them."""
        self.stats.forget()
        if current and self.book is not None:
            self.book.features.pop(self.key, None)
