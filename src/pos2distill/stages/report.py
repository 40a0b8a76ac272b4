"""``pos2distill report``: before/after tables and plots from two probe outputs of one task.

Two probe folders of several ``--n-documents`` (each with a ``heatmap.json``) are compared count by
count, into ``OUT/n10``, ``OUT/n20``, ... (what ``report`` writes for the two ``n10`` folders), and
their depth × documents heatmaps are drawn side by side in ``OUT/heatmap.png``; ``OUT/report.md``
then holds the heatmaps and every count's table.

When the "after" probe's model folder has a model card written by ``train``
(:mod:`pos2distill.modelcard`), the comparison is added to its results section (replacing that of
an earlier report of the same task, data and number of documents), with its plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pos2distill import modelcard
from pos2distill.config import ReportConfig
from pos2distill.errors import ConfigError
from pos2distill.plots import plot_heatmaps
from pos2distill.runinfo import write_json_atomic, write_text_atomic
from pos2distill.stages.probe import HEATMAP_PLOT, heatmap_table, load_heatmap, load_summary
from pos2distill.tasks import get_task


def main(cfg: ReportConfig) -> dict[str, Any]:
    before, after = load_heatmap(cfg.before), load_heatmap(cfg.after)
    if before is None and after is None:
        result, card = compare(cfg.before, cfg.after, Path(cfg.out), title=cfg.title)
        return {**result, **({"card": card} if card else {})}
    if before is None or after is None:
        several, one = ("--before", "--after") if after is None else ("--after", "--before")
        raise ConfigError(f"{several} holds probes of several --n-documents (a heatmap) and "
                          f"{one} of one; compare one count's folders (e.g. {several} "
                          f"{getattr(cfg, several[2:])}/n20), or probe both with the same counts")
    if before["n_documents"] != after["n_documents"]:
        raise ConfigError(f"--before and --after were probed at different --n-documents "
                          f"({','.join(map(str, before['n_documents']))} vs "
                          f"{','.join(map(str, after['n_documents']))}); probe both with the same")
    return compare_counts(cfg, before, after)


def compare(before_dir: str | Path, after_dir: str | Path, out: Path, *,
            title: str) -> tuple[dict[str, Any], str]:
    """The report of two one-count probe folders into ``out`` (report.md, report.json, plot),
    and the path of the model card it was added to (``""`` for none)."""
    before, after = load_summary(before_dir), load_summary(after_dir)
    if before["task"] != after["task"]:
        raise ConfigError(f"--before and --after are probes of different tasks ({before['task']} "
                          f"vs {after['task']}); compare probes of the same task")
    task = get_task(before["task"])
    cmp = task.compare(before, after)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", cmp)
    write_text_atomic(out / "report.md", task.comparison_table(cmp))
    task.plot_comparison(cmp, out / task.plot_file,
                         title=title or f"{task.metric} by {task.slot_noun}")
    n = after.get("n_documents", "")
    card = add_to_card(after, key=modelcard.result_key(task.name, str(after.get("data")), f"d{n}"),
                       plot=out / task.plot_file, markdown=(
                           f"**{task.name} on `{after.get('data')}`, {n} documents** "
                           f"({after.get('n_per_slot')} questions per {task.slot_noun}): "
                           f"before = `{before.get('model')}`, after = this model.\n\n"
                           + task.comparison_table(cmp)))
    return {"report": str(out / "report.md"), "plot": str(out / task.plot_file), **cmp}, card


def compare_counts(cfg: ReportConfig, before: dict[str, Any],
                   after: dict[str, Any]) -> dict[str, Any]:
    """Count by count, then the two heatmaps side by side and one report.md of it all."""
    out = Path(cfg.out)
    task = get_task(before["task"])
    by_count, cards = {}, []
    for n in before["n_documents"]:
        by_count[str(n)], card = compare(
            Path(cfg.before) / before["folders"][str(n)], Path(cfg.after) / after["folders"][str(n)],
            out / f"n{n}", title=f"{cfg.title or f'{task.metric} by {task.slot_noun}'} "
                                 f"({n} documents)")
        cards.append(card)
    plot_heatmaps([("before", before), ("after", after)], out / HEATMAP_PLOT,
                  title=cfg.title or f"{task.metric} by gold depth")
    md = [f"# {task.metric[0].upper()}{task.metric[1:]} by gold depth × documents", "",
          f"![before and after]({HEATMAP_PLOT})", "", "Before:", "", heatmap_table(before),
          "After:", "", heatmap_table(after)]
    for n, r in by_count.items():
        md += [f"## {n} documents", "", f"![{n} documents](n{n}/{Path(r['plot']).name})", "",
               task.comparison_table(r)]
    write_text_atomic(out / "report.md", "\n".join(md))
    write_json_atomic(out / "report.json", {"task": task.name,
                                            "heatmap": {"before": before, "after": after},
                                            "by_documents": by_count})
    cards.append(add_to_card(
        after, key=modelcard.result_key(task.name, after["data"], "depth"),
        plot=out / HEATMAP_PLOT, markdown=(
            f"**{task.name} on `{after['data']}`: {task.metric} by gold depth × documents**, "
            f"before (`{before['model']}`, left) and after (this model, right).\n\nAfter:\n\n"
            + heatmap_table(after))))
    card = next((c for c in cards if c), "")
    return {"report": str(out / "report.md"), "plot": str(out / HEATMAP_PLOT),
            "by_documents": by_count, **({"card": card} if card else {})}


def add_to_card(after: dict[str, Any], *, key: str, plot: Path, markdown: str) -> str:
    """Add a result block to the card of the "after" probe's model, when that folder has a card
    of ours (:func:`pos2distill.modelcard.add_result`); the card's path, else ``""``."""
    folder = Path(str(after.get("model", "")))
    if not folder.is_dir() or not modelcard.add_result(folder, key, markdown,
                                                       {"before and after": plot}):
        return ""
    return str(folder / modelcard.CARD)


def describe(result: dict[str, Any]) -> str:
    lines = [f"report: {result['report']}", f"plot:   {result['plot']}"]
    if result.get("card"):
        lines.append(f"card:   {result['card']}")
    return "\n".join(lines)
