"""Generation behind a small interface: prompts in, completions out.

:class:`HFGenerator` runs batched greedy decoding with the model's KV cache: prompts are sorted by
length (so a batch wastes little padding), left-padded, and each row stops at its own EOS.
Tests use fakes that implement the same :class:`Generator` protocol.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch

from pos2distill.prompts import encode_prompt


class Generator(Protocol):
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Greedy completions of ``prompts``, in the same order, special tokens removed."""
        ...


class HFGenerator:
    def __init__(self, model: Any, tokenizer: Any, *, chat: bool, batch_size: int = 32,
                 progress: Callable[[int], None] | None = None):
        self.model, self.tokenizer, self.chat = model, tokenizer, chat
        self.batch_size = batch_size
        self.progress = progress  # called with the number of prompts finished in each batch

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        tok = self.tokenizer
        encoded = [encode_prompt(tok, p, chat=self.chat) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        out: list[str] = [""] * len(prompts)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            T = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), T), tok.pad_token_id, dtype=torch.long)
            att = torch.zeros((len(idx), T), dtype=torch.long)
            for b, i in enumerate(idx):
                seq = encoded[i]
                ids[b, T - len(seq):] = torch.tensor(seq, dtype=torch.long)
                att[b, T - len(seq):] = 1
            gen = self.model.generate(input_ids=ids.to(device), attention_mask=att.to(device),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      num_beams=1, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id, use_cache=True)
            for b, i in enumerate(idx):
                out[i] = tok.decode(gen[b, T:], skip_special_tokens=True).strip()
            if self.progress is not None:
                self.progress(len(idx))
        return out
