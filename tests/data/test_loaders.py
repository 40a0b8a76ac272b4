"""Loaders: real lost-in-the-middle samples, hand-written fixtures for every format, error messages
that name file, line and field, and the oracle-to-n-document builder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from pos2distill.errors import ConfigError, DataError
from pos2distill.data.loaders import (FORMATS, build_from_oracle, detect_format, load_authors, load_kv,
                                 load_litm_qa, load_records)
from pos2distill.metrics import normalize_answer
from pos2distill.data.records import Document, Record, write_records

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
NQ_ORACLE = DATA / "nq-open-oracle.jsonl.gz"
KV_75 = DATA / "kv-retrieval-75_keys.jsonl.gz"


def _real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data sample {path.name} not found in {DATA} "
                    "(the shared data folder sits next to the repository)")
    return path


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write a JSONL fixture; strings are written verbatim (to make blank or malformed lines)."""
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def assert_names(err: DataError, path: Path, line: int, field: str | None) -> None:
    """The message must let a user find the problem: file name, line number and field."""
    message = str(err)
    assert path.name in message
    assert f":{line}" in message and err.line == line
    if field is not None:
        assert f"'{field}'" in message and err.field == field


def litm_line(gold_at: int = 1, n: int = 3, **overrides: Any) -> dict[str, Any]:
    ctxs = [{"title": f"T{i}", "text": f"passage {i}", "isgold": i == gold_at,
             "hasanswer": i == gold_at, "id": str(i), "score": "1.0"} for i in range(n)]
    row = {"question": "who?", "answers": ["Ann", "Anne"], "ctxs": ctxs,
           "nq_annotated_gold": {"title": "T"}}
    row.update(overrides)
    return row


def authors_line(**overrides: Any) -> dict[str, Any]:
    row = {"question": "where?", "answers": ["Oslo"],
           "gold_document": {"title": "Norway", "text": "Oslo is the capital."},
           "distractors": [{"title": "A", "text": "a"}, {"title": "B", "text": "b"}]}
    row.update(overrides)
    return row


def kv_line(**overrides: Any) -> dict[str, Any]:
    row = {"ordered_kv_records": [["k0", "v0"], ["k1", "v1"], ["k2", "v2"]],
           "key": "k1", "value": "v1"}
    row.update(overrides)
    return row


# ---------------------------------------------------------------------------------------------
# Real samples
# ---------------------------------------------------------------------------------------------

def test_real_nq_oracle() -> None:
    records = load_litm_qa(_real(NQ_ORACLE))
    assert len(records) == 2655
    first = records[0]
    assert first.id == "nq-open-oracle-0" and records[-1].id == "nq-open-oracle-2654"
    assert first.question == "who got the first nobel prize in physics"
    assert first.answers == ("Wilhelm Conrad Röntgen",)
    assert first.kind == "qa"
    assert first.gold_document.title == "List of Nobel laureates in Physics"
    assert all(len(r.documents) == 1 and r.gold == (0,) for r in records)
    assert load_records(NQ_ORACLE) == records                        # auto-detected as litm


def test_real_kv() -> None:
    records = load_kv(_real(KV_75))
    assert len(records) == 500
    with gzip.open(KV_75, "rt", encoding="utf-8") as f:
        raw = json.loads(f.readline())
    first = records[0]
    assert first.id == "kv-retrieval-75_keys-0" and first.kind == "kv"
    assert len(first.documents) == 75
    assert first.question == raw["key"] and first.answers == (raw["value"],)
    assert first.gold_document.text == f'"{raw["key"]}": "{raw["value"]}"'
    assert all(d.title == "" for d in first.documents)
    assert load_records(KV_75) == records                            # auto-detected as kv


def test_real_nq_builds_20_documents() -> None:
    records = load_litm_qa(_real(NQ_ORACLE))
    built = build_from_oracle(records, n_documents=20, seed=0)
    assert len(built) == len(records)
    # Normalise each distinct passage once: 50k normalisations would dominate the test's time.
    keys = {r.documents[0]: normalize_answer(f"{r.documents[0].title} {r.documents[0].text}")
            for r in records}
    for original, r in zip(records, built):
        assert len(r.documents) == 20 and r.gold == (0,)
        assert r.documents[0] == original.documents[0]
        assert len({keys[d] for d in r.documents}) == 20
        # Answers under four characters only have to be absent as whole words (tested below).
        long_answers = [a for a in map(normalize_answer, r.answers) if len(a) >= 4]
        for d in r.documents[1:]:
            assert not any(a in keys[d] for a in long_answers), (r.id, d.title)


# ---------------------------------------------------------------------------------------------
# Hand-written fixtures, plain and gzipped
# ---------------------------------------------------------------------------------------------

@pytest.fixture(params=[".jsonl", ".jsonl.gz"])
def suffix(request: pytest.FixtureRequest) -> str:
    return request.param


def test_litm_fixture(tmp_path: Path, suffix: str) -> None:
    path = write_lines(tmp_path / f"nq-20{suffix}",
                       [litm_line(gold_at=1), "", litm_line(gold_at=2)])
    records = load_litm_qa(path)
    assert [r.id for r in records] == ["nq-20-0", "nq-20-1"]          # index, not line number
    assert records[0].gold == (1,) and records[1].gold == (2,)
    assert records[0].documents == tuple(Document(f"T{i}", f"passage {i}") for i in range(3))
    assert records[0].answers == ("Ann", "Anne") and records[0].question == "who?"
    assert records[0].kind == "qa"


def test_litm_missing_isgold_means_not_gold(tmp_path: Path) -> None:
    row = litm_line(gold_at=0)
    del row["ctxs"][1]["isgold"]
    (record,) = load_litm_qa(write_lines(tmp_path / "x.jsonl", [row]))
    assert record.gold == (0,)


def test_authors_fixture(tmp_path: Path, suffix: str) -> None:
    path = write_lines(tmp_path / f"train{suffix}", [authors_line(), authors_line(distractors=[])])
    records = load_authors(path)
    assert [r.id for r in records] == ["train-0", "train-1"]
    assert records[0].documents == (Document("Norway", "Oslo is the capital."),
                                    Document("A", "a"), Document("B", "b"))
    assert records[0].gold == (0,) and records[0].answers == ("Oslo",)
    assert len(records[1].documents) == 1


def test_kv_fixture(tmp_path: Path, suffix: str) -> None:
    path = write_lines(tmp_path / f"kv{suffix}", [kv_line(), kv_line(key="k2", value="v2")])
    records = load_kv(path)
    assert [r.gold for r in records] == [(1,), (2,)]
    assert records[0].documents[1] == Document("", '"k1": "v1"')
    assert records[0].question == "k1" and records[0].answers == ("v1",)
    assert records[0].kind == "kv"


def test_own_records_format(tmp_path: Path, suffix: str) -> None:
    original = load_kv(write_lines(tmp_path / "kv.jsonl", [kv_line()]))
    path = tmp_path / f"ours{suffix}"
    write_records(path, original)
    assert load_records(path) == original
    assert load_records(path, "records") == original


# ---------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, expected", [
    (litm_line(), "litm"), (authors_line(), "authors"), (kv_line(), "kv"),
    ({"id": "a", "question": "q", "answers": ["a"], "documents": [{"title": "", "text": "t"}],
      "gold": [0]}, "records"),
])
def test_detect_format(tmp_path: Path, suffix: str, row: dict[str, Any], expected: str) -> None:
    path = write_lines(tmp_path / f"data{suffix}", ["", row])
    assert detect_format(path) == expected
    assert len(load_records(path)) == 1
    assert len(load_records(path, expected)) == 1


def test_detect_format_unknown_keys(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "odd.jsonl", ["", {"query": "q", "passages": []}])
    with pytest.raises(DataError) as info:
        load_records(path)
    assert_names(info.value, path, 2, None)
    for word in (*FORMATS, "'passages'", "'query'"):
        assert word in str(info.value)


def test_detect_format_empty_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match="empty file") as info:
        load_records(path)
    assert "empty.jsonl" in str(info.value)


def test_unknown_format_name(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "kv.jsonl", [kv_line()])
    with pytest.raises(ConfigError, match="format.*'csv'"):
        load_records(path, "csv")


def test_explicit_format_wrong_for_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "litm.jsonl", [litm_line()])
    with pytest.raises(DataError) as info:
        load_records(path, "kv")
    assert_names(info.value, path, 1, "ordered_kv_records")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_records(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------------------------
# Malformed input: every error names file, line and field
# ---------------------------------------------------------------------------------------------

def test_malformed_json_line(tmp_path: Path, suffix: str) -> None:
    path = write_lines(tmp_path / f"bad{suffix}", [litm_line(), "", '{"question": "q", '])
    with pytest.raises(DataError, match="malformed JSON") as info:
        load_litm_qa(path)
    assert_names(info.value, path, 3, None)


def _without(row: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != key}


def _bad_isgold() -> dict[str, Any]:
    row = litm_line()
    row["ctxs"][2]["isgold"] = "true"
    return row


def _ctx_without_text() -> dict[str, Any]:
    row = litm_line()
    del row["ctxs"][0]["text"]
    return row


@pytest.mark.parametrize("row, field, message", [
    (_without(litm_line(), "question"), "question", "missing"),
    (_without(litm_line(), "ctxs"), "ctxs", "missing"),
    (litm_line(question=7), "question", "must be a str"),
    (litm_line(answers="Ann"), "answers", "must be a list"),
    (litm_line(answers=[]), "answers", "must not be empty"),
    (litm_line(answers=["Ann", ""]), "answers", "non-empty strings"),
    (litm_line(answers=[3]), "answers", "non-empty strings"),
    (litm_line(ctxs=[]), "ctxs", "must not be empty"),
    (litm_line(ctxs={"title": "t"}), "ctxs", "must be a list"),
    (litm_line(gold_at=-1), "ctxs", "found 0"),
    (litm_line(ctxs=litm_line(gold_at=0)["ctxs"] + litm_line(gold_at=1)["ctxs"][1:2]), "ctxs",
     "found 2"),
    (_bad_isgold(), "ctxs[2].isgold", "true or false"),
    (_ctx_without_text(), "ctxs[0].text", "missing"),
    (litm_line(ctxs=["just text"]), "ctxs[0]", "expected an object"),
])
def test_litm_errors(tmp_path: Path, suffix: str, row: Any, field: str, message: str) -> None:
    path = write_lines(tmp_path / f"litm{suffix}", [litm_line(), row])
    with pytest.raises(DataError, match=message) as info:
        load_litm_qa(path)
    assert_names(info.value, path, 2, field)


def test_litm_line_not_an_object(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "litm.jsonl", [litm_line(), "[1, 2]"])
    with pytest.raises(DataError, match="JSON object") as info:
        load_litm_qa(path)
    assert_names(info.value, path, 2, None)


@pytest.mark.parametrize("row, field, message", [
    (_without(authors_line(), "gold_document"), "gold_document", "missing"),
    (authors_line(gold_document={"title": "t"}), "gold_document.text", "missing"),
    (authors_line(gold_document="Oslo"), "gold_document", "expected an object"),
    (_without(authors_line(), "distractors"), "distractors", "missing"),
    (authors_line(distractors=[{"title": "A", "text": "a"}, {"title": 1, "text": "b"}]),
     "distractors[1].title", "must be a string"),
    (authors_line(answers=[]), "answers", "must not be empty"),
    (authors_line(question="  "), "question", "must not be empty"),
])
def test_authors_errors(tmp_path: Path, row: Any, field: str, message: str) -> None:
    path = write_lines(tmp_path / "authors.jsonl.gz", [authors_line(), authors_line(), row])
    with pytest.raises(DataError, match=message) as info:
        load_authors(path)
    assert_names(info.value, path, 3, field)


@pytest.mark.parametrize("row, field, message", [
    (kv_line(key="k9"), "key", "occurs 0 times"),
    (kv_line(ordered_kv_records=[["k1", "v1"], ["k1", "v1"]]), "key", "occurs 2 times"),
    (kv_line(value="v2"), "value", "differs"),
    (kv_line(ordered_kv_records=[["k0", "v0"], ["k1"]]), "ordered_kv_records[1]", "pair"),
    (kv_line(ordered_kv_records=[["k0", 0]]), "ordered_kv_records[0]", "pair"),
    (kv_line(ordered_kv_records=[]), "ordered_kv_records", "must not be empty"),
    (_without(kv_line(), "value"), "value", "missing"),
    (kv_line(key=1), "key", "must be a str"),
])
def test_kv_errors(tmp_path: Path, suffix: str, row: Any, field: str, message: str) -> None:
    path = write_lines(tmp_path / f"kv{suffix}", [row])
    with pytest.raises(DataError, match=message) as info:
        load_kv(path)
    assert_names(info.value, path, 1, field)


# ---------------------------------------------------------------------------------------------
# build_from_oracle
# ---------------------------------------------------------------------------------------------

def oracle_records(n: int) -> list[Record]:
    """Record i answers "zebraNN"; its passage names its own answer and the next record's, so
    passage i-1 must never be a distractor of record i."""
    return [Record(id=f"r{i}", question=f"question {i}?", answers=(f"Zebra{i:02d}",),
                   documents=(Document(f"Title {i}", f"zebra{i:02d} and zebra{(i + 1) % n:02d}."),),
                   gold=(0,))
            for i in range(n)]


def test_build_shape_gold_and_no_answer_leak() -> None:
    records = oracle_records(30)
    built = build_from_oracle(records, n_documents=20, seed=1)
    assert [r.id for r in built] == [r.id for r in records]
    for i, (original, r) in enumerate(zip(records, built)):
        assert len(r.documents) == 20 and r.gold == (0,)
        assert r.documents[0] == original.documents[0]
        assert r.question == original.question and r.answers == original.answers
        distractors = r.documents[1:]
        assert original.documents[0] not in distractors
        assert records[i - 1].documents[0] not in distractors     # contains this answer
        assert len(set(distractors)) == 19
        assert sum(normalize_answer(r.answers[0]) in normalize_answer(d.text)
                   for d in r.documents) == 1


def test_build_is_deterministic_per_seed() -> None:
    records = oracle_records(30)
    assert build_from_oracle(records, n_documents=10, seed=3) == \
        build_from_oracle(records, n_documents=10, seed=3)
    assert build_from_oracle(records, n_documents=10, seed=3) != \
        build_from_oracle(records, n_documents=10, seed=4)


def test_build_does_not_mutate_input_and_keeps_task() -> None:
    records = [Record(id=r.id, question=r.question, answers=r.answers, documents=r.documents,
                      gold=r.gold, kind="kv") for r in oracle_records(6)]
    before = list(records)
    built = build_from_oracle(records, n_documents=3, seed=0)
    assert records == before and all(r.kind == "kv" for r in built)


def test_build_single_document_is_identity() -> None:
    records = oracle_records(3)
    assert build_from_oracle(records, n_documents=1, seed=0) == records


def test_build_deduplicates_passages() -> None:
    # Records 0 and 1 share a passage (modulo case and punctuation): neither may get it back.
    records = oracle_records(12)
    twin = Record(id="twin", question="q", answers=("nothing",),
                  documents=(Document("TITLE 0", "Zebra00 and zebra01"),), gold=(0,))
    built = build_from_oracle([twin, *records], n_documents=11, seed=0)
    for r in built:
        keys = [normalize_answer(f"{d.title} {d.text}") for d in r.documents]
        assert len(set(keys)) == len(keys)
    assert twin.documents[0] not in built[1].documents             # record 0's own passage


def test_build_short_answers_match_whole_words_only() -> None:
    # "S" is inside almost every word; only a passage with "s" as a word is ruled out.
    records = [Record(id="s", question="which letter?", answers=("S",),
                      documents=(Document("Letters", "The letter S."),), gold=(0,)),
               Record(id="a", question="q1", answers=("x1",),
                      documents=(Document("Seas", "Oceans and seas."),), gold=(0,)),
               Record(id="b", question="q2", answers=("x2",),
                      documents=(Document("Plural", "Add an s at the end."),), gold=(0,))]
    built = build_from_oracle(records, n_documents=2, seed=0)
    assert built[0].documents[1].title == "Seas"


def test_build_too_few_candidates() -> None:
    # Record i may use neither passage i nor passage i-1: 3 candidates out of 5, 4 needed.
    with pytest.raises(DataError, match="too few candidate passages for record 'r0'"):
        build_from_oracle(oracle_records(5), n_documents=5, seed=0)
    with pytest.raises(DataError, match="too few passages.*3 distinct passages"):
        build_from_oracle(oracle_records(3), n_documents=10, seed=0)


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_build_rejects_bad_n_documents(n: Any) -> None:
    with pytest.raises(ValueError, match="n_documents"):
        build_from_oracle(oracle_records(3), n_documents=n, seed=0)


def test_build_rejects_multi_document_records() -> None:
    record = Record(id="m", question="q", answers=("a",),
                    documents=(Document("", "x"), Document("", "y")), gold=(0,))
    with pytest.raises(ValueError, match="'m' has 2 documents"):
        build_from_oracle([record], n_documents=2, seed=0)
