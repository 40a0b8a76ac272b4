"""Property-based fuzzing: random and mutated JSON lines go through every loader, and whatever loads
goes through ``place_gold`` and every prompt template. Only our typed errors
(:class:`~pos2distill.errors.Pos2DistillError`) may come out: never KeyError, TypeError,
AttributeError, IndexError, RecursionError or UnicodeError.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pos2distill.errors import Pos2DistillError
from pos2distill.data.loaders import FORMATS, build_from_oracle, load_records
from pos2distill.tasks.positions import place_gold
from pos2distill.tasks.judge import ORDERS, parse_verdicts, place_order, read_verdict
from pos2distill.tasks.prompts import DEFAULT_VERDICTS, TEMPLATES, user_message
from pos2distill.data.records import Record, write_records

# POS2DISTILL_FUZZ_EXAMPLES=5000 for a longer hunt than the fast suite's.
FUZZ = settings(max_examples=int(os.environ.get("POS2DISTILL_FUZZ_EXAMPLES", 300)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

DEEP = "__DEEP__"   # replaced by a deeply nested array after json.dumps

# Any JSON value, including the awkward ones: NaN, huge integers, unpaired surrogates, empty containers.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8)
texts = st.text(max_size=12) | st.sampled_from(["", " ", "\n", "\ud800", "Oslo", "k1", "é" * 3])


def _docs(draw: Any, n: int) -> list[dict[str, Any]]:
    return [{"title": draw(texts), "text": draw(texts)} for _ in range(n)]


@st.composite
def valid_ish(draw: Any) -> dict[str, Any]:
    """A line that is (nearly) right for one of the formats."""
    n = draw(st.integers(0, 4))
    answers = draw(st.lists(texts, max_size=2))
    kind = draw(st.sampled_from(FORMATS))
    if kind == "records":
        return {"id": draw(texts), "question": draw(texts), "answers": answers,
                "documents": _docs(draw, n), "gold": draw(st.lists(st.integers(-1, 4), max_size=2)),
                "task": draw(st.sampled_from(["qa", "kv", "x"]))}
    if kind == "litm":
        ctxs = _docs(draw, n)
        for ctx in ctxs:
            ctx["isgold"] = draw(st.booleans())
            ctx["hasanswer"] = draw(st.booleans())
        return {"question": draw(texts), "answers": answers, "ctxs": ctxs}
    if kind == "authors":
        return {"question": draw(texts), "answers": answers,
                "gold_document": _docs(draw, 1)[0], "distractors": _docs(draw, n)}
    if kind == "musique":
        paragraphs = [{"idx": i, "title": d["title"], "paragraph_text": d["text"],
                       "is_supporting": draw(st.booleans())} for i, d in enumerate(_docs(draw, n))]
        hops = [{"paragraph_support_idx": draw(st.integers(-1, 4))}
                for _ in range(draw(st.integers(0, 3)))]
        return {"id": draw(texts), "question": draw(texts), "paragraphs": paragraphs,
                "question_decomposition": hops, "answer": draw(texts),
                "answer_aliases": answers, "answerable": draw(st.booleans())}
    if kind in ("hotpotqa", "2wiki"):
        docs = _docs(draw, n)
        context = [[d["title"], [d["text"]]] for d in docs]
        facts = [[draw(st.sampled_from([d["title"] for d in docs] + ["?"])), 0]
                 for _ in range(draw(st.integers(0, 3)))]
        row = {"_id": draw(texts), "question": draw(texts), "answer": draw(texts),
               "context": context, "supporting_facts": facts,
               "type": draw(st.sampled_from(["bridge", "comparison", "x"]))}
        if kind == "2wiki":
            row["evidences"] = [[draw(texts), "r", draw(texts)] for _ in range(n)]
        return row
    pairs = [[draw(texts), draw(texts)] for _ in range(n)]
    key, value = (pairs[0] if pairs and draw(st.booleans()) else (draw(texts), draw(texts)))
    return {"ordered_kv_records": pairs, "key": key, "value": value}


def _containers(obj: Any) -> list[Any]:
    """Every dict and list inside ``obj`` (``obj`` included)."""
    found = [obj] if isinstance(obj, (dict, list)) else []
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    for child in children:
        found += _containers(child)
    return found


@st.composite
def mutated(draw: Any) -> Any:
    """A valid-ish line with a few fields deleted, retyped, emptied or nested very deeply."""
    obj = draw(valid_ish())
    for _ in range(draw(st.integers(0, 3))):
        node = draw(st.sampled_from(_containers(obj)))
        if not node:
            continue
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        action = draw(st.sampled_from(["delete", "retype", "empty", "deep"]))
        if action == "delete":
            del node[key]
        else:
            node[key] = {"retype": draw(json_values), "empty": draw(st.sampled_from([[], {}, ""])),
                         "deep": DEEP}[action]
    if draw(st.integers(0, 9)) == 0:
        obj = draw(st.sampled_from([[obj], "text", 3, None]))
    return obj


@st.composite
def jsonl_files(draw: Any) -> bytes:
    """1 to 3 lines: mutated records, random JSON, truncated JSON, blank lines or raw bytes."""
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["mutated"] * 5 + ["json", "truncated", "blank", "bytes"]))
        if kind == "bytes":
            lines.append(draw(st.binary(min_size=1, max_size=12)).replace(b"\n", b""))
            continue
        obj = draw(mutated()) if kind != "json" else draw(json_values)
        text = json.dumps(obj)
        depth = draw(st.sampled_from([1, 50, 5000]))
        text = text.replace(json.dumps(DEEP), "[" * depth + "]" * depth)
        if kind == "truncated":
            text = text[:draw(st.integers(0, max(0, len(text) - 1)))]
        elif kind == "blank":
            text = " "
        lines.append(text.encode("utf-8", "surrogatepass"))
    return b"\n".join(lines) + b"\n"


def _exercise(records: list[Record], seed: int) -> None:
    """What later stages do with loaded records: place the gold, render, write them out."""
    rng = random.Random(seed)
    for r in records:
        if r.kind == "judge":   # judging items: both answer orders, the judge template
            for order in ORDERS:
                assert isinstance(user_message(place_order(r, order), "judge"), str)
            continue
        for position in (0, len(r.documents) - 1, rng.randint(-2, len(r.documents) + 2)):
            try:
                placed = place_gold(r, position, rng)
            except Pos2DistillError:
                continue
            for template in TEMPLATES:
                if template != "judge":
                    assert isinstance(user_message(placed, template), str)


@FUZZ
@given(data=jsonl_files(), fmt=st.sampled_from(("auto",) + FORMATS), gz=st.booleans(),
       seed=st.integers(0, 3))
def test_loaders_raise_only_typed_errors(tmp_path_factory: pytest.TempPathFactory, data: bytes,
                                         fmt: str, gz: bool, seed: int) -> None:
    folder = tmp_path_factory.mktemp("fuzz", numbered=True)
    path = folder / ("data.jsonl.gz" if gz else "data.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        records = load_records(path, fmt)
    except Pos2DistillError:
        return
    assert all(isinstance(r, Record) for r in records)
    _exercise(records, seed)
    # What loads can be written back (no unpaired surrogate reaches an output file).
    write_records(folder / "out.jsonl", records)
    if records and all(len(r.documents) == 1 for r in records):
        try:
            built = build_from_oracle(records, n_documents=1 + seed, seed=seed)
        except Pos2DistillError:
            return
        _exercise(built, seed)


@FUZZ
@given(obj=mutated(), seed=st.integers(0, 3))
def test_record_from_dict_raises_only_typed_errors(obj: Any, seed: int) -> None:
    try:
        record = Record.from_dict(obj)
    except Pos2DistillError:
        return
    _exercise([record], seed)


def test_deep_nesting_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    good = {"question": "q", "answers": ["a"], "ctxs": [{"title": "t", "text": "a", "isgold": True}]}
    path.write_text(json.dumps(good) + '\n{"question": ' + "[" * 5000 + "]" * 5000 + "}\n")
    with pytest.raises(Pos2DistillError, match=r"deep\.jsonl:2: .*nested too deeply"):
        load_records(path, "litm")


def test_unpaired_surrogate_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    line = {"question": "q", "answers": ["a"], "gold_document": {"title": "t", "text": "\ud800"},
            "distractors": []}
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(Pos2DistillError, match=r"s\.jsonl:1: .*unpaired surrogate"):
        load_records(path)


@FUZZ
@given(spec=st.text(max_size=12) | st.lists(st.integers(-3, 30), max_size=4),
       n=st.integers(1, 25))
def test_position_parsers_raise_only_typed_errors(spec: Any, n: int) -> None:
    from pos2distill.tasks.positions import parse_positions, resolve_position

    try:
        assert all(0 <= p < n for p in parse_positions(spec, n))
    except Pos2DistillError:
        pass
    if isinstance(spec, str):
        try:
            assert 0 <= resolve_position(spec, n) < n
        except Pos2DistillError:
            pass


@FUZZ
@given(text=st.text(max_size=300), verdicts=st.lists(st.text(min_size=0, max_size=6),
                                                      min_size=1, max_size=4))
def test_verdict_parser_never_crashes(text: str, verdicts: list[str]) -> None:
    """Any text, any verdict strings: a choice or None (unparsed), or a typed refusal of the
    verdict strings themselves; a planted verdict at the end is always the one read."""
    try:
        parsed = parse_verdicts(verdicts)
    except Pos2DistillError:
        parsed = DEFAULT_VERDICTS
    assert read_verdict(text, parsed) in ("first", "second", "tie", None)
    assert read_verdict(text + "\n" + parsed[1], parsed) == "second"
