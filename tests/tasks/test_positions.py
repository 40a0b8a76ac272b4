"""Placing the gold document: every position, nothing lost, seeded orders; position specs."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pos2distill.errors import ConfigError, DataError
from pos2distill.tasks.positions import (HOP_GROUPS, slot_key, hop_group, paper_configurations,
                                   parse_configurations, parse_positions, place_gold, place_hops,
                                   resolve_position, rng_for)
from pos2distill.data.records import Document, Record


def make_record(n: int, gold: int = 0, record_id: str = "q1") -> Record:
    docs = tuple(Document(f"T{i}", f"text {i}") for i in range(n))
    return Record(id=record_id, question="who?", answers=("x",), documents=docs, gold=(gold,))


@pytest.mark.parametrize("gold", [0, 3, 6])
def test_place_gold_every_position(gold: int) -> None:
    record = make_record(7, gold=gold)
    for position in range(7):
        placed = place_gold(record, position, rng_for(0, record.id, position))
        assert placed.gold == (position,)
        assert placed.documents[position] == Document(f"T{gold}", f"text {gold}")
        assert placed.gold_document == record.gold_document
        # Every document kept exactly once (multiset equality, not only set equality).
        assert Counter(placed.documents) == Counter(record.documents)
        assert len(placed.documents) == 7
        # Everything but the documents' order is unchanged.
        assert (placed.id, placed.question, placed.answers, placed.kind) == \
               (record.id, record.question, record.answers, record.kind)


def test_place_gold_keeps_duplicate_distractors() -> None:
    docs = (Document("G", "gold"), Document("D", "same"), Document("D", "same"), Document("E", "e"))
    record = Record(id="dup", question="q", answers=("a",), documents=docs, gold=(0,))
    placed = place_gold(record, 2, random.Random(1))
    assert Counter(placed.documents) == Counter(docs)
    assert placed.documents[2] == Document("G", "gold")


def test_place_gold_distractor_order_comes_from_the_rng() -> None:
    record = make_record(6, gold=2)
    placed = place_gold(record, 4, random.Random(7))
    expected = list(record.distractors)
    random.Random(7).shuffle(expected)
    assert list(placed.documents) == expected[:4] + [record.gold_document] + expected[4:]


def test_same_seed_same_order_different_seed_different_order() -> None:
    record = make_record(20, gold=5)
    for position in (0, 9, 19):
        a = place_gold(record, position, rng_for(0, record.id, position))
        b = place_gold(record, position, rng_for(0, record.id, position))
        assert a == b
        c = place_gold(record, position, rng_for(1, record.id, position))
        assert c.documents != a.documents
        assert c.documents[position] == a.documents[position]


def test_rng_for_depends_on_every_component() -> None:
    def draw(*args: object) -> list[float]:
        rng = rng_for(*args)  # type: ignore[arg-type]
        return [rng.random() for _ in range(3)]

    base = draw(0, "q", 3, 0)
    assert draw(0, "q", 3, 0) == base                 # independent of call order / state
    assert draw(0, "q", 3) == base                     # copy defaults to 0
    for other in [(1, "q", 3, 0), (0, "r", 3, 0), (0, "q", 4, 0), (0, "q", 3, 1)]:
        assert draw(*other) != base


@pytest.mark.parametrize("position", [-1, 5, 100])
def test_place_gold_out_of_range(position: int) -> None:
    with pytest.raises(DataError, match=r"outside its 5 documents \(valid: 0 to 4\)") as info:
        place_gold(make_record(5), position, random.Random(0))
    assert info.value.field == "position"
    assert "'q1'" in str(info.value)


def test_place_gold_needs_a_single_gold() -> None:
    docs = tuple(Document(f"T{i}", "t") for i in range(4))
    record = Record(id="mh", question="q", answers=("a",), documents=docs, gold=(0, 1))
    with pytest.raises(DataError, match="exactly one"):
        place_gold(record, 2, random.Random(0))


# ---------------------------------------------------------------------------------------------
# parse_positions / resolve_position
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("all", list(range(10))),
    (" ALL ", list(range(10))),
    ("0,4,9", [0, 4, 9]),
    ("9, 4 ,0", [0, 4, 9]),
    ("4,4,0", [0, 4]),
    ("first,last", [0, 9]),
    ("last", [9]),
    ("First, 5", [0, 5]),
    ([3, 1, 3], [1, 3]),
    ((0, 9), [0, 9]),
])
def test_parse_positions(spec: object, expected: list[int]) -> None:
    assert parse_positions(spec, 10) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("spec, message", [
    ("abc", "'abc' is not an integer"),
    ("0,x", "'x' is not an integer"),
    ("1.5", "'1.5' is not an integer"),
    ("", "'' is not an integer"),
    ("0,,3", "'' is not an integer"),
    ("middle", "'middle' is not an integer"),
    ("10", r"\[10\] outside 0..9"),
    ("-1", r"\[-1\] outside 0..9"),
    ("0,12,15", r"\[12, 15\] outside 0..9"),
    ([0, 10], r"\[10\] outside 0..9"),
    ([], "empty list"),
])
def test_parse_positions_errors(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_positions(spec, 10)  # type: ignore[arg-type]
    assert str(info.value).startswith("--positions:")


@pytest.mark.parametrize("spec, expected", [
    ("first", 0), ("last", 19), (" Last ", 19), ("0", 0), ("7", 7), ("-1", 19), ("-20", 0),
    (0, 0), (19, 19), (-1, 19), (-3, 17),
])
def test_resolve_position(spec: object, expected: int) -> None:
    assert resolve_position(spec, 20) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["20", 20, -21, "-21", "middle", "auto", "1.5", ""])
def test_resolve_position_errors(spec: object) -> None:
    with pytest.raises(ConfigError, match="advantageous position"):
        resolve_position(spec, 20)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Several hops


def make_hop_record(n: int, gold: tuple[int, ...] = (0, 1)) -> Record:
    docs = tuple(Document(f"T{i}", f"text {i}") for i in range(n))
    return Record(id="h", question="where?", answers=("x",), documents=docs, gold=gold,
                  kind="multihop")


@pytest.mark.parametrize("n", [20, 10, 6])
def test_place_hops_every_configuration(n: int) -> None:
    record = make_hop_record(n, gold=(3, 1))
    pairs = paper_configurations(n) + [(n - 1, 0), (0, n - 1), (n - 2, n - 1)]
    for pair in pairs:
        placed = place_hops(record, pair, rng_for(0, record.id, pair))
        assert placed.gold == pair
        # The first hop (dataset index 3) at pair[0], the second (index 1) at pair[1].
        assert placed.documents[pair[0]] == record.documents[3]
        assert placed.documents[pair[1]] == record.documents[1]
        assert Counter(placed.documents) == Counter(record.documents)
        assert set(placed.distractors) == set(record.distractors)
        assert placed.kind == "multihop" and placed.answers == record.answers


def test_place_hops_is_seeded() -> None:
    record = make_hop_record(20)
    a = place_hops(record, (8, 0), rng_for(0, "h", (8, 0)))
    assert place_hops(record, (8, 0), rng_for(0, "h", (8, 0))) == a
    assert place_hops(record, (8, 0), rng_for(1, "h", (8, 0))) != a


@pytest.mark.parametrize("pair, message", [((0,), "2 hop documents but 1"), ((3, 3), "repeat"),
                                           ((0, 20), "outside")])
def test_place_hops_errors(pair: tuple[int, ...], message: str) -> None:
    with pytest.raises(DataError, match=message):
        place_hops(make_hop_record(20), pair, random.Random(0))


def test_paper_configurations() -> None:
    pairs = paper_configurations(20)
    assert pairs == [(0, 1), (5, 6), (12, 13), (17, 18), (0, 8), (5, 13), (6, 14), (8, 16),
                     (8, 0), (13, 5), (14, 6), (16, 8)]
    assert [hop_group(p) for p in pairs] == ["connected"] * 4 + ["disconnected"] * 4 + ["reversed"] * 4
    assert slot_key((8, 0)) == "8,0"
    for n in (4, 6, 10, 30, 40):
        scaled = paper_configurations(n)
        assert len(set(scaled)) == len(scaled)
        assert all(0 <= a < n and 0 <= b < n and a != b for a, b in scaled)
        assert {hop_group(p) for p in scaled} == set(HOP_GROUPS)
    # Scaled configurations keep their group when there is room for it.
    for n in (10, 30, 40):
        groups = [hop_group(p) for p in paper_configurations(n)]
        assert groups == ["connected"] * 4 + ["disconnected"] * 4 + ["reversed"] * 4
    assert paper_configurations(40)[0] == (0, 1) and paper_configurations(40)[3][1] <= 39


@pytest.mark.parametrize("spec, expected", [
    ("all", paper_configurations(20)),
    ("connected", [(0, 1), (5, 6), (12, 13), (17, 18)]),
    ("Reversed, connected", [(8, 0), (13, 5), (14, 6), (16, 8), (0, 1), (5, 6), (12, 13), (17, 18)]),
    ("0,1;5,6 8,0", [(0, 1), (5, 6), (8, 0)]),
    ("18,19;18,19", [(18, 19)]),
])
def test_parse_configurations(spec: str, expected: list[tuple[int, int]]) -> None:
    assert parse_configurations(spec, 20) == expected


@pytest.mark.parametrize("spec, message", [("", "empty"), ("0,1,2", "not a pair"), ("3,3", "same"),
                                           ("0,20", "outside"), ("middle", "not a pair")])
def test_parse_configurations_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_configurations(spec, 20)
