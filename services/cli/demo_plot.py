"""The online demo's picture: served accuracy over time of the online and the static
model, the drift points marked — a PNG drawn with matplotlib (Agg, no display).

matplotlib is an optional extra (`pip install 'liveml[plot]'`); without it `draw`
says so and the demo still writes its summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

INSTALL = "pip install 'liveml[plot]'  (or: pip install 'matplotlib>=3.8,<4')"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw(
    path: Path,
    series: dict[str, Sequence[tuple[float, float]]],
    drifts: Sequence[tuple[float, str]],
    phases: Sequence[tuple[float, str]],
    title: str,
) -> None:
    """`series`: name -> (seconds, accuracy) points; `drifts`: (seconds, label) of each
    drift; `phases`: (start seconds, name) of each concept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4.8), dpi=110)
    colours = {"online": "tab:blue", "static": "tab:orange"}
    for name, points in series.items():
        xs = [t for t, _ in points]
        ys = [a for _, a in points]
        axes.plot(xs, ys, label=name, color=colours.get(name.split()[0]), linewidth=1.8)
    for seconds, label in drifts:
        axes.axvline(seconds, color="tab:red", linestyle="--", linewidth=1.2)
        axes.annotate(
            label,
            (seconds, 0.03),
            xytext=(4, 0),
            textcoords="offset points",
            color="tab:red",
            fontsize=9,
        )
    for seconds, name in phases:
        axes.annotate(name, (seconds, 1.02), xytext=(4, 0), textcoords="offset points", fontsize=9)
    axes.set_ylim(0.0, 1.08)
    axes.set_xlabel("seconds since the stream started")
    axes.set_ylabel("served accuracy (through the gateway)")
    axes.set_title(title, fontsize=11)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
