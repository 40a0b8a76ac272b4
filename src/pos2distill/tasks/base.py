"""What a task is: the one place where retrieval, reasoning and judging differ.

A :class:`Task` says what data it keeps, its *slots* (the tuple of positions its gold documents
take: ``(p,)`` for retrieval, ``(first_hop, second_hop)`` for reasoning; for a judge, the order
its two candidate answers are shown in), how it places documents (or candidates) at a slot, its
default prompt template and advantageous slot, how it scores a prediction, what its teacher
answers and how a pair's teacher side is made, how it draws the K training slots (and whether it
has anchors), and how it summarises, tabulates, plots and compares probes. The stages (``probe``, ``teach``, ``pairs``, ``train``, ``report``,
``crosstask``) are written once against this class and never ask which task they run.

Files the stages write carry ``task`` and ``slot`` (lists of 0-based positions). Files written
before slots existed (rows with ``position`` or ``configuration``, summaries with ``by_position``
or ``by_configuration``) are read through :meth:`Task.upgrade_row` and
:meth:`Task.upgrade_summary`, so old run folders resume and report.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any, Iterable, Sequence

from pos2distill.data.records import Record
from pos2distill.errors import ConfigError
from pos2distill.metrics import binomial_stats
from pos2distill.tasks.positions import Slot, slot_key, slot_label, stored_slot
from pos2distill.tasks.prompts import TEMPLATES


class Task(ABC):
    """One way of asking multi-document questions (see the module docstring).

    Attributes (set by each task):
        name: the ``--task`` value.
        default_template: the prompt template of ``--template auto``.
        default_advantageous: the ``--advantageous`` of ``default`` (a spec of
            :meth:`advantageous`).
        slot_option: the probe option that names the evaluated slots (``positions`` or
            ``configurations``); the other tasks' options must stay at their default.
        slot_noun: what a slot is called in tables (``gold position``, ``hop positions``).
        slot_width: the number of positions in a slot (1 for retrieval, 2 for reasoning).
        metric: the column name of a slot's score (``accuracy``, ``EM``).
        methods: the ``train --method`` values that train this task's pairs.
        has_anchors: whether pairs include anchor copies at the advantageous slot.
        plot_file: the file name of a probe's or report's plot.
        plot_kind: ``line`` (slots on a numeric axis) or ``bars`` (one bar group per slot).
    """

    name: str
    default_template: str
    default_advantageous: str
    slot_option: str
    slot_noun: str
    slot_width: int
    metric: str
    methods: tuple[str, ...]
    has_anchors: bool
    plot_file: str
    plot_kind: str

    # --- options ---------------------------------------------------------------------------

    def configure(self, options: Any) -> "Task":
        """This task with the run's task-specific options (a stage config; e.g. the judge's
        verdict strings); the task itself when it has none."""
        return self

    def resolve_template(self, template: str) -> str:
        """The ``--template`` value a config keeps (validated): one of the prompt templates
        that ask this task's records."""
        if template not in TEMPLATES or template == "judge":
            raise ConfigError(f"--template: {template!r} is not one of "
                              f"{', '.join(t for t in TEMPLATES if t != 'judge')} "
                              f"(judge templates ask --task judge)")
        return template

    # --- data and slots ---------------------------------------------------------------------

    @abstractmethod
    def keep(self, records: Sequence[Record], source: str) -> list[Record]:
        """The records this task can ask (refusing or leaving out the others)."""

    @abstractmethod
    def slots(self, spec: str, n_documents: int) -> list[Slot]:
        """The evaluated slots of a probe's ``--positions``/``--configurations`` value, in the
        order they are reported."""

    def expand_slots(self, spec: str, n_documents: int) -> str:
        """A slot spec with any shorthand written out for ``n_documents`` (the value a probe
        config then holds); validated."""
        self.slots(spec, n_documents)
        return spec

    @abstractmethod
    def advantageous(self, spec: str, n_documents: int) -> Slot:
        """The advantageous slot of an ``--advantageous`` value (``auto`` is resolved by the
        caller from a probe's best slot)."""

    @abstractmethod
    def place(self, record: Record, slot: Slot, rng: random.Random) -> Record:
        """``record`` with its gold documents at ``slot``, distractors in ``rng``'s order."""

    @abstractmethod
    def training_slots(self, record_id: str, n_documents: int, adv: Slot, *, K: int, seed: int,
                       pool: str) -> list[Slot]:
        """K distinct slots other than ``adv`` for one question's training pairs (``pool``: the
        pairs' ``--configurations`` value, for tasks that draw from named configurations)."""

    # --- scoring ----------------------------------------------------------------------------

    @abstractmethod
    def score(self, prediction: str, answers: Sequence[str]) -> float:
        """1.0 when ``prediction`` answers correctly, else 0.0."""

    def score_item(self, record: Record, slot: Slot, prediction: str) -> float | None:
        """The score of ``prediction`` for ``record`` asked at ``slot`` (:meth:`score` of its
        answers; None: nothing to score against)."""
        return self.score(prediction, record.answers)

    def row_extras(self, slot: Slot, prediction: str) -> dict[str, Any]:
        """Task-specific fields of a probe row (besides id, task, slot, prediction, answers,
        correct)."""
        return {}

    def row(self, record: Record, slot: Slot, prediction: str) -> dict[str, Any]:
        """The probe row of one answered prompt."""
        return {"id": record.id, "task": self.name, "slot": list(slot), "prediction": prediction,
                "answers": list(record.answers),
                "correct": self.score_item(record, slot, prediction),
                **self.row_extras(slot, prediction)}

    def model_reads(self, items: Sequence[tuple[Record, Slot, str]], predictions: Sequence[str],
                    generator: Any, *, max_new_tokens: int) -> list[dict[str, Any]]:
        """Fields of each probe row that need the model beyond its greedy answer (e.g. the
        judge's verdict probabilities), read through ``generator``; none by default."""
        return [{} for _ in items]

    @abstractmethod
    def target(self, response: str, *, first_line_only: bool) -> str:
        """The part of a teacher response the pairs distil."""

    # --- the teacher and the pairs ----------------------------------------------------------

    def teacher_slots(self, adv: Slot) -> list[Slot]:
        """The slots the teacher answers each question at: the advantageous one."""
        return [adv]

    def teacher_fields(self, answered: Sequence[tuple[tuple[Record, Slot, str], str,
                                                      dict[str, Any]]]) -> dict[str, Any]:
        """A teacher row's own fields from its answered prompts (``((record, slot, prompt),
        response, model reads)`` per teacher slot): the prompt, the response, and ``correct``
        (whether the row is kept: the task scores the response right)."""
        (record, slot, prompt), response, _ = answered[0]
        return {"teacher_prompt": prompt, "response": response,
                "correct": self.score_item(record, slot, response) == 1.0}

    def pair_fields(self, row: dict[str, Any], placed: Record, slot: Slot, student_prompt: str,
                    tokenizer: Any, *, first_line_only: bool) -> dict[str, Any]:
        """A training pair's teacher side for the student at ``slot`` (``placed``: the record as
        the student sees it): the stored teacher prompt, and the task's part of the response."""
        return {"teacher_prompt": row["teacher_prompt"],
                "response": self.target(row["response"], first_line_only=first_line_only)}

    # --- summaries --------------------------------------------------------------------------

    def slot_extras(self, slot: Slot, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Task-specific fields of one slot's summary entry."""
        return {}

    def summary_extras(self, by_slot: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Task-specific fields of a summary, from its slot entries."""
        return {}

    def summarize(self, rows: Iterable[dict[str, Any]], order: Sequence[Slot]) -> dict[str, Any]:
        """Score per slot (in ``order``; rows at other slots are left out), their unweighted mean
        (the paper averages over positions, not examples), GAP = max - min, the best and worst
        slot (ties: the first in ``order``) and the smallest count."""
        members: dict[Slot, list[dict[str, Any]]] = {}
        for r in map(self.upgrade_row, rows):
            members.setdefault(tuple(r["slot"]), []).append(r)
        by_slot = []
        for slot in order:
            if slot not in members:
                continue
            s = binomial_stats([r["correct"] for r in members[slot]])
            by_slot.append({"slot": list(slot), "accuracy": s.accuracy, "stderr": s.stderr,
                            "count": s.count, **self.slot_extras(slot, members[slot])})
        if not by_slot:
            raise ConfigError("no probe rows at the requested slots")
        accuracies = [e["accuracy"] for e in by_slot]
        best = max(by_slot, key=lambda e: e["accuracy"])     # ties: the first in order
        worst = min(by_slot, key=lambda e: e["accuracy"])
        return {"task": self.name, "by_slot": by_slot,
                "mean": sum(accuracies) / len(accuracies),
                "gap": max(accuracies) - min(accuracies),
                "best_slot": best["slot"], "worst_slot": worst["slot"],
                "n_per_slot": min(e["count"] for e in by_slot),
                **self.summary_extras(by_slot)}

    def plot(self, summary: dict[str, Any], path: Any, *, title: str, name: str = "") -> None:
        """The probe's plot: the score by slot (``name``: the series label, e.g. the model)."""
        from pos2distill.plots import plot_slots   # matplotlib: only when a plot is drawn

        plot_slots({name: _points(summary, "accuracy", "stderr")}, path, kind=self.plot_kind,
                   title=title)

    def plot_comparison(self, cmp: dict[str, Any], path: Any, *, title: str) -> None:
        """A report's plot: the score by slot before and after."""
        from pos2distill.plots import plot_slots

        plot_slots({"before": _points(cmp, "before", "before_stderr"),
                    "after": _points(cmp, "after", "after_stderr")}, path, kind=self.plot_kind,
                   title=title)

    def accuracy_by_slot(self, summary: dict[str, Any]) -> dict[str, float]:
        """``{slot_key: score}`` of a summary (the keys of demo and experiment results)."""
        return {slot_key(e["slot"]): e["accuracy"] for e in summary["by_slot"]}

    @abstractmethod
    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The block ``demo``'s summary.json keeps of a probe."""

    def extra_cells(self, entry: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Table cells of a slot entry before and after the score columns, and their headers
        (``entry`` = None asks for the headers)."""
        return [], []

    def summary_words(self, summary: dict[str, Any]) -> str:
        """Task-specific words of a summary's one-line description (e.g. group means)."""
        return ""

    def describe(self, summary: dict[str, Any]) -> str:
        """One line: mean, GAP and the best slot (1-based)."""
        words = self.summary_words(summary)
        return (f"mean {summary['mean']:.3f}  GAP {summary['gap']:.3f}  "
                + (f"{words}  " if words else "")
                + f"best {self.slot_noun} {slot_label(summary['best_slot'])} (1-based)")

    def table(self, summary: dict[str, Any]) -> str:
        """Markdown: a line per slot (1-based), then the mean, GAP and best slot."""
        before, after = self.extra_cells(None)
        head = [f"{self.slot_noun} (1-based)", *before, self.metric, "s.e.", "n", *after]
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join("---:" if h in (self.metric, "s.e.", "n") else "---"
                                for h in head) + "|"]
        for e in summary["by_slot"]:
            b, a = self.extra_cells(e)
            cells = [slot_label(e["slot"]), *b, f"{e['accuracy']:.3f}", f"{e['stderr']:.3f}",
                     str(e["count"]), *a]
            lines.append("| " + " | ".join(cells) + " |")
        words = self.summary_words(summary)
        lines += ["", f"mean {summary['mean']:.3f} · GAP {summary['gap']:.3f} · "
                      + (f"{words} · " if words else "")
                      + f"best {self.slot_noun} {slot_label(summary['best_slot'])} (1-based)"]
        return "\n".join(lines) + "\n"

    def compare_extras(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """Task-specific fields of a before/after comparison."""
        return {}

    def compare(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """Per-slot and headline deltas; both probes must cover the same slots."""
        b = {tuple(e["slot"]): e for e in before["by_slot"]}
        a = {tuple(e["slot"]): e for e in after["by_slot"]}
        if set(a) != set(b):
            def labels(slots: Iterable[Slot]) -> str:
                return "; ".join(slot_label(s) for s in sorted(slots))
            raise ConfigError(f"the probes cover different slots ({labels(b)} vs {labels(a)}, "
                              f"1-based); probe both models with the same --{self.slot_option}")
        rows = [{"slot": list(s), **_extras_of_both(b[s], a[s]),
                 "before": b[s]["accuracy"], "after": a[s]["accuracy"],
                 "delta": a[s]["accuracy"] - b[s]["accuracy"],
                 "before_stderr": b[s]["stderr"], "after_stderr": a[s]["stderr"],
                 "count": min(b[s]["count"], a[s]["count"])} for s in b]
        adv = tuple(before["best_slot"])
        return {"task": self.name, "by_slot": rows,
                "before": {k: before[k] for k in ("mean", "gap", "best_slot")},
                "after": {k: after[k] for k in ("mean", "gap", "best_slot")},
                "advantageous_slot": list(adv),
                "advantageous_delta": a[adv]["accuracy"] - b[adv]["accuracy"],
                "mean_delta": after["mean"] - before["mean"],
                "gap_delta": after["gap"] - before["gap"], **self.compare_extras(before, after)}

    def comparison_rows(self, cmp: dict[str, Any]) -> list[str]:
        """Task-specific lines of the headline part of a comparison table."""
        return []

    def comparison_table(self, cmp: dict[str, Any]) -> str:
        """Markdown: before, after and Δ per slot, then the headline numbers."""
        before, _ = self.extra_cells(None)
        lines = ["| " + " | ".join([f"{self.slot_noun} (1-based)", *before, "before", "after",
                                    "Δ"]) + " |",
                 "|---|" + "---|" * len(before) + "---:|---:|---:|"]
        for r in cmp["by_slot"]:
            b, _ = self.extra_cells(r)
            lines.append("| " + " | ".join([slot_label(r["slot"]), *b, f"{r['before']:.3f}",
                                            f"{r['after']:.3f}", f"{r['delta']:+.3f}"]) + " |")
        b, a = cmp["before"], cmp["after"]
        adv = next(r for r in cmp["by_slot"] if r["slot"] == cmp["advantageous_slot"])
        lines += ["", "| | before | after | Δ |", "|---|---:|---:|---:|", *self.comparison_rows(cmp),
                  f"| mean | {b['mean']:.3f} | {a['mean']:.3f} | {cmp['mean_delta']:+.3f} |",
                  f"| GAP (max − min) | {b['gap']:.3f} | {a['gap']:.3f} | "
                  f"{cmp['gap_delta']:+.3f} |",
                  f"| {self.slot_noun} {slot_label(adv['slot'])} (best before) | "
                  f"{adv['before']:.3f} | {adv['after']:.3f} | {adv['delta']:+.3f} |"]
        return "\n".join(lines) + "\n"

    # --- files written before slots existed -------------------------------------------------

    def upgrade_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A probe row with ``task`` and ``slot`` (rows written before slots existed have
        ``position``, or reasoning's ``positions``)."""
        if "slot" in row:
            return row
        return {**row, "task": self.name,
                "slot": list(stored_slot(row, ("positions", "position")) or ())}

    @abstractmethod
    def upgrade_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """A probe summary with ``task``, ``by_slot``, ``best_slot``, ``worst_slot`` and
        ``n_per_slot`` (summaries written before slots existed have other keys)."""


def _points(summary: dict[str, Any], value: str, err: str) -> list[tuple[Slot, float, float]]:
    return [(tuple(e["slot"]), e[value], e[err]) for e in summary["by_slot"]]


def _extras_of_both(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The task's own fields of one slot in a comparison: kept once when both probes agree
    (``group``), as ``before_*`` and ``after_*`` when they differ (``no_answer``)."""
    out: dict[str, Any] = {}
    for k, v in before.items():
        if k in ("slot", "accuracy", "stderr", "count"):
            continue
        if after.get(k) == v:
            out[k] = v
        else:
            out[f"before_{k}"], out[f"after_{k}"] = v, after.get(k)
    return out
