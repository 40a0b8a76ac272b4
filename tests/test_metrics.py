"""Metrics: normalisation, best-subspan EM, aggregation checked against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from pos2distill.metrics import (cot_through_answer, extract_answer, reasoning_em,
                                 PositionStats, aggregate_by_key, best_subspan_em, first_line,
                                 normalize_answer, summarize)


@pytest.mark.parametrize("raw, expected", [
    ("The Beatles", "beatles"),
    ("  Paris,   France. ", "paris france"),
    ("A cat and an apple", "cat and apple"),
    ("U.S.A.", "usa"),
    ("“Quoted” — text…", "quoted text"),
    ("rock’n’roll", "rocknroll"),
    ("1939–1945", "19391945"),
    ("Theatre another anthem", "theatre another anthem"),  # articles only as whole words
    ("the", ""),
    ("", ""),
    ("Line\none\ttab", "line one tab"),
    ("Wilhelm Conrad Röntgen", "wilhelm conrad röntgen"),
])
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("text, expected", [
    ("first\nsecond", "first"),
    ("\n  \n  answer here  \nmore", "answer here"),
    ("", ""),
    (" \n\t\n", ""),
    ("only", "only"),
])
def test_first_line(text: str, expected: str) -> None:
    assert first_line(text) == expected


@pytest.mark.parametrize("prediction, answers, expected", [
    ("Paris", ["Paris"], 1.0),
    ("The answer is Paris, France.", ["paris"], 1.0),         # subspan, case, punctuation
    ("the Beatles", ["Beatles"], 1.0),                        # article on the prediction side
    ("Beatles", ["The Beatles"], 1.0),                        # article on the gold side
    ("U.S.", ["US"], 1.0),
    ("London", ["Paris", "London"], 1.0),                     # any gold answer
    ("London", ["Paris"], 0.0),
    ("I am not sure.\nParis", ["Paris"], 0.0),                # only the first line counts
    ("\n\n  Paris\nnot London", ["London"], 0.0),             # first *non-empty* line
    ("\n\n  Paris\n", ["Paris"], 1.0),
    ("anything", ["", "  ", "..."], 0.0),                     # empty answers are ignored
    ("anything", [], 0.0),
    ("", ["Paris"], 0.0),
    ("Par", ["Paris"], 0.0),                                  # prediction inside gold is not EM
])
def test_best_subspan_em(prediction: str, answers: list[str], expected: float) -> None:
    assert best_subspan_em(prediction, answers) == expected


def test_best_subspan_em_refuses_a_bare_string() -> None:
    with pytest.raises(TypeError, match="single string"):
        best_subspan_em("x", "x")


def test_aggregate_by_key_hand_computed() -> None:
    rows = ([{"position": 4, "correct": v} for v in (1.0, 0.0, 0.0, 1.0)]
            + [{"position": 0, "correct": v} for v in (1.0, 1.0, 1.0, 0.0)]
            + [{"position": 9, "correct": True}])
    stats = aggregate_by_key(rows)
    assert [s.position for s in stats] == [0, 4, 9]                # sorted by key
    assert stats[0] == PositionStats(0, 0.75, math.sqrt(0.75 * 0.25 / 4), 4)
    assert stats[1].accuracy == 0.5 and stats[1].count == 4
    assert stats[1].stderr == pytest.approx(0.25)                   # sqrt(0.5 * 0.5 / 4)
    assert stats[2] == PositionStats(9, 1.0, 0.0, 1)                # n = 1: stderr 0


def test_aggregate_by_key_custom_fields_and_all_correct() -> None:
    rows = [{"gold_position": 2, "em": 1}, {"gold_position": 2, "em": 1}]
    (s,) = aggregate_by_key(rows, key="gold_position", value="em")
    assert s == PositionStats(2, 1.0, 0.0, 2)


@pytest.mark.parametrize("rows, message", [
    ([], "no rows"),
    ([{"position": 0}], "missing field 'correct'"),
    ([{"correct": 1.0}], "missing field 'position'"),
    ([{"position": "0", "correct": 1.0}], "must be an integer"),
    ([{"position": 0, "correct": 2.0}], r"in \[0, 1\]"),
    ([{"position": 0, "correct": "yes"}], r"in \[0, 1\]"),
])
def test_aggregate_by_key_errors(rows: list[dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        aggregate_by_key(rows)


def test_aggregate_accepts_a_generator() -> None:
    stats = aggregate_by_key({"position": i % 2, "correct": float(i < 3)} for i in range(4))
    assert [(s.position, s.accuracy, s.count) for s in stats] == [(0, 1.0, 2), (1, 0.5, 2)]


def test_summarize_hand_computed() -> None:
    stats = [PositionStats(0, 0.8, 0.1, 10), PositionStats(4, 0.5, 0.1, 8),
             PositionStats(9, 0.8, 0.1, 12), PositionStats(19, 0.5, 0.1, 9)]
    summary = summarize(stats)
    assert summary["mean"] == pytest.approx(0.65)      # unweighted over positions
    assert summary["gap"] == pytest.approx(0.3)
    assert summary["best_position"] == 0               # tie 0 / 9: lowest position
    assert summary["worst_position"] == 4              # tie 4 / 19: lowest position
    assert summary["n_per_position"] == 8
    assert set(summary) == {"mean", "gap", "best_position", "worst_position", "n_per_position"}


def test_summarize_ties_do_not_depend_on_input_order() -> None:
    stats = [PositionStats(9, 0.8, 0.0, 1), PositionStats(0, 0.8, 0.0, 1)]
    assert summarize(stats)["best_position"] == 0
    assert summarize(stats)["worst_position"] == 0


def test_summarize_single_position() -> None:
    summary = summarize([PositionStats(3, 0.4, 0.0, 5)])
    assert summary == {"mean": 0.4, "gap": 0.0, "best_position": 3, "worst_position": 3,
                       "n_per_position": 5}


def test_summarize_empty() -> None:
    with pytest.raises(ValueError, match="no positions"):
        summarize([])


def test_aggregate_then_summarize() -> None:
    rows = [{"position": p, "correct": c} for p, c in
            [(0, 1), (0, 1), (1, 0), (1, 1), (2, 0), (2, 0)]]
    summary = summarize(aggregate_by_key(rows))
    assert summary["mean"] == pytest.approx(0.5)
    assert summary["gap"] == 1.0
    assert (summary["best_position"], summary["worst_position"]) == (0, 2)


# ---------------------------------------------------------------------------------------------
# Reasoning: the answer after the last "the answer is", exact match over answer and aliases

@pytest.mark.parametrize("text, expected", [
    ("Kavo's manager is Dilu. Dilu works in Lima. The answer is: Lima", "Lima"),
    ("the answer is Lima.", "Lima."),
    ("THE ANSWER IS:Lima", "Lima"),
    ("The answer is: Oslo. Wait, no: the answer is: Lima", "Lima"),   # the last marker wins
    ("The answer is:\n\n  Lima  \nQuestion: next", "Lima"),           # marker alone on its line
    ("The answer is: Lima\nThe end", "Lima"),
    ("Lima", None),                                                     # no marker
    ("The answer is:", ""),
])
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text, answers, expected", [
    ("... The answer is: Lima", ("Lima",), 1.0),
    ("... The answer is: lima!", ("Lima",), 1.0),                     # case and punctuation
    ('... the answer is "The Lima."', ("Lima",), 1.0),                # articles, quotes
    ("... The answer is: City of Kings", ("Lima", "City of Kings"), 1.0),   # an alias
    ("... The answer is: Lima, Peru", ("Lima",), 0.0),                # exact, not a substring
    ("Lima is where she works.", ("Lima",), 0.0),                      # no marker
    ("The answer is: Oslo ... the answer is: Lima", ("Oslo",), 0.0),  # only the last counts
    ("The answer is:", ("Lima",), 0.0),
    ("The answer is: the", ("the",), 0.0),                            # empty after normalising
])
def test_reasoning_em(text: str, answers: tuple[str, ...], expected: float) -> None:
    assert reasoning_em(text, answers) == expected


def test_reasoning_em_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        reasoning_em("The answer is: Lima", "Lima")


@pytest.mark.parametrize("text, expected", [
    ("A. B. The answer is: Lima<junk after>\nmore text", "A. B. The answer is: Lima<junk after>"),
    ("A. The answer is:\n Lima\nmore", "A. The answer is:\n Lima"),
    ("  no marker at all \n", "no marker at all"),
])
def test_cot_through_answer(text: str, expected: str) -> None:
    assert cot_through_answer(text) == expected
