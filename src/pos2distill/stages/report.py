"""``pos2distill report``: before/after tables and plots from two probe outputs of one task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pos2distill.config import ReportConfig
from pos2distill.errors import ConfigError
from pos2distill.plots import plot_slots
from pos2distill.runinfo import write_json_atomic, write_text_atomic
from pos2distill.stages.probe import load_summary, points
from pos2distill.tasks import get_task


def main(cfg: ReportConfig) -> dict[str, Any]:
    before, after = load_summary(cfg.before), load_summary(cfg.after)
    if before["task"] != after["task"]:
        raise ConfigError(f"--before and --after are probes of different tasks ({before['task']} "
                          f"vs {after['task']}); compare probes of the same task")
    task = get_task(before["task"])
    cmp = task.compare(before, after)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", cmp)
    write_text_atomic(out / "report.md", task.comparison_table(cmp))
    plot_slots({"before": points(cmp, "before", "before_stderr"),
                "after": points(cmp, "after", "after_stderr")}, out / task.plot_file,
               kind=task.plot_kind, title=cfg.title or f"{task.metric} by {task.slot_noun}")
    return {"report": str(out / "report.md"), "plot": str(out / task.plot_file), **cmp}


def describe(result: dict[str, Any]) -> str:
    return f"report: {result['report']}\nplot:   {result['plot']}"
