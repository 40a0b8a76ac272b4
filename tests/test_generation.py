"""HFGenerator on a tiny random Llama: order, left padding, EOS, progress."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pos2distill.data import synthetic
from pos2distill.generation import HFGenerator
from pos2distill.tasks.positions import place_gold, rng_for
from pos2distill.tasks.prompts import encode_prompt, render_prompt


class RecordingTokenizer:
    """Delegates to a real tokenizer; records the ids passed to ``decode`` and can pretend another
    token is EOS (to make a random model stop at a known step)."""

    def __init__(self, tok: Any, eos_token_id: int | None = None):
        self._tok = tok
        self.eos_token_id = tok.eos_token_id if eos_token_id is None else eos_token_id
        self.decoded: list[list[int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tok(*args, **kwargs)

    def decode(self, ids: Any, **kwargs: Any) -> str:
        self.decoded.append([int(i) for i in ids])
        return self._tok.decode(ids, **kwargs)


@pytest.fixture(scope="module")
def prompts(tok: Any) -> list[str]:
    """Chat prompts of very different lengths, deliberately not sorted by length."""
    records = [synthetic.generate("test", 1, n_documents=n)[0] for n in (4, 9, 6)]
    long = [render_prompt(place_gold(r, 1, rng_for(0, r.id, 1)), tok) for r in records]
    short = [f"<|bos|><|user|>\n{text}<|end|>\n<|assistant|>\n"
             for text in ("Where does Tude live?", "Oslo Lima Paris", "Dublin")]
    return [long[0], short[0], long[1], short[2], long[2], short[1]]


def greedy_reference(model: Any, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding by hand: full unpadded forward passes, no cache, no EOS handling."""
    seq = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            out.append(nxt)
            seq.append(nxt)
    return out


def test_prompts_differ_in_length(tok: Any, prompts: list[str]) -> None:
    lengths = [len(encode_prompt(tok, p, chat=True)) for p in prompts]
    assert len(set(lengths)) == len(lengths)
    assert lengths != sorted(lengths)
    assert max(lengths) > 5 * min(lengths)


def test_batched_equals_one_by_one_in_input_order(sharp_model: Any, tok: Any,
                                                  prompts: list[str]) -> None:
    one = HFGenerator(sharp_model, tok, chat=True, batch_size=1).generate(prompts, max_new_tokens=6)
    for batch_size in (2, 4, 64):
        batched = HFGenerator(sharp_model, tok, chat=True, batch_size=batch_size)
        assert batched.generate(prompts, max_new_tokens=6) == one
    # Not vacuous: the random model answers the prompts differently.
    assert len(set(one)) >= 4
    # Reordering the input reorders the output the same way.
    reordered = HFGenerator(sharp_model, tok, chat=True, batch_size=4).generate(
        prompts[::-1], max_new_tokens=6)
    assert reordered == one[::-1]


def test_greedy_tokens_match_unpadded_reference(sharp_model: Any, tok: Any,
                                                prompts: list[str]) -> None:
    """Every row of a left-padded batch produces exactly the tokens of unpadded greedy decoding;
    the first one is the argmax of a single forward pass over the prompt alone."""
    rec = RecordingTokenizer(tok)
    HFGenerator(sharp_model, rec, chat=True, batch_size=len(prompts)).generate(
        prompts, max_new_tokens=4)
    assert len(rec.decoded) == len(prompts)
    by_prompt = {}
    lengths = {len(encode_prompt(tok, p, chat=True)): p for p in prompts}
    # The generator decodes in length order (its batch is sorted); map back via the lengths.
    for p, ids in zip(sorted(prompts, key=lambda p: len(encode_prompt(tok, p, chat=True))),
                      rec.decoded):
        by_prompt[p] = ids
    assert len(lengths) == len(prompts)
    firsts = set()
    for p in prompts:
        ids = encode_prompt(tok, p, chat=True)
        with torch.no_grad():
            first = int(sharp_model(torch.tensor([ids])).logits[0, -1].argmax())
        generated = [i for i in by_prompt[p] if i != tok.pad_token_id]
        assert generated[0] == first
        expected = greedy_reference(sharp_model, ids, 4)
        stop = expected.index(tok.eos_token_id) + 1 if tok.eos_token_id in expected else 4
        assert generated == expected[:stop]
        firsts.add(first)
    assert len(firsts) >= 3  # the check would be weak if every prompt had the same first token


def test_stops_at_eos(sharp_model: Any, tok: Any, prompts: list[str]) -> None:
    """Pretend the token greedily generated at step k is EOS: output ends there, per row."""
    prompt = prompts[0]
    ids = encode_prompt(tok, prompt, chat=True)
    reference = greedy_reference(sharp_model, ids, 8)
    # The first step whose token did not occur before (so it is where generation stops).
    k = next(k for k in range(2, 8)
             if reference[k] not in reference[:k] and reference[k] not in tok.all_special_ids)
    eos = reference[k]
    rec = RecordingTokenizer(tok, eos_token_id=eos)
    gen = HFGenerator(sharp_model, rec, chat=True, batch_size=8)
    # Batched with other prompts that keep going: each row stops at its own EOS.
    out = gen.generate([prompt] + prompts[1:3], max_new_tokens=8)
    expected_text = tok.decode(reference[:k + 1], skip_special_tokens=True).strip()
    assert out[0] == expected_text
    full = HFGenerator(sharp_model, tok, chat=True, batch_size=8).generate([prompt],
                                                                          max_new_tokens=8)[0]
    assert full == tok.decode(reference, skip_special_tokens=True).strip()
    assert out[0].split()[-1] == tok.convert_ids_to_tokens(eos)
    assert len(out[0]) < len(full) and full.startswith(out[0])


def test_real_eos_is_removed(tok: Any) -> None:
    """A model that always predicts EOS gives empty completions (EOS is a special token)."""
    from conftest import tiny_llama

    model = tiny_llama(tok)

    def eos_wins(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., tok.eos_token_id] += 100.0
        return output

    model.lm_head.register_forward_hook(eos_wins)
    rec = RecordingTokenizer(tok)
    out = HFGenerator(model, rec, chat=True, batch_size=2).generate(
        ["<|bos|><|user|>\nDublin<|end|>\n<|assistant|>\n", "<|bos|><|user|>\nOslo<|end|>\n"],
        max_new_tokens=5)
    assert out == ["", ""]
    assert all(ids[0] == tok.eos_token_id for ids in rec.decoded)


def test_progress_totals_prompts(tiny_model: Any, tok: Any, prompts: list[str]) -> None:
    seen: list[int] = []
    gen = HFGenerator(tiny_model, tok, chat=True, batch_size=4, progress=seen.append)
    out = gen.generate(prompts + prompts[:1], max_new_tokens=2)
    assert seen == [4, 3]
    assert sum(seen) == len(prompts) + 1
    assert len(out) == len(prompts) + 1 and all(isinstance(o, str) for o in out)
    assert HFGenerator(tiny_model, tok, chat=True).generate([], max_new_tokens=2) == []


def test_next_token_logprobs_match_unpadded_forward_passes(sharp_model: Any, tok: Any,
                                                           prompts: list[str]) -> None:
    """Teacher forcing of a continuation in left-padded batches: the next-token log-probs of the
    asked tokens equal those of one unpadded forward pass per prompt."""
    gen = HFGenerator(sharp_model, tok, chat=True, batch_size=2)
    continuations = [tok("Lima", add_special_tokens=False)["input_ids"], [],
                     tok("Oslo Rome", add_special_tokens=False)["input_ids"]]
    asked = [tok.convert_tokens_to_ids(["Paris", "Lima"]), tok.convert_tokens_to_ids(["Oslo"]),
             tok.convert_tokens_to_ids(["Rome", "Dublin", "Lima"])]
    got = gen.next_token_logprobs(prompts, continuations, asked)
    for p, c, a, g in zip(prompts, continuations, asked, got):
        with torch.no_grad():
            logits = sharp_model(torch.tensor([encode_prompt(tok, p, chat=True) + c])).logits
        ref = torch.log_softmax(logits[0, -1], -1)[a]
        assert g == pytest.approx(ref.tolist(), abs=1e-5)


def test_sample_gives_n_seeded_completions_per_prompt(sharp_model: Any, tok: Any,
                                                      prompts: list[str]) -> None:
    gen = HFGenerator(sharp_model, tok, chat=True, batch_size=2)
    a = gen.sample(prompts, n=3, temperature=1.0, max_new_tokens=4, seed=1)
    assert [len(x) for x in a] == [3] * len(prompts) and all(isinstance(t, str) for x in a for t in x)
    assert gen.sample(prompts, n=3, temperature=1.0, max_new_tokens=4, seed=1) == a
    # At a very low temperature every sample is the greedy answer.
    cold = gen.sample(prompts, n=2, temperature=1e-4, max_new_tokens=4, seed=2)
    assert cold == [[g, g] for g in gen.generate(prompts, max_new_tokens=4)]
