"""Evaluation metrics: pure per-example scores, and a separate aggregation step per gold position.

Per-example scores (:func:`best_subspan_em`, :func:`reasoning_em`) are pure functions of strings, so
each row written to disk can be re-scored and traced. Aggregation is a separate step
(:func:`binomial_stats` of each group); a Task (:mod:`pos2distill.tasks`) turns the groups
into the numbers of METHOD.md section 4: accuracy per slot, their unweighted mean, GAP = max - min.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# ASCII punctuation plus the unicode quotes, dashes and ellipsis that model outputs and Wikipedia
# text use in place of their ASCII forms; without them "“Paris”" and "Paris" would not match.
_PUNCTUATION = frozenset(string.punctuation) | frozenset("‘’‚‛“”„‟′″«»‹›–—―‐‑‒…")
_PUNCT_TABLE = {ord(c): None for c in _PUNCTUATION}
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Normalise text for answer matching.

    Lower-case, delete punctuation, drop the articles a/an/the (whole words only) and collapse
    white space. Punctuation is deleted rather than replaced by a space, so ``"U.S."`` becomes
    ``"us"`` on both the prediction and the gold side.
    """
    s = s.lower().translate(_PUNCT_TABLE)
    # Articles go after punctuation so that "the," or "(a" are recognised as whole words too.
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def first_line(text: str) -> str:
    """The first line of ``text`` that is not blank, stripped; ``""`` if there is none."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def best_subspan_em(prediction: str, answers: Iterable[str]) -> float:
    """Best-subspan exact match (METHOD.md section 4), the retrieval metric.

    Only the first non-blank line of ``prediction`` is scored, because models often keep talking
    after the answer and a later line could mention a gold string by chance. Returns 1.0 if any
    gold answer, normalised with :func:`normalize_answer`, is a substring of the normalised
    prediction, else 0.0. Gold answers that normalise to the empty string are ignored: the empty
    string is a substring of everything and would make every prediction correct.
    """
    if isinstance(answers, str):
        # A bare string would be iterated character by character and match almost anything.
        raise TypeError("answers must be a collection of strings, not a single string")
    pred = normalize_answer(first_line(prediction))
    for answer in answers:
        gold = normalize_answer(answer)
        if gold and gold in pred:
            return 1.0
    return 0.0


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """1.0 when the first non-blank line of ``prediction`` is, once normalised, exactly one of the
    gold answers: the strict metric, which a long answer that contains the gold string fails."""
    if isinstance(answers, str):
        raise TypeError("answers must be a collection of strings, not a single string")
    pred = normalize_answer(first_line(prediction))
    return float(any(pred == normalize_answer(a) for a in answers if normalize_answer(a)))


STOP_SLACK = 2
"""An answer stops when it has at most this many words more than the shortest gold answer."""


def stops(prediction: str, answers: Iterable[str]) -> float:
    """1.0 when the whole ``prediction`` (every line) has at most :data:`STOP_SLACK` normalised
    words more than the shortest gold answer: the model answered and stopped, rather than running
    on to the token limit."""
    if isinstance(answers, str):
        raise TypeError("answers must be a collection of strings, not a single string")
    lengths = [len(normalize_answer(a).split()) for a in answers if normalize_answer(a)]
    if not lengths:
        return 0.0
    return float(len(normalize_answer(prediction).split()) <= min(lengths) + STOP_SLACK)


_ANSWER_MARKER = re.compile(r"the\s+answer\s+is\s*:?", re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    """The final answer of a chain-of-thought: the rest of the line after the *last* "the answer
    is" (case-insensitive, optional colon; when the marker ends its line, the next non-blank line).
    None when there is no marker."""
    matches = list(_ANSWER_MARKER.finditer(text))
    if not matches:
        return None
    return first_line(text[matches[-1].end():])


def reasoning_em(prediction: str, answers: Iterable[str]) -> float:
    """Reasoning exact match (METHOD.md section 4): the answer after the last "the answer is"
    (:func:`extract_answer`) equals, after :func:`normalize_answer`, one of ``answers`` (the answer
    and its aliases). 0.0 without a marker or with an empty answer."""
    if isinstance(answers, str):
        raise TypeError("answers must be a collection of strings, not a single string")
    extracted = extract_answer(prediction)
    if extracted is None:
        return 0.0
    pred = normalize_answer(extracted)
    return 1.0 if pred and any(pred == normalize_answer(a) for a in answers) else 0.0


def cot_through_answer(text: str) -> str:
    """A chain-of-thought cut after the line holding its last "the answer is" (what a model writes
    after its answer is not part of the reasoning to distil); unchanged without a marker."""
    matches = list(_ANSWER_MARKER.finditer(text))
    if not matches:
        return text.strip()
    end = matches[-1].end()
    rest = text[end:]
    lines = rest.split("\n")
    # The answer is on the marker's line, or on the next non-blank one.
    keep = 0
    while keep < len(lines) - 1 and not lines[keep].strip():
        keep += 1
    return (text[:end] + "\n".join(lines[:keep + 1])).strip()


@dataclass(frozen=True)
class Stats:
    """Accuracy of one group of per-example scores (one slot of a probe, say).

    Attributes:
        accuracy: mean of the scores.
        stderr: binomial standard error ``sqrt(p (1 - p) / n)``; 0.0 when ``count <= 1``, where a
            spread cannot be estimated.
        count: number of examples.
    """

    accuracy: float
    stderr: float
    count: int


def binomial_stats(scores: Sequence[float]) -> Stats:
    """:class:`Stats` of scores in [0, 1]. Raises ``ValueError`` on an empty group or a score
    outside [0, 1] (the binomial standard error is only meaningful for those)."""
    total, n = 0.0, 0
    for v in scores:
        if isinstance(v, bool):
            v = float(v)
        if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"scores must be numbers in [0, 1], got {v!r}")
        total += float(v)   # summed in row order, one addition at a time
        n += 1
    if not n:
        raise ValueError("no scores to aggregate")
    p = total / n
    # max(0, .) guards against a tiny negative product from rounding when p is 0 or 1.
    se = math.sqrt(max(0.0, p * (1.0 - p)) / n) if n > 1 else 0.0
    return Stats(accuracy=p, stderr=se, count=n)



# ---------------------------------------------------------------------------------------------
# LLM-as-a-judge order bias (METHOD.md section 6b)
#
# A judge's verdict in one answer order is a *choice* of the shown answers: "first", "second" or
# "tie" (None: no verdict could be read). Mapped back through the order it becomes a *winner*
# among the item's candidates: "1", "2" or "tie". Every item is judged in order (0, 1) (candidate
# 1 shown first) and (1, 0).

#: A verdict as the judge gives it: the answer shown first, the one shown second, or a tie.
CHOICES = ("first", "second", "tie")


def winner(choice: str | None, order: Sequence[int]) -> str | None:
    """The candidate (``"1"``, ``"2"``, ``"tie"``) a ``choice`` names when the candidates are
    shown in ``order`` (0-based candidate indices, first shown first); None stays None."""
    if choice is None or choice == "tie":
        return choice
    return str(order[0 if choice == "first" else 1] + 1)


def pair_outcome(straight: str | None, swapped: str | None) -> str:
    """One pair's outcome from its choices in order (0, 1) and in order (1, 0):

    ``consistent`` (the same winner, or both a tie), ``primacy`` (each order picks its first
    answer, or first and tie), ``recency`` (each picks its second, or second and tie), or
    ``unparsed`` (a verdict could not be read; the pair is not consistent, and neither primacy
    nor recency)."""
    if straight is None or swapped is None:
        return "unparsed"
    if winner(straight, (0, 1)) == winner(swapped, (1, 0)):
        return "consistent"
    return "primacy" if "first" in (straight, swapped) else "recency"


def judge_metrics(pairs: Sequence[tuple[str | None, str | None]],
                  labels: Sequence[str | None]) -> dict[str, float | int | None]:
    """Order-bias metrics of ``pairs`` of choices (order (0, 1), order (1, 0)) with their labels
    (None: unlabelled):

    - ``consistency`` = consistent pairs / pairs (position consistency, PC);
    - ``fairness`` = (recency − primacy) / inconsistent pairs, in [−1, 1] (preference fairness,
      PF: −1 all primacy, +1 all recency; 0 when every pair is consistent); pairs with an
      unparsed verdict count as inconsistent and as neither;
    - ``first_wins``, ``second_wins``, ``ties``: shares of the 2 × pairs verdicts that pick the
      answer shown first, second, or a tie (an unparsed verdict is none of them);
    - ``accuracy``: the share of labelled verdicts (both orders) whose winner is the label
      (unparsed: wrong); None without labels;
    - counts: ``n_pairs``, ``consistent``, ``primacy``, ``recency``, ``unparsed`` (verdicts),
      ``n_labelled`` (pairs).
    """
    n = len(pairs)
    outcomes = [pair_outcome(a, b) for a, b in pairs]
    count = {k: outcomes.count(k) for k in ("consistent", "primacy", "recency")}
    inconsistent = n - count["consistent"]
    choices = [c for pair in pairs for c in pair]
    labelled = [(pair, label) for pair, label in zip(pairs, labels) if label is not None]
    right = sum(winner(a, (0, 1)) == label for (a, _), label in labelled) + \
        sum(winner(b, (1, 0)) == label for (_, b), label in labelled)
    return {"consistency": count["consistent"] / n if n else None,
            "fairness": (count["recency"] - count["primacy"]) / inconsistent if inconsistent
            else 0.0,
            "first_wins": choices.count("first") / len(choices) if choices else None,
            "second_wins": choices.count("second") / len(choices) if choices else None,
            "ties": choices.count("tie") / len(choices) if choices else None,
            "accuracy": right / (2 * len(labelled)) if labelled else None,
            "n_pairs": n, **count, "unparsed": choices.count(None), "n_labelled": len(labelled)}


def stability(choices: Sequence[str | None]) -> float:
    """Repetition stability of one prompt's sampled verdicts: the share of the most frequent one
    (an unparsed verdict is a value of its own)."""
    if not choices:
        raise ValueError("stability of no verdicts")
    return max(choices.count(c) for c in set(choices)) / len(choices)


def balanced_choice(straight: Sequence[float], swapped: Sequence[float]) -> tuple[str, list[float]]:
    """Balanced position calibration (BPC, Wang et al. 2023) of one pair: each candidate's verdict
    probability averaged over both orders. ``straight`` and ``swapped`` are the verdict
    probabilities (first, second[, tie]) in order (0, 1) and (1, 0). Returns the winner
    (``"1"``, ``"2"``, ``"tie"``; ties of probability go to the lower candidate) and the averaged
    probabilities (candidate 1, candidate 2[, tie])."""
    p = [(straight[0] + swapped[1]) / 2, (straight[1] + swapped[0]) / 2]
    if len(straight) > 2:
        p.append((straight[2] + swapped[2]) / 2)
    best = max(range(len(p)), key=lambda k: p[k])
    return ("1", "2", "tie")[best], p
