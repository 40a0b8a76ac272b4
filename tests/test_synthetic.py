"""The synthetic benchmark and the tiny tokenizer that must cover it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pos2distill import synthetic
from pos2distill.config import ProbeConfig
from pos2distill.data import load_data
from pos2distill.errors import ConfigError
from pos2distill.positions import place_gold, rng_for
from pos2distill.prompts import encode_prompt, render_prompt



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
        assert len(record.documents) == 20 and record.gold == (0,) and record.task == "qa"
        who = subject(record)
        about = [d for d in record.documents if d.title == who]
        assert about == [record.gold_document]                        # exactly one document
        assert all(d.text in synthetic.CITIES for d in record.documents)
        assert len({d.title for d in record.documents}) == 20
        city = record.gold_document.text
        assert record.answers == (city,) and city in synthetic.CITIES


def test_test_subjects_never_train_subjects() -> None:
    test_subjects = {subject(r) for r in synthetic.generate("test", 500)}
    train_subjects = {subject(r) for seed in (0, 1) for r in synthetic.generate("train", 2000,
                                                                                  seed=seed)}
    assert test_subjects <= set(synthetic.TEST_NAMES)
    assert train_subjects <= set(synthetic.TRAIN_NAMES)
    assert not test_subjects & train_subjects
    assert len(test_subjects) > 40 and len(train_subjects) > 140
    assert not set(synthetic.TEST_NAMES) & set(synthetic.TRAIN_NAMES)


def test_names() -> None:
    assert len(set(synthetic.NAMES)) == synthetic.N_NAMES
    assert not set(synthetic.NAMES) & set(synthetic.CITIES)
    assert all(re.fullmatch(r"[A-Z][a-z]{3}", n) for n in synthetic.NAMES)
    assert synthetic.make_names() == synthetic.NAMES


def test_generate_errors() -> None:
    with pytest.raises(ValueError, match="split"):
        synthetic.generate("dev", 1)
    with pytest.raises(ValueError, match="n_documents"):
        synthetic.generate("test", 1, n_documents=1)


def test_load_data_synthetic() -> None:
    records = load_data(ProbeConfig(data="synthetic:train", limit=7, n_documents=4, seed=2))
    assert records == synthetic.generate("train", 7, seed=2, n_documents=4)
    assert load_data(ProbeConfig(data="synthetic", limit=3)) == synthetic.generate("test", 3)
    with pytest.raises(ConfigError, match="synthetic:train or synthetic:test"):
        load_data(ProbeConfig(data="synthetic:dev", limit=3))


@pytest.mark.parametrize("template, chat", [("authors", "auto"), ("authors", "off"),
                                            ("litm", "on"), ("litm", "off")])
def test_tokenizer_covers_rendered_prompts(tok: Any, template: str, chat: str) -> None:
    for k, record in enumerate(synthetic.generate("test", 5, seed=1)):
        placed = place_gold(record, k * 4, rng_for(0, record.id, k * 4))
        prompt = render_prompt(placed, tok, template=template, chat=chat)  # type: ignore[arg-type]
        ids = encode_prompt(tok, prompt, chat=chat != "off")
        assert tok.unk_token_id not in ids
        # Round trip: decoding gives the prompt's words back (white space is not kept).
        decoded = tok.decode(ids, skip_special_tokens=False)
        assert decoded.split() == tok.convert_ids_to_tokens(ids)
        assert "".join(decoded.split()) == "".join(prompt.split())
    answer_ids = tok("Nairobi", add_special_tokens=False)["input_ids"]
    assert len(answer_ids) == 1 and tok.decode(answer_ids) == "Nairobi"


def test_every_name_and_city_is_one_token(tok: Any) -> None:
    for word in synthetic.NAMES + synthetic.CITIES:
        assert tok.convert_tokens_to_ids(word) != tok.unk_token_id, word
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1
