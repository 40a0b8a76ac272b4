"""Judge order-bias metrics (METHOD.md section 6b) against hand-computed examples."""

from __future__ import annotations

import pytest

from pos2distill.metrics import (balanced_choice, judge_metrics, pair_outcome, stability,
                                 winner)

#: Five pairs (choice in order (0, 1), choice in order (1, 0)) and their labels, with what each
#: is by hand: consistent; primacy; recency; primacy (first and tie); unparsed.
PAIRS = [("first", "second"), ("first", "first"), ("second", "second"), ("first", "tie"),
         (None, "second")]
LABELS = ["1", "2", "1", "tie", "1"]


def test_winner_maps_a_choice_through_the_order() -> None:
    assert [winner(c, (0, 1)) for c in ("first", "second", "tie", None)] == ["1", "2", "tie", None]
    assert [winner(c, (1, 0)) for c in ("first", "second", "tie", None)] == ["2", "1", "tie", None]


def test_pair_outcomes_by_hand() -> None:
    assert [pair_outcome(a, b) for a, b in PAIRS] == [
        "consistent", "primacy", "recency", "primacy", "unparsed"]
    assert pair_outcome("tie", "tie") == "consistent"
    assert pair_outcome("second", "first") == "consistent"
    assert pair_outcome("tie", "second") == "recency"
    assert pair_outcome("tie", "first") == "primacy"


def test_judge_metrics_of_five_pairs_by_hand() -> None:
    m = judge_metrics(PAIRS, LABELS)
    # 1 consistent of 5; 4 inconsistent: 2 primacy, 1 recency, 1 unparsed.
    assert m["consistency"] == pytest.approx(1 / 5)
    assert m["fairness"] == pytest.approx((1 - 2) / 4)
    # 10 verdicts: first 4, second 4, tie 1, unparsed 1.
    assert (m["first_wins"], m["second_wins"], m["ties"]) == pytest.approx((0.4, 0.4, 0.1))
    # right: pair 1 both; pairs 2-5 one each (the swapped order) = 6 of 10.
    assert m["accuracy"] == pytest.approx(0.6)
    assert (m["n_pairs"], m["consistent"], m["primacy"], m["recency"], m["unparsed"],
            m["n_labelled"]) == (5, 1, 2, 1, 1, 5)


def test_fairness_extremes_and_no_labels() -> None:
    assert judge_metrics([("first", "first")] * 3, [None] * 3)["fairness"] == -1.0
    m = judge_metrics([("second", "second"), ("first", "second")], [None, None])
    assert m["fairness"] == 1.0 and m["consistency"] == 0.5 and m["accuracy"] is None
    assert judge_metrics([("first", "second")], ["1"])["fairness"] == 0.0   # no inconsistent
    partial = judge_metrics([("first", "second"), ("first", "first")], ["1", None])
    assert partial["accuracy"] == 1.0 and partial["n_labelled"] == 1


def test_empty_metrics_do_not_divide_by_zero() -> None:
    m = judge_metrics([], [])
    assert m["n_pairs"] == 0 and m["consistency"] is None and m["accuracy"] is None


def test_stability() -> None:
    assert stability(["first", "first", "second", None]) == 0.5
    assert stability([None, None]) == 1.0
    with pytest.raises(ValueError):
        stability([])


def test_balanced_position_calibration_by_hand() -> None:
    choice, p = balanced_choice([0.9, 0.1], [0.6, 0.4])
    assert choice == "1" and p == pytest.approx([0.65, 0.35])
    choice, p = balanced_choice([0.2, 0.3, 0.5], [0.1, 0.1, 0.8])
    assert choice == "tie" and p == pytest.approx([0.15, 0.2, 0.65])
    # A judge that always prefers the first shown answer: BPC cancels the bias.
    choice, p = balanced_choice([0.7, 0.3], [0.8, 0.2])
    assert choice == "2" and p == pytest.approx([0.45, 0.55])
