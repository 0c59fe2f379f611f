"""Reported windows: stored as they arrive, pruned by age, summed per version on demand.

Gateways see what clients see (requests, errors, latency, feedback, groups); workers
see the model's inputs and outputs (drift). A summary takes traffic numbers from
gateway windows when any gateway reported for the model, else from worker windows
(clients calling workers directly), and drift from worker windows, so nothing is
counted twice. Errors are split by whose fault they are: only the server's failures
make a version's error rate; a caller's mistakes are counted apart, so one
misbehaving client can neither fail nor pass a canary.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common import drift
from services.common.errors import InvalidArgument
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.windows import LATENCY_BOUNDS
from services.registry import catalog, names, workers
from services.registry.db import VersionRow, WindowRow
from services.registry.store import Tx, now_us

GATEWAY = rpb.WINDOW_SOURCE_GATEWAY
WORKER = rpb.WINDOW_SOURCE_WORKER
# Feedback joined from the event stream: written by the registry's joiner, never reported.
JOINER = rpb.WINDOW_SOURCE_JOINER
# Groups with fewer predictions than this are left out of the fairness gap: their rate
# is noise.
MIN_GROUP_PREDICTIONS = 20
# PSI over ten bins of n samples of an unchanged distribution is about 9/n on average:
# below this many samples a feature's PSI is noise, so it is not reported.
MIN_DRIFT_SAMPLES = 200
# The failures that are the server's (the version's, or the path to it); any other
# status a request ended with was the caller's doing (INVALID_ARGUMENT, NOT_FOUND,
# UNAUTHENTICATED, PERMISSION_DENIED, CANCELLED, FAILED_PRECONDITION, OUT_OF_RANGE...).
SERVER_ERRORS = frozenset(
    {"UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNKNOWN", "DATA_LOSS"}
)


def server_error(code: str) -> bool:
    return code in SERVER_ERRORS


def check(window: rpb.Window) -> None:
    """A reported window is refused whole when any of its numbers could not have been
    counted (negative, more correct than labelled, ...): summed in, it would skew every
    metric and canary decision of its version."""
    if not window.model or window.version <= 0:
        raise InvalidArgument("each window needs a model and a positive version")
    if window.source not in (GATEWAY, WORKER):
        raise InvalidArgument("window source must be WINDOW_SOURCE_GATEWAY or _WORKER")
    names.timestamp(window.start_time, "window.start_time")
    names.timestamp(window.end_time, "window.end_time")
    if window.latency.counts and len(window.latency.counts) != len(window.latency.bounds) + 1:
        raise InvalidArgument("latency histogram needs one more count than bounds")
    names.count(window.requests, "window.requests")
    for code, errors in window.errors.items():
        names.count(errors, f"window.errors[{code!r}]")
    if sum(window.errors.values()) > window.requests:
        raise InvalidArgument(
            f"window.errors add up to {sum(window.errors.values())}, more than "
            f"window.requests ({window.requests})"
        )
    _edges(window.latency.bounds, "window.latency.bounds")
    for c in window.latency.counts:
        names.count(c, "window.latency.counts")
    _outcomes(window.feedback_correct, window.feedback_total, "window.feedback")
    for g in window.groups:
        names.count(g.predictions, f"window.groups[{g.group!r}].predictions")
        if not 0 <= g.positive <= g.predictions:
            raise InvalidArgument(
                f"window.groups[{g.group!r}].positive must be within [0, predictions "
                f"({g.predictions})], got {g.positive}"
            )
        _outcomes(g.feedback_correct, g.feedback_total, f"window.groups[{g.group!r}].feedback")
    for f in (*window.inputs, *window.outputs):
        if len(f.counts) != len(f.bin_edges) - 1:
            raise InvalidArgument(f"feature {f.name!r}: needs one count per bin (edges - 1)")
        _edges(f.bin_edges, f"feature {f.name!r}: bin_edges")
        for c in f.counts:
            names.count(c, f"feature {f.name!r}: counts")


def _outcomes(correct: int, total: int, field: str) -> None:
    names.count(total, f"{field}_total")
    if not 0 <= correct <= total:
        raise InvalidArgument(
            f"{field}_correct must be within [0, {field}_total ({total})], got {correct}"
        )


def _edges(edges: Iterable[float], field: str) -> None:
    values = list(edges)
    if not all(math.isfinite(v) for v in values) or any(
        b <= a for a, b in itertools.pairwise(values)
    ):
        raise InvalidArgument(f"{field} must be finite and strictly ascending")


def identity(window: rpb.Window, data: bytes) -> str | None:
    """A report sent again carries the same bytes (`data`, serialized deterministically);
    None for a window without an end time (the registry stamps those itself, so they
    cannot be recognised)."""
    if not window.end_time.ToMicroseconds():
        return None
    return hashlib.sha256(data).hexdigest()


async def store(session: AsyncSession, reported: Iterable[rpb.Window]) -> int:
    """Store the windows; one already stored (a report retried after its answer was lost)
    is accepted and not stored again. Two copies racing each other both pass this check,
    and the unique key fails the later transaction, which its reporter retries."""
    serialized = [(w, w.SerializeToString(deterministic=True)) for w in reported]
    keyed = [(identity(window, data), window, data) for window, data in serialized]
    keys = {key for key, _, _ in keyed if key is not None}
    seen: set[str | None] = set()
    if keys:
        stored = select(WindowRow.key).where(WindowRow.key.in_(keys))
        seen = set((await session.execute(stored)).scalars())
    for key, window, data in keyed:
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        session.add(
            WindowRow(
                model=window.model,
                version=window.version,
                source=window.source,
                end_us=window.end_time.ToMicroseconds() or now_us(),
                proto=data,
                key=key,
            )
        )
    return len(keyed)


async def prune(session: AsyncSession, keep_seconds: float) -> None:
    await session.execute(delete(WindowRow).where(WindowRow.end_us < now_us() - keep_seconds * 1e6))


async def adopt_reference(tx: Tx, window: rpb.Window) -> bool:
    """A version published without reference statistics takes its first window's."""
    if not (window.inputs or window.outputs):
        return False
    _, row = await catalog.version_row(
        tx.session, names.version_name(window.model, window.version), lock=True
    )
    before = catalog.version_proto(row)
    if before.HasField("reference_statistics"):
        return False
    after = rpb.Version()
    after.CopyFrom(before)
    for side, hists in (("inputs", window.inputs), ("outputs", window.outputs)):
        target = getattr(after.reference_statistics, side)
        for h in hists:
            total = max(1, sum(h.counts))
            target.add(
                name=h.name, bin_edges=h.bin_edges, bin_fractions=[c / total for c in h.counts]
            )
    row.proto = after.SerializeToString()
    tx.put(after, after.name)
    await tx.audit(
        "AdoptReferenceStatistics",
        after.name,
        before,
        after,
        {"from": window.reporter, "features": len(window.inputs) + len(window.outputs)},
    )
    return True


@dataclass
class Sums:
    """One version's windows added up."""

    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    bounds: tuple[float, ...] = LATENCY_BOUNDS
    feedback_correct: int = 0
    feedback_total: int = 0
    groups: dict[str, list[int]] = field(default_factory=dict)
    features: dict[str, tuple[list[float], list[int]]] = field(default_factory=dict)
    start_us: int = 0
    end_us: int = 0

    def add_traffic(self, w: rpb.Window) -> None:
        self.requests += w.requests
        for code, count in w.errors.items():
            if server_error(code):
                self.errors += count
            else:
                self.client_errors += count
        if w.latency.counts:
            if tuple(w.latency.bounds) != self.bounds:
                if not any(self.latency):
                    self.bounds = tuple(w.latency.bounds)
                    self.latency = [0] * (len(self.bounds) + 1)
                else:
                    return  # a reporter with other buckets: its latency cannot be merged
            for i, c in enumerate(w.latency.counts):
                self.latency[i] += c
        self.feedback_correct += w.feedback_correct
        self.feedback_total += w.feedback_total
        for g in w.groups:
            row = self.groups.setdefault(g.group, [0, 0, 0, 0])
            row[0] += g.predictions
            row[1] += g.positive
            row[2] += g.feedback_correct
            row[3] += g.feedback_total

    def add_features(self, w: rpb.Window) -> None:
        for h in (*w.inputs, *w.outputs):
            edges = list(h.bin_edges)
            known = self.features.get(h.name)
            if known is None or known[0] != edges:
                if known is not None and sum(known[1]) >= sum(h.counts):
                    continue  # keep the larger sample when reporters binned differently
                self.features[h.name] = (edges, list(h.counts))
            else:
                self.features[h.name] = (
                    edges,
                    [a + b for a, b in zip(known[1], h.counts, strict=True)],
                )


def quantile(bounds: tuple[float, ...], counts: list[int], q: float) -> float:
    """Like Prometheus' histogram_quantile: linear within the bucket holding the rank."""
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if seen + c >= rank and c > 0:
            if i >= len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i > 0 else 0.0
            return low + (bounds[i] - low) * (rank - seen) / c
        seen += c
    return bounds[-1]


Latency = tuple[tuple[float, ...], list[int]]  # histogram bounds, counts


async def summarize(
    session: AsyncSession,
    model: str,
    since_us: int,
    until_us: int | None = None,
    latency: dict[int, Latency] | None = None,
) -> dict[int, rpb.VersionMetrics]:
    """Per version, the windows of `model` that ended after `since_us` (and into
    `latency`, when given, each version's summed latency histogram)."""
    query = select(WindowRow.source, WindowRow.version, WindowRow.proto).where(
        WindowRow.model == model, WindowRow.end_us > since_us
    )
    if until_us is not None:
        query = query.where(WindowRow.end_us <= until_us)
    rows = (await session.execute(query)).all()
    gateway_reported = any(source == GATEWAY for source, _, _ in rows)
    sums: dict[int, Sums] = {}
    for source, version, proto in rows:
        w = rpb.Window.FromString(proto)
        if w.shadow:
            continue
        s = sums.setdefault(version, Sums())
        start, end = w.start_time.ToMicroseconds(), w.end_time.ToMicroseconds()
        s.start_us = min(s.start_us or start, start)
        s.end_us = max(s.end_us, end)
        if (source == GATEWAY) == gateway_reported or source == JOINER:
            s.add_traffic(w)
        if source == WORKER:
            s.add_features(w)
    if latency is not None:
        latency.update({version: (s.bounds, list(s.latency)) for version, s in sums.items()})
    references = await _references(session, model, sums)
    ready = await ready_workers(session, model)
    out = {}
    for version, s in sums.items():
        out[version] = metrics_of(version, s, references.get(version), ready.get(version, 0))
    for version, count in ready.items():
        if version not in out:
            out[version] = rpb.VersionMetrics(version=version, ready_workers=count)
    return out


def metrics_of(
    version: int, s: Sums, reference: rpb.ReferenceStatistics | None, ready: int
) -> rpb.VersionMetrics:
    judged = s.requests - s.client_errors
    m = rpb.VersionMetrics(
        version=version,
        requests=s.requests,
        errors=s.errors,
        client_errors=s.client_errors,
        error_rate=s.errors / judged if judged > 0 else 0.0,
        p50_seconds=quantile(s.bounds, s.latency, 0.50),
        p99_seconds=quantile(s.bounds, s.latency, 0.99),
        feedback_total=s.feedback_total,
        accuracy=s.feedback_correct / s.feedback_total if s.feedback_total else 0.0,
        ready_workers=ready,
    )
    if s.start_us:
        m.start_time.FromMicroseconds(s.start_us)
        m.end_time.FromMicroseconds(s.end_us)
    if reference is not None:
        expected = {f.name: f for f in (*reference.inputs, *reference.outputs)}
        for name, (edges, counts) in s.features.items():
            ref = expected.get(name)
            if ref is None or not _same_edges(list(ref.bin_edges), edges):
                continue
            if sum(counts) < MIN_DRIFT_SAMPLES:
                continue
            m.drift_psi[name] = drift.psi(list(ref.bin_fractions), counts)
        if m.drift_psi:
            m.worst_feature, m.max_drift_psi = max(m.drift_psi.items(), key=lambda kv: kv[1])
    rates = []
    for group, (n, positive, ok, total) in sorted(s.groups.items()):
        m.groups.add(
            group=group, predictions=n, positive=positive, feedback_correct=ok, feedback_total=total
        )
        if n >= MIN_GROUP_PREDICTIONS:
            rates.append(positive / n)
    m.fairness_gap = max(rates) - min(rates) if len(rates) >= 2 else 0.0
    return m


def _same_edges(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(a, b, strict=True)
    )


async def _references(
    session: AsyncSession, model: str, sums: dict[int, Sums]
) -> dict[int, rpb.ReferenceStatistics]:
    wanted = [v for v, s in sums.items() if s.features]
    if not wanted:
        return {}
    model_row = await catalog.model_row(session, model)
    rows = (
        await session.execute(
            select(VersionRow.number, VersionRow.proto).where(
                VersionRow.model_id == model_row.id, VersionRow.number.in_(wanted)
            )
        )
    ).all()
    out = {}
    for number, proto in rows:
        version = rpb.Version.FromString(proto)
        if version.HasField("reference_statistics"):
            out[number] = version.reference_statistics
    return out


async def ready_workers(session: AsyncSession, model: str) -> dict[int, int]:
    """READY workers per version that take clients' requests (mirror workers do not)."""
    return await workers.ready_counts(session, model)
