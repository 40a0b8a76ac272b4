"""Cross-task evaluation (the paper's Table 6 shape): each trained model on both tasks.

The R1-trained model (retrieval) is also probed on reasoning, the R2-trained model (reasoning) on
retrieval, next to the base model and to each model on its own task. Pure functions of probe
summaries: :func:`cross_task` builds the block ``summary.json`` carries, :func:`markdown` the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pos2distill.config import CrossTaskConfig
from pos2distill.errors import ConfigError
from pos2distill.runinfo import write_json_atomic, write_text_atomic
from pos2distill.stages.probe import load_summary

#: The tasks of the table (the paper's R1 and R2; a judge is not part of it).
TASKS = ("retrieval", "reasoning")
#: Row labels; the task each trained model was trained for ("own task").
MODEL_LABELS = {"base": ("base model", None), "r1": ("after R1 (trained on retrieval)", "retrieval"),
                "r2": ("after R2 (trained on reasoning)", "reasoning")}


def cross_task(summaries: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """``summaries[model][task]`` is a probe summary (``mean``, ``gap``) for ``model`` in
    ``base``, ``r1``, ``r2`` and ``task`` in ``retrieval``, ``reasoning``. Returns, per model and
    task, the mean accuracy (EM for reasoning), the GAP and the change of both from the base model,
    plus which task the model was trained on."""
    if "base" not in summaries:
        raise ValueError("cross-task evaluation needs the base model's probes")
    out: dict[str, Any] = {}
    for model, by_task in summaries.items():
        row: dict[str, Any] = {"trained_on": MODEL_LABELS.get(model, (model, None))[1]}
        for task in TASKS:
            if task not in by_task:
                continue
            s, base = by_task[task], summaries["base"].get(task)
            row[task] = {"mean": s["mean"], "gap": s["gap"]}
            if base is not None and model != "base":
                row[task].update(mean_delta=s["mean"] - base["mean"], gap_delta=s["gap"] - base["gap"])
        out[model] = row
    return {"models": out,
            "note": "retrieval: best-subspan EM over gold positions; reasoning: EM over hop "
                    "configurations; gap = max - min over them"}


def markdown(block: Mapping[str, Any]) -> str:
    """One table: a row per model, mean and GAP per task, Δ from the base model in brackets; the
    cell of a model's own task is marked with *."""
    lines = ["| model | retrieval mean | retrieval GAP | reasoning mean | reasoning GAP |",
             "|---|---:|---:|---:|---:|"]
    for model, row in block["models"].items():
        label = MODEL_LABELS.get(model, (model, None))[0]
        cells = []
        for task in TASKS:
            v = row.get(task)
            if v is None:
                cells += ["–", "–"]
                continue
            own = "*" if row["trained_on"] == task else ""
            if "mean_delta" in v:
                cells += [f"{v['mean']:.3f}{own} ({v['mean_delta']:+.3f})",
                          f"{v['gap']:.3f}{own} ({v['gap_delta']:+.3f})"]
            else:
                cells += [f"{v['mean']:.3f}", f"{v['gap']:.3f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "\\* the task the model was trained on; (Δ) change from the base model."]
    return "\n".join(lines) + "\n"


def main(cfg: CrossTaskConfig) -> dict[str, Any]:
    """``pos2distill crosstask``: the table from probe folders (see :class:`CrossTaskConfig`)."""
    summaries: dict[str, dict[str, Any]] = {}
    for model in MODEL_LABELS:
        for task in TASKS:
            path = getattr(cfg, f"{model}_{task}")
            if not path:
                continue
            summary = load_summary(path)
            if summary["task"] != task:
                raise ConfigError(f"--{model}-{task} {path}: a {summary['task']} probe, not a "
                                  f"{task} one")
            summaries.setdefault(model, {})[task] = summary
    if "base" not in summaries:
        raise ConfigError("no base model probe given")
    block = cross_task(summaries)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "cross_task.json", block)
    write_text_atomic(out / "cross_task.md", markdown(block))
    return {"table": str(out / "cross_task.md"), **block}


def describe(result: dict[str, Any]) -> str:
    return Path(result["table"]).read_text() + f"\ntable: {result['table']}"
