"""Task summaries, tables and comparisons (what probe and report write), by hand, and the
upgrade of files written before slots existed."""

from __future__ import annotations


import pytest

from helpers import retrieval_summary as summary
from pos2distill.errors import ConfigError
from pos2distill.tasks import get_task

RETRIEVAL = get_task("retrieval")
REASONING = get_task("reasoning")


# ---------------------------------------------------------------------------------------------
# summarize (probe's summary.json) and table (its table.md)


def test_summarize_by_hand() -> None:
    rows = ([{"slot": [0], "correct": c} for c in (1.0, 1.0, 0.0, 1.0)]
            + [{"slot": [3], "correct": c} for c in (0.0, 1.0)]
            + [{"slot": [1], "correct": 0.0}]
            + [{"slot": [7], "correct": 1.0}])                 # not a requested slot: left out
    s = RETRIEVAL.summarize(rows, [(0,), (1,), (3,)])
    assert [(e["slot"], e["accuracy"], e["count"]) for e in s["by_slot"]] == \
           [([0], 0.75, 4), ([1], 0.0, 1), ([3], 0.5, 2)]
    assert s["by_slot"][0]["stderr"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5)
    assert s["by_slot"][1]["stderr"] == 0.0
    assert s["mean"] == pytest.approx((0.75 + 0.0 + 0.5) / 3)     # over slots, not examples
    assert s["gap"] == 0.75
    assert s["best_slot"] == [0] and s["worst_slot"] == [1] and s["n_per_slot"] == 1
    assert s["task"] == "retrieval"
    assert set(s) == {"task", "by_slot", "mean", "gap", "best_slot", "worst_slot", "n_per_slot"}
    assert set(s["by_slot"][0]) == {"slot", "accuracy", "stderr", "count"}


def test_summarize_follows_the_order_and_breaks_ties_by_it() -> None:
    rows = [{"slot": [p], "correct": c} for p, c in [(9, 0.8), (0, 0.8), (4, 0.5), (19, 0.5)]]
    s = RETRIEVAL.summarize(rows, [(0,), (4,), (9,), (19,)])
    assert [e["slot"] for e in s["by_slot"]] == [[0], [4], [9], [19]]
    assert s["best_slot"] == [0] and s["worst_slot"] == [4]        # ties: the first in order
    s = RETRIEVAL.summarize(rows, [(19,), (9,), (4,), (0,)])
    assert [e["slot"] for e in s["by_slot"]] == [[19], [9], [4], [0]]
    assert s["best_slot"] == [9] and s["worst_slot"] == [19]


def test_summarize_empty() -> None:
    with pytest.raises(ConfigError, match="no probe rows"):
        RETRIEVAL.summarize([], [(0,)])
    with pytest.raises(ConfigError, match="no probe rows"):
        RETRIEVAL.summarize([{"slot": [1], "correct": 1.0}], [(0,)])


def test_aggregate_then_summarize() -> None:
    rows = [{"slot": [p], "correct": c} for p, c in
            [(0, 1), (0, 1), (1, 0), (1, 1), (2, 0), (2, 0)]]
    summary = RETRIEVAL.summarize(rows, RETRIEVAL.slots("all", 3))
    assert summary["mean"] == pytest.approx(0.5)
    assert summary["gap"] == 1.0
    assert (tuple(summary["best_slot"]), tuple(summary["worst_slot"])) == ((0,), (2,))


def test_table_is_one_based() -> None:
    summary = {"task": "retrieval",
               "by_slot": [{"slot": [0], "accuracy": 0.75, "stderr": 0.2166, "count": 4},
                           {"slot": [19], "accuracy": 0.5, "stderr": 0.25, "count": 2}],
               "mean": 0.625, "gap": 0.25, "best_slot": [0]}
    assert RETRIEVAL.table(summary) == (
        "| gold position (1-based) | accuracy | s.e. | n |\n"
        "|---|---:|---:|---:|\n"
        "| 1 | 0.750 | 0.217 | 4 |\n"
        "| 20 | 0.500 | 0.250 | 2 |\n"
        "\n"
        "mean 0.625 · GAP 0.250 · best gold position 1 (1-based)\n")
    assert RETRIEVAL.describe(summary) == "mean 0.625  GAP 0.250  best gold position 1 (1-based)"


def reasoning_rows(spec: list[tuple[tuple[int, int], float, str | None]]) -> list[dict]:
    return [{"slot": list(s), "correct": c, "extracted": e} for s, c, e in spec]


REASONING_BEFORE_ROWS = reasoning_rows([((0, 1), 1.0, "x"), ((0, 1), 1.0, "x"),
                                        ((0, 2), 0.0, None), ((0, 2), 1.0, "x"),
                                        ((2, 0), 0.0, "y"), ((2, 0), 0.0, None)])
REASONING_AFTER_ROWS = reasoning_rows([((0, 1), 1.0, "x"), ((0, 1), 0.0, "x"),
                                       ((0, 2), 1.0, None), ((0, 2), 1.0, "x"),
                                       ((2, 0), 1.0, "y"), ((2, 0), 0.0, None)])
CONFIGURATIONS = [(0, 1), (0, 2), (2, 0)]


def test_reasoning_summary_and_table_by_hand() -> None:
    s = REASONING.summarize(REASONING_BEFORE_ROWS, CONFIGURATIONS)
    half = (0.5 * 0.5 / 2) ** 0.5
    assert s["by_slot"] == [
        {"slot": [0, 1], "accuracy": 1.0, "stderr": 0.0, "count": 2, "group": "connected",
         "no_answer": 0.0},
        {"slot": [0, 2], "accuracy": 0.5, "stderr": pytest.approx(half), "count": 2,
         "group": "disconnected", "no_answer": 0.5},
        {"slot": [2, 0], "accuracy": 0.0, "stderr": 0.0, "count": 2, "group": "reversed",
         "no_answer": 0.5}]
    assert (s["task"], s["mean"], s["gap"]) == ("reasoning", 0.5, 1.0)
    assert (s["best_slot"], s["worst_slot"], s["n_per_slot"]) == ([0, 1], [2, 0], 2)
    assert s["by_group"] == {"connected": {"mean": 1.0, "configurations": ["0,1"]},
                             "disconnected": {"mean": 0.5, "configurations": ["0,2"]},
                             "reversed": {"mean": 0.0, "configurations": ["2,0"]}}
    assert REASONING.table(s) == (
        "| hop positions (1-based) | group | EM | s.e. | n | no answer |\n"
        "|---|---|---:|---:|---:|---|\n"
        "| 1,2 | connected | 1.000 | 0.000 | 2 | 0.00 |\n"
        "| 1,3 | disconnected | 0.500 | 0.354 | 2 | 0.50 |\n"
        "| 3,1 | reversed | 0.000 | 0.000 | 2 | 0.50 |\n"
        "\n"
        "mean 0.500 · GAP 1.000 · connected 1.000 · disconnected 0.500 · reversed 0.000 · "
        "best hop positions 1,2 (1-based)\n")


# ---------------------------------------------------------------------------------------------
# compare and comparison_table (report's report.json and report.md)


BEFORE = summary({0: 0.8, 2: 0.4, 4: 0.6}, {0: 10, 2: 10, 4: 10}, best=0)
AFTER = summary({4: 0.7, 0: 0.75, 2: 0.65}, {0: 10, 2: 9, 4: 10}, best=0)


def test_compare_by_hand() -> None:
    cmp = RETRIEVAL.compare(BEFORE, AFTER)
    rows = cmp["by_slot"]
    assert [r["slot"] for r in rows] == [[0], [2], [4]]
    assert [r["before"] for r in rows] == [0.8, 0.4, 0.6]
    assert [r["after"] for r in rows] == [0.75, 0.65, 0.7]
    assert [r["delta"] for r in rows] == pytest.approx([-0.05, 0.25, 0.1])
    assert [r["count"] for r in rows] == [10, 9, 10]
    assert [(r["before_stderr"], r["after_stderr"]) for r in rows] == \
           [(0.01, 0.01), (0.03, 0.03), (0.05, 0.05)]
    assert set(rows[0]) == {"slot", "before", "after", "delta", "before_stderr", "after_stderr",
                            "count"}
    assert cmp["before"] == {"mean": pytest.approx(0.6), "gap": pytest.approx(0.4),
                             "best_slot": [0]}
    assert cmp["after"] == {"mean": pytest.approx(0.7), "gap": pytest.approx(0.1),
                            "best_slot": [0]}
    assert cmp["mean_delta"] == pytest.approx(0.1)
    assert cmp["gap_delta"] == pytest.approx(-0.3)
    assert cmp["advantageous_slot"] == [0]
    assert cmp["advantageous_delta"] == pytest.approx(-0.05)
    assert cmp["task"] == "retrieval"


def test_advantageous_slot_is_the_best_before() -> None:
    before = summary({0: 0.5, 1: 0.9}, {0: 2, 1: 2}, best=1)
    after = summary({0: 0.5, 1: 0.6}, {0: 2, 1: 2}, best=1)
    cmp = RETRIEVAL.compare(before, after)
    assert cmp["advantageous_slot"] == [1]
    assert cmp["advantageous_delta"] == pytest.approx(-0.3)


@pytest.mark.parametrize("after_positions", [[0, 2], [0, 2, 4, 6], [0, 1, 4]])
def test_mismatched_slots(after_positions: list[int]) -> None:
    after = summary({p: 0.5 for p in after_positions}, {p: 3 for p in after_positions}, best=0)
    with pytest.raises(ConfigError, match="different slots") as info:
        RETRIEVAL.compare(BEFORE, after)
    assert "different slots (1; 3; 5 vs " in str(info.value)
    assert "; ".join(str(p + 1) for p in after_positions) + ", 1-based)" in str(info.value)
    assert "--positions" in str(info.value)


def test_mismatched_configurations() -> None:
    before = REASONING.summarize(REASONING_BEFORE_ROWS, CONFIGURATIONS)
    after = REASONING.summarize(REASONING_AFTER_ROWS, CONFIGURATIONS[:2])
    with pytest.raises(ConfigError, match="different slots") as info:
        REASONING.compare(before, after)
    assert "(1,2; 1,3; 3,1 vs 1,2; 1,3, 1-based)" in str(info.value)
    assert "--configurations" in str(info.value)


def test_comparison_table() -> None:
    text = RETRIEVAL.comparison_table(RETRIEVAL.compare(BEFORE, AFTER))
    assert text == (
        "| gold position (1-based) | before | after | Δ |\n"
        "|---|---:|---:|---:|\n"
        "| 1 | 0.800 | 0.750 | -0.050 |\n"
        "| 3 | 0.400 | 0.650 | +0.250 |\n"
        "| 5 | 0.600 | 0.700 | +0.100 |\n"
        "\n"
        "| | before | after | Δ |\n"
        "|---|---:|---:|---:|\n"
        "| mean | 0.600 | 0.700 | +0.100 |\n"
        "| GAP (max − min) | 0.400 | 0.100 | -0.300 |\n"
        "| gold position 1 (best before) | 0.800 | 0.750 | -0.050 |\n")


def test_reasoning_comparison_by_hand() -> None:
    before = REASONING.summarize(REASONING_BEFORE_ROWS, CONFIGURATIONS)
    after = REASONING.summarize(REASONING_AFTER_ROWS, CONFIGURATIONS)
    cmp = REASONING.compare(before, after)
    assert [(r["slot"], r["group"], r["before"], r["after"], r["delta"]) for r in cmp["by_slot"]] \
        == [([0, 1], "connected", 1.0, 0.5, -0.5), ([0, 2], "disconnected", 0.5, 1.0, 0.5),
            ([2, 0], "reversed", 0.0, 0.5, 0.5)]
    assert cmp["by_group"] == {"connected": {"before": 1.0, "after": 0.5},
                               "disconnected": {"before": 0.5, "after": 1.0},
                               "reversed": {"before": 0.0, "after": 0.5}}
    assert cmp["after"] == {"mean": pytest.approx(2 / 3), "gap": 0.5, "best_slot": [0, 2]}
    assert cmp["advantageous_slot"] == [0, 1] and cmp["advantageous_delta"] == -0.5
    assert cmp["mean_delta"] == pytest.approx(1 / 6) and cmp["gap_delta"] == -0.5
    assert REASONING.comparison_table(cmp) == (
        "| hop positions (1-based) | group | before | after | Δ |\n"
        "|---|---|---:|---:|---:|\n"
        "| 1,2 | connected | 1.000 | 0.500 | -0.500 |\n"
        "| 1,3 | disconnected | 0.500 | 1.000 | +0.500 |\n"
        "| 3,1 | reversed | 0.000 | 0.500 | +0.500 |\n"
        "\n"
        "| | before | after | Δ |\n"
        "|---|---:|---:|---:|\n"
        "| connected (mean) | 1.000 | 0.500 | -0.500 |\n"
        "| disconnected (mean) | 0.500 | 1.000 | +0.500 |\n"
        "| reversed (mean) | 0.000 | 0.500 | +0.500 |\n"
        "| mean | 0.500 | 0.667 | +0.167 |\n"
        "| GAP (max − min) | 1.000 | 0.500 | -0.500 |\n"
        "| hop positions 1,2 (best before) | 1.000 | 0.500 | -0.500 |\n")


# ---------------------------------------------------------------------------------------------
# Retrieval files written before slots existed


def test_retrieval_summary_reads_exact_match_and_stopping_from_predictions() -> None:
    rows = [{"id": "a", "slot": [0], "prediction": "Lima", "answers": ["Lima"], "correct": 1.0},
            {"id": "b", "slot": [0], "prediction": "- Title : Kavo Lima Oslo Rome",
             "answers": ["Lima"], "correct": 1.0},
            {"id": "c", "slot": [1], "prediction": "", "answers": ["Lima"], "correct": 0.0},
            {"id": "d", "slot": [1], "prediction": "Lima.", "answers": ["Lima"], "correct": 1.0}]
    s = RETRIEVAL.summarize(rows, [(0,), (1,)])
    assert [e["accuracy"] for e in s["by_slot"]] == [1.0, 0.5]
    assert [e["exact_match"] for e in s["by_slot"]] == [0.5, 0.5]     # the run-on line fails
    assert [e["stop_rate"] for e in s["by_slot"]] == [0.5, 1.0]
    assert [e["no_answer"] for e in s["by_slot"]] == [0.0, 0.5]       # EOS first: no answer
    assert s["exact_match"] == {"mean": 0.5, "gap": 0.0} and s["stop_rate"] == 0.75
    assert s["no_answer"] == 0.25
    # Rows without predictions (hand-made) have neither.
    bare = RETRIEVAL.summarize([{"id": "a", "slot": [0], "correct": 1.0}], [(0,)])
    assert "exact_match" not in bare and "exact_match" not in bare["by_slot"][0]


def test_old_retrieval_rows_and_summaries_are_upgraded() -> None:
    old_row = {"id": "q", "position": 3, "prediction": "p", "answers": ["Lima"], "correct": 1.0}
    assert RETRIEVAL.upgrade_row(old_row) == {**old_row, "task": "retrieval", "slot": [3]}
    new_row = {"id": "q", "task": "retrieval", "slot": [3], "correct": 1.0}
    assert RETRIEVAL.upgrade_row(new_row) is new_row
    s = RETRIEVAL.summarize([old_row, {**old_row, "correct": 0.0}], [(3,)])
    assert s["by_slot"] == [{"slot": [3], "accuracy": 0.5,
                             "stderr": pytest.approx((0.5 * 0.5 / 2) ** 0.5), "count": 2,
                             "exact_match": 0.0, "stop_rate": 1.0, "no_answer": 0.0}]

    old = {"model": "m", "data": "d", "n_documents": 5,
           "by_position": [{"position": p, "accuracy": a, "stderr": 0.01 * (p + 1), "count": 10}
                           for p, a in ((0, 0.8), (2, 0.4), (4, 0.6))],
           "mean": 0.6, "gap": 0.4, "best_position": 0, "worst_position": 2,
           "n_per_position": 10}
    new = RETRIEVAL.upgrade_summary(old)
    assert new == {"model": "m", "data": "d", "n_documents": 5, "task": "retrieval",
                   "by_slot": [{"slot": [p], "accuracy": a, "stderr": 0.01 * (p + 1),
                                "count": 10} for p, a in ((0, 0.8), (2, 0.4), (4, 0.6))],
                   "mean": 0.6, "gap": 0.4, "best_slot": [0], "worst_slot": [2],
                   "n_per_slot": 10}
    assert RETRIEVAL.upgrade_summary(new) is new
    assert RETRIEVAL.headline(new) == {"accuracy_by_position": {"0": 0.8, "2": 0.4, "4": 0.6},
                                       "mean": 0.6, "gap": 0.4, "n_per_position": 10}
