"""Per-version windows: what a gateway or worker saw of each version, sent to the registry.

The data plane counts into plain in-memory tallies (no locks, no label lookups: the
counting happens on the event loop), and a reporter drains them every interval into
`Window` messages for `ReportWindows`. A report that fails is kept and sent with the
next one, up to a bound, so a registry restart loses no data the controller needs.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from grpc import aio

from services.common import drift
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc

log = logging.getLogger(__name__)

LATENCY_BOUNDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
MAX_PENDING = 2000  # windows kept while the registry is unreachable


class _Binner:
    """Histograms of one tensor's features on fixed bins, counted in one vectorised step."""

    def __init__(self, names: list[str], edges: list[list[float]], width: int) -> None:
        self.width = width  # of the tensors it counts (it may count fewer features)
        self.names = names
        self.edges = edges
        sizes = [len(e) - 1 for e in edges]
        width = max(len(e) - 2 for e in edges)
        # Padding with +inf keeps every feature's index within its own bins.
        self.inner = np.full((len(edges), max(width, 1)), np.inf)
        for i, e in enumerate(edges):
            self.inner[i, : len(e) - 2] = e[1:-1]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.sizes = sizes
        self.counts = np.zeros(sum(sizes), dtype=np.int64)

    def add(self, array: npt.NDArray[Any]) -> None:
        whole = array.reshape(array.shape[0], -1)
        if whole.shape[1] != self.width:
            return  # a tensor of another width than the one the bins were made for
        flat = whole[:, : len(self.names)].astype(np.float64)
        # Infinities would pass the +inf padding into the next feature's bins; NaN
        # counts in the first bin.
        flat = np.nan_to_num(flat, nan=-1e300, posinf=1e300, neginf=-1e300)
        index = (self.inner[None, :, :] <= flat[:, :, None]).sum(axis=2) + self.offsets
        self.counts += np.bincount(index.ravel(), minlength=self.counts.size)

    def drain(self) -> list[rpb.FeatureHistogram]:
        out = []
        for name, edges, start, size in zip(
            self.names, self.edges, self.offsets, self.sizes, strict=True
        ):
            counts = self.counts[start : start + size]
            if counts.any():
                out.append(rpb.FeatureHistogram(name=name, bin_edges=edges, counts=counts.tolist()))
        self.counts[:] = 0
        return out


class FeatureCounts:
    """Histograms of one version's input features and outputs, for drift.

    Bins come from the version's reference statistics; without a reference, the first
    `learn_rows` rows choose quantile bins (and the registry keeps that first window as
    the reference). The request path only keeps a reference to each tensor; counting
    happens in one vectorised pass per report, over at most `max_rows` rows per interval
    (a uniform enough sample at higher rates), so drift costs a request well under a
    microsecond.
    """

    def __init__(
        self,
        reference: rpb.ReferenceStatistics | None = None,
        learn_rows: int = 500,
        max_rows: int = 5000,
    ) -> None:
        self.learn_rows = learn_rows
        self.max_rows = max_rows
        self._ref = {
            "inputs": {f.name: list(f.bin_edges) for f in reference.inputs} if reference else {},
            "outputs": {f.name: list(f.bin_edges) for f in reference.outputs} if reference else {},
        }
        self.has_reference = bool(reference and (reference.inputs or reference.outputs))
        self._binners: dict[tuple[str, str], _Binner | None] = {}
        self._learning: dict[tuple[str, str], list[npt.NDArray[Any]]] = {}
        self._pending: dict[tuple[str, str], list[npt.NDArray[Any]]] = {}
        self._rows = 0
        self.skipped = 0

    def observe(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        if self._rows >= self.max_rows:
            self.skipped += 1
            return
        for side, arrays in (("inputs", inputs), ("outputs", outputs)):
            for name, array in arrays.items():
                if array.ndim and array.dtype != object:
                    self._pending.setdefault((side, name), []).append(array)
                    self._rows += array.shape[0] if side == "inputs" else 0

    def _count_pending(self) -> None:
        pending, self._pending, self._rows = self._pending, {}, 0
        for (side, name), arrays in pending.items():
            try:
                merged = [np.concatenate(arrays)] if len(arrays) > 1 else arrays
            except ValueError:  # variable inner dimensions: count them one by one
                merged = arrays
            for array in merged:
                self._add(side, name, array)

    def _add(self, side: str, name: str, array: npt.NDArray[Any]) -> None:
        key = (side, name)
        if key in self._binners:
            binner = self._binners[key]
            if binner is not None:  # None: not numeric, or no reference for it
                binner.add(array)
            return
        features = list(drift.columns(name, array))
        if not features:
            self._binners[key] = None
            return
        if self.has_reference:
            known = self._ref[side]
            names = [n for n, _ in features if n in known]
            if len(names) != len(features):  # a reference that does not describe it
                self._binners[key] = None
                return
            width = array.reshape(array.shape[0], -1).shape[1]
            created = _Binner(names, [known[n] for n in names], width)
            created.add(array)
            self._binners[key] = created
            return
        seen = self._learning.setdefault(key, [])
        whole = np.asarray(array).reshape(array.shape[0], -1)
        if seen and whole.shape[1] != seen[0].shape[1]:
            return  # varying widths: learn the bins from the first width only
        seen.append(whole)
        if sum(len(a) for a in seen) < self.learn_rows:
            return
        rows = np.concatenate(seen)
        del self._learning[key]
        names = [n for n, _ in features]
        edges = [drift.edges_of(rows[:, j]) for j in range(len(names))]
        created = _Binner(names, edges, rows.shape[1])
        created.add(rows)
        self._binners[key] = created

    def drain(self) -> tuple[list[rpb.FeatureHistogram], list[rpb.FeatureHistogram]]:
        self._count_pending()
        sides: dict[str, list[rpb.FeatureHistogram]] = {"inputs": [], "outputs": []}
        for (side, _), binner in self._binners.items():
            if binner is not None:
                sides[side] += binner.drain()
        return sides["inputs"], sides["outputs"]


@dataclass
class Tally:
    """What happened to one version (primary or shadow) since the last report."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    feedback: list[int] = field(default_factory=lambda: [0, 0])  # correct, total
    # group -> [predictions, positive, feedback correct, feedback total]
    groups: dict[str, list[int]] = field(default_factory=dict)

    def group(self, name: str) -> list[int]:
        row = self.groups.get(name)
        if row is None:
            row = self.groups[name] = [0, 0, 0, 0]
        return row


TallyKey = tuple[str, int, bool]  # model, version, shadow


class WindowBook:
    """The tallies of one process, drained into `Window` messages."""

    def __init__(self, source: int, reporter: str) -> None:
        self.source = source
        self.reporter = reporter
        self.tallies: dict[TallyKey, Tally] = {}
        self.features: dict[tuple[str, int], FeatureCounts] = {}
        self.started = time.time()

    def tally(self, model: str, version: int, shadow: bool = False) -> Tally:
        key = (model, version, shadow)
        found = self.tallies.get(key)
        if found is None:
            found = self.tallies[key] = Tally()
        return found

    def request(
        self, model: str, version: int, seconds: float, error: str = "", shadow: bool = False
    ) -> None:
        tally = self.tally(model, version, shadow)
        tally.requests += 1
        if error:
            tally.errors[error] = tally.errors.get(error, 0) + 1
        else:
            tally.latency[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def drain(self) -> list[rpb.Window]:
        now = time.time()
        tallies, self.tallies = self.tallies, {}
        windows: dict[TallyKey, rpb.Window] = {}
        for (model, version, shadow), t in tallies.items():
            window = self._window(model, version, shadow, now)
            window.requests = t.requests
            window.errors.update(t.errors)
            window.latency.bounds[:] = LATENCY_BOUNDS
            window.latency.counts[:] = t.latency
            window.feedback_correct, window.feedback_total = t.feedback
            for group, (n, positive, ok, total) in sorted(t.groups.items()):
                window.groups.add(
                    group=group,
                    predictions=n,
                    positive=positive,
                    feedback_correct=ok,
                    feedback_total=total,
                )
            windows[(model, version, shadow)] = window
        for (model, version), counts in self.features.items():
            inputs, outputs = counts.drain()
            if inputs or outputs:
                key = (model, version, False)
                window = windows.get(key) or self._window(model, version, False, now)
                window.inputs.extend(inputs)
                window.outputs.extend(outputs)
                windows[key] = window
        self.started = now
        return list(windows.values())

    def _window(self, model: str, version: int, shadow: bool, now: float) -> rpb.Window:
        window = rpb.Window(
            model=model,
            version=version,
            source=self.source,  # type: ignore[arg-type]
            reporter=self.reporter,
            shadow=shadow,
        )
        window.start_time.FromNanoseconds(int(self.started * 1e9))
        window.end_time.FromNanoseconds(int(now * 1e9))
        return window


class Reporter:
    """Sends the book's windows to the registry every `interval` seconds."""

    def __init__(
        self,
        books: Sequence[WindowBook],
        stub: rpb_grpc.RegistryServiceStub,
        metadata: Sequence[tuple[str, str]],
        interval: float,
        before: Callable[[], None] | None = None,
    ) -> None:
        self.books = books
        self.stub = stub
        self.metadata = metadata
        self.interval = interval
        self.before = before
        self.pending: list[rpb.Window] = []
        self.sent = 0

    async def report(self) -> None:
        if self.before is not None:
            self.before()
        for book in self.books:
            self.pending += book.drain()
        del self.pending[: max(0, len(self.pending) - MAX_PENDING)]
        if not self.pending:
            return
        batch = self.pending
        try:
            await self.stub.ReportWindows(
                rpb.ReportWindowsRequest(windows=batch),
                metadata=self.metadata,
                timeout=max(5.0, self.interval),
            )
        except aio.AioRpcError as exc:
            log.warning("reporting %d windows failed: %s", len(batch), exc.details())
            return
        self.pending = self.pending[len(batch) :]
        self.sent += len(batch)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.report()
            except Exception:  # a bad report must not end reporting for good
                log.exception("reporting windows failed")

    async def stop(self) -> None:
        """A last report, so a process that leaves does not take its last window along."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.report()
