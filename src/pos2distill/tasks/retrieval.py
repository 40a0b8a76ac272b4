"""Retrieval (Pos2Distill-R1, METHOD.md section 2): one gold document, a slot is ``(p,)``.

The gold document goes to position p among the distractors, the model answers in a line, and the
line is scored by best-subspan EM (:func:`pos2distill.metrics.best_subspan_em`). The teacher reads
the gold document at the advantageous position (default the first: the attention sink); the pairs
put it at K other positions plus anchor copies at the advantageous one, and distil the teacher's
first answer line.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from pos2distill.data.records import Record
from pos2distill.errors import ConfigError, DataError
from pos2distill.metrics import best_subspan_em, exact_match, first_line, stops
from pos2distill.tasks.base import Task
from pos2distill.tasks.positions import Slot, parse_positions, place_gold, resolve_position


class Retrieval(Task):
    name = "retrieval"
    default_template = "authors"
    default_advantageous = "first"
    slot_option = "positions"
    slot_noun = "gold position"
    slot_width = 1
    metric = "accuracy"
    methods = ("sft", "seqkd", "kl", "kl+align", "r1")
    has_anchors = True
    plot_file = "accuracy_by_position.png"
    plot_kind = "line"

    def keep(self, records: Sequence[Record], source: str) -> list[Record]:
        multi = next((r for r in records if len(r.gold) > 1), None)
        if multi is not None:
            raise DataError(f"question {multi.id!r} has {len(multi.gold)} gold (hop) documents: "
                            "multi-hop data needs --task reasoning", path=source)
        return list(records)

    def slots(self, spec: str, n_documents: int) -> list[Slot]:
        return [(p,) for p in parse_positions(spec, n_documents)]

    def expand_slots(self, spec: str, n_documents: int) -> str:
        """``even:N``: N evenly spaced positions, first and last included; any other spec is a
        ``--positions`` value, returned as it is."""
        s = spec.strip().lower()
        if not s.startswith("even:"):
            return super().expand_slots(spec, n_documents)
        try:
            count = int(s[5:])
        except ValueError:
            raise ConfigError(f"positions: {spec!r}: even:N needs an integer N") from None
        if not 2 <= count:
            raise ConfigError(f"positions: {spec!r}: even:N needs N >= 2")
        count = min(count, n_documents)
        points = sorted({round(i * (n_documents - 1) / (count - 1)) for i in range(count)})
        return ",".join(map(str, points))

    def advantageous(self, spec: str, n_documents: int) -> Slot:
        return (resolve_position(spec, n_documents),)

    def place(self, record: Record, slot: Slot, rng: random.Random) -> Record:
        return place_gold(record, slot[0], rng)

    def training_slots(self, record_id: str, n_documents: int, adv: Slot, *, K: int, seed: int,
                       pool: str) -> list[Slot]:
        trivial = [p for p in range(n_documents) if (p,) != adv]
        if K > len(trivial):
            raise ConfigError(f"--K {K} is larger than the {len(trivial)} trivial positions of "
                              f"{n_documents}-document questions")
        rng = random.Random(f"{seed}|{record_id}|positions")
        return [(p,) for p in sorted(rng.sample(trivial, K))]

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        return best_subspan_em(prediction, answers)

    def target(self, response: str, *, first_line_only: bool) -> str:
        return first_line(response) if first_line_only else response.strip()

    # --- summaries: the strict view beside best-subspan EM ----------------------------------

    def slot_extras(self, slot: Slot, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Exact match of the whole first line, the share of answers that stop (at most the
        answer's words + 2) and the share with no answer at all (an empty prediction, e.g. EOS
        first): read from each row's prediction, so old files have them too (rows without
        predictions have none of them)."""
        if not all("prediction" in r and "answers" in r for r in rows):
            return {}
        return {"exact_match": sum(exact_match(r["prediction"], r["answers"]) for r in rows)
                / len(rows),
                "stop_rate": sum(stops(r["prediction"], r["answers"]) for r in rows) / len(rows),
                "no_answer": sum(not r["prediction"].strip() for r in rows) / len(rows)}

    def summary_extras(self, by_slot: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not all("exact_match" in e for e in by_slot):
            return {}
        exact = [e["exact_match"] for e in by_slot]
        return {"exact_match": {"mean": sum(exact) / len(exact), "gap": max(exact) - min(exact)},
                "stop_rate": sum(e["stop_rate"] * e["count"] for e in by_slot)
                / sum(e["count"] for e in by_slot),
                "no_answer": sum(e["no_answer"] * e["count"] for e in by_slot)
                / sum(e["count"] for e in by_slot)}

    def summary_words(self, summary: dict[str, Any]) -> str:
        if "exact_match" not in summary:
            return ""
        em = summary["exact_match"]
        return (f"exact match mean {em['mean']:.3f} GAP {em['gap']:.3f}  "
                f"stops {summary['stop_rate']:.1%}")

    def compare_extras(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        if "exact_match" not in before or "exact_match" not in after:
            return {}
        return {"strict": {k: {"before": before[k], "after": after[k]}
                           for k in ("exact_match", "stop_rate", "no_answer")}}

    def comparison_rows(self, cmp: dict[str, Any]) -> list[str]:
        if "strict" not in cmp:
            return []
        em, st = cmp["strict"]["exact_match"], cmp["strict"]["stop_rate"]
        na = cmp["strict"]["no_answer"]
        return [f"| exact match, mean | {em['before']['mean']:.3f} | {em['after']['mean']:.3f} | "
                f"{em['after']['mean'] - em['before']['mean']:+.3f} |",
                f"| exact match, GAP | {em['before']['gap']:.3f} | {em['after']['gap']:.3f} | "
                f"{em['after']['gap'] - em['before']['gap']:+.3f} |",
                f"| answers that stop | {st['before']:.3f} | {st['after']:.3f} | "
                f"{st['after'] - st['before']:+.3f} |",
                f"| no answer (empty) | {na['before']:.3f} | {na['after']:.3f} | "
                f"{na['after'] - na['before']:+.3f} |"]

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        strict = {k: summary[k] for k in ("exact_match", "stop_rate", "no_answer")
                  if k in summary}
        return {"accuracy_by_position": self.accuracy_by_slot(summary), "mean": summary["mean"],
                "gap": summary["gap"], "n_per_position": summary["n_per_slot"], **strict}

    def upgrade_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        if "by_slot" in summary:
            return summary
        old = {k: v for k, v in summary.items() if k not in (
            "by_position", "best_position", "worst_position", "n_per_position")}
        return {**old, "task": self.name,
                "by_slot": [{"slot": [e["position"]], "accuracy": e["accuracy"],
                             "stderr": e["stderr"], "count": e["count"]}
                            for e in summary["by_position"]],
                "best_slot": [summary["best_position"]], "worst_slot": [summary["worst_position"]],
                "n_per_slot": summary["n_per_position"]}

