"""The synthetic judging set: items built on synthetic retrieval records, split like them."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from pos2distill.config import ProbeConfig
from pos2distill.data import synthetic
from pos2distill.data.resolve import load_data
from pos2distill.errors import ConfigError


def asked(question: str) -> str:
    m = re.fullmatch(r"Which city is home to (\w+)", question)
    assert m, question
    return m.group(1)


@pytest.mark.parametrize("n_documents", [2, 4, 20])
def test_items_pair_the_true_city_with_a_wrong_city_of_the_same_context(n_documents: int
                                                                        ) -> None:
    items = synthetic.generate_judge("test", 60, n_documents=n_documents)
    for k, r in enumerate(items):
        assert r.kind == "judge" and len(r.documents) == n_documents
        gold = r.documents[r.gold[0]]
        assert gold.title == asked(r.question)
        assert [d.title for d in r.documents].count(gold.title) == 1
        truth = gold.text
        assert r.answers == (truth,)
        true_index = 0 if k % 2 == 0 else 1
        assert r.label == str(true_index + 1)
        assert r.candidates[true_index] == truth
        wrong = r.candidates[1 - true_index]
        assert wrong != truth
        assert wrong in {d.text for i, d in enumerate(r.documents) if i != r.gold[0]}


def test_gold_positions_are_spread_and_labels_balanced() -> None:
    items = synthetic.generate_judge("train", 400, n_documents=20)
    positions = Counter(r.gold[0] for r in items)
    assert set(positions) == set(range(20))
    assert Counter(r.label for r in items) == {"1": 200, "2": 200}


def test_generate_judge_is_deterministic_and_prefix_stable() -> None:
    a = synthetic.generate_judge("dev", 10, seed=3, n_documents=6)
    assert a == synthetic.generate_judge("dev", 10, seed=3, n_documents=6)
    assert synthetic.generate_judge("dev", 4, seed=3, n_documents=6) == a[:4]
    assert a != synthetic.generate_judge("dev", 10, seed=4, n_documents=6)


def test_splits_ask_about_disjoint_people() -> None:
    people = {split: {asked(r.question) for r in synthetic.generate_judge(split, 1500)}
              for split in synthetic.SPLITS}
    for split, names in people.items():
        assert names == set(synthetic.SUBJECTS[split])
    assert not people["train"] & people["dev"] and not people["train"] & people["test"]
    assert not people["dev"] & people["test"]


def test_load_data_synthetic_judge() -> None:
    got = load_data(ProbeConfig(data="synthetic-judge:train", limit=5, n_documents=4, seed=1))
    assert got == synthetic.generate_judge("train", 5, seed=1, n_documents=4)
    assert load_data(ProbeConfig(data="synthetic-judge", limit=2)) == \
        synthetic.generate_judge("test", 2)
    with pytest.raises(ConfigError, match="synthetic-judge:train, synthetic-judge:dev"):
        load_data(ProbeConfig(data="synthetic-judge:validation", limit=3))
    with pytest.raises(ConfigError, match="--n-documents"):
        load_data(ProbeConfig(data="synthetic-judge:test", limit=3, n_documents=1000))


def test_generate_judge_errors() -> None:
    with pytest.raises(ValueError, match="split"):
        synthetic.generate_judge("validation", 1)
    with pytest.raises(ValueError, match="n_documents"):
        synthetic.generate_judge("test", 1, n_documents=1)
