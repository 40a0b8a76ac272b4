"""context: context lengths, dropping distractors, and the --too-long policy on synthetic prompts."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pos2distill.data import synthetic
from pos2distill.tasks import get_task
from pos2distill.tasks.fitting import (Fitted, context_length, fit_prompt, keep_distractors,
                                 prompt_budget)
from pos2distill.errors import ConfigError
from pos2distill.tasks.positions import place_gold, rng_for
from pos2distill.tasks.prompts import encode_prompt, render_prompt
from pos2distill.data.records import Document, Record

RETRIEVAL = get_task("retrieval")


def test_context_length_takes_the_smaller_sane_limit() -> None:
    huge = SimpleNamespace(model_max_length=int(1e30))
    assert context_length(SimpleNamespace(max_position_embeddings=512), huge) == 512
    assert context_length(SimpleNamespace(max_position_embeddings=512),
                          SimpleNamespace(model_max_length=100)) == 100
    assert context_length(SimpleNamespace(n_positions=1024), huge) == 1024
    assert context_length(SimpleNamespace(), huge) is None
    assert prompt_budget(SimpleNamespace(max_position_embeddings=64), huge, 4) == 60
    assert prompt_budget(SimpleNamespace(), huge, 4) is None
    with pytest.raises(ConfigError, match="--max-new-tokens 64 leaves no room"):
        prompt_budget(SimpleNamespace(max_position_embeddings=64), huge, 64)


def test_keep_distractors_by_hand() -> None:
    docs = tuple(Document(t, t.lower()) for t in "ABCDE")
    r = Record(id="r", question="q", answers=("a",), documents=docs, gold=(2,))
    assert keep_distractors(r, 1).documents == (docs[0], docs[2])
    assert keep_distractors(r, 1).gold == (1,)
    assert keep_distractors(r, 3).documents == docs[:4] and keep_distractors(r, 3).gold == (2,)
    assert keep_distractors(r, 0).documents == (docs[2],)
    assert keep_distractors(r, 4) == r


@pytest.fixture(scope="module")
def record() -> Record:
    (r,) = synthetic.generate("test", 1, n_documents=6)
    return r


def _tokens(tok: Any, prompt: str) -> int:
    return len(encode_prompt(tok, prompt, chat=True))


def _full(record: Record, tok: Any) -> int:
    """Tokens of the untruncated 6-document prompt (5 tokens per document)."""
    return _tokens(tok, render_prompt(place_gold(record, 0, rng_for(0, record.id, 0)), tok))


def test_a_prompt_that_fits_is_the_usual_one(record: Record, tok: Any) -> None:
    expected = render_prompt(place_gold(record, 2, rng_for(7, record.id, 2)), tok)
    for max_tokens in (None, _full(record, tok)):
        fitted = fit_prompt(record, (2,), tok, place=RETRIEVAL.place, template="authors", chat="auto", seed=7,
                            max_tokens=max_tokens, too_long="fail")
        assert fitted == Fitted(record, expected, 0)


def test_too_long_fail_names_the_question_and_the_fix(record: Record, tok: Any) -> None:
    full = _full(record, tok)
    with pytest.raises(ConfigError) as info:
        fit_prompt(record, (2,), tok, place=RETRIEVAL.place, template="authors", chat="auto", seed=0, max_tokens=full - 6,
                   too_long="fail")
    assert str(info.value).startswith(f"question {record.id!r} with its gold document(s) at position(s) 3: the "
                                      f"prompt has {full} tokens, more than the {full - 6} that fit")
    assert "--too-long skip or truncate" in str(info.value)


def test_too_long_skip(record: Record, tok: Any) -> None:
    assert fit_prompt(record, (2,), tok, place=RETRIEVAL.place, template="authors", chat="auto", seed=0,
                      max_tokens=_full(record, tok) - 6, too_long="skip") is None


def test_too_long_truncate_keeps_the_gold_position(record: Record, tok: Any) -> None:
    # 5 tokens per document: with a budget of full - 6, five documents are one token too many
    # and four (full - 10) fit.
    full = _full(record, tok)
    budget = full - 6
    for position in range(4):
        fitted = fit_prompt(record, (position,), tok, place=RETRIEVAL.place, template="authors", chat="auto", seed=0,
                            max_tokens=budget, too_long="truncate")
        assert fitted is not None and fitted.dropped == 2
        assert fitted.record == keep_distractors(record, 3)       # the last two distractors go
        placed = place_gold(fitted.record, position, rng_for(0, record.id, position))
        assert placed.gold == (position,)
        assert fitted.prompt == render_prompt(placed, tok)
        assert _tokens(tok, fitted.prompt) == full - 10
    # Positions 5 and 6 (1-based) need 4 and 5 distractors before the gold: they cannot fit.
    for position in (4, 5):
        assert fit_prompt(record, (position,), tok, place=RETRIEVAL.place, template="authors", chat="auto", seed=0,
                          max_tokens=budget, too_long="truncate") is None
    # Even the gold alone does not fit 20 tokens fewer than the full prompt.
    assert fit_prompt(record, (0,), tok, place=RETRIEVAL.place, template="authors", chat="auto", seed=0,
                      max_tokens=full - 26, too_long="truncate") is None


def test_unknown_policy(record: Record, tok: Any) -> None:
    with pytest.raises(ConfigError, match="--too-long: 'cut'"):
        fit_prompt(record, (0,), tok, place=RETRIEVAL.place, template="authors", chat="auto", seed=0, max_tokens=60,
                   too_long="cut")
