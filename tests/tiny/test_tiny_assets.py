"""The shipped tiny model: a plain Hugging Face folder, small, with a chat template."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pos2distill.data import synthetic
from pos2distill.tasks.positions import place_gold, rng_for
from pos2distill.tasks.prompts import encode_prompt, render_prompt
from pos2distill.tiny import TINY_MODEL_DIR


def test_shipped_model_loads_and_is_small() -> None:
    weights = TINY_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= 10 * 2**20
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(TINY_MODEL_DIR, local_files_only=True)
    assert model.config.model_type == "llama" and tok.chat_template
    record = synthetic.generate("test", 1)[0]
    prompt = render_prompt(place_gold(record, 0, rng_for(0, record.id, 0)), tok)
    ids = encode_prompt(tok, prompt, chat=True)
    assert tok.unk_token_id not in ids and len(ids) < model.config.max_position_embeddings


def test_shipped_tokenizer_decodes_as_text_is_written() -> None:
    tok = AutoTokenizer.from_pretrained(TINY_MODEL_DIR, local_files_only=True)
    record = synthetic.generate_reasoning("test", 1)[0]
    chain = synthetic.record_cot(record)                    # "X's manager is Y. Y works in Z. ..."
    ids = tok(chain, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == chain
    assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids


def test_shipped_judge_answers_with_a_city_and_a_verdict() -> None:
    """The embedded judge keeps the shipped model's token ids and writes "CITY [[X]]" and EOS."""
    from pos2distill.tasks.judge import read_verdict, render_judge_example
    from pos2distill.tiny import TINY_JUDGE_DIR

    assert (TINY_JUDGE_DIR / "model.safetensors").stat().st_size <= 10 * 2**20
    tok = AutoTokenizer.from_pretrained(TINY_JUDGE_DIR, local_files_only=True)
    base = AutoTokenizer.from_pretrained(TINY_MODEL_DIR, local_files_only=True)
    assert all(tok.get_vocab()[w] == i for w, i in base.get_vocab().items())
    model = AutoModelForCausalLM.from_pretrained(TINY_JUDGE_DIR, local_files_only=True)
    item = synthetic.generate_judge("test", 1, n_documents=6)[0]
    prompt, gold = render_judge_example(item, (0, 1), tok)
    ids = encode_prompt(tok, prompt, chat=True)
    assert tok.unk_token_id not in ids
    out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=8,
                         do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    city, verdict = text.split(" ", 1)
    assert city in synthetic.CITIES and read_verdict(verdict) in ("first", "second")
