"""pairs: K distinct trivial slots, anchors, fresh distractor orders, determinism; old teacher
rows. (R2 pairs: tests/test_reasoning.py.)"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeGenerator, reasoning_oracle_answer
from helpers import teacher_rows
from pos2distill.stages import pairs, teach
from pos2distill.data import synthetic
from pos2distill.config import PairsConfig, TeachConfig
from pos2distill.errors import ConfigError
from pos2distill.tasks import get_task
from pos2distill.tasks.prompts import INSTRUCTIONS
from pos2distill.data.records import Record, write_jsonl

N_DOCS = 10


def titles(prompt: str) -> list[str]:
    return [line[len("- Title: "):] for line in prompt.splitlines() if line.startswith("- Title: ")]


def teacher_rows_for(tok: Any, adv: int, n: int = 4, n_documents: int = N_DOCS,
                     instruction: str = "") -> list[dict]:
    records = synthetic.generate("train", n, n_documents=n_documents)
    # The fake answers every question (with a second line, which pairs must drop).
    answer = {r.question: r.answers[0] for r in records}

    def reply(prompt: str) -> str:
        question = next(q for q in answer if q in prompt)
        return f"  {answer[question]}  \nsecond line"

    return teacher_rows(records, FakeGenerator(reply), tok, task="retrieval", adv=(adv,),
                        template="authors", chat="auto", seed=0, max_new_tokens=8,
                        instruction=instruction)


@pytest.mark.parametrize("adv", [0, 4, N_DOCS - 1])
def test_make_pairs_positions_and_prompts(tok: Any, adv: int) -> None:
    rows = teacher_rows_for(tok, adv)
    K, anchors = 4, 2
    out = pairs.make_pairs(rows, tok, K=K, anchors=anchors, seed=5)
    assert len(out) == len(rows) * (K + anchors)
    assert len({p["id"] for p in out}) == len(out)
    for row in rows:
        record = Record.from_dict(row["record"])
        mine = [p for p in out if p["question_id"] == record.id]
        assert all(len(p["slot"]) == 1 for p in mine)
        trivial = [p["slot"][0] for p in mine if not p["anchor"]]
        assert len(trivial) == K == len(set(trivial))
        assert adv not in trivial and all(0 <= q < N_DOCS for q in trivial)
        assert [p["slot"] for p in mine if p["anchor"]] == [[adv]] * anchors
        assert [tuple(p["slot"]) for p in mine if not p["anchor"]] == \
            get_task("retrieval").training_slots(record.id, N_DOCS, (adv,), K=K, seed=5,
                                                 pool="any")
        assert all(p["anchor"] == (p["slot"] == [adv]) for p in mine)
        subject = record.gold_document.title
        teacher_titles = titles(row["teacher_prompt"])
        assert teacher_titles.index(subject) == adv
        teacher_distractors = [t for t in teacher_titles if t != subject]
        student_orders = []
        for p in mine:
            assert p["teacher_prompt"] == row["teacher_prompt"]      # stored, never re-rendered
            assert p["response"] == record.answers[0]                  # first line, stripped
            assert p["adv_slot"] == [adv] and p["chat"] is True
            assert p["task"] == "retrieval" and p["answers"] == list(record.answers)
            assert p["id"].startswith(f"{record.id}#")
            student = titles(p["student_prompt"])
            assert Counter(student) == Counter(teacher_titles)
            assert student.index(subject) == p["slot"][0]
            distractors = [t for t in student if t != subject]
            assert distractors != teacher_distractors                 # a fresh order, anchors too
            student_orders.append(tuple(distractors))
            assert p["student_prompt"].startswith("<|bos|><|user|>\n")
        assert len(set(student_orders)) == len(student_orders)


def test_make_pairs_is_deterministic_per_seed(tok: Any) -> None:
    rows = teacher_rows_for(tok, 0)
    a = pairs.make_pairs(rows, tok, K=3, anchors=1, seed=0)
    assert pairs.make_pairs(rows, tok, K=3, anchors=1, seed=0) == a
    b = pairs.make_pairs(rows, tok, K=3, anchors=1, seed=1)
    assert [p["slot"] for p in b] != [p["slot"] for p in a]
    assert [p["student_prompt"] for p in b] != [p["student_prompt"] for p in a]
    # Slot draws do not depend on the other questions in the file.
    alone = pairs.make_pairs(rows[2:3], tok, K=3, anchors=1, seed=0)
    assert alone == [p for p in a if p["question_id"] == rows[2]["id"]]


def test_make_pairs_full_response_and_plain_prompts(tok: Any) -> None:
    rows = teacher_rows_for(tok, 0, n=1)
    full = pairs.make_pairs(rows, tok, K=1, anchors=0, seed=0, use_first_line=False)
    record = Record.from_dict(rows[0]["record"])
    assert full[0]["response"] == f"{record.answers[0]}  \nsecond line"
    plain_rows = [{**rows[0], "chat": "off"}]
    (p,) = pairs.make_pairs(plain_rows, tok, K=1, anchors=0, seed=0)
    assert p["chat"] is False and p["student_prompt"].endswith("\nAnswer:")
    assert "<|user|>" not in p["student_prompt"]


def test_make_pairs_keep_the_teachers_instruction(tok: Any) -> None:
    custom = pairs.make_pairs(teacher_rows_for(tok, 0, instruction="Answer the question."), tok,
                              K=3, anchors=1, seed=0)
    default = pairs.make_pairs(teacher_rows_for(tok, 0), tok, K=3, anchors=1, seed=0)
    for c, d in zip(custom, default, strict=True):
        for key in ("student_prompt", "teacher_prompt"):
            assert c[key].startswith("<|bos|><|user|>\nAnswer the question.\n- Title: ")
            # Only the instruction line differs: same positions, same distractor orders.
            assert c[key].replace("Answer the question.", INSTRUCTIONS["authors"], 1) == d[key]


def test_teacher_rows_from_before_instructions_still_load(tok: Any) -> None:
    rows = teacher_rows_for(tok, 0, n=2)
    old = [{k: v for k, v in row.items() if k != "instruction"} for row in rows]
    assert pairs.make_pairs(old, tok, K=2, anchors=1, seed=0) == \
        pairs.make_pairs(rows, tok, K=2, anchors=1, seed=0)


def test_teach_then_pairs_with_a_custom_instruction(tiny_model_dir: Path, tmp_path: Path,
                                                    oracle_hf: Any) -> None:
    teach.main(TeachConfig(model=str(tiny_model_dir), data="synthetic:train", limit=3,
                           n_documents=5, out=str(tmp_path / "teach.jsonl"),
                           instruction="Answer the question."))
    result = pairs.main(PairsConfig(teach=str(tmp_path / "teach.jsonl"),
                                    out=str(tmp_path / "pairs.jsonl"), model=str(tiny_model_dir),
                                    K=2, anchors=1))
    assert result["pairs"] == 9
    written = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    for row in written:
        for key in ("student_prompt", "teacher_prompt"):
            assert row[key].startswith("<|bos|><|user|>\nAnswer the question.\n- Title: ")
            assert INSTRUCTIONS["authors"] not in row[key]


def test_k_equal_to_all_trivial_positions(tok: Any) -> None:
    rows = teacher_rows_for(tok, 3, n=1, n_documents=5)
    out = pairs.make_pairs(rows, tok, K=4, anchors=0, seed=0)
    assert [p["slot"] for p in out] == [[0], [1], [2], [4]]


def test_k_larger_than_trivial_positions(tok: Any) -> None:
    rows = teacher_rows_for(tok, 0, n=1, n_documents=5)
    with pytest.raises(ConfigError, match="--K 5 is larger than the 4 trivial positions"):
        pairs.make_pairs(rows, tok, K=5, anchors=1, seed=0)


def test_retrieval_training_slots_are_the_draws_of_before_slots() -> None:
    """The K trivial slots are drawn as ``draw_positions`` drew them before slots existed
    (``random.Random(f"{seed}|{record_id}|positions")``), so old runs' pairs come out again."""
    task = get_task("retrieval")
    trivial = [p for p in range(20) if p != 7]
    for seed in range(20):
        got = task.training_slots("q", 20, (7,), K=4, seed=seed, pool="any")
        assert got == sorted(set(got)) and len(got) == 4 and (7,) not in got
        drawn = random.Random(f"{seed}|q|positions").sample(trivial, 4)
        assert got == [(p,) for p in sorted(drawn)]
    assert task.training_slots("q", 3, (0,), K=0, seed=0, pool="any") == []
    # Another question, another draw (keyed by the record id, not by call order).
    assert [task.training_slots(f"q{k}", 20, (7,), K=4, seed=0, pool="any")
            for k in range(5)] != [task.training_slots("q", 20, (7,), K=4, seed=0,
                                                       pool="any")] * 5


def test_pairs_config_validation() -> None:
    with pytest.raises(ConfigError, match="--K: must be >= 0"):
        PairsConfig(K=-1)
    with pytest.raises(ConfigError, match="both 0"):
        PairsConfig(K=0, anchors=0)


def pairs_input(task_name: str, tok: Any) -> tuple[list[dict], int]:
    """Three kept teacher rows of ``task_name`` (6 documents) and their pair count with K = 2,
    one anchor (R2 has none)."""
    if task_name == "retrieval":
        return teacher_rows_for(tok, 0, n=3, n_documents=6), 3 * (2 + 1)
    records = synthetic.generate_reasoning("train", 3, n_documents=6)
    rows = teacher_rows(records, FakeGenerator(reasoning_oracle_answer), tok, task="reasoning",
                        adv=(4, 5), template="reasoning", chat="auto", seed=0, max_new_tokens=40)
    assert all(row["correct"] for row in rows)
    return rows, 3 * 2


@pytest.mark.parametrize("task_name", ["retrieval", "reasoning"])
def test_pairs_main(tiny_model_dir: Path, tmp_path: Path, tok: Any, task_name: str) -> None:
    rows, n_pairs = pairs_input(task_name, tok)
    write_jsonl(tmp_path / "teach.jsonl", rows)
    cfg = PairsConfig(teach=str(tmp_path / "teach.jsonl"), out=str(tmp_path / "pairs.jsonl"),
                      model=str(tiny_model_dir), K=2, anchors=1, seed=4)
    assert pairs.main(cfg) == {"pairs": n_pairs, "questions": 3,
                               "out": str(tmp_path / "pairs.jsonl")}
    written = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert written == pairs.make_pairs(rows, tok, K=2, anchors=1, seed=4)
    assert all(p["task"] == task_name for p in written)
    assert set(written[0]) == {"id", "question_id", "task", "slot", "adv_slot", "anchor",
                               "student_prompt", "chat", "teacher_prompt", "response", "answers"}

    write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ConfigError, match="has no kept teacher responses"):
        pairs.main(PairsConfig(teach=str(tmp_path / "empty.jsonl"), model=str(tiny_model_dir),
                               out=str(tmp_path / "p2.jsonl")))


def old_teacher_row(row: dict[str, Any]) -> dict[str, Any]:
    """A teacher row as teach wrote it before slots existed: ``adv_position`` (and for
    reasoning ``task`` and ``adv_configuration``), no ``adv_slot``; retrieval rows had no
    ``task``."""
    old = {k: v for k, v in row.items() if k not in ("task", "adv_slot")}
    if row["task"] == "reasoning":
        return {**old, "task": "reasoning", "adv_position": row["adv_slot"][0],
                "adv_configuration": row["adv_slot"]}
    return {**old, "adv_position": row["adv_slot"][0]}


@pytest.mark.parametrize("task_name", ["retrieval", "reasoning"])
def test_pairs_main_on_teacher_rows_written_before_slots(tiny_model_dir: Path, tmp_path: Path,
                                                         tok: Any, task_name: str) -> None:
    rows, n_pairs = pairs_input(task_name, tok)
    write_jsonl(tmp_path / "teach.jsonl", [old_teacher_row(row) for row in rows])
    assert teach.read_teacher_rows(tmp_path / "teach.jsonl") == \
        [{**old_teacher_row(row), "task": task_name, "adv_slot": row["adv_slot"]} for row in rows]
    result = pairs.main(PairsConfig(teach=str(tmp_path / "teach.jsonl"), model=str(tiny_model_dir),
                                    out=str(tmp_path / "pairs.jsonl"), K=2, anchors=1, seed=4))
    assert result["pairs"] == n_pairs
    written = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert written == pairs.make_pairs(rows, tok, K=2, anchors=1, seed=4)
