"""Judgement files (MT-Bench human judgements, LLMBar, RewardBench, ours): fixtures written here
in those shapes; format detection; bad pairs refused with one line and exit 2."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pos2distill import cli
from pos2distill.data.loaders import detect_format, load_records
from pos2distill.data.records import Document, Record, write_records
from pos2distill.errors import DataError


def conversation(question: str, answer: str | None) -> list[dict[str, str]]:
    """Two turns each (MT-Bench's shape); ``answer`` None: the first answer is left out."""
    first = [{"role": "user", "content": question}]
    if answer is not None:
        first.append({"role": "assistant", "content": answer})
    return first + [{"role": "user", "content": "And then?"},
                    {"role": "assistant", "content": "Later turn."}]


def mtbench_line(winner: Any, a: str | None = "Answer from A", b: str | None = "Answer from B",
                 **kw: Any) -> dict[str, Any]:
    return {"question_id": 81, "model_a": "alpaca-13b", "model_b": "gpt-3.5-turbo",
            "winner": winner, "judge": "author_0", "turn": 1,
            "conversation_a": conversation("Write a haiku.", a),
            "conversation_b": conversation("Write a haiku.", b), **kw}


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mtbench_human_judgements(tmp_path: Path) -> None:
    path = write(tmp_path / "mt.jsonl", [mtbench_line(w) for w in (
        "model_a", "model_b", "tie", "tie (bothbad)")] + [
        {k: v for k, v in mtbench_line("x").items() if k != "winner"}])
    assert detect_format(path) == "mtbench"
    records = load_records(path)
    assert [r.label for r in records] == ["1", "2", "tie", "tie", None]
    r = records[0]
    assert (r.kind, r.question, r.candidates) == ("judge", "Write a haiku.",
                                                   ("Answer from A", "Answer from B"))
    assert r.documents == () and [x.id for x in records] == [f"mt-{k}" for k in range(5)]


def test_llmbar_pairs(tmp_path: Path) -> None:
    path = write(tmp_path / "llmbar.jsonl", [
        {"input": "Sort 3,1,2", "output_1": "1,2,3", "output_2": "3,2,1", "label": 1},
        {"input": "Say hi", "output_1": "bye", "output_2": "hi", "label": 2},
        {"input": "Say hi", "output_1": "bye", "output_2": "hi"}])
    assert detect_format(path) == "llmbar"
    assert [(r.candidates, r.label) for r in load_records(path)] == [
        (("1,2,3", "3,2,1"), "1"), (("bye", "hi"), "2"), (("bye", "hi"), None)]


def test_rewardbench_pairs_shuffle_chosen_by_a_seeded_coin(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{k}", "chosen": f"good{k}", "rejected": f"bad{k}"} for k in range(40)]
    path = write(tmp_path / "rb.jsonl", rows)
    assert detect_format(path) == "rewardbench"
    records = load_records(path)
    for r in records:
        k = r.question[1:]
        assert set(r.candidates) == {f"good{k}", f"bad{k}"}
        assert r.candidates[int(r.label) - 1] == f"good{k}"      # the label is chosen
    labels = Counter(r.label for r in records)
    assert labels["1"] >= 10 and labels["2"] >= 10              # not always first
    assert load_records(path) == records                         # seeded: the same every time


def test_our_format_round_trips(tmp_path: Path) -> None:
    items = [Record(id="a", question="Which city is home to Kavo", answers=("Lima",),
                    documents=(Document("Kavo", "Lima"),), gold=(0,), kind="judge",
                    candidates=("Lima", "Oslo"), label="1"),
             Record(id="b", question="q", answers=(), documents=(), gold=(), kind="judge",
                    candidates=("x", "y"), label=None)]
    write_records(tmp_path / "ours.jsonl", items)
    assert detect_format(tmp_path / "ours.jsonl") == "records"
    assert load_records(tmp_path / "ours.jsonl") == items


BAD = {
    "mtbench answer missing": ([mtbench_line("model_a", b=None)],
                               r":1, field 'conversation_b'.*one answer of the pair"),
    "mtbench empty answer": ([mtbench_line("model_a", a="  ")],
                             r":1, field 'conversation_a'.*missing or empty"),
    "mtbench bad winner": ([mtbench_line("model_a"), mtbench_line("model_c")],
                           r":2, field 'winner'.*not one of the candidates"),
    "llmbar answer missing": ([{"input": "q", "output_1": "a", "output_2": ""}],
                              r":1, field 'output_2'.*one answer of the pair is missing"),
    "llmbar label 3": ([{"input": "q", "output_1": "a", "output_2": "b", "label": 3}],
                       r":1, field 'label'.*not one of the candidates \(1, 2\)"),
    "rewardbench rejected missing": ([{"prompt": "q", "chosen": "a", "rejected": None}],
                                     r":1, field 'rejected'.*one answer of the pair"),
    # The other answer's key absent altogether: still known by the one present.
    "llmbar output_2 absent": ([{"input": "q", "output_1": "a", "label": 1}],
                               r":1, field 'output_2'.*one answer of the pair is missing"),
    "rewardbench rejected absent": ([{"prompt": "q", "chosen": "a"}],
                                    r":1, field 'rejected'.*one answer of the pair"),
    "ours label 3": ([{"id": "x", "question": "q", "answers": [], "documents": [], "gold": [],
                       "kind": "judge", "candidates": ["a", "b"], "label": 3}],
                     r":1, field 'label'.*not one of the candidates"),
    "ours one candidate": ([{"id": "x", "question": "q", "answers": [], "documents": [],
                             "gold": [], "kind": "judge", "candidates": ["a"]}],
                           r":1, field 'candidates'.*exactly 2"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_pairs_are_refused_naming_line_and_field(tmp_path: Path, case: str) -> None:
    rows, message = BAD[case]
    with pytest.raises(DataError, match=message):
        load_records(write(tmp_path / "bad.jsonl", rows))


@pytest.mark.parametrize("case", ["llmbar answer missing", "llmbar label 3"])
def test_bad_pairs_exit_2_with_one_line(tmp_path: Path, case: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "bad.jsonl", BAD[case][0])
    code = cli.main(["-q", "probe", "--task", "judge", "--data", str(path), "--model", "tiny",
                     "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("pos2distill probe: error: ")
    assert not (tmp_path / "p").exists()


def test_template_without_both_answer_slots_exits_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    template = tmp_path / "t.txt"
    template.write_text("{question}\n{answer_a}\n")
    code = cli.main(["-q", "probe", "--task", "judge", "--data", "synthetic-judge:test",
                     "--template", str(template), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "{answer_b} missing" in err
