"""The shipped tiny model: a plain Hugging Face folder, small, with a chat template."""

from __future__ import annotations

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
