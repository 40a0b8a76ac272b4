"""Figures of ``pos2distill analyze`` (matplotlib, Agg, written atomically like every plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import matplotlib.colors

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pos2distill.plots import write_figure  # noqa: E402


def heatmaps(panels: Sequence[tuple[str, Sequence[Sequence[float]]]], path: str | Path, *,
             rows: Sequence[str], columns: Sequence[str], xlabel: str, ylabel: str,
             title: str = "", colorbar: str = "", log: bool = False) -> Path:
    """Side-by-side heat maps sharing one colour scale: ``(panel title, matrix)`` each, matrix
    rows labelled ``rows`` (top to bottom), columns ``columns``. ``log``: a logarithmic colour
    scale (values <= 0 drawn as the smallest positive one)."""
    values = [v for _, m in panels for row in m for v in row if v is not None]
    positive = [v for v in values if v > 0]
    if log and positive:
        norm = matplotlib.colors.LogNorm(vmin=min(positive), vmax=max(positive))
    else:
        norm = matplotlib.colors.Normalize(vmin=0, vmax=max(values, default=1) or 1)
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(0.3 * len(columns) * n + 2.5 * n + 1,
                                            0.28 * len(rows) + 2), dpi=110, squeeze=False,
                             layout="constrained")
    image = None
    for ax, (name, matrix) in zip(axes[0], panels):
        data = [[(v if v is not None else float("nan")) for v in row] for row in matrix]
        if log and positive:
            data = [[max(v, min(positive)) if v == v else v for v in row] for row in data]
        image = ax.imshow(data, aspect="auto", cmap="viridis", norm=norm, interpolation="nearest")
        ax.set_xticks(range(len(columns)), columns, fontsize=7,
                      rotation=90 if len(columns) > 20 else 0)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label=colorbar, shrink=0.9)
    if title:
        fig.suptitle(title)
    return write_figure(fig, path, tight=False)


def stacked_bars(series: Mapping[str, Sequence[float]], path: str | Path, *,
                 labels: Sequence[str], xlabel: str, ylabel: str, title: str = "") -> Path:
    """One bar per label, stacked from ``series`` (name -> one value per label), in order."""
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(labels) + 2), 4), dpi=110)
    bottom = [0.0] * len(labels)
    for name, values in series.items():
        ax.bar(range(len(labels)), values, bottom=bottom, label=name, width=0.8)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 16 else 0, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(1.0, max(bottom, default=1.0)) * 1.02)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return write_figure(fig, path, tight=False)


def grouped_bars(series: Mapping[str, Sequence[float | None]], path: str | Path, *,
                 labels: Sequence[str], xlabel: str, ylabel: str, title: str = "",
                 baseline: float | None = None, log: bool = False) -> Path:
    """Bars side by side per label, one per series; ``baseline`` draws a horizontal line;
    ``log``: a logarithmic value axis."""
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(labels) + 2), 4), dpi=110)
    for s, (name, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (s + 0.5) for i in range(len(labels))]
        ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=name)
    if baseline is not None:
        ax.axhline(baseline, color="grey", lw=0.8, ls="--")
    if log:
        ax.set_yscale("log")
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 16 else 0, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return write_figure(fig, path, tight=False)
