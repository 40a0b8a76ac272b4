"""Pos2Distill-R2 (multi-hop reasoning, METHOD.md section 3) through the same stages as R1.

The stages (`probe`, `teach`, `pairs`, `train --method r2`, `report`) are R1's, with ``--task
reasoning``; this module holds what differs:

- positions are *configurations*: one position per hop document, e.g. ``(8, 0)`` puts the first hop
  9th and the second first (reversed). :func:`pos2distill.tasks.positions.parse_configurations` names the
  paper's 12 (connected, disconnected, reversed);
- answers are chains of thought scored by :func:`pos2distill.metrics.reasoning_em` (the text after
  the last "the answer is", exact match over the answer and its aliases);
- the teacher reasons at the advantageous configuration (default the last two documents, in order);
  the pairs put the hop documents at K other configurations and keep the teacher's chain-of-thought
  as the target of a plain cross-entropy (no KL, no weights, no anchor).

Probe outputs (``--task reasoning``): ``rows.jsonl`` (one row per question × configuration),
``summary.json`` (``by_configuration``, ``by_group``, ``mean``, ``gap``, best and worst
configuration), ``table.md`` and ``accuracy_by_configuration.png``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

from pos2distill.errors import ConfigError, DataError
from pos2distill.metrics import aggregate_by_key, cot_through_answer, extract_answer, reasoning_em
from pos2distill.tasks.positions import (HOP_GROUPS, configuration_key, hop_group, parse_configurations,
                                   place_hops, rng_for)
from pos2distill.tasks.prompts import render_prompt, use_chat
from pos2distill.data.records import Record

log = logging.getLogger(__name__)

ROWS, SUMMARY, TABLE, PLOT = "rows.jsonl", "summary.json", "table.md", "accuracy_by_configuration.png"
Pair = tuple[int, int]


def two_hop_records(records: Sequence[Record]) -> list[Record]:
    """The records with exactly two hop documents (the position pairs place two); the others are
    left out and counted in the log."""
    kept = [r for r in records if len(r.gold) == 2]
    if len(kept) < len(records):
        log.warning("left out %d of %d questions that do not have exactly 2 hop documents",
                    len(records) - len(kept), len(records))
    if not kept:
        raise DataError("no question with exactly 2 hop (gold) documents: --task reasoning "
                        "places a first and a second hop")
    return kept


def resolve_configuration(spec: str | Sequence[int], n_documents: int) -> Pair:
    """An advantageous hop pair: ``last`` (the last two documents, in hop order: the paper's
    default), ``first`` (the first two), or ``a,b`` (0-based; negative counts from the end)."""
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "last":
            return (n_documents - 2, n_documents - 1)
        if s == "first":
            return (0, 1)
        try:
            a, b = (int(x) for x in s.split(","))
        except ValueError:
            raise ConfigError(f"--advantageous {spec!r}: for --task reasoning use last, first, auto "
                              "or a 0-based hop pair like 18,19") from None
    else:
        a, b = (int(x) for x in spec)
    a, b = (a + n_documents if a < 0 else a), (b + n_documents if b < 0 else b)
    if a == b or not (0 <= a < n_documents and 0 <= b < n_documents):
        raise ConfigError(f"--advantageous {spec!r}: need two different positions in "
                          f"0..{n_documents - 1}")
    return (a, b)


def resolve_advantageous(advantageous: str, probe: str, n_documents: int) -> Pair:
    if advantageous == "auto":
        from pos2distill.stages.probe import load_summary

        summary = load_summary(probe)
        if summary.get("task") != "reasoning":
            raise ConfigError(f"--probe {probe}: not a --task reasoning probe (no configurations)")
        best = summary["best_configuration"]
        log.info("advantageous hop pair from %s: %s (0-based)", probe, best)
        return resolve_configuration(best, n_documents)
    return resolve_configuration(advantageous, n_documents)


# ---------------------------------------------------------------------------------------------
# Probe: EM per configuration


def score_rows(items: Sequence[tuple[Record, tuple[int, ...], str]],
               predictions: Sequence[str]) -> list[dict[str, Any]]:
    return [{"id": r.id, "configuration": configuration_key(pair), "positions": list(pair),
             "group": hop_group(pair), "prediction": pred, "extracted": extract_answer(pred),
             "answers": list(r.answers), "correct": reasoning_em(pred, r.answers)}
            for (r, pair, _), pred in zip(items, predictions)]


def summarize_rows(rows: Iterable[dict[str, Any]],
                   order: Sequence[str] | None = None) -> dict[str, Any]:
    """EM per configuration (in ``order``, default first seen), per group, their mean and GAP."""
    rows = list(rows)
    keys = list(order) if order else list(dict.fromkeys(r["configuration"] for r in rows))
    index = {k: i for i, k in enumerate(keys)}
    stats = aggregate_by_key(({"k": index[r["configuration"]], "correct": r["correct"]}
                              for r in rows if r["configuration"] in index), key="k")
    no_answer: dict[str, int] = {}
    for r in rows:
        no_answer[r["configuration"]] = no_answer.get(r["configuration"], 0) + (r["extracted"] is None)
    by_config = []
    for s in stats:
        key = keys[s.position]
        pair = tuple(int(x) for x in key.split(","))
        by_config.append({"configuration": key, "positions": list(pair), "group": hop_group(pair),
                          "accuracy": s.accuracy, "stderr": s.stderr, "count": s.count,
                          "no_answer": no_answer.get(key, 0) / s.count})
    accuracies = [c["accuracy"] for c in by_config]
    by_group = {}
    for group in HOP_GROUPS:
        members = [c for c in by_config if c["group"] == group]
        if members:
            by_group[group] = {"mean": sum(c["accuracy"] for c in members) / len(members),
                               "configurations": [c["configuration"] for c in members]}
    best = max(by_config, key=lambda c: c["accuracy"])      # ties: the first listed
    worst = min(by_config, key=lambda c: c["accuracy"])
    return {"task": "reasoning", "by_configuration": by_config, "by_group": by_group,
            "mean": sum(accuracies) / len(accuracies), "gap": max(accuracies) - min(accuracies),
            "best_configuration": best["configuration"],
            "worst_configuration": worst["configuration"],
            "n_per_configuration": min(c["count"] for c in by_config)}


def one_based(key: str) -> str:
    return ",".join(str(int(p) + 1) for p in key.split(","))


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| hop positions (1-based) | group | EM | s.e. | n | no answer |",
             "|---|---|---:|---:|---:|---:|"]
    for c in summary["by_configuration"]:
        lines.append(f"| {one_based(c['configuration'])} | {c['group']} | {c['accuracy']:.3f} | "
                     f"{c['stderr']:.3f} | {c['count']} | {c['no_answer']:.2f} |")
    lines.append("")
    groups = " · ".join(f"{g} {v['mean']:.3f}" for g, v in summary["by_group"].items())
    lines.append(f"mean {summary['mean']:.3f} · GAP {summary['gap']:.3f} · {groups} · best "
                 f"{one_based(summary['best_configuration'])} (1-based)")
    return "\n".join(lines) + "\n"


def plot_series(summary: dict[str, Any]) -> list[tuple[str, float, float]]:
    return [(one_based(c["configuration"]), c["accuracy"], c["stderr"])
            for c in summary["by_configuration"]]


def probe_main(cfg: Any) -> dict[str, Any]:
    """``pos2distill probe --task reasoning``: EM at every requested hop configuration."""
    from pos2distill.data.resolve import load_data
    from pos2distill.modeling import load_config, load_tokenizer
    from pos2distill.plots import plot_accuracy_by_configuration
    from pos2distill.stages.probe import generate_rows, pending_prompts, read_rows
    from pos2distill.runinfo import write_json_atomic

    out = Path(cfg.out)
    records = load_data(cfg)  # two-hop questions only (--task reasoning)
    n_docs = len(records[0].documents)
    configurations = parse_configurations(cfg.configurations, n_docs)
    config = load_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    chat = use_chat(tokenizer, cfg.chat)
    items, too_long = pending_prompts(cfg, out, records, configurations, tokenizer, config,
                            done_key=lambda r: (r["id"], r["configuration"]),
                            item_key=lambda it: (it[0].id, configuration_key(it[1])))
    if items:
        generate_rows(cfg, out, items, tokenizer, chat=chat,
                      desc=f"probe reasoning {Path(cfg.model).name}", score=score_rows)
    order = [configuration_key(c) for c in configurations]
    summary = {"model": cfg.model, "data": cfg.data, "n_documents": n_docs,
               **summarize_rows(read_rows(out / ROWS), order)}
    if too_long:
        summary["too_long"] = too_long
    write_json_atomic(out / SUMMARY, summary)
    (out / TABLE).write_text(markdown_table(summary))
    plot_accuracy_by_configuration({Path(cfg.model).name: plot_series(summary)}, out / PLOT,
                                   title=f"reasoning EM by hop positions ({n_docs} documents)")
    return summary


# ---------------------------------------------------------------------------------------------
# Pairs: K other configurations per question, target = the teacher's chain-of-thought


def configuration_pool(spec: str, n_documents: int, adv: Pair) -> list[Pair]:
    """The configurations pairs are drawn from: ``any`` = every ordered pair of different
    positions, or a ``--configurations`` spec; the advantageous pair is never in it."""
    if spec.strip().lower() == "any":
        pool = [(a, b) for a in range(n_documents) for b in range(n_documents) if a != b]
    else:
        pool = parse_configurations(spec, n_documents)
    return [p for p in pool if p != adv]


def make_pairs(row: dict[str, Any], tokenizer: Any, *, K: int, seed: int,
               configurations: str = "any") -> list[dict[str, Any]]:
    """R2 pair rows of one kept teacher row: K distinct configurations (other than the teacher's),
    each with its own distractor order; same row schema as R1 (``position`` is the first hop's
    position) plus ``configuration`` and ``adv_configuration``. No anchors (METHOD.md section 3)."""
    record = Record.from_dict(row["record"])
    adv = tuple(row["adv_configuration"])
    n = len(record.documents)
    pool = configuration_pool(configurations, n, adv)  # type: ignore[arg-type]
    if K > len(pool):
        raise ConfigError(f"--K {K} is larger than the {len(pool)} configurations to draw from")
    rng = random.Random(f"{seed}|{record.id}|configurations")
    chosen = sorted(rng.sample(pool, K))
    chat = use_chat(tokenizer, row.get("chat", "auto"))
    response = cot_through_answer(row["response"])
    pairs = []
    for copy, pair in enumerate(chosen, start=1):
        # copy >= 1: never the teacher's own distractor order (copy 0).
        placed = place_hops(record, pair, rng_for(seed, record.id, pair, copy))
        pairs.append({"id": f"{record.id}#{copy}", "question_id": record.id, "task": "reasoning",
                      "position": pair[0], "anchor": False, "adv_position": adv[0],
                      "configuration": list(pair), "adv_configuration": list(adv),
                      "group": hop_group(pair),
                      "student_prompt": render_prompt(placed, tokenizer, template=row["template"],
                                                      instruction=row.get("instruction", ""),
                                                      chat="on" if chat else "off"),
                      "chat": chat, "teacher_prompt": row["teacher_prompt"], "response": response,
                      "answers": list(record.answers)})
    return pairs


# ---------------------------------------------------------------------------------------------
# Report: before/after per configuration and group


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    b = {c["configuration"]: c for c in before["by_configuration"]}
    a = {c["configuration"]: c for c in after["by_configuration"]}
    if set(a) != set(b):
        raise ConfigError(f"the probes cover different configurations ({sorted(b)} vs "
                          f"{sorted(a)}); probe both models with the same --configurations")
    rows = [{"configuration": k, "group": b[k]["group"], "before": b[k]["accuracy"],
             "after": a[k]["accuracy"], "delta": a[k]["accuracy"] - b[k]["accuracy"],
             "before_stderr": b[k]["stderr"], "after_stderr": a[k]["stderr"],
             "count": min(b[k]["count"], a[k]["count"])} for k in b]
    groups = {g: {"before": before["by_group"][g]["mean"], "after": after["by_group"][g]["mean"]}
              for g in before["by_group"] if g in after["by_group"]}
    return {"task": "reasoning", "by_configuration": rows, "by_group": groups,
            "before": {k: before[k] for k in ("mean", "gap", "best_configuration")},
            "after": {k: after[k] for k in ("mean", "gap", "best_configuration")},
            "mean_delta": after["mean"] - before["mean"], "gap_delta": after["gap"] - before["gap"]}


def markdown(cmp: dict[str, Any]) -> str:
    lines = ["| hop positions (1-based) | group | before | after | Δ |",
             "|---|---|---:|---:|---:|"]
    for r in cmp["by_configuration"]:
        lines.append(f"| {one_based(r['configuration'])} | {r['group']} | {r['before']:.3f} | "
                     f"{r['after']:.3f} | {r['delta']:+.3f} |")
    b, a = cmp["before"], cmp["after"]
    lines += ["", "| | before | after | Δ |", "|---|---:|---:|---:|"]
    for g, v in cmp["by_group"].items():
        lines.append(f"| {g} (mean) | {v['before']:.3f} | {v['after']:.3f} | "
                     f"{v['after'] - v['before']:+.3f} |")
    lines += [f"| mean | {b['mean']:.3f} | {a['mean']:.3f} | {cmp['mean_delta']:+.3f} |",
              f"| GAP (max − min) | {b['gap']:.3f} | {a['gap']:.3f} | {cmp['gap_delta']:+.3f} |"]
    return "\n".join(lines) + "\n"


def report_main(cfg: Any, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    from pos2distill.plots import plot_accuracy_by_configuration
    from pos2distill.runinfo import write_json_atomic

    cmp = compare(before, after)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", cmp)
    (out / "report.md").write_text(markdown(cmp))
    plot_accuracy_by_configuration(
        {"before": [(one_based(r["configuration"]), r["before"], r["before_stderr"])
                    for r in cmp["by_configuration"]],
         "after": [(one_based(r["configuration"]), r["after"], r["after_stderr"])
                   for r in cmp["by_configuration"]]},
        out / PLOT, title=cfg.title or "reasoning EM by hop positions")
    return {"report": str(out / "report.md"), "plot": str(out / PLOT), **cmp}
