"""What `liveml demo online` measured, and what it may claim: the probes' scores,
the phases, the verdict (every claim checked), the summary text and the plot."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.cli import demo_plot
from services.common.gen.liveml.training.v1 import training_pb2 as tpb

ONLINE, STATIC = "online", "static"
RECOVERED = 0.85  # served accuracy the online model must get back to after a drift
DECAY = 0.10  # the static model must lose at least this much after each drift
PLOT, SUMMARY = "online-demo.png", "online-demo.txt"


@dataclass
class Record:
    started: float = field(default_factory=time.monotonic)
    scores: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)  # t, right, n
    failures: list[str] = field(default_factory=list)
    requests: int = 0
    ingested: int = 0
    served: bool = False  # the online model answers through the gateway
    drifts: list[float] = field(default_factory=list)  # seconds since started
    phases: list[dict[str, Any]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> float:
        return time.monotonic() - self.started

    def accuracy(self, model: str, since: float, until: float | None = None) -> float | None:
        end = self.now() if until is None else until
        rows = [(r, n) for t, r, n in self.scores.get(model, []) if since <= t <= end]
        total = sum(n for _, n in rows)
        return sum(r for r, _ in rows) / total if total else None


def verdict(record: Record, status: tpb.LearnerStatus | None) -> tuple[list[str], bool]:
    """The summary's lines, and whether everything it claims held."""
    phases = record.phases
    held = len(phases) == 3 and all(ONLINE in p and STATIC in p for p in phases)
    lines = ["liveml demo online: a concept that drifts twice, an online and a static model", ""]
    for p in phases:
        lines.append(
            f"concept {p['concept']} ({p['start']:.1f}-{p.get('end', record.now()):.1f} s): "
            f"online {_fmt(p.get(ONLINE))}, static {_fmt(p.get(STATIC))}"
            + (
                f"; online at {RECOVERED:g} after {p['recovered']:.1f} s"
                if "recovered" in p
                else ""
            )
        )
    lines.append("")
    recovered = held and all("recovered" in p and p[ONLINE] >= RECOVERED for p in phases[1:])
    decayed = held and all(phases[i][STATIC] <= phases[i - 1][STATIC] - DECAY for i in (1, 2))
    failed = len(record.failures)
    lines += [
        _claim(recovered, f"the online model recovered to >= {RECOVERED:g} after each drift"),
        _claim(decayed, f"the static model decayed by >= {DECAY:g} after each drift"),
        _claim(
            failed == 0 and record.requests > 0,
            f"{failed} of {record.requests} client requests failed",
        ),
    ]
    if status is not None:
        drift_at = ", ".join(str(s) for s in status.drift_sequences) or "none"
        lines += [
            "",
            f"learner: {status.applied} examples applied, last published "
            f"v{status.published_version}, drift detector fired at sequences {drift_at}, "
            f"quarantined {sum(status.quarantined.values())}",
        ]
    lines.append(f"{record.ingested} examples ingested through the gateway")
    if record.failures:
        lines.append(f"first failures: {record.failures[:3]}")
    return lines, recovered and decayed and failed == 0 and record.requests > 0


def _fmt(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def _claim(ok: bool, text: str) -> str:
    return f"{'HELD' if ok else 'FAILED'}: {text}"


def write_outputs(folder: Path, record: Record, lines: list[str]) -> tuple[Path | None, list[str]]:
    """The plot when matplotlib is there (else the summary says how to get it), and the
    summary; returns the plot's path and the summary's lines."""
    plot: Path | None = folder / PLOT
    if demo_plot.available():
        assert plot is not None
        series = {m: _buckets(record, m) for m in (ONLINE, STATIC)}
        demo_plot.draw(
            plot,
            {
                "online (learns the stream)": series[ONLINE],
                "static (batch, concept A)": series[STATIC],
            },
            [(t, f"drift {i + 1}") for i, t in enumerate(record.drifts)],
            [(p["start"], f"concept {p['concept']}") for p in record.phases],
            "served accuracy: an online model tracks two abrupt drifts, a static one decays",
        )
        lines = [*lines, f"plot: {plot}"]
    else:
        plot = None
        lines = [*lines, f"no plot: matplotlib is not installed ({demo_plot.INSTALL})"]
    (folder / SUMMARY).write_text("\n".join(lines) + "\n")
    return plot, lines


def _buckets(record: Record, model: str, width: float = 1.0) -> list[tuple[float, float]]:
    sums: dict[int, tuple[int, int]] = {}
    for t, right, n in record.scores.get(model, []):
        b = int(t // width)
        r, total = sums.get(b, (0, 0))
        sums[b] = (r + right, total + n)
    return [((b + 0.5) * width, r / n) for b, (r, n) in sorted(sums.items()) if n]
