"""Training methods as named configurations of the one training entry point (``train --method``).

Each method is a frozen :class:`Method`: which loss (token-level forward KL against the frozen
teacher, or cross-entropy on a fixed target), how examples are weighted, whether the anchor rows of
the pairs file (student at the advantageous position) take part, and which text is the target. No
strings of coefficients: a method is chosen by its name, and the paper's ablation (Table 3: SeqKD,
plain KL, + position weights, + anchor) is four rows of :data:`METHODS`.

=========  =====  ================================  =======  ============================
name       loss   weights                           anchors  target
=========  =====  ================================  =======  ============================
sft        ce     none (every example counts 1)     yes      the gold answer
seqkd      ce     none                              no       the teacher's response
kl         kl     uniform                           no       the teacher's response
kl+align   kl     position-aware (``--formula``)    no       the teacher's response
r1         kl     position-aware (``--formula``)    yes (λ)  the teacher's response
r2         ce     none                              yes      the pair's response (the CoT)
swap-sft   ce     none                              yes      the gold verdict (judges)
=========  =====  ================================  =======  ============================

* ``sft`` is supervised fine-tuning on gold labels with the gold document at the pairs' positions
  (the K random trivial positions plus the anchor copies: random positions over the whole context).
  The target is the *first* gold answer of the record (``answers[0]``, the dataset's canonical
  answer; NQ and the synthetic set list it first), which ``pairs`` copies into every row. SFT
  therefore trains on the questions the teacher kept, so that it sees the same questions as the
  distillation methods it is compared with.
* ``seqkd`` (sequence-level KD) is cross-entropy on the teacher's greedy response at the trivial
  positions only.
* ``kl`` and ``kl+align`` are R1 without anchors, with uniform and position-aware weights.
* ``r1`` is the full Pos2Distill-R1: position-aware weights plus anchors with weight λ.
* ``swap-sft`` (judges, METHOD.md section 6b) is the swap-augmentation baseline (JudgeLM): the
  judge's pairs hold every item in both answer orders, and the target is the gold response in each
  order (the label's verdict, after the item's reference rationale when it has one), as ``sft``
  does for retrieval; unlabelled items are left out. ``r1`` on judge pairs is Pos2Distill for
  judges: the teacher at the verdict token is the frozen judge's order-balanced verdict
  distribution, fixed by the pairs (:class:`pos2distill.training.teacher.FixedTokenTargets`).
* ``r2`` (METHOD.md section 3) is cross-entropy on the pair's response, i.e. the teacher's
  chain-of-thought, on every row, without weights or anchors of its own: its pairs hold hop-position
  configurations, none of which is an anchor.

Cross-entropy methods never build a teacher model. Every loss covers the target tokens only (EOS
included; prompt tokens ignored), and the batch loss is ``sum_e w_e L_e`` for all of them (``w_e = 1``
for cross-entropy), so their scales are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pos2distill.errors import ConfigError

__all__ = ["Method", "METHODS", "METHOD_NAMES", "WEIGHT_FORMULAS", "get_method"]

#: Position-aware weight formulas (``--formula``) of :func:`pos2distill.training.losses.position_weights`.
WEIGHT_FORMULAS = ("pos2distill", "paper", "uniform")


@dataclass(frozen=True)
class Method:
    """One training method.

    Attributes:
        name: the ``--method`` value.
        loss: ``"kl"`` (per-example forward KL against the frozen teacher,
            :func:`pos2distill.training.losses.per_example_kl`) or ``"ce"`` (per-example cross-entropy,
            :func:`pos2distill.training.losses.per_example_cross_entropy`).
        formula: weights of the trivial examples for KL methods: a value of
            :data:`WEIGHT_FORMULAS`, or ``None`` for "the ``--formula`` flag"
            (r1 accepts ``uniform``, i.e. plain KL with anchors; kl+align refuses it).
            ``None`` for cross-entropy methods (every example weighs 1).
        anchors: whether the anchor rows of the pairs file are trained on (for KL methods with
            weight ``--anchor-weight``; for CE methods with weight 1).
        target: ``"response"`` (the pair's ``response``: the teacher's answer or chain-of-thought)
            or ``"gold"`` (the record's first gold answer, the pair's ``answers[0]``).
        summary: one line for ``--help`` and tables.
    """

    name: str
    loss: Literal["kl", "ce"]
    formula: str | None
    anchors: bool
    target: Literal["response", "gold"]
    summary: str

    @property
    def needs_teacher(self) -> bool:
        """Whether training runs the frozen teacher model (only the KL methods do)."""
        return self.loss == "kl"

    def resolve_formula(self, formula: str) -> str | None:
        """The weight formula this method trains with, given the ``--formula`` flag."""
        if self.loss != "kl":
            return None
        if self.formula is not None:
            return self.formula
        if formula == "uniform" and not self.anchors:  # that would be plain kl under another name
            raise ConfigError(f"--method {self.name} uses position-aware weights, so --formula "
                              "uniform is not allowed (that is --method kl)")
        return formula

    def pair_fields(self) -> tuple[str, ...]:
        """The fields of a pairs row this method needs. KL methods group their weights by
        ``slot`` and anchor them at ``adv_slot``, as given by
        :func:`pos2distill.training.batches.read_pairs` (which also finds them in older rows)."""
        fields = ["student_prompt", "chat", "answers" if self.target == "gold" else "response"]
        if self.loss == "kl":
            fields += ["teacher_prompt", "slot", "adv_slot"]
        return tuple(fields)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sft", "ce", None, True, "gold",
           "cross-entropy on the gold answer, gold document at the pairs' positions"),
    Method("seqkd", "ce", None, False, "response",
           "cross-entropy on the teacher's response at the trivial positions"),
    Method("kl", "kl", "uniform", False, "response",
           "R1 KL with uniform weights, no anchors"),
    Method("kl+align", "kl", None, False, "response",
           "R1 KL with position-aware weights, no anchors"),
    Method("r1", "kl", None, True, "response",
           "Pos2Distill-R1: position-aware weights and anchors"),
    Method("r2", "ce", None, True, "response",
           "Pos2Distill-R2: cross-entropy on the teacher's chain-of-thought, every row"),
    Method("swap-sft", "ce", None, True, "gold",
           "judges: cross-entropy on the gold verdict in both answer orders (swap augmentation)"),
)}

#: The accepted ``--method`` values, in the order of the paper's tables.
METHOD_NAMES = tuple(METHODS)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"--method: {name!r} is not one of {', '.join(METHOD_NAMES)}") from None
