"""LLM-as-a-judge (METHOD.md section 6b): two candidate answers, a slot is an *answer order*.

A judging item (a :class:`~pos2distill.data.records.Record` of kind ``judge``) holds a question,
optional context documents, two candidates and an optional label. Its slots are the two orders the
candidates can be shown in: ``(0, 1)`` (candidate 1 shown first, as ``Answer A``) and ``(1, 0)``;
:meth:`Judge.place` puts the candidates in that order and leaves the documents where they are.

The judge answers with an optional short rationale and then a verdict string (default ``[[A]]``
for the answer shown first, ``[[B]]`` for the second, ``[[C]]`` for a tie): the embedded judge
answers ``"CITY [[A]]"``, the city it looked up and its verdict. :func:`read_verdict` takes the
*last* verdict string in the text (whitespace between its characters is allowed: word-level
tokenizers decode ``[[A]]`` as ``[ [ A ] ]``); a text without one is an *unparsed* verdict,
counted in every summary, never dropped.

Where the verdict strings differ at one token after a shared prefix (``[[``; found by
:func:`verdict_continuations`), :meth:`Judge.model_reads` teacher-forces the generated rationale
and that prefix and reads the verdict tokens' probabilities, renormalised over them. The probe
summary holds the order-bias metrics of :func:`pos2distill.metrics.judge_metrics` (consistency,
fairness, first/second wins, accuracy), repetition stability when sampling, and balanced position
calibration (BPC) with ``--calibrate bpc``.

The teacher of ``train --method r1`` on a judge is the frozen judge's order-balanced verdict:
``teach`` answers in both orders (:meth:`Judge.teacher_fields`) and ``pairs`` writes each order
with the balanced distribution fixed at its verdict token (:meth:`Judge.pair_fields`).

The pretraining of the embedded judge renders its examples with :func:`render_judge_example`, the
same code the stages use.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import re
from typing import Any, Iterable, Sequence

from pos2distill.data.records import Record
from pos2distill.errors import ConfigError, DataError
from pos2distill.metrics import (CHOICES, balanced_choice, binomial_stats, judge_metrics,
                                 stability, winner)
from pos2distill.tasks.base import Task
from pos2distill.tasks.positions import Slot
from pos2distill.tasks.prompts import (DEFAULT_VERDICTS, TEMPLATES, ChatMode, check_judge_template,
                                       judge_instruction, render_prompt)

#: The two answer orders: candidate 1 shown first, and candidate 2 shown first.
ORDERS: tuple[Slot, Slot] = ((0, 1), (1, 0))
#: ``--calibrate`` values.
CALIBRATIONS = ("none", "bpc")
#: The J block of a summary (the issue's required keys).
J_KEYS = ("consistency", "fairness", "first_wins", "second_wins", "accuracy", "n_pairs")


# ---------------------------------------------------------------------------------------------
# Verdict strings
# ---------------------------------------------------------------------------------------------

def parse_verdicts(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The verdict strings of a ``--verdicts`` value: ``A,B`` or ``A,B,TIE`` (the answer shown
    first, the second, a tie), comma-separated. Refused: a count other than 2 or 3, an empty
    string, two equal strings, or one inside another (the last verdict in a text would be
    ambiguous)."""
    items = [v.strip() for v in spec.split(",")] if isinstance(spec, str) else list(spec)
    if len(items) not in (2, 3):
        raise ConfigError(f"--verdicts: {spec!r}: give 2 or 3 comma-separated strings (the answer "
                          "shown first, the second, optionally a tie), e.g. [[A]],[[B]],[[C]]")
    if not all(isinstance(v, str) and v.strip() for v in items):
        raise ConfigError(f"--verdicts: {spec!r}: a verdict string is empty")
    squeezed = ["".join(v.split()) for v in items]
    for i, a in enumerate(squeezed):
        for j, b in enumerate(squeezed):
            if i != j and a in b:
                raise ConfigError(f"--verdicts: {spec!r}: {items[i]!r} "
                                  + ("repeats" if a == b else "is inside") + f" {items[j]!r}; "
                                  "verdict strings must be distinct and none inside another")
    return tuple(items)


@functools.lru_cache(maxsize=64)
def _pattern(verdict: str) -> re.Pattern[str]:
    """``verdict`` with any whitespace allowed between its characters."""
    return re.compile(r"\s*".join(re.escape(c) for c in verdict if not c.isspace()))


def find_verdict(text: str, verdicts: Sequence[str]) -> tuple[str | None, int]:
    """The choice (``first``, ``second``, ``tie``) of the last verdict string in ``text`` and
    where it starts; ``(None, len(text))`` when there is none."""
    best: tuple[int, str | None] = (-1, None)
    for choice, verdict in zip(CHOICES, verdicts):
        for m in _pattern(verdict).finditer(text):
            if m.start() > best[0]:
                best = (m.start(), choice)
    return (best[1], best[0]) if best[1] is not None else (None, len(text))


def read_verdict(text: str, verdicts: Sequence[str] = DEFAULT_VERDICTS) -> str | None:
    """The choice of the last verdict string in ``text`` (None: unparsed)."""
    return find_verdict(text, verdicts)[0]


# ---------------------------------------------------------------------------------------------
# Rendering: the one place a judge prompt and its gold response are made
# ---------------------------------------------------------------------------------------------

def place_order(record: Record, order: Slot) -> Record:
    """``record`` as shown in ``order``: candidates reordered, the label renamed to the shown
    position (``"1"`` = shown first); the documents stay where they are."""
    if record.kind != "judge":
        raise DataError(f"record {record.id!r} is not a judging item (kind {record.kind}); "
                        "--task judge needs pairs of answers to judge")
    if tuple(sorted(order)) != (0, 1):
        raise ConfigError(f"answer order {list(order)}: use 0,1 (candidate 1 first) or 1,0")
    label = record.label
    if label in ("1", "2"):
        label = str(tuple(order).index(int(label) - 1) + 1)
    return dataclasses.replace(record, candidates=tuple(record.candidates[i] for i in order),
                               label=label)


def gold_response(shown: Record, verdicts: Sequence[str] = DEFAULT_VERDICTS) -> str:
    """The reference answer of an item *as shown* (:func:`place_order`): its rationale (the
    record's first answer, e.g. the looked-up city; none when it has no answers), a space, and the
    verdict of its label: ``"Lima [[A]]"``."""
    if shown.label is None:
        raise DataError(f"judging item {shown.id!r} has no label: no gold verdict")
    if shown.label == "tie" and len(verdicts) < 3:
        raise ConfigError("a tie label needs a third (tie) verdict string in --verdicts")
    verdict = verdicts[{"1": 0, "2": 1, "tie": 2}[shown.label]]
    return f"{shown.answers[0]} {verdict}" if shown.answers else verdict


def render_judge_example(record: Record, order: Slot, tokenizer: Any, *, chat: ChatMode = "auto",
                         verdicts: Sequence[str] = DEFAULT_VERDICTS, template: str = "judge",
                         instruction: str = "") -> tuple[str, str]:
    """``(prompt, response)`` of a labelled judging item shown in ``order``: the exact prompt the
    stages give the model (``render_prompt`` of the ``judge`` template; the instruction names
    ``verdicts``) and the gold response (:func:`gold_response`), e.g. ``"Lima [[A]]"``."""
    shown = place_order(record, order)
    instruction = instruction or default_instruction(tuple(verdicts))
    prompt = render_prompt(shown, tokenizer, template=template, chat=chat,
                           instruction=instruction)
    return prompt, gold_response(shown, verdicts)


def default_instruction(verdicts: tuple[str, ...]) -> str:
    """The instruction a judge template gets when ``--instruction`` is empty: ``""`` (the
    template's own) for the default verdicts, else one naming ``verdicts``."""
    return "" if verdicts == DEFAULT_VERDICTS else judge_instruction(verdicts)


# ---------------------------------------------------------------------------------------------
# Verdict probabilities at the verdict token
# ---------------------------------------------------------------------------------------------

def verdict_continuations(tokenizer: Any, rationale: str, verdicts: Sequence[str]
                          ) -> tuple[list[int], list[int]] | None:
    """``(prefix, tokens)``: the ids of ``rationale`` followed by the verdicts' shared start (e.g.
    ``[[``), and each verdict's next token there, when the verdicts differ at exactly that one
    token (each continuation tokenised whole, so merges across the boundary are respected).
    None when they do not (a verdict longer than one distinguishing token, or two verdicts
    whose next token is the same)."""
    ids = [tokenizer(rationale + v, add_special_tokens=False)["input_ids"] for v in verdicts]
    n = 0
    while all(len(x) > n for x in ids) and len({x[n] for x in ids}) == 1:
        n += 1
    if not all(len(x) > n for x in ids):
        return None
    tokens = [x[n] for x in ids]
    if len(set(tokens)) != len(tokens):
        return None
    return list(ids[0][:n]), tokens


def rationale_of(prediction: str, verdicts: Sequence[str]) -> str:
    """The text before the last verdict (the whole text, stripped, when there is none), ending
    in a space when it is not empty."""
    _, start = find_verdict(prediction, verdicts)
    text = prediction[:start].strip()
    return f"{text} " if text else ""


def renormalised(logprobs: Sequence[float]) -> tuple[list[float], float]:
    """Probabilities renormalised over the verdict tokens, and their total mass before."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights], math.exp(top) * total


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------

def parse_orders(spec: str) -> list[Slot]:
    """``all`` (both orders), or orders like ``0,1`` / ``1,0`` separated by ``;``."""
    text = spec.strip().lower()
    if text == "all":
        return list(ORDERS)
    out: list[Slot] = []
    for part in text.replace(";", " ").split():
        try:
            order = tuple(int(x) for x in part.split(","))
        except ValueError:
            order = ()
        if order not in ORDERS:
            raise ConfigError(f"--orders: {part!r}: use all, 0,1 (candidate 1 shown first), 1,0 "
                              "or '0,1;1,0'")
        if order not in out:
            out.append(order)
    if not out:
        raise ConfigError("--orders: empty")
    return out


class Judge(Task):
    name = "judge"
    default_template = "judge"
    default_advantageous = "balanced"
    slot_option = "orders"
    slot_noun = "answer order"
    slot_width = 2
    metric = "verdicts"      # plots and reports: "verdicts by answer order"
    methods = ("r1", "swap-sft")
    has_anchors = False
    plot_file = "verdicts_by_order.png"
    plot_kind = "bars"

    def __init__(self, verdicts: Sequence[str] = DEFAULT_VERDICTS, *, samples: int = 0,
                 temperature: float = 1.0, calibrate: str = "none"):
        self.verdicts = tuple(verdicts)
        self.samples, self.temperature, self.calibrate = samples, temperature, calibrate

    def configure(self, options: Any) -> "Judge":
        return Judge(parse_verdicts(getattr(options, "verdicts", ",".join(DEFAULT_VERDICTS))),
                     samples=getattr(options, "samples", 0),
                     temperature=getattr(options, "temperature", 1.0),
                     calibrate=getattr(options, "calibrate", "none"))

    def resolve_template(self, template: str) -> str:
        """``judge``, or a user's judge template: the text itself, or a file holding it (both
        answer slots required)."""
        if template == "judge":
            return template
        if template in TEMPLATES:
            raise ConfigError(f"--template {template}: a judge template needs both answer slots "
                              "({answer_a} and {answer_b}); use judge or your own template file")
        text = template
        if "{" not in template:
            try:
                with open(template, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise ConfigError(f"--template {template!r}: not judge and not a readable "
                                  f"template file ({e.strerror})") from None
            return check_judge_template(text, f"--template {template}")
        return check_judge_template(text)

    # --- data and slots ---------------------------------------------------------------------

    def keep(self, records: Sequence[Record], source: str) -> list[Record]:
        other = next((r for r in records if r.kind != "judge"), None)
        if other is not None:
            raise DataError(f"question {other.id!r} is not a judging item (no pair of answers): "
                            "--task judge reads judgement files (MT-Bench, LLMBar, RewardBench, "
                            "ours) or synthetic-judge:SPLIT", path=source)
        return list(records)

    def slots(self, spec: str, n_documents: int) -> list[Slot]:
        return parse_orders(spec)

    def advantageous(self, spec: str, n_documents: int) -> Slot:
        """``balanced``: no single order; the teacher is both orders' balanced verdict, and
        teacher rows and pairs carry the empty slot ``()``."""
        if spec.strip().lower() != "balanced":
            raise ConfigError(f"--advantageous {spec!r}: a judge has no advantageous order; its "
                              "teacher is the order-balanced verdict (--advantageous balanced)")
        return ()

    def place(self, record: Record, slot: Slot, rng: random.Random) -> Record:
        return place_order(record, slot)

    def training_slots(self, record_id: str, n_documents: int, adv: Slot, *, K: int, seed: int,
                       pool: str) -> list[Slot]:
        return list(ORDERS)

    # --- scoring ----------------------------------------------------------------------------

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        """1.0 when the last verdict of ``prediction`` is one of ``answers`` (verdict strings)."""
        choice = read_verdict(prediction, self.verdicts)
        return float(choice is not None
                     and self.verdicts[CHOICES.index(choice)] in answers)

    def score_item(self, record: Record, slot: Slot, prediction: str) -> float | None:
        """Whether the verdict names the label (None for an unlabelled item)."""
        if record.label is None:
            return None
        return float(winner(read_verdict(prediction, self.verdicts), slot) == record.label)

    def row(self, record: Record, slot: Slot, prediction: str) -> dict[str, Any]:
        choice = read_verdict(prediction, self.verdicts)
        return {"id": record.id, "task": self.name, "slot": list(slot), "prediction": prediction,
                "label": record.label, "choice": choice, "winner": winner(choice, slot),
                "correct": self.score_item(record, slot, prediction)}

    def model_reads(self, items: Sequence[tuple[Record, Slot, str]], predictions: Sequence[str],
                    generator: Any, *, max_new_tokens: int) -> list[dict[str, Any]]:
        """Per row: ``verdict_probs`` (first, second[, tie]; renormalised over the verdict
        tokens, None when the verdicts are not one token apart or the backend cannot score) and
        ``verdict_mass`` (their probability before renormalising); with ``--samples N`` the
        ``samples`` (choices of N sampled answers) and their ``stability``."""
        extras: list[dict[str, Any]] = [{"verdict_probs": None} for _ in items]
        scorer = getattr(generator, "next_token_logprobs", None)
        if scorer is not None:
            asks = []
            for k, ((_, _, prompt), pred) in enumerate(zip(items, predictions)):
                cont = verdict_continuations(generator.tokenizer,
                                             rationale_of(pred, self.verdicts), self.verdicts)
                if cont is not None:
                    asks.append((k, prompt, cont))
            logprobs = scorer([p for _, p, _ in asks], [c[0] for _, _, c in asks],
                              [c[1] for _, _, c in asks])
            for (k, _, _), lps in zip(asks, logprobs):
                probs, mass = renormalised(lps)
                extras[k] = {"verdict_probs": probs, "verdict_mass": mass}
        if self.samples:
            sampler = getattr(generator, "sample", None)
            if sampler is None:
                raise ConfigError("--samples: this generation backend cannot sample; use "
                                  "--backend hf")
            texts = sampler([p for _, _, p in items], n=self.samples,
                            temperature=self.temperature, max_new_tokens=max_new_tokens)
            for e, repeats in zip(extras, texts):
                choices = [read_verdict(t, self.verdicts) for t in repeats]
                e.update(samples=choices, stability=stability(choices))
        return extras

    def target(self, response: str, *, first_line_only: bool) -> str:
        return response.strip()

    # --- the teacher: the frozen judge's order-balanced verdict -----------------------------

    def teacher_slots(self, adv: Slot) -> list[Slot]:
        return list(ORDERS)

    def teacher_fields(self, answered: Sequence[tuple[tuple[Record, Slot, str], str,
                                                      dict[str, Any]]]) -> dict[str, Any]:
        """The frozen judge's answers in both orders and its *balanced* verdict: each
        candidate's verdict probability averaged over the orders (``balanced``: candidate 1,
        candidate 2[, tie]) and their argmax ``winner``. ``response`` is the rationale to
        distil: the text before the verdict in the first order whose own verdict names the
        balanced winner (``rationale_order``; order 0,1 when neither does). Kept (``correct``)
        when both orders have verdict probabilities and, for a labelled item, the balanced
        winner is the label (retrieval keeps only right teacher answers the same way)."""
        record = answered[0][0][0]
        by_order = {tuple(slot): (prompt, response, reads)
                    for (_, slot, prompt), response, reads in answered}
        prompts = [by_order[o][0] for o in ORDERS]
        responses = [by_order[o][1] for o in ORDERS]
        probs = [by_order[o][2].get("verdict_probs") for o in ORDERS]
        choices = [read_verdict(r, self.verdicts) for r in responses]
        fields = {"teacher_prompt": prompts[0], "teacher_prompts": prompts,
                  "responses": responses, "choices": choices, "verdict_probs": probs,
                  "verdicts": list(self.verdicts)}
        if any(p is None for p in probs):
            return {**fields, "response": "", "correct": False}
        best, balanced = balanced_choice(probs[0], probs[1])
        k = next((i for i, o in enumerate(ORDERS) if winner(choices[i], o) == best), 0)
        return {**fields, "response": rationale_of(responses[k], self.verdicts),
                "rationale_order": k, "winner": best, "balanced": balanced,
                "correct": record.label is None or record.label == best}

    def pair_fields(self, row: dict[str, Any], placed: Record, slot: Slot, student_prompt: str,
                    tokenizer: Any, *, first_line_only: bool) -> dict[str, Any]:
        """The student in one order: the response is the rationale and the balanced winner's
        verdict *in this order*; ``fixed_tokens`` sets the teacher's distribution at the verdict
        token to the balanced one (mapped to this order's verdict tokens); the other tokens'
        teacher is the frozen judge reading the rationale's own order. ``answers`` holds the
        gold response in this order (labelled items; ``train --method swap-sft``)."""
        verdicts = tuple(row["verdicts"])
        balanced = row["balanced"]
        shown = [balanced[slot[0]], balanced[slot[1]], *balanced[2:]]   # first, second[, tie]
        choice = {"1": slot.index(0), "2": slot.index(1), "tie": 2}[row["winner"]]
        rationale = row["response"]
        cont = verdict_continuations(tokenizer, rationale, verdicts)
        if cont is None:
            raise DataError(f"question {row['id']!r}: the verdict strings {list(verdicts)} do not "
                            "differ at one token with this tokenizer: no verdict distribution to "
                            "distil")
        prefix, tokens = cont
        return {"teacher_prompt": row["teacher_prompts"][row["rationale_order"]],
                "response": rationale + verdicts[choice],
                "fixed_tokens": [{"index": len(prefix), "ids": tokens, "probs": shown}],
                "answers": [gold_response(placed, verdicts)] if placed.label else []}

    # --- summaries --------------------------------------------------------------------------

    def summarize(self, rows: Iterable[dict[str, Any]], order: Sequence[Slot]) -> dict[str, Any]:
        """Verdict shares per order (``by_slot``), the order-bias metrics over the items judged
        in both orders (:func:`pos2distill.metrics.judge_metrics`; the ``J`` block), stability
        when sampled, and BPC with ``--calibrate bpc``."""
        by_id: dict[str, dict[Slot, dict[str, Any]]] = {}
        for r in map(self.upgrade_row, rows):
            by_id.setdefault(r["id"], {})[tuple(r["slot"])] = r
        by_slot = []
        for slot in order:
            members = [v[slot] for v in by_id.values() if slot in v]
            if members:
                by_slot.append(order_entry(slot, members))
        if not by_slot:
            raise ConfigError("no probe rows at the requested answer orders")
        complete = [v for v in by_id.values() if all(o in v for o in ORDERS)]
        metrics = judge_metrics([(v[ORDERS[0]]["choice"], v[ORDERS[1]]["choice"])
                                 for v in complete],
                                [v[ORDERS[0]].get("label") for v in complete])
        judged = [r for v in by_id.values() for r in v.values()]
        out: dict[str, Any] = {
            "task": self.name, "by_slot": by_slot, **metrics,
            "unparsed": sum(r["choice"] is None for r in judged), "n_rows": len(judged),
            # The generic slot fields: the order whose first shown answer wins most, and least.
            "best_slot": max(by_slot, key=_first_share)["slot"],
            "worst_slot": min(by_slot, key=_first_share)["slot"],
            "n_per_slot": min(e["count"] for e in by_slot), "verdicts": list(self.verdicts)}
        stable = [r["stability"] for r in judged if "stability" in r]
        if stable:
            out["stability"] = sum(stable) / len(stable)
            out["samples"] = len(judged[0].get("samples") or [])
        if self.calibrate == "bpc":
            out["bpc"] = bpc_summary(complete)
        return out

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The J block: consistency, fairness, first and second wins, accuracy, n_pairs."""
        return {k: summary.get(k) for k in J_KEYS}

    def describe(self, summary: dict[str, Any]) -> str:
        words = [f"consistency {_num(summary['consistency'])}",
                 f"fairness {_num(summary['fairness'], signed=True)}",
                 f"first wins {_num(summary['first_wins'])}",
                 f"second wins {_num(summary['second_wins'])}",
                 f"accuracy {_num(summary['accuracy'])}", f"pairs {summary['n_pairs']}",
                 f"unparsed {summary['unparsed']}"]
        if "stability" in summary:
            words.append(f"stability {summary['stability']:.3f}")
        if "bpc" in summary:
            words.append(f"BPC accuracy {_num(summary['bpc']['accuracy'])} (two passes)")
        return "  ".join(words)

    def table(self, summary: dict[str, Any]) -> str:
        """Markdown: verdict shares per order, then the order-bias metrics (and BPC)."""
        lines = ["| answer order | first | second | tie | unparsed | accuracy | n |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for e in summary["by_slot"]:
            lines.append(f"| {order_name(e['slot'])} | {e['first']:.3f} | {e['second']:.3f} | "
                         f"{e['tie']:.3f} | {e['unparsed']:.3f} | {_num(e['accuracy'])} | "
                         f"{e['count']} |")
        lines += ["", "| metric | value |", "|---|---:|",
                  *(f"| {k} | {_num(summary[k], signed=k == 'fairness')} |"
                    for k in ("consistency", "fairness", "first_wins", "second_wins", "ties",
                              "accuracy")),
                  f"| pairs (both orders) | {summary['n_pairs']} |",
                  f"| primacy / recency pairs | {summary['primacy']} / {summary['recency']} |",
                  f"| unparsed verdicts | {summary['unparsed']} of {summary['n_rows']} |"]
        if "stability" in summary:
            lines.append(f"| stability ({summary['samples']} samples) | "
                         f"{summary['stability']:.3f} |")
        if "bpc" in summary:
            b = summary["bpc"]
            lines.append(f"| BPC accuracy (two passes, {b['n_pairs']} pairs) | "
                         f"{_num(b['accuracy'])} |")
        return "\n".join(lines) + "\n"

    def plot(self, summary: dict[str, Any], path: Any, *, title: str, name: str = "") -> None:
        """Stacked bars: the share of each verdict in each answer order."""
        from pos2distill.plots import plot_verdicts   # matplotlib: only when a plot is drawn

        plot_verdicts({name: summary}, path, title=title)

    def compare(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """The J blocks before and after and their differences, and the verdict shares per
        order."""
        b, a = self.headline(before), self.headline(after)
        delta = {k: (a[k] - b[k]) if isinstance(a[k], (int, float)) and
                 isinstance(b[k], (int, float)) else None for k in J_KEYS}
        return {"task": self.name, "before": b, "after": a, "delta": delta,
                "by_slot": {"before": before["by_slot"], "after": after["by_slot"]},
                "unparsed": {"before": before["unparsed"], "after": after["unparsed"]}}

    def comparison_table(self, cmp: dict[str, Any]) -> str:
        lines = ["| | before | after | Δ |", "|---|---:|---:|---:|"]
        for k in J_KEYS:
            signed = k == "fairness"
            d = cmp["delta"][k]
            lines.append(f"| {k} | {_num(cmp['before'][k], signed=signed)} | "
                         f"{_num(cmp['after'][k], signed=signed)} | "
                         f"{'' if d is None else f'{d:+.3f}'} |")
        u = cmp["unparsed"]
        lines.append(f"| unparsed verdicts | {u['before']} | {u['after']} | |")
        return "\n".join(lines) + "\n"

    def plot_comparison(self, cmp: dict[str, Any], path: Any, *, title: str) -> None:
        from pos2distill.plots import plot_verdicts

        plot_verdicts({"before": {"by_slot": cmp["by_slot"]["before"]},
                       "after": {"by_slot": cmp["by_slot"]["after"]}}, path,
                      title=title)

    def upgrade_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        return summary


def order_entry(slot: Slot, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One order's summary entry: the share of each choice, accuracy (labelled rows) and count."""
    n = len(rows)
    labelled = [r["correct"] for r in rows if r.get("correct") is not None]
    stats = binomial_stats(labelled) if labelled else None
    return {"slot": list(slot), "count": n,
            **{c: sum(r["choice"] == c for r in rows) / n for c in CHOICES},
            "unparsed": sum(r["choice"] is None for r in rows) / n,
            "accuracy": stats.accuracy if stats else None,
            "stderr": stats.stderr if stats else None}


def bpc_summary(complete: Sequence[dict[Slot, dict[str, Any]]]) -> dict[str, Any]:
    """Balanced position calibration over the pairs with verdict probabilities in both orders:
    one verdict per pair (:func:`pos2distill.metrics.balanced_choice`), reported as a J block
    (consistency 1 and fairness 0 by construction: the same verdict stands for both orders) with
    its accuracy. BPC costs two passes per comparison."""
    scored = [v for v in complete if all(v[o].get("verdict_probs") for o in ORDERS)]
    winners = [balanced_choice(v[ORDERS[0]]["verdict_probs"],
                               v[ORDERS[1]]["verdict_probs"])[0] for v in scored]
    # The one verdict mapped back to each order: candidate 1 is first in (0, 1), second in (1, 0).
    as_choices = {"1": ("first", "second"), "2": ("second", "first"), "tie": ("tie", "tie")}
    metrics = judge_metrics([as_choices[w] for w in winners],
                            [v[ORDERS[0]].get("label") for v in scored])
    return {**{k: metrics[k] for k in J_KEYS}, "passes": 2,
            "without_probabilities": len(complete) - len(scored)}


def order_name(slot: Sequence[int]) -> str:
    return "candidate 1 first" if list(slot) == [0, 1] else "candidate 2 first"


def _first_share(entry: dict[str, Any]) -> float:
    return entry["first"]


def _num(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


