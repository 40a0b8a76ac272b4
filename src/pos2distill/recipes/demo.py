"""``pos2distill demo``: the whole pipeline on the embedded default, on a CPU in minutes.

``--task retrieval`` (default): probe (base model) → teach → pairs → train R1 → probe (trained
model) → report, each stage the same function its subcommand runs, writing into one folder. Ends
with ``summary.json``: ``{"before": S, "after": S, "config": {...}}``,
``S = {"accuracy_by_position": {"0": acc, ...}, "mean", "gap", "n_per_position"}``, plus the counts
``teacher_kept``, ``pairs`` and ``train_steps``.

``--task reasoning``: the same chain for R2 on the synthetic two-hop set (teacher at the last two
documents, ``train --method r2``) in ``OUT/reasoning/``, then the cross-task probe of the R2 model on
retrieval (next to the base model's). ``summary.json`` has the same shape with
``S = {"accuracy_by_configuration": {"0,1": em, "8,0": em, ...}, "accuracy_by_group", "mean",
"gap", "n_per_configuration"}`` and a ``cross_task`` block (:mod:`pos2distill.stages.crosstask`).

``--task both``: both chains, and each trained model on the other task:
``{"retrieval": {"before", "after", counts}, "reasoning": {...}, "cross_task": {...}, "config"}``.

``--task judge``: the embedded judge (``tiny-judge``) on the synthetic judging set, in
``OUT/judge/``: probe in both orders (with BPC, two passes), teach (the order-balanced verdict),
pairs, then R1 and the swap-SFT baseline on the same pairs, each probed in both orders (one pass
per comparison), and a report. ``summary.json``: ``{"before": J, "after": J, "bpc": J,
"swap_sft": J, counts, "config"}``, ``J = {"consistency", "fairness", "first_wins",
"second_wins", "accuracy", "n_pairs"}``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from pos2distill.config import (AnalyzeConfig, DemoConfig, PairsConfig, ProbeConfig, ReportConfig,
                                TeachConfig, TrainConfig)
from pos2distill.runinfo import one_writer, write_json_atomic, write_text_atomic
from pos2distill.stages import analyze, crosstask, pairs, probe, report, teach, train
from pos2distill.tasks import get_task

log = logging.getLogger(__name__)


def stage_configs(cfg: DemoConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    common = {"seed": cfg.seed}
    return {
        "probe_before": ProbeConfig(model=cfg.model, data=f"synthetic:{cfg.split}",
                                    limit=cfg.n_test, out=str(out / "probe_before"), **common),
        "teach": TeachConfig(model=cfg.model, data="synthetic:train", limit=cfg.n_train,
                             out=str(out / "teach.jsonl"), **common),
        "pairs": PairsConfig(teach=str(out / "teach.jsonl"), out=str(out / "pairs.jsonl"),
                             model=cfg.model, K=cfg.K, anchors=cfg.anchors, **common),
        "train": TrainConfig(pairs=str(out / "pairs.jsonl"), model=cfg.model,
                             out=str(out / "train"), lr=cfg.lr, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, formula=cfg.formula, **common),
        "probe_after": ProbeConfig(model=str(out / "train" / "model"),
                                   data=f"synthetic:{cfg.split}", limit=cfg.n_test,
                                   out=str(out / "probe_after"), **common),
        "report": ReportConfig(before=str(out / "probe_before"), after=str(out / "probe_after"),
                               out=str(out / "report"), title="embedded tiny model: R1"),
    }


def reasoning_stage_configs(cfg: DemoConfig) -> dict[str, Any]:
    """R2 on the synthetic two-hop set, in ``OUT/reasoning``, plus the cross-task probes."""
    out = Path(cfg.out)
    r = out / "reasoning"
    common = {"seed": cfg.seed}
    probe_common = dict(task="reasoning", data=f"synthetic-reasoning:{cfg.split}",
                        limit=cfg.n_test, max_new_tokens=cfg.r2_max_new_tokens, **common)
    return {
        "reasoning_probe_before": ProbeConfig(model=cfg.model, out=str(r / "probe_before"),
                                              **probe_common),
        "reasoning_teach": TeachConfig(task="reasoning", model=cfg.model,
                                       data="synthetic-reasoning:train",
                                       limit=cfg.r2_n_train or cfg.n_train,
                                       max_new_tokens=cfg.r2_max_new_tokens,
                                       out=str(r / "teach.jsonl"), **common),
        "reasoning_pairs": PairsConfig(teach=str(r / "teach.jsonl"), out=str(r / "pairs.jsonl"),
                                       model=cfg.model, K=cfg.K, anchors=0, **common),
        "reasoning_train": TrainConfig(method="r2", pairs=str(r / "pairs.jsonl"), model=cfg.model,
                                       out=str(r / "train"), lr=cfg.r2_lr, epochs=cfg.r2_epochs,
                                       batch_size=cfg.batch_size, **common),
        "reasoning_probe_after": ProbeConfig(model=str(r / "train" / "model"),
                                             out=str(r / "probe_after"), **probe_common),
        "reasoning_report": ReportConfig(before=str(r / "probe_before"),
                                         after=str(r / "probe_after"), out=str(r / "report"),
                                         title="embedded tiny model: R2"),
        # Cross-task: the R2 model on retrieval, the R1 model on reasoning.
        "r2_on_retrieval": ProbeConfig(model=str(r / "train" / "model"),
                                       data=f"synthetic:{cfg.split}", limit=cfg.n_test,
                                       out=str(out / "cross" / "r2_on_retrieval"), **common),
        "r1_on_reasoning": ProbeConfig(model=str(out / "train" / "model"),
                                       out=str(out / "cross" / "r1_on_reasoning"), **probe_common),
    }


def judge_stage_configs(cfg: DemoConfig) -> dict[str, Any]:
    """R1 for a judge and the swap-SFT baseline on the same pairs, in ``OUT/judge``."""
    j = Path(cfg.out) / "judge"
    common = {"seed": cfg.seed}
    data = dict(task="judge", n_documents=cfg.judge_n_documents,
                max_new_tokens=cfg.judge_max_new_tokens)
    test = dict(data=f"synthetic-judge:{cfg.split}", limit=cfg.judge_n_test, **data, **common)
    fit = dict(pairs=str(j / "pairs.jsonl"), model=cfg.model, lr=cfg.judge_lr,
               epochs=cfg.judge_epochs, batch_size=cfg.batch_size, **common)
    return {
        "judge_probe_before": ProbeConfig(model=cfg.model, calibrate="bpc",
                                          out=str(j / "probe_before"), **test),
        "judge_teach": TeachConfig(model=cfg.model, data="synthetic-judge:train",
                                   limit=cfg.judge_n_train, out=str(j / "teach.jsonl"),
                                   **data, **common),
        "judge_pairs": PairsConfig(teach=str(j / "teach.jsonl"), out=str(j / "pairs.jsonl"),
                                   model=cfg.model, **common),
        "judge_train": TrainConfig(method="r1", out=str(j / "train"), **fit),
        "judge_swap_sft": TrainConfig(method="swap-sft", out=str(j / "swap-sft"), **fit),
        "judge_probe_after": ProbeConfig(model=str(j / "train" / "model"),
                                         out=str(j / "probe_after"), **test),
        "judge_probe_swap_sft": ProbeConfig(model=str(j / "swap-sft" / "model"),
                                            out=str(j / "probe_swap_sft"), **test),
        "judge_report": ReportConfig(before=str(j / "probe_before"),
                                     after=str(j / "probe_after"), out=str(j / "report"),
                                     title="embedded tiny judge: R1"),
    }


def analysis_configs(cfg: DemoConfig) -> dict[str, AnalyzeConfig]:
    """``--analyze``: where the bias lives, in the base and the trained models. R1: token
    shifting (``tokens``), perplexity of the advantageous answers (``thoughts``) and attention by
    document (base beside R1). R2: chains classified (``thoughts``) and attention (base beside
    R2)."""
    out = Path(cfg.out)
    a, r = out / "analysis", out / "reasoning" / "analysis"
    r1, r2 = str(out / "train" / "model"), str(out / "reasoning" / "train" / "model")
    common = dict(limit=cfg.analyze_limit, seed=cfg.seed)
    retrieval = dict(data=f"synthetic:{cfg.split}", **common)
    reasoning = dict(task="reasoning", data=f"synthetic-reasoning:{cfg.split}",
                     max_new_tokens=cfg.r2_max_new_tokens, **common)
    return {
        "tokens_base": AnalyzeConfig(what="tokens", model=cfg.model, out=str(a / "tokens-base"),
                                     **retrieval),
        "tokens_r1": AnalyzeConfig(what="tokens", model=r1, out=str(a / "tokens-r1"), **retrieval),
        "thoughts_base": AnalyzeConfig(what="thoughts", model=cfg.model,
                                       out=str(a / "thoughts-base"), **retrieval),
        "thoughts_r1": AnalyzeConfig(what="thoughts", model=r1, out=str(a / "thoughts-r1"),
                                     **retrieval),
        "attention_r1": AnalyzeConfig(what="attention", model=cfg.model, compare=r1,
                                      out=str(a / "attention"), **retrieval),
        "reasoning_thoughts_base": AnalyzeConfig(what="thoughts", model=cfg.model,
                                                 out=str(r / "thoughts-base"), **reasoning),
        "reasoning_thoughts_r2": AnalyzeConfig(what="thoughts", model=r2,
                                               out=str(r / "thoughts-r2"), **reasoning),
        "reasoning_attention_r2": AnalyzeConfig(what="attention", model=cfg.model, compare=r2,
                                                out=str(r / "attention"), **reasoning),
    }


def run_steps(steps: list[tuple[str, Any, str]], stages: dict[str, Any]) -> dict[str, Any]:
    """Each ``(what, stage main, config name)`` in order, logged as ``[k/n] what``; the results
    by config name."""
    results = {}
    for k, (what, fn, name) in enumerate(steps, start=1):
        log.info("[%d/%d] %s", k, len(steps), what)
        results[name] = fn(stages[name])
    return results


def main(cfg: DemoConfig) -> dict[str, Any]:
    with one_writer(cfg.out):   # each stage also holds its own output
        return run(cfg)


def run(cfg: DemoConfig) -> dict[str, Any]:
    """The chains ``--task`` asks for, then ``summary.json``."""
    if cfg.task == "judge":
        return run_judge(cfg)
    stages = {**stage_configs(cfg), **reasoning_stage_configs(cfg)}
    r1_steps = [("probe the base model", probe.main, "probe_before"),
                ("teacher responses at the first position", teach.main, "teach"),
                ("training pairs", pairs.main, "pairs"),
                ("train Pos2Distill-R1", train.main, "train"),
                ("probe the trained model", probe.main, "probe_after"),
                ("report", report.main, "report")]
    r2_steps = [("reasoning: probe the base model", probe.main, "reasoning_probe_before"),
                ("reasoning: teacher chain-of-thought at the last two documents", teach.main,
                 "reasoning_teach"),
                ("reasoning: training pairs", pairs.main, "reasoning_pairs"),
                ("train Pos2Distill-R2", train.main, "reasoning_train"),
                ("reasoning: probe the trained model", probe.main, "reasoning_probe_after"),
                ("reasoning: report", report.main, "reasoning_report")]
    cross_r2 = ("cross-task: the R2 model on retrieval", probe.main, "r2_on_retrieval")
    cross_r1 = ("cross-task: the R1 model on reasoning", probe.main, "r1_on_reasoning")
    # --task reasoning also probes the base and the R2 model on retrieval (the cross-task table).
    steps = {"retrieval": r1_steps,
             "reasoning": [r1_steps[0]] + r2_steps + [cross_r2],
             "both": r1_steps + r2_steps + [cross_r1, cross_r2]}[cfg.task]
    if cfg.analyze:
        analyses = analysis_configs(cfg)
        stages.update(analyses)
        wanted = {"retrieval": ("retrieval",), "reasoning": ("reasoning",),
                  "both": ("retrieval", "reasoning")}[cfg.task]
        steps = steps + [(f"analyze {c.what}: {c.out}", analyze.main, name)
                         for name, c in analyses.items()
                         if ("reasoning" if name.startswith("reasoning_") else "retrieval")
                         in wanted]
    results = run_steps(steps, stages)
    used = [name for _, _, name in steps]
    config = {"demo": dataclasses.asdict(cfg),
              **{name: dataclasses.asdict(stages[name]) for name in used}}
    out = Path(cfg.out)

    def headline(name: str) -> dict[str, Any]:
        return get_task(results[name]["task"]).headline(results[name])

    def block(prefix: str) -> dict[str, Any]:
        """One chain's numbers (prefix "" for R1, "reasoning_" for R2)."""
        return {"before": headline(f"{prefix}probe_before"),
                "after": headline(f"{prefix}probe_after"),
                "teacher_kept": results[f"{prefix}teach"]["kept"],
                "pairs": results[f"{prefix}pairs"]["pairs"],
                "train_steps": results[f"{prefix}train"]["steps"]}

    # --analyze: each analysis' folder (its summary.json holds the numbers).
    summaries = {name: str(Path(stages[name].out) / "summary.json") for name in used
                 if isinstance(stages[name], AnalyzeConfig)}
    extra = {"analysis": summaries} if summaries else {}
    if cfg.task == "retrieval":
        summary = {**block(""), **extra, "config": config}
        write_json_atomic(out / "summary.json", summary)
        return {"summary": str(out / "summary.json"), **results["report"]}
    probes = {"base": {"retrieval": results["probe_before"],
                       "reasoning": results["reasoning_probe_before"]},
              "r2": {"retrieval": results["r2_on_retrieval"],
                     "reasoning": results["reasoning_probe_after"]}}
    if cfg.task == "both":
        probes["r1"] = {"retrieval": results["probe_after"],
                        "reasoning": results["r1_on_reasoning"]}
        probes = {m: probes[m] for m in ("base", "r1", "r2")}
    table = crosstask.cross_task(probes)
    write_text_atomic(out / "cross_task.md", crosstask.markdown(table))
    table["table"] = str(out / "cross_task.md")
    if cfg.task == "reasoning":
        summary = {**block("reasoning_"), "cross_task": table, **extra, "config": config}
    else:
        summary = {"retrieval": block(""), "reasoning": block("reasoning_"), "cross_task": table,
                   **extra, "config": config}
    write_json_atomic(out / "summary.json", summary)
    return {"summary": str(out / "summary.json"), "cross_task": str(out / "cross_task.md"),
            **results["reasoning_report"]}


def run_judge(cfg: DemoConfig) -> dict[str, Any]:
    """The judge chain, then ``summary.json``."""
    stages = judge_stage_configs(cfg)
    steps = [("judge: probe the base judge in both orders (and BPC)", probe.main,
              "judge_probe_before"),
             ("judge: teacher verdicts balanced over both orders", teach.main, "judge_teach"),
             ("judge: training pairs in each order", pairs.main, "judge_pairs"),
             ("judge: train Pos2Distill-R1", train.main, "judge_train"),
             ("judge: train the swap-SFT baseline", train.main, "judge_swap_sft"),
             ("judge: probe the R1 judge", probe.main, "judge_probe_after"),
             ("judge: probe the swap-SFT judge", probe.main, "judge_probe_swap_sft"),
             ("judge: report", report.main, "judge_report")]
    results = run_steps(steps, stages)
    judge = get_task("judge")
    before = results["judge_probe_before"]
    summary = {"before": judge.headline(before),
               "after": judge.headline(results["judge_probe_after"]),
               "bpc": judge.headline(before["bpc"]),
               "swap_sft": judge.headline(results["judge_probe_swap_sft"]),
               "teacher_kept": results["judge_teach"]["kept"],
               "pairs": results["judge_pairs"]["pairs"],
               "train_steps": results["judge_train"]["steps"],
               "swap_sft_steps": results["judge_swap_sft"]["steps"],
               "config": {"demo": dataclasses.asdict(cfg),
                          **{name: dataclasses.asdict(stages[name]) for _, _, name in steps}}}
    out = Path(cfg.out)
    write_json_atomic(out / "summary.json", summary)
    return {"summary": str(out / "summary.json"), **results["judge_report"]}


def describe(result: dict[str, Any]) -> str:
    lines = [f"\nreport: {result['report']}", f"plot:   {result['plot']}",
             f"summary: {result['summary']}"]
    if "cross_task" in result:
        lines.append(f"cross-task: {result['cross_task']}")
    return "\n".join(lines)
