"""Chain classification: exact hop facts on synthetic records, the title heuristic elsewhere;
perplexity and the per-slot summary."""

from __future__ import annotations

import math

import pytest

from pos2distill.analysis.thoughts import (classify_chain, hop_checks, hop_facts, missing_hops,
                                           perplexity, summarize)
from pos2distill.data import synthetic
from pos2distill.data.records import Document, Record


@pytest.fixture(scope="module")
def record() -> Record:
    return synthetic.generate_reasoning("test", 1, n_documents=6)[0]


def _xyz(record: Record) -> tuple[str, str, str]:
    d1, d2 = (record.documents[g] for g in record.gold)
    return d1.title, d2.title, record.answers[0]


def test_hop_facts_of_a_synthetic_record(record: Record) -> None:
    x, y, z = _xyz(record)
    assert hop_facts(record) == [f"{x}'s manager is {y}", f"{y} works in {z}"]
    assert hop_checks(record) == (hop_facts(record), "facts")


def test_other_records_fall_back_to_titles() -> None:
    docs = (Document("Alan Turing", "Turing worked at Bletchley Park."),
            Document("Bletchley Park", "Bletchley Park is in Milton Keynes."),
            Document("Other", "Text."))
    r = Record("m", "Where did Turing work?", ("Milton Keynes",), docs, (0, 1), kind="multihop")
    assert hop_facts(r) is None
    assert hop_checks(r) == (["Alan Turing", "Bletchley Park"], "titles")
    assert classify_chain("Alan Turing worked at Bletchley Park. The answer is: Oxford",
                          r.answers, hop_checks(r)[0]) == "reasoning_failed"
    assert classify_chain("Alan Turing worked at Cambridge. The answer is: Cambridge",
                          r.answers, hop_checks(r)[0]) == "retrieval_failed"
    # Whole words only: "Alan Turingford" does not name "Alan Turing".
    assert classify_chain("Alan Turingford, Bletchley Park. The answer is: x", r.answers,
                          hop_checks(r)[0]) == "retrieval_failed"


def test_classes_of_synthetic_chains(record: Record) -> None:
    x, y, z = _xyz(record)
    checks, _ = hop_checks(record)
    right = synthetic.reasoning_cot(x, y, z)
    assert classify_chain(right, record.answers, checks) == "correct"
    # The facts right, the conclusion wrong or missing: reasoning failed.
    assert classify_chain(f"{x}'s manager is {y}. {y} works in {z}. The answer is: Atlantis",
                          record.answers, checks) == "reasoning_failed"
    assert classify_chain(f"{x}'s manager is {y}. {y} works in {z}.", record.answers,
                          checks) == "reasoning_failed"
    # A hop fact wrong or missing: retrieval failed.
    assert classify_chain(f"{x}'s manager is Bob. Bob works in Atlantis. The answer is: Atlantis",
                          record.answers, checks) == "retrieval_failed"
    assert classify_chain(f"{y} works in Oslo. The answer is: Oslo", record.answers,
                          checks) == "retrieval_failed"
    assert missing_hops(f"{x}'s manager is Bob. Bob works in Atlantis.", checks) == [1, 2]
    assert missing_hops(f"{x}'s manager is {y}. {y} works in Oslo.", checks) == [2]
    # A fact after the answer line does not count (the chain is read up to its answer).
    assert classify_chain(f"{x}'s manager is {y}. The answer is: Oslo\n{y} works in {z}.",
                          record.answers, checks) == "retrieval_failed"


def test_spacing_from_a_word_level_decoder_does_not_matter(record: Record) -> None:
    x, y, z = _xyz(record)
    chain = f"{x} ' s manager is {y} . {y} works in {z} . The answer is : Atlantis"
    assert classify_chain(chain, record.answers, hop_checks(record)[0]) == "reasoning_failed"


def test_nothing_to_check_is_unclassified() -> None:
    assert classify_chain("The answer is: no", ["yes"], []) == "unclassified"
    assert classify_chain("The answer is: yes", ["yes"], []) == "correct"


def test_perplexity_and_summary() -> None:
    assert perplexity([math.log(2.0), math.log(8.0)]) == pytest.approx(4.0)
    rows = [{"slot": [0, 1], "class": "correct", "ppl_adv": 1.0, "ppl_gold": 2.0,
             "missing_hops": [], "n_hops": 2},
            {"slot": [0, 1], "class": "retrieval_failed", "ppl_adv": 4.0, "ppl_gold": 2.0,
             "missing_hops": [2], "n_hops": 2},
            {"slot": [4, 1], "ppl_adv": 1.5, "ppl_gold": None}]
    s = summarize(rows, [(4, 1), (0, 1), (2, 3)])
    assert [e["slot"] for e in s] == [[4, 1], [0, 1]]
    assert s[0] == {"slot": [4, 1], "count": 1, "ppl_adv": 1.5, "ppl_gold": None}
    assert s[1]["correct"] == 0.5 and s[1]["retrieval_failed"] == 0.5
    assert s[1]["reasoning_failed"] == 0.0 and s[1]["hop_missing"] == [0.0, 0.5]
    assert s[1]["ppl_adv"] == pytest.approx(2.0)                     # geometric mean of 1 and 4
