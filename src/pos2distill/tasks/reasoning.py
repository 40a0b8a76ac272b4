"""Reasoning (Pos2Distill-R2, METHOD.md section 3): two hop documents, a slot is
``(first_hop, second_hop)``.

Slots are *configurations*: ``(8, 0)`` puts the first hop 9th and the second first (reversed).
:func:`pos2distill.tasks.positions.parse_configurations` names the paper's 12 (connected,
disconnected, reversed). Answers are chains of thought scored by
:func:`pos2distill.metrics.reasoning_em` (the text after the last "the answer is", exact match over
the answer and its aliases). The teacher reasons at the advantageous configuration (default the
last two documents, in order); the pairs put the hop documents at K other configurations and keep
the teacher's chain-of-thought as the target of a plain cross-entropy (no KL, no weights, no
anchor).
"""

from __future__ import annotations

import logging
import random
from typing import Any, Sequence

from pos2distill.data.records import Record
from pos2distill.errors import ConfigError, DataError
from pos2distill.metrics import cot_through_answer, extract_answer, reasoning_em
from pos2distill.tasks.base import Task
from pos2distill.tasks.positions import (HOP_GROUPS, Slot, hop_group, parse_configurations,
                                         parse_slot_key, place_hops, slot_key)

log = logging.getLogger(__name__)


def resolve_configuration(spec: str | Sequence[int], n_documents: int) -> Slot:
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


def configuration_pool(spec: str, n_documents: int, adv: Slot) -> list[Slot]:
    """The configurations pairs are drawn from: ``any`` = every ordered pair of different
    positions, or a ``--configurations`` spec; the advantageous pair is never in it."""
    if spec.strip().lower() == "any":
        pool = [(a, b) for a in range(n_documents) for b in range(n_documents) if a != b]
    else:
        pool = parse_configurations(spec, n_documents)
    return [p for p in pool if p != adv]


class Reasoning(Task):
    name = "reasoning"
    default_template = "reasoning"
    default_advantageous = "last"
    slot_option = "configurations"
    slot_noun = "hop positions"
    slot_width = 2
    metric = "EM"
    methods = ("r2",)
    has_anchors = False
    plot_file = "accuracy_by_configuration.png"
    plot_kind = "bars"

    def keep(self, records: Sequence[Record], source: str) -> list[Record]:
        """The records with exactly two hop documents (the slots place two); the others are left
        out and counted in the log."""
        kept = [r for r in records if len(r.gold) == 2]
        if len(kept) < len(records):
            log.warning("left out %d of %d questions that do not have exactly 2 hop documents",
                        len(records) - len(kept), len(records))
        if not kept:
            raise DataError("no question with exactly 2 hop (gold) documents: --task reasoning "
                            "places a first and a second hop", path=source)
        return kept

    def slots(self, spec: str, n_documents: int) -> list[Slot]:
        return parse_configurations(spec, n_documents)

    def advantageous(self, spec: str, n_documents: int) -> Slot:
        return resolve_configuration(spec, n_documents)

    def place(self, record: Record, slot: Slot, rng: random.Random) -> Record:
        return place_hops(record, slot, rng)

    def training_slots(self, record_id: str, n_documents: int, adv: Slot, *, K: int, seed: int,
                       pool: str) -> list[Slot]:
        candidates = configuration_pool(pool, n_documents, adv)
        if K > len(candidates):
            raise ConfigError(f"--K {K} is larger than the {len(candidates)} configurations to "
                              "draw from")
        rng = random.Random(f"{seed}|{record_id}|configurations")
        return sorted(rng.sample(candidates, K))

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        return reasoning_em(prediction, answers)

    def row_extras(self, slot: Slot, prediction: str) -> dict[str, Any]:
        return {"group": hop_group(slot), "extracted": extract_answer(prediction)}

    def target(self, response: str, *, first_line_only: bool) -> str:
        return cot_through_answer(response)   # the whole chain, whatever first_line_only says

    # --- summaries: configurations also belong to a group (connected, disconnected, reversed) -

    def slot_extras(self, slot: Slot, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        no_answer = sum(r["extracted"] is None for r in rows)
        return {"group": hop_group(slot), "no_answer": no_answer / len(rows)}

    def summary_extras(self, by_slot: Sequence[dict[str, Any]]) -> dict[str, Any]:
        by_group = {}
        for group in HOP_GROUPS:
            members = [e for e in by_slot if e["group"] == group]
            if members:
                by_group[group] = {"mean": sum(e["accuracy"] for e in members) / len(members),
                                   "configurations": [slot_key(e["slot"]) for e in members]}
        return {"by_group": by_group}

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"accuracy_by_configuration": self.accuracy_by_slot(summary),
                "accuracy_by_group": {g: v["mean"] for g, v in summary["by_group"].items()},
                "mean": summary["mean"], "gap": summary["gap"],
                "n_per_configuration": summary["n_per_slot"]}

    def extra_cells(self, entry: dict[str, Any] | None) -> tuple[list[str], list[str]]:
        if entry is None:
            return ["group"], ["no answer"]
        return [entry["group"]], ([f"{entry['no_answer']:.2f}"] if "no_answer" in entry else [])

    def summary_words(self, summary: dict[str, Any]) -> str:
        return " · ".join(f"{g} {v['mean']:.3f}" for g, v in summary["by_group"].items())

    def compare_extras(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        return {"by_group": {g: {"before": before["by_group"][g]["mean"],
                                 "after": after["by_group"][g]["mean"]}
                             for g in before["by_group"] if g in after["by_group"]}}

    def comparison_rows(self, cmp: dict[str, Any]) -> list[str]:
        return [f"| {g} (mean) | {v['before']:.3f} | {v['after']:.3f} | "
                f"{v['after'] - v['before']:+.3f} |" for g, v in cmp["by_group"].items()]

    # --- files written before slots existed -------------------------------------------------

    def upgrade_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        if "by_slot" in summary:
            return summary
        old = {k: v for k, v in summary.items() if k not in (
            "by_configuration", "best_configuration", "worst_configuration",
            "n_per_configuration")}
        return {**old, "task": self.name,
                "by_slot": [{"slot": list(c["positions"]), "accuracy": c["accuracy"],
                             "stderr": c["stderr"], "count": c["count"], "group": c["group"],
                             "no_answer": c["no_answer"]} for c in summary["by_configuration"]],
                "best_slot": list(parse_slot_key(summary["best_configuration"])),
                "worst_slot": list(parse_slot_key(summary["worst_configuration"])),
                "n_per_slot": summary["n_per_configuration"]}
