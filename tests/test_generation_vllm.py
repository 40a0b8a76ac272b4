"""VLLMGenerator behind the Generator interface, with a fake vLLM engine that decodes greedily with
a tiny HF model one prompt at a time: same prompts in, same completions out as HFGenerator."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from pos2distill.data import synthetic
from pos2distill.config import ProbeConfig
from pos2distill.errors import ConfigError
from pos2distill.generation import HFGenerator, VLLMGenerator, make_generator
from pos2distill.tasks.positions import place_gold, rng_for
from pos2distill.tasks.prompts import render_prompt


@dataclass
class _Completion:
    token_ids: list[int]


@dataclass
class _Result:
    outputs: list[_Completion]


class FakeLLM:
    """``vllm.LLM.generate`` on token-id prompts: greedy, unbatched, stops after EOS."""

    def __init__(self, model: Any, eos: int):
        self.model, self.eos = model, eos
        self.requests: list[list[int]] = []

    @torch.no_grad()
    def generate(self, requests: list[dict], params: dict, use_tqdm: bool = True) -> list[_Result]:
        out = []
        for r in requests:
            ids = list(r["prompt_token_ids"])
            self.requests.append(ids)
            new: list[int] = []
            for _ in range(params["max_tokens"]):
                nxt = int(self.model(torch.tensor([ids + new])).logits[0, -1].argmax())
                new.append(nxt)
                if nxt == self.eos:
                    break
            out.append(_Result([_Completion(new)]))
        return out


def test_vllm_generator_matches_hf(sharp_model: Any, tok: Any) -> None:
    records = [synthetic.generate("test", 1, n_documents=n)[0] for n in (4, 9, 6)]
    prompts = [render_prompt(place_gold(r, 1, rng_for(0, r.id, 1)), tok) for r in records]
    seen: list[int] = []
    fake = FakeLLM(sharp_model, tok.eos_token_id)
    gen = VLLMGenerator(fake, tok, chat=True, progress=seen.append,
                        sampling_params=lambda n: {"max_tokens": n})
    got = gen.generate(prompts, max_new_tokens=6)
    want = HFGenerator(sharp_model, tok, chat=True, batch_size=2).generate(prompts, max_new_tokens=6)
    assert got == want
    assert any(got)                  # a random sharp model says something
    assert seen == [3] and len(fake.requests) == 3


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_is_a_clear_error(tok: Any) -> None:
    with pytest.raises(ConfigError, match="--backend vllm: vllm is not installed"):
        make_generator(ProbeConfig(backend="vllm"), tok, chat=True)
    with pytest.raises(ConfigError, match="--backend"):
        ProbeConfig(backend="tgi")
