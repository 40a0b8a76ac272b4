"""Plots (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pos2distill.runinfo import atomic_path  # noqa: E402


def _save(fig, ax, path: str | Path, *, title: str, legend: bool) -> Path:
    """Title and legend on ``ax``, then ``fig`` written to ``path`` (folders made) and closed."""
    if title:
        ax.set_title(title)
    if legend:
        ax.legend()
    return write_figure(fig, path)


def write_figure(fig, path: str | Path, *, tight: bool = True, bbox_inches: str | None = None
                 ) -> Path:
    """``fig`` to ``path`` through a temporary file (:func:`~pos2distill.runinfo.atomic_path`), so
    a full disk never leaves a zero-byte image under the final name; the figure is closed.
    ``tight`` runs ``tight_layout`` first; ``bbox_inches`` goes to ``savefig``."""
    if tight:
        fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, bbox_inches=bbox_inches)
    finally:
        plt.close(fig)
    return Path(path)


def plot_accuracy_by_configuration(series: Mapping[str, Sequence[tuple[str, float, float]]],
                                   path: str | Path, *, title: str = "",
                                   xlabel: str = "hop document positions (1-based: first, second)"
                                   ) -> Path:
    """Grouped bars: one group per configuration label (e.g. ``"1,2"``), one bar per series of
    ``(label, accuracy, stderr)`` points (same labels in the same order), ±1 s.e. error bars."""
    labels = [k for k, _, _ in next(iter(series.values()))]
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(labels) + 2), 4), dpi=110)
    for s, (name, points) in enumerate(series.items()):
        xs = [i - 0.4 + width * (s + 0.5) for i in range(len(points))]
        ax.bar(xs, [a for _, a, _ in points], width, yerr=[e for _, _, e in points], capsize=2,
               label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 16 else 0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("exact match")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, ax, path, title=title, legend=len(series) > 1)


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
    return _save(fig, ax, path, title=title, legend=len(series) > 1)


def plot_slots(series: Mapping[str, Sequence[tuple[tuple[int, ...], float, float]]],
               path: str | Path, *, kind: str, title: str = "") -> Path:
    """One series of ``(slot, score, error)`` points per name: ``kind`` ``line`` draws one-position
    slots on a numeric axis (:func:`plot_accuracy_by_position`), ``bars`` draws a bar group per
    slot labelled 1-based (:func:`plot_accuracy_by_configuration`)."""
    if kind == "line":
        return plot_accuracy_by_position(
            {name: [(slot[0], a, e) for slot, a, e in pts] for name, pts in series.items()},
            path, title=title)
    if kind == "bars":
        return plot_accuracy_by_configuration(
            {name: [(",".join(str(p + 1) for p in slot), a, e) for slot, a, e in pts]
             for name, pts in series.items()}, path, title=title)
    raise ValueError(f"plot kind {kind!r} is not line or bars")


def plot_curves(panels: Sequence[tuple[str, Mapping[str, Sequence[tuple[float, float, float]]]]],
                path: str | Path, *, xlabel: str, title: str = "", log_x: bool = False) -> Path:
    """Side-by-side panels of ``(ylabel, {label: [(x, y, err), ...]})``: one line per label with
    ±err bars (e.g. mean ± std over seeds). Used for accuracy against K, training size and
    context length."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), dpi=110,
                             squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
        for label, points in series.items():
            points = sorted(points)
            ax.errorbar([x for x, _, _ in points], [y for _, y, _ in points],
                        yerr=[e for _, _, e in points], marker="o", ms=4, capsize=3, label=label)
        if log_x:
            ax.set_xscale("symlog", linthresh=1)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return write_figure(fig, path)


def plot_heatmaps(panels: Sequence[tuple[str, Mapping]], path: str | Path, *,
                  title: str = "") -> Path:
    """Side-by-side heatmaps of accuracy by gold depth (rows, the start of the context on top) ×
    number of documents (columns), one per ``(panel title, heatmap)`` (the dict of
    :func:`pos2distill.stages.probe.depth_heatmap`); every cell is written out, empty cells are
    grey, and all panels share one colour scale from 0 to 1."""
    import numpy as np

    width = max(2.4, 0.75 * max(len(h["n_documents"]) for _, h in panels))   # inches per panel
    fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=True, dpi=110,
                             figsize=(2.2 + width * len(panels), 4.2))
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
    image = None
    for ax, (name, heatmap) in zip(axes[0], panels):
        grid = np.array([[np.nan if a is None else a for a in row] for row in heatmap["accuracy"]],
                        dtype=float)                                   # (bins, counts)
        image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for (i, j), a in np.ndenumerate(grid):
            if not np.isnan(a):
                ax.text(j, i, f"{a:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(grid.shape[1]), [str(n) for n in heatmap["n_documents"]])
        ax.set_yticks(range(grid.shape[0]), [f"{lo:g}–{hi:g}" for lo, hi in heatmap["depth_bins"]])
        ax.set_xlabel("documents")
        if name:
            ax.set_title(name)
    axes[0][0].set_ylabel("gold depth (% of the documents)")
    fig.colorbar(image, ax=list(axes[0]), label="accuracy", fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    # tight_layout cannot place a colourbar shared by several axes; the bounding box fits all.
    return write_figure(fig, path, tight=False, bbox_inches="tight")


#: Colours of the judge's verdicts (shown-first, shown-second, tie, unparsed).
_VERDICT_COLOURS = {"first": "#4C72B0", "second": "#DD8452", "tie": "#8C8C8C",
                    "unparsed": "#D0D0D0"}


def plot_verdicts(series: Mapping[str, Mapping], path: str | Path, *, title: str = "") -> Path:
    """Stacked bars of a judge's verdicts by answer order: per series (e.g. before, after) and
    order (candidate 1 shown first, candidate 2 shown first), the shares of verdicts for the
    answer shown first, the one shown second, a tie, and unparsed verdicts. On balanced labels an
    unbiased judge splits about evenly in both orders; a "first" part that stays tall in both
    orders is primacy, a tall "second" part recency."""
    bars = [(f"{name + ': ' if name else ''}cand. {e['slot'][0] + 1} first", e)
            for name, summary in series.items() for e in summary["by_slot"]]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(bars) + 2.5), 4), dpi=110)
    bottom = [0.0] * len(bars)
    for key, colour in _VERDICT_COLOURS.items():
        heights = [e[key] for _, e in bars]
        ax.bar(range(len(bars)), heights, 0.6, bottom=bottom, color=colour,
               label=f"{key} shown" if key in ("first", "second") else key)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
    ax.set_ylabel("share of verdicts")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return _save(fig, ax, path, title=title, legend=False)
