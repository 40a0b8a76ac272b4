"""Thought shifting (METHOD.md section 6, the paper's Fig. 3b and Fig. 9): why a chain of thought
fails, and how surprising the advantageous answer is at other positions. Pure functions.

A chain is *correct* (reasoning EM), *retrieval failed* (a hop fact is wrong or missing in it) or
*reasoning failed* (the facts are there, the answer is wrong or missing). The hop facts are
checked exactly when the hop documents are the synthetic two-hop forms (``Y is X's manager.``,
``Z is where Y works.``): the chain must say ``X's manager is Y`` and ``Y works in Z``. Other data
has no checkable facts; there the heuristic (:data:`TITLE_HEURISTIC`) asks the chain to name the
title of every hop document.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from pos2distill.data.records import Record
from pos2distill.metrics import cot_through_answer, reasoning_em
from pos2distill.tasks.positions import Slot

CLASSES = ("correct", "retrieval_failed", "reasoning_failed", "unclassified")

FACT_CHECK = ("hop facts checked exactly: the chain (up to its answer line) states both facts of "
              "the synthetic hop documents, 'X's manager is Y' and 'Y works in Z'")
TITLE_HEURISTIC = ("heuristic for data without checkable hop facts: a hop counts as retrieved "
                   "when the chain (up to its answer line) names its document's title as a whole "
                   "word; the first hop's title is usually the question's own entity, so this "
                   "mostly checks the bridge entity, the second hop's title")

_MANAGER = re.compile(r"^(.+) is (.+)'s manager\.$")
_WORKS = re.compile(r"^(.+) is where (.+) works\.$")


def hop_facts(record: Record) -> list[str] | None:
    """The two facts a correct chain states, when ``record``'s hop documents are the synthetic
    two-hop forms (:mod:`pos2distill.data.synthetic`); None otherwise."""
    if len(record.gold) != 2:
        return None
    d1, d2 = (record.documents[g] for g in record.gold)
    m1, m2 = _MANAGER.match(d1.text), _WORKS.match(d2.text)
    if not (m1 and m2 and m1.group(2) == d1.title and m2.group(2) == d2.title
            and m1.group(1) == d2.title):
        return None
    x, y, z = d1.title, d2.title, m2.group(1)
    return [f"{x}'s manager is {y}", f"{y} works in {z}"]


def hop_checks(record: Record) -> tuple[list[str], str]:
    """What a chain must contain for its hops to count as retrieved, and how that was decided
    (``facts``: :func:`hop_facts`; ``titles``: the hop documents' titles, the heuristic)."""
    facts = hop_facts(record)
    if facts is not None:
        return facts, "facts"
    return [record.documents[g].title for g in record.gold if record.documents[g].title], "titles"


def _words(text: str) -> str:
    """Lower-case words (letters and digits) without articles, one space apart: punctuation and
    the spaces a tokenizer may put around it ("Viku ' s") do not matter."""
    return " ".join(w for w in re.findall(r"\w+", text.lower()) if w not in ("a", "an", "the"))


def _contains(text: str, phrase: str) -> bool:
    """``phrase`` in ``text`` as whole words (:func:`_words`)."""
    return f" {_words(phrase)} " in f" {_words(text)} "


def missing_hops(chain: str, checks: Sequence[str]) -> list[int]:
    """The hops (1-based) whose check the chain, up to its answer line, does not contain."""
    reasoning = cot_through_answer(chain)
    return [k for k, c in enumerate(checks, start=1) if not _contains(reasoning, c)]


def classify_chain(chain: str, answers: Sequence[str], checks: Sequence[str]) -> str:
    """``correct``, ``retrieval_failed`` or ``reasoning_failed`` (see the module docstring);
    ``unclassified`` for a wrong chain when there is nothing to check (no titles)."""
    if reasoning_em(chain, answers):
        return "correct"
    if not checks:
        return "unclassified"
    return "retrieval_failed" if missing_hops(chain, checks) else "reasoning_failed"


def perplexity(nll: Sequence[float]) -> float:
    """``exp`` of the mean per-token negative log-likelihood."""
    return math.exp(sum(nll) / len(nll))


def summarize(rows: Sequence[dict[str, Any]], slots: Sequence[Slot]) -> list[dict[str, Any]]:
    """Per slot (in ``slots`` order): the share of each chain class (rows with ``class``), the
    share of chains missing each hop's fact (``hop_missing``, rows with ``missing_hops`` and
    ``n_hops``; a correct chain may miss one too), and the
    perplexity of the advantageous response (``ppl_adv``) and of the gold label (``ppl_gold``):
    the geometric mean over rows of each row's perplexity, i.e. ``exp`` of the mean per-answer
    NLL (an arithmetic mean would be ruled by the few answers a model finds near impossible: a
    one-token label's perplexity is 1/p)."""
    out = []
    for slot in slots:
        members = [r for r in rows if tuple(r["slot"]) == tuple(slot)]
        if not members:
            continue
        entry: dict[str, Any] = {"slot": list(slot), "count": len(members)}
        chains = [r for r in members if r.get("class") is not None]
        if chains:
            entry.update({c: sum(r["class"] == c for r in chains) / len(chains) for c in CLASSES})
        if chains and all("missing_hops" in r for r in chains):
            n_hops = max(r["n_hops"] for r in chains)
            entry["hop_missing"] = [sum(k in r["missing_hops"] for r in chains) / len(chains)
                                    for k in range(1, n_hops + 1)]
        for key in ("ppl_adv", "ppl_gold"):
            values = [r[key] for r in members if r.get(key) is not None]
            entry[key] = math.exp(sum(map(math.log, values)) / len(values)) if values else None
        out.append(entry)
    return out
