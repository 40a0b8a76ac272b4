"""Plots (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy_by_position(series: Mapping[str, Sequence[tuple[int, float, float]]],
                              path: str | Path, *, title: str = "",
                              xlabel: str = "gold document position (1-based)") -> Path:
    """One line per series of ``(position, accuracy, stderr)`` points, with ±1 s.e. bands.
    Positions are 0-based in the data and drawn 1-based."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, points in series.items():
        xs = [p + 1 for p, _, _ in points]
        ys = [a for _, a, _ in points]
        es = [e for _, _, e in points]
        line, = ax.plot(xs, ys, marker="o", ms=3, label=label)
        ax.fill_between(xs, [y - e for y, e in zip(ys, es)], [y + e for y, e in zip(ys, es)],
                        alpha=0.2, color=line.get_color())
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
