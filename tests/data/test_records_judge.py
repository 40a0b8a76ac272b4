"""Judging items as records: validation, JSONL round trip, and the other kinds left as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pos2distill.data.records import Document, Record, read_records, write_records
from pos2distill.errors import DataError


def item(**kw) -> Record:
    fields = dict(id="j1", question="Which city is home to Kavo", answers=(),
                  documents=(Document("Kavo", "Lima"), Document("Dilu", "Oslo")), gold=(0,),
                  kind="judge", candidates=("Lima", "Oslo"), label="1")
    return Record(**{**fields, **kw})


@pytest.mark.parametrize("label", ["1", "2", "tie", None])
def test_judge_record_round_trips_through_jsonl(tmp_path: Path, label: str | None) -> None:
    records = [item(label=label),
               item(id="j2", documents=(), gold=(), candidates=("yes", "no"), label=label)]
    write_records(tmp_path / "j.jsonl", records)
    assert read_records(tmp_path / "j.jsonl") == records


def test_judge_record_needs_no_answers_documents_or_gold() -> None:
    r = item(documents=(), gold=(), answers=())
    assert r.candidates == ("Lima", "Oslo") and r.documents == ()


def test_integer_labels_are_read_as_candidate_numbers() -> None:
    d = {**item().to_dict(), "label": 2}
    assert Record.from_dict(d).label == "2"


@pytest.mark.parametrize("candidates, message", [
    (("Lima",), "has 1 candidate"), (("Lima", "  "), "answer 2 of the pair is missing"),
    (("", "Oslo"), "answer 1 of the pair is missing"), (("a", "b", "c"), "has 3 candidate")])
def test_a_pair_with_an_answer_missing_is_refused(candidates: tuple, message: str) -> None:
    with pytest.raises(DataError, match=message):
        item(candidates=candidates)


@pytest.mark.parametrize("label", ["3", "A", "0", "both"])
def test_a_label_outside_the_candidates_is_refused(label: str) -> None:
    with pytest.raises(DataError, match="not one of the candidates"):
        item(label=label)


def test_bad_judge_lines_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = item().to_dict()
    path.write_text("\n".join(json.dumps(x) for x in (
        good, {**good, "label": 3})) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2, field 'label'"):
        read_records(path)
    no_candidates = {k: v for k, v in good.items() if k != "candidates"}
    path.write_text(json.dumps(no_candidates) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1, field 'candidates'"):
        read_records(path)


def test_other_kinds_keep_their_checks_and_their_dict_form() -> None:
    qa = Record(id="q", question="q?", answers=("a",), documents=(Document("t", "x"),),
                gold=(0,))
    assert "candidates" not in qa.to_dict() and "label" not in qa.to_dict()
    with pytest.raises(DataError, match="no answers"):
        Record(id="q", question="q?", answers=(), documents=(Document("t", "x"),), gold=(0,))
    with pytest.raises(DataError, match="only judging items"):
        Record(id="q", question="q?", answers=("a",), documents=(Document("t", "x"),),
               gold=(0,), candidates=("a", "b"))
