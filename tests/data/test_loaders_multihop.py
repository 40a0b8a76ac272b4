"""Multi-hop loaders (MuSiQue, HotpotQA, 2WikiMultihopQA) on fixtures written from the published
schemas: hop order, aliases, skipped unanswerable questions, JSON-array files, and errors that name
file, line and field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pos2distill.config import ProbeConfig
from pos2distill.data.resolve import load_data
from pos2distill.errors import DataError
from pos2distill.tasks import get_task
from pos2distill.data.loaders import (detect_format, iter_rows, load_2wiki, load_hotpotqa, load_musique,
                                 load_records)

# MuSiQue (musique_ans_v1.0_*.jsonl): the second hop's paragraph comes first in `paragraphs`, so the
# hop order must come from question_decomposition, not from the paragraph order.
MUSIQUE = {
    "id": "2hop__1_2",
    "paragraphs": [
        {"idx": 0, "title": "Lima", "paragraph_text": "Lima is the capital of Peru.",
         "is_supporting": True},
        {"idx": 1, "title": "Oslo", "paragraph_text": "Oslo is in Norway.", "is_supporting": False},
        {"idx": 2, "title": "Ann Body", "paragraph_text": "Ann Body was born in Peru.",
         "is_supporting": True},
    ],
    "question": "What is the capital of the country where Ann Body was born?",
    "question_decomposition": [
        {"id": 1, "question": "Ann Body >> place of birth", "answer": "Peru",
         "paragraph_support_idx": 2},
        {"id": 2, "question": "capital of #1", "answer": "Lima", "paragraph_support_idx": 0},
    ],
    "answer": "Lima",
    "answer_aliases": ["Lima, Peru", "City of Kings"],
    "answerable": True,
}

# HotpotQA (hotpot_dev_distractor_v1.json: one JSON array). The bridge question's first hop (the
# film) mentions the bridge entity (the director), the title of the second hop.
HOTPOT = [
    {"_id": "5a8b", "type": "bridge", "level": "medium",
     "question": "Where was the director of Blue Fog born?", "answer": "Oslo",
     "supporting_facts": [["Kari Lund", 1], ["Blue Fog", 0], ["Kari Lund", 0]],
     "context": [["Kari Lund", ["Kari Lund is a director.", " She was born in Oslo."]],
                 ["Red Sun", ["Red Sun is a film."]],
                 ["Blue Fog", ["Blue Fog is a 1999 film", " directed by Kari Lund."]]]},
    {"_id": "5a8c", "type": "comparison", "level": "hard",
     "question": "Which is older, Red Sun or Blue Fog?", "answer": "Red Sun",
     "supporting_facts": [["Red Sun", 0], ["Blue Fog", 0]],
     "context": [["Blue Fog", ["Blue Fog is a 1999 film."]], ["Red Sun", ["Red Sun (1950)."]],
                 ["Kari Lund", ["Kari Lund is a director."]]]},
]

# 2WikiMultihopQA (dev.json: one JSON array); `evidences` give the reasoning order.
WIKI2 = {
    "_id": "abc1", "type": "compositional",
    "question": "Who is the mother of the director of film Polish Wedding?",
    "context": [["Maria Ross", ["Maria Ross is an actress."]],
                ["Theresa Connelly", ["Theresa Connelly is a director.", "Her mother is Maria Ross."]],
                ["Polish Wedding", ["Polish Wedding is a 1998 film directed by Theresa Connelly."]]],
    "supporting_facts": [["Theresa Connelly", 1], ["Polish Wedding", 0]],
    "evidences": [["Polish Wedding", "director", "Theresa Connelly"],
                  ["Theresa Connelly", "mother", "Maria Ross"]],
    "answer": "Maria Ross",
}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_array(path: Path, rows: list[Any], *, indent: int | None = 1) -> Path:
    path.write_text(json.dumps(rows, indent=indent))
    return path


def test_musique(tmp_path: Path) -> None:
    unanswerable = dict(copy.deepcopy(MUSIQUE), id="2hop__x", answerable=False)
    path = write_jsonl(tmp_path / "musique_ans_v1.0_dev.jsonl", [MUSIQUE, unanswerable, MUSIQUE])
    records = load_musique(path)
    assert len(records) == 2                                 # the unanswerable one is skipped
    r = records[0]
    assert r.id == "2hop__1_2" and r.kind == "multihop"
    assert r.gold == (2, 0)                                  # hop order, not paragraph order
    assert r.documents[2].title == "Ann Body" and r.documents[0].text == "Lima is the capital of Peru."
    assert r.answers == ("Lima", "Lima, Peru", "City of Kings")
    assert detect_format(path) == "musique" and load_records(path) == records


def test_musique_logs_the_skipped_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [dict(copy.deepcopy(MUSIQUE), answerable=False)] * 3 + [MUSIQUE]
    with caplog.at_level("INFO"):
        assert len(load_musique(write_jsonl(tmp_path / "m.jsonl", rows))) == 1
    assert "skipped 3 unanswerable" in caplog.text


def test_musique_idx_differs_from_list_index(tmp_path: Path) -> None:
    row = copy.deepcopy(MUSIQUE)
    for k, para in enumerate(row["paragraphs"]):
        para["idx"] = 10 + k
    row["question_decomposition"][0]["paragraph_support_idx"] = 12
    row["question_decomposition"][1]["paragraph_support_idx"] = 10
    assert load_musique(write_jsonl(tmp_path / "m.jsonl", [row]))[0].gold == (2, 0)


def test_hotpotqa_array(tmp_path: Path) -> None:
    path = write_array(tmp_path / "hotpot_dev_distractor_v1.json", HOTPOT)
    bridge, comparison = load_hotpotqa(path)
    # Bridge: Blue Fog mentions Kari Lund, so Blue Fog is the first hop although listed second.
    assert [bridge.documents[g].title for g in bridge.gold] == ["Blue Fog", "Kari Lund"]
    assert bridge.documents[0].text == "Kari Lund is a director. She was born in Oslo."
    assert bridge.answers == ("Oslo",) and bridge.id == "5a8b" and bridge.kind == "multihop"
    # Comparison: supporting-facts order.
    assert [comparison.documents[g].title for g in comparison.gold] == ["Red Sun", "Blue Fog"]
    assert detect_format(path) == "hotpotqa"
    # The same content as JSONL, or as a one-line array, loads the same.
    assert load_hotpotqa(write_jsonl(tmp_path / "h.jsonl", HOTPOT)) == [bridge, comparison]
    assert load_hotpotqa(write_array(tmp_path / "h1.json", HOTPOT, indent=None)) == [bridge,
                                                                                       comparison]


def test_2wiki(tmp_path: Path) -> None:
    path = write_array(tmp_path / "dev.json", [WIKI2])
    (r,) = load_2wiki(path)
    assert [r.documents[g].title for g in r.gold] == ["Polish Wedding", "Theresa Connelly"]
    assert r.answers == ("Maria Ross",) and r.id == "abc1"
    assert detect_format(path) == "2wiki" and load_records(path) == [r]


def test_multihop_data_through_load_data(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [MUSIQUE])
    records = load_data(ProbeConfig(data=str(path), task="reasoning"))
    assert len(records) == 1 and records[0].gold == (2, 0)   # never turned into an oracle build


def test_iter_rows_array_line_numbers(tmp_path: Path) -> None:
    path = write_array(tmp_path / "a.json", [{"a": 1}, {"b": [1, 2]}, {"c": 3}], indent=2)
    lines = [line for line, _ in iter_rows(path)]
    text = path.read_text().splitlines()
    assert [text[n - 1].strip() for n in lines] == ["{"] * 3
    assert lines[0] == 2 and lines == sorted(lines)
    assert list(iter_rows(write_array(tmp_path / "e.json", []))) == []


def test_iter_rows_malformed_array(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n{"a": 1},\n{"a": 2}\n{"a": 3}\n]')
    with pytest.raises(DataError, match="bad.json:4.*expected ','"):
        list(iter_rows(path))
    path.write_text('[\n{"a": 1},\n{"a": \n]')
    with pytest.raises(DataError, match="bad.json:4: malformed JSON"):
        list(iter_rows(path))


def _musique(**change: Any) -> dict[str, Any]:
    row = copy.deepcopy(MUSIQUE)
    for dotted, value in change.items():
        *head, last = dotted.split(".")
        target: Any = row
        for part in head:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return row


@pytest.mark.parametrize("change, field, message", [
    ({"answer": KeyError}, "answer", "missing"),
    ({"answer": ""}, "answer", "non-empty"),
    ({"answer_aliases": "Lima"}, "answer_aliases", "list of strings"),
    ({"answerable": "yes"}, "answerable", "true or false"),
    ({"paragraphs": []}, "paragraphs", "must not be empty"),
    ({"paragraphs.1.paragraph_text": None}, "paragraphs[1].paragraph_text", "not a string"),
    ({"paragraphs.1.idx": 0}, "paragraphs[1].idx", "unique"),
    ({"paragraphs.2.is_supporting": 1}, "paragraphs[2].is_supporting", "true or false"),
    ({"question_decomposition.1.paragraph_support_idx": 7},
     "question_decomposition[1].paragraph_support_idx", "not the idx of any paragraph"),
    ({"question_decomposition.0.paragraph_support_idx": None},
     "question_decomposition[0].paragraph_support_idx", "not an integer"),
    ({"paragraphs.1.is_supporting": True}, "question_decomposition", "is_supporting"),
    ({"id": KeyError}, "id", "missing"),
])
def test_musique_errors(tmp_path: Path, change: dict[str, Any], field: str, message: str) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [MUSIQUE, _musique(**change)])
    with pytest.raises(DataError, match=message) as info:
        load_musique(path)
    err = info.value
    assert err.line == 2 and err.field == field and "m.jsonl:2" in str(err)


@pytest.mark.parametrize("change, field, message", [
    ({"supporting_facts": [["Nobody", 0]]}, "supporting_facts[0]", "not in context"),
    ({"supporting_facts": [["Red Sun"]]}, "supporting_facts[0]", "title, sentence index"),
    ({"context": [["Red Sun", "Red Sun is a film."]]}, "context[0]", "title, \\[sentence"),
    ({"type": "other"}, "type", "bridge or comparison"),
    ({"_id": 5}, "_id", "must be a str"),
])
def test_hotpotqa_errors(tmp_path: Path, change: dict[str, Any], field: str, message: str) -> None:
    bad = dict(copy.deepcopy(HOTPOT[1]), **change)
    path = write_array(tmp_path / "h.json", [HOTPOT[0], bad], indent=None)
    path.write_text(path.read_text().replace('}, {"_id"', '},\n{"_id"'))   # item 2 on line 2
    with pytest.raises(DataError, match=message) as info:
        load_hotpotqa(path)
    assert info.value.line == 2 and info.value.field == field and "h.json:2" in str(info.value)


def test_2wiki_errors(tmp_path: Path) -> None:
    bad = dict(copy.deepcopy(WIKI2), evidences=[["Polish Wedding", "director"]])
    with pytest.raises(DataError, match="subject, relation, object") as info:
        load_2wiki(write_jsonl(tmp_path / "w.jsonl", [WIKI2, bad]))
    assert info.value.line == 2 and info.value.field == "evidences[0]"
    missing = {k: v for k, v in WIKI2.items() if k != "evidences"}
    with pytest.raises(DataError, match="missing") as info:
        load_2wiki(write_jsonl(tmp_path / "w.jsonl", [missing]))
    assert info.value.field == "evidences"


def test_iter_rows_array_too_deep_or_bad_unicode(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[\n" + "[" * 100000 + "]" * 100000 + "\n]")
    with pytest.raises(DataError, match="deep.json:2: JSON nested too deeply"):
        list(iter_rows(path))
    path.write_text('[\n{"a": "\\ud800"}\n]')
    with pytest.raises(DataError, match="deep.json:2: unpaired surrogate"):
        list(iter_rows(path))


def test_multihop_data_for_retrieval_points_to_the_task_option(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [MUSIQUE])
    with pytest.raises(DataError, match="2 gold \\(hop\\) documents: multi-hop data needs --task "
                                        "reasoning"):
        get_task("retrieval").keep(load_data(ProbeConfig(data=str(path))), str(path))


def test_iter_rows_bad_utf8_after_the_first_block(tmp_path: Path) -> None:
    """A JSON array whose invalid byte comes after the 4096 characters read to sniff the format
    (found by tests/test_fuzz.py) is a DataError, not a UnicodeDecodeError."""
    path = tmp_path / "late.json"
    path.write_bytes(b'[{"a": "' + b"x" * 5000 + b'"}]\n\x80\n')
    with pytest.raises(DataError, match="late.json: cannot read"):
        list(iter_rows(path))
