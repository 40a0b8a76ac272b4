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

