"""The synthetic benchmark and the tiny tokenizer that must cover it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pos2distill.data import synthetic
from pos2distill.config import ProbeConfig
from pos2distill.data.resolve import load_data
from pos2distill.errors import ConfigError, DataError
from pos2distill.tasks import get_task
from pos2distill.tasks.positions import place_gold, rng_for
from pos2distill.tasks.prompts import encode_prompt, render_prompt



def subject(record: Any) -> str:
    m = re.fullmatch(r"Which city is home to (\w+)", record.question)
    assert m, record.question
    return m.group(1)


def test_generate_is_deterministic() -> None:
    a = synthetic.generate("train", 30, seed=3)
    assert synthetic.generate("train", 30, seed=3) == a
    assert synthetic.generate("train", 10, seed=3) == a[:10]      # a prefix of a longer set
    assert synthetic.generate("train", 30, seed=4) != a
    assert synthetic.generate("test", 30, seed=3) != a
    assert [r.id for r in a[:2]] == ["synth-train-3-0", "synth-train-3-1"]


@pytest.mark.parametrize("split", synthetic.SPLITS)
def test_record_structure(split: str) -> None:
    for record in synthetic.generate(split, 200, seed=1):
        assert len(record.documents) == 20 and record.gold == (0,) and record.kind == "qa"
        who = subject(record)
        about = [d for d in record.documents if d.title == who]
        assert about == [record.gold_document]                        # exactly one document
        assert all(d.text in synthetic.CITIES for d in record.documents)
        assert len({d.title for d in record.documents}) == 20
        city = record.gold_document.text
        assert record.answers == (city,) and city in synthetic.CITIES


def test_splits_ask_about_disjoint_people() -> None:
    asked = {split: {subject(r) for seed in (0, 1) for r in synthetic.generate(split, 2000,
                                                                                 seed=seed)}
             for split in synthetic.SPLITS}
    for split, people in asked.items():
        assert people == set(synthetic.SUBJECTS[split])          # every subject is asked about
    assert not asked["train"] & asked["dev"]
    assert not asked["train"] & asked["test"]
    assert not asked["dev"] & asked["test"]
    assert len(synthetic.DEV_NAMES) == synthetic.N_DEV_NAMES
    assert sum(map(len, synthetic.SUBJECTS.values())) == synthetic.N_NAMES


def test_names() -> None:
    assert len(set(synthetic.NAMES)) == synthetic.N_NAMES
    assert not set(synthetic.NAMES) & set(synthetic.CITIES)
    assert all(re.fullmatch(r"[A-Z][a-z]{3}", n) for n in synthetic.NAMES)
    assert synthetic.make_names() == synthetic.NAMES


def test_generate_errors() -> None:
    with pytest.raises(ValueError, match="split"):
        synthetic.generate("validation", 1)
    with pytest.raises(ValueError, match="n_documents"):
        synthetic.generate("test", 1, n_documents=1)


def test_load_data_synthetic() -> None:
    records = load_data(ProbeConfig(data="synthetic:train", limit=7, n_documents=4, seed=2))
    assert records == synthetic.generate("train", 7, seed=2, n_documents=4)
    assert load_data(ProbeConfig(data="synthetic", limit=3)) == synthetic.generate("test", 3)
    with pytest.raises(ConfigError, match="synthetic:train, synthetic:dev, synthetic:test"):
        load_data(ProbeConfig(data="synthetic:validation", limit=3))


@pytest.mark.parametrize("template, chat", [("authors", "auto"), ("authors", "off"),
                                            ("litm", "on"), ("litm", "off")])
def test_tokenizer_covers_rendered_prompts(tok: Any, template: str, chat: str) -> None:
    for k, record in enumerate(synthetic.generate("test", 5, seed=1)):
        placed = place_gold(record, k * 4, rng_for(0, record.id, k * 4))
        prompt = render_prompt(placed, tok, template=template, chat=chat)  # type: ignore[arg-type]
        ids = encode_prompt(tok, prompt, chat=chat != "off")
        assert tok.unk_token_id not in ids
        # Round trip: decoding gives the prompt's text back (up to white space), and encoding
        # that text gives the same ids.
        decoded = tok.decode(ids, skip_special_tokens=False)
        assert tok(decoded, add_special_tokens=False)["input_ids"] == ids
        assert "".join(decoded.split()) == "".join(prompt.split())
    answer_ids = tok("Nairobi", add_special_tokens=False)["input_ids"]
    assert len(answer_ids) == 1 and tok.decode(answer_ids) == "Nairobi"


def test_every_name_and_city_is_one_token(tok: Any) -> None:
    for word in synthetic.NAMES + synthetic.CITIES:
        assert tok.convert_tokens_to_ids(word) != tok.unk_token_id, word
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1


# ---------------------------------------------------------------------------------------------
# The two-hop reasoning set

_REASONING_Q = re.compile(r"Where does (\w+)'s manager work\?")
_MANAGER = re.compile(r"(\w+) is (\w+)'s manager\.")  # manager, person
_WORKS = re.compile(r"(\w+) is where (\w+) works\.")  # city, person


def test_generate_reasoning_is_deterministic() -> None:
    a = synthetic.generate_reasoning("train", 30, seed=3)
    assert synthetic.generate_reasoning("train", 30, seed=3) == a
    assert synthetic.generate_reasoning("train", 10, seed=3) == a[:10]
    assert synthetic.generate_reasoning("train", 30, seed=4) != a
    assert synthetic.generate_reasoning("train", 30, seed=3, n_documents=10) != a
    assert synthetic.generate_reasoning("test", 30, seed=3) != a
    assert a[0].id == "synth-reasoning-train-3-0"


@pytest.mark.parametrize("split", synthetic.SPLITS)
@pytest.mark.parametrize("n_documents", [2, 8, 20])
def test_reasoning_record_structure(split: str, n_documents: int) -> None:
    for record in synthetic.generate_reasoning(split, 100, seed=1, n_documents=n_documents):
        assert len(record.documents) == n_documents and record.kind == "multihop"
        m = _REASONING_Q.fullmatch(record.question)
        assert m
        x = m.group(1)
        assert x in synthetic.SUBJECTS[split]
        managers: dict[str, str] = {}
        cities: dict[str, str] = {}
        for d in record.documents:
            mm, mw = _MANAGER.fullmatch(d.text), _WORKS.fullmatch(d.text)
            assert (mm is None) != (mw is None), d.text
            if mm:
                assert mm.group(2) == d.title and d.title not in managers
                managers[d.title] = mm.group(1)
            else:
                assert mw.group(2) == d.title and d.title not in cities  # type: ignore[union-attr]
                assert mw.group(1) in synthetic.CITIES  # type: ignore[union-attr]
                cities[d.title] = mw.group(1)  # type: ignore[union-attr]
        # Complete chains: every manager has a workplace, every worker is someone's manager.
        assert set(managers.values()) == set(cities) and len(managers) == n_documents // 2
        # Nobody appears in two chains, so X and Y have exactly one role each.
        names = list(managers) + list(cities)
        assert len(set(names)) == n_documents
        y = managers[x]
        hop1, hop2 = (record.documents[g] for g in record.gold)
        # Each text starts with the value its title asks for (the word after the title).
        assert hop1.text == f"{y} is {x}'s manager." and hop1.title == x
        assert hop2.text == f"{cities[y]} is where {y} works." and hop2.title == y
        assert record.answers == (cities[y],)
        assert synthetic.record_cot(record) == (f"{x}'s manager is {y}. {y} works in {cities[y]}. "
                                                f"The answer is: {cities[y]}")


def test_reasoning_test_subjects_never_train_subjects() -> None:
    def subjects(split: str, n: int) -> set[str]:
        return {_REASONING_Q.fullmatch(r.question).group(1)  # type: ignore[union-attr]
                for r in synthetic.generate_reasoning(split, n)}

    test, dev, train = subjects("test", 500), subjects("dev", 500), subjects("train", 2000)
    assert test <= set(synthetic.TEST_NAMES) and train <= set(synthetic.TRAIN_NAMES)
    assert dev <= set(synthetic.DEV_NAMES)
    assert len(test) > 40 and len(dev) > 25 and len(train) > 110


def test_generate_reasoning_errors() -> None:
    with pytest.raises(ValueError, match="split"):
        synthetic.generate_reasoning("validation", 1)
    with pytest.raises(ValueError, match="even"):
        synthetic.generate_reasoning("test", 1, n_documents=7)


def test_load_data_synthetic_reasoning() -> None:
    records = load_data(ProbeConfig(data="synthetic-reasoning:train", limit=5, n_documents=6,
                                    seed=2, task="reasoning"))
    assert records == synthetic.generate_reasoning("train", 5, seed=2, n_documents=6)
    with pytest.raises(DataError, match="needs --task reasoning"):
        get_task("retrieval").keep(load_data(ProbeConfig(data="synthetic-reasoning:train",
                                                         limit=5, n_documents=6)), "synthetic")
    with pytest.raises(ConfigError, match="synthetic-reasoning:train, synthetic-reasoning:dev"):
        load_data(ProbeConfig(data="synthetic-reasoning:valid", limit=3))
    with pytest.raises(ConfigError, match="even"):
        load_data(ProbeConfig(data="synthetic-reasoning:test", limit=3, n_documents=5))
    with pytest.raises(ConfigError, match="synthetic:train, synthetic:dev"):
        load_data(ProbeConfig(data="synthetic-foo", limit=3))


@pytest.mark.parametrize("chat", ["auto", "off"])
def test_tokenizer_covers_reasoning_prompts_and_cot(tok: Any, chat: str) -> None:
    from pos2distill.tasks.positions import place_hops

    for k, record in enumerate(synthetic.generate_reasoning("test", 6, seed=1)):
        pair = [(0, 1), (8, 0), (19, 3)][k % 3]
        placed = place_hops(record, pair, rng_for(0, record.id, pair))
        prompt = render_prompt(placed, tok, template="reasoning", chat=chat)  # type: ignore[arg-type]
        ids = encode_prompt(tok, prompt, chat=chat != "off")
        assert tok.unk_token_id not in ids
        assert "".join(tok.decode(ids).split()) == "".join(prompt.split())
        cot = synthetic.record_cot(placed)
        cot_ids = tok(cot, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in cot_ids
        assert "".join(tok.decode(cot_ids).split()) == "".join(cot.split())


def test_reasoning_words_come_after_the_retrieval_words() -> None:
    """Adding the reasoning vocabulary must not move any retrieval token id."""
    from pos2distill.tiny.tokenizer import corpus_words

    words = corpus_words()
    assert len(set(words)) == len(words)
    # Two sorted runs: the retrieval words, then the reasoning-only ones.
    breaks = [i for i in range(1, len(words)) if words[i] < words[i - 1]]
    assert len(breaks) == 1
    retrieval, reasoning = words[:breaks[0]], words[breaks[0]:]
    assert {synthetic.NAMES[0], "Lima", "Title", "Question"} <= set(retrieval)
    assert {"manager", "works", "Where"} <= set(reasoning)
