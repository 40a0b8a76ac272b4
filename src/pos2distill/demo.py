"""``pos2distill demo``: the whole R1 pipeline on the embedded default, on a CPU in minutes.

probe (base model) → teach → pairs → train R1 → probe (trained model) → report, each stage the same
function its subcommand runs, writing into one folder. Ends with ``summary.json``:
``{"before": S, "after": S, "config": {...}}``,
``S = {"accuracy_by_position": {"0": acc, ...}, "mean", "gap", "n_per_position"}``, plus the counts
``teacher_kept``, ``pairs`` and ``train_steps``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from pos2distill import pairs, probe, report, teach, train
from pos2distill.config import (DemoConfig, PairsConfig, ProbeConfig, ReportConfig, TeachConfig,
                                TrainConfig)
from pos2distill.runinfo import write_json_atomic

log = logging.getLogger(__name__)


def position_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy_by_position": {str(r["position"]): r["accuracy"]
                                     for r in summary["by_position"]},
            "mean": summary["mean"], "gap": summary["gap"],
            "n_per_position": summary["n_per_position"]}


def stage_configs(cfg: DemoConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    common = {"seed": cfg.seed}
    return {
        "probe_before": ProbeConfig(model=cfg.model, data="synthetic:test", limit=cfg.n_test,
                                    out=str(out / "probe_before"), **common),
        "teach": TeachConfig(model=cfg.model, data="synthetic:train", limit=cfg.n_train,
                             out=str(out / "teach.jsonl"), **common),
        "pairs": PairsConfig(teach=str(out / "teach.jsonl"), out=str(out / "pairs.jsonl"),
                             model=cfg.model, K=cfg.K, anchors=cfg.anchors, **common),
        "train": TrainConfig(pairs=str(out / "pairs.jsonl"), model=cfg.model,
                             out=str(out / "train"), lr=cfg.lr, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, formula=cfg.formula, **common),
        "probe_after": ProbeConfig(model=str(out / "train" / "model"), data="synthetic:test",
                                   limit=cfg.n_test, out=str(out / "probe_after"), **common),
        "report": ReportConfig(before=str(out / "probe_before"), after=str(out / "probe_after"),
                               out=str(out / "report"), title="embedded tiny model: R1"),
    }


def main(cfg: DemoConfig) -> dict[str, Any]:
    stages = stage_configs(cfg)
    steps = [("probe the base model", probe.main, "probe_before"),
             ("teacher responses at the first position", teach.main, "teach"),
             ("training pairs", pairs.main, "pairs"),
             ("train Pos2Distill-R1", train.main, "train"),
             ("probe the trained model", probe.main, "probe_after"),
             ("report", report.main, "report")]
    results = {}
    for k, (what, fn, name) in enumerate(steps, start=1):
        log.info("[%d/%d] %s", k, len(steps), what)
        results[name] = fn(stages[name])
    summary = {"before": position_summary(results["probe_before"]),
               "after": position_summary(results["probe_after"]),
               "config": {"demo": dataclasses.asdict(cfg),
                          **{name: dataclasses.asdict(c) for name, c in stages.items()}},
               "teacher_kept": results["teach"]["kept"], "pairs": results["pairs"]["pairs"],
               "train_steps": results["train"]["steps"]}
    write_json_atomic(Path(cfg.out) / "summary.json", summary)
    return {"summary": str(Path(cfg.out) / "summary.json"), **results["report"]}
