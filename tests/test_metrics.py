"""Metrics: normalisation, best-subspan EM, aggregation checked against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from pos2distill.metrics import (cot_through_answer, extract_answer, reasoning_em,
                                 Stats, best_subspan_em, binomial_stats, exact_match,
                                 first_line, normalize_answer, stops)


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


@pytest.mark.parametrize("prediction,answers,exact,stopped", [
    ("Lima", ["Lima"], 1.0, 1.0),
    ("  lima.\n", ["Lima"], 1.0, 1.0),
    ("The Lima", ["Lima"], 1.0, 1.0),                 # articles are normalised away
    ("Lima Oslo", ["Lima"], 0.0, 1.0),                # wrong, but short
    ("Lima Oslo Rome Paris", ["Lima"], 0.0, 0.0),     # contains the answer: subspan passes, EM not
    ("Lima\nOslo Rome Paris", ["Lima"], 1.0, 0.0),   # first line exact, but it ran on
    ("New York City", ["New York", "NYC"], 0.0, 1.0),   # 3 words <= shortest (1) + 2
    ("", ["Lima"], 0.0, 1.0),
    ("Lima", ["", "."], 0.0, 0.0),                    # answers that normalise to nothing
])
def test_exact_match_and_stops(prediction: str, answers: list[str], exact: float,
                               stopped: float) -> None:
    assert exact_match(prediction, answers) == exact
    assert stops(prediction, answers) == stopped


def test_exact_match_and_stops_refuse_a_bare_string() -> None:
    with pytest.raises(TypeError, match="single string"):
        exact_match("x", "x")
    with pytest.raises(TypeError, match="single string"):
        stops("x", "x")


def test_binomial_stats_hand_computed() -> None:
    assert binomial_stats([1.0, 1.0, 1.0, 0.0]) == Stats(0.75, math.sqrt(0.75 * 0.25 / 4), 4)
    half = binomial_stats([1.0, 0.0, 0.0, 1.0])
    assert half.accuracy == 0.5 and half.count == 4
    assert half.stderr == pytest.approx(0.25)                       # sqrt(0.5 * 0.5 / 4)
    assert binomial_stats([True]) == Stats(1.0, 0.0, 1)              # n = 1: stderr 0
    assert binomial_stats(iter([1, 1])) == Stats(1.0, 0.0, 2)        # any iterable of scores


@pytest.mark.parametrize("scores, message", [
    ([], "no scores"),
    ([2.0], r"in \[0, 1\]"),
    (["yes"], r"in \[0, 1\]"),
])
def test_binomial_stats_errors(scores: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        binomial_stats(scores)


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
