"""``pos2distill report``: before/after tables and plots from two probe outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pos2distill.config import ReportConfig
from pos2distill.errors import ConfigError


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-position and summary deltas; both probes must cover the same positions."""
    b = {r["position"]: r for r in before["by_position"]}
    a = {r["position"]: r for r in after["by_position"]}
    if set(a) != set(b):
        raise ConfigError(f"the probes cover different positions ({sorted(b)} vs {sorted(a)}); "
                          "probe both models with the same --positions")
    rows = [{"position": p, "before": b[p]["accuracy"], "after": a[p]["accuracy"],
             "delta": a[p]["accuracy"] - b[p]["accuracy"], "before_stderr": b[p]["stderr"],
             "after_stderr": a[p]["stderr"], "count": min(b[p]["count"], a[p]["count"])}
            for p in sorted(b)]
    adv = before["best_position"]
    return {"by_position": rows,
            "before": {k: before[k] for k in ("mean", "gap", "best_position")},
            "after": {k: after[k] for k in ("mean", "gap", "best_position")},
            "advantageous_position": adv,
            "advantageous_delta": a[adv]["accuracy"] - b[adv]["accuracy"],
            "mean_delta": after["mean"] - before["mean"], "gap_delta": after["gap"] - before["gap"]}


def markdown(cmp: dict[str, Any]) -> str:
    lines = ["| gold position | before | after | Δ |", "|---:|---:|---:|---:|"]
    for r in cmp["by_position"]:
        lines.append(f"| {r['position'] + 1} | {r['before']:.3f} | {r['after']:.3f} | "
                     f"{r['delta']:+.3f} |")
    b, a = cmp["before"], cmp["after"]
    adv = next(r for r in cmp["by_position"] if r["position"] == cmp["advantageous_position"])
    lines += ["", "| | before | after | Δ |", "|---|---:|---:|---:|",
              f"| mean | {b['mean']:.3f} | {a['mean']:.3f} | {cmp['mean_delta']:+.3f} |",
              f"| GAP (max − min) | {b['gap']:.3f} | {a['gap']:.3f} | {cmp['gap_delta']:+.3f} |",
              f"| position {adv['position'] + 1} (best before) | {adv['before']:.3f} | "
              f"{adv['after']:.3f} | {adv['delta']:+.3f} |"]
    return "\n".join(lines) + "\n"


def main(cfg: ReportConfig) -> dict[str, Any]:
    from pos2distill.plots import plot_accuracy_by_position
    from pos2distill.stages.probe import load_summary
    from pos2distill.runinfo import write_json_atomic

    before, after = load_summary(cfg.before), load_summary(cfg.after)
    tasks = {before.get("task", "retrieval"), after.get("task", "retrieval")}
    if len(tasks) > 1:
        raise ConfigError("--before and --after are probes of different tasks (retrieval vs "
                          "reasoning); compare probes of the same task")
    if tasks == {"reasoning"}:
        from pos2distill.tasks.reasoning import report_main

        return report_main(cfg, before, after)
    cmp = compare(before, after)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", cmp)
    (out / "report.md").write_text(markdown(cmp))
    plot_accuracy_by_position(
        {"before": [(r["position"], r["before"], r["before_stderr"]) for r in cmp["by_position"]],
         "after": [(r["position"], r["after"], r["after_stderr"]) for r in cmp["by_position"]]},
        out / "accuracy_by_position.png", title=cfg.title or "accuracy by gold position")
    return {"report": str(out / "report.md"), "plot": str(out / "accuracy_by_position.png"), **cmp}
