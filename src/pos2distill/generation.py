"""Generation behind a small interface: prompts in, completions out.

:class:`HFGenerator` runs batched greedy decoding with the model's KV cache: prompts are sorted by
length (so a batch wastes little padding), left-padded, and each row stops at its own EOS.
:class:`VLLMGenerator` runs the same greedy decoding through vLLM when it is installed (never
required): the prompts are the same token ids, and the completions are decoded by the same tokenizer.
Tests use fakes that implement the same :class:`Generator` protocol (and a fake vLLM engine).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, Sequence

from pos2distill.errors import ConfigError
from pos2distill import modeling
from pos2distill.tasks.prompts import encode_prompt

#: ``--backend`` values.
BACKENDS = ("hf", "vllm")


class Generator(Protocol):
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Greedy completions of ``prompts``, in the same order, special tokens removed."""
        ...


def left_padded_batches(seqs: Sequence[Sequence[int]], batch_size: int, pad_id: int
                        ) -> Iterator[tuple[list[int], Any, Any]]:
    """``(idx, ids, attention_mask)`` per batch of token-id sequences, shortest first (so a batch
    wastes little padding), left-padded to the batch's longest by
    :func:`pos2distill.training.batches.left_pad`: ``ids`` and ``attention_mask`` are (B, T) long
    tensors, ``idx`` the sequences' indices in ``seqs``."""
    from pos2distill.training.batches import left_pad

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, att = left_pad([seqs[i] for i in idx], pad_id)
        yield idx, ids, att


class HFGenerator:
    def __init__(self, model: Any, tokenizer: Any, *, chat: bool, batch_size: int = 32,
                 progress: Callable[[int], None] | None = None):
        self.model, self.tokenizer, self.chat = model, tokenizer, chat
        self.batch_size = batch_size
        self.progress = progress  # called with the number of prompts finished in each batch

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        tok = self.tokenizer
        encoded = [encode_prompt(tok, p, chat=self.chat) for p in prompts]
        new = self.generate_ids(encoded, max_new_tokens=max_new_tokens)
        out = [""] * len(prompts)
        for i in sorted(range(len(prompts)), key=lambda i: len(encoded[i])):   # batch order
            out[i] = tok.decode(new[i], skip_special_tokens=True).strip()
        return out

    def generate_ids(self, encoded: Sequence[Sequence[int]], *, max_new_tokens: int
                     ) -> list[list[int]]:
        """Greedy continuations of token-id sequences (prompts, or prompts with a forced start of
        the answer), in the same order: the new ids, through the first EOS when there is one."""
        # torch is imported here, not at the top: configs import this module for BACKENDS, and
        # `pos2distill --help` should not pay for torch.
        import torch

        tok = self.tokenizer
        out: list[list[int]] = [[] for _ in encoded]
        device = next(self.model.parameters()).device
        for idx, ids, att in left_padded_batches(encoded, self.batch_size, tok.pad_token_id):
            T = ids.shape[1]
            with torch.no_grad():
                gen = self.model.generate(input_ids=ids.to(device), attention_mask=att.to(device),
                                          max_new_tokens=max_new_tokens, do_sample=False,
                                          num_beams=1, pad_token_id=tok.pad_token_id,
                                          eos_token_id=tok.eos_token_id, use_cache=True)
            for b, i in enumerate(idx):
                new = gen[b, T:].tolist()
                # Rows that stopped early are padded after their EOS: cut there.
                if tok.eos_token_id in new:
                    new = new[:new.index(tok.eos_token_id) + 1]
                out[i] = new
            if self.progress is not None:
                self.progress(len(idx))
        return out


    def next_token_logprobs(self, prompts: Sequence[str], continuations: Sequence[Sequence[int]],
                            tokens: Sequence[Sequence[int]]) -> list[list[float]]:
        """Teacher forcing: for each prompt followed by the token ids of its continuation, the
        log-probabilities of ``tokens`` (per prompt) as the next token, in float32."""
        import torch

        seqs = [encode_prompt(self.tokenizer, p, chat=self.chat) + list(c)
                for p, c in zip(prompts, continuations)]
        out: list[list[float]] = [[] for _ in seqs]
        device = next(self.model.parameters()).device
        for idx, ids, att in left_padded_batches(seqs, self.batch_size,
                                                 self.tokenizer.pad_token_id):
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(device),
                                    attention_mask=att.to(device)).logits[:, -1]   # (B, V)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for b, i in enumerate(idx):
                out[i] = logprobs[b, list(tokens[i])].tolist()
        return out

    def sample(self, prompts: Sequence[str], *, n: int, temperature: float, max_new_tokens: int,
               seed: int = 0) -> list[list[str]]:
        """``n`` sampled completions (at ``temperature``) of each prompt, in the same order;
        seeded with ``seed`` (the same prompts in the same batches give the same samples)."""
        import torch

        tok = self.tokenizer
        encoded = [encode_prompt(tok, p, chat=self.chat) for p in prompts]
        device = next(self.model.parameters()).device
        torch.manual_seed(seed)
        out: list[list[str]] = [[] for _ in prompts]
        for idx, ids, att in left_padded_batches(encoded, self.batch_size, tok.pad_token_id):
            T = ids.shape[1]
            with torch.no_grad():
                gen = self.model.generate(input_ids=ids.to(device), attention_mask=att.to(device),
                                          max_new_tokens=max_new_tokens, do_sample=True,
                                          temperature=temperature, top_k=0, top_p=1.0,
                                          num_return_sequences=n, pad_token_id=tok.pad_token_id,
                                          eos_token_id=tok.eos_token_id, use_cache=True)
            for b, i in enumerate(idx):
                out[i] = [tok.decode(g[T:], skip_special_tokens=True).strip()
                          for g in gen[b * n:(b + 1) * n]]
        return out


class VLLMGenerator:
    """Greedy generation with a vLLM engine (``vllm.LLM``) behind the :class:`Generator` interface.

    Prompts go in as the token ids :func:`~pos2distill.tasks.prompts.encode_prompt` gives (exactly what
    :class:`HFGenerator` feeds the model); each row stops at EOS; completions are decoded by our
    tokenizer with special tokens removed. vLLM batches and pages the KV cache itself.

    Args:
        llm: a ``vllm.LLM`` (or any object with its ``generate(prompts, sampling_params)``).
        sampling_params: ``max_new_tokens -> params`` (default: greedy ``vllm.SamplingParams``).
    """

    def __init__(self, llm: Any, tokenizer: Any, *, chat: bool,
                 progress: Callable[[int], None] | None = None,
                 sampling_params: Callable[[int], Any] | None = None):
        self.llm, self.tokenizer, self.chat, self.progress = llm, tokenizer, chat, progress
        self.sampling_params = sampling_params or self._vllm_params

    def _vllm_params(self, max_new_tokens: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(temperature=0.0, max_tokens=max_new_tokens,
                              stop_token_ids=[self.tokenizer.eos_token_id],
                              skip_special_tokens=True)

    @classmethod
    def load(cls, path: str, tokenizer: Any, *, chat: bool, dtype: str = "float32",
             trust_remote_code: bool = False, progress: Callable[[int], None] | None = None
             ) -> "VLLMGenerator":
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("--backend vllm: vllm is not installed (pip install vllm), or use "
                              "--backend hf") from None
        llm = LLM(model=path, tokenizer=path, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(llm, tokenizer, chat=chat, progress=progress)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        tok = self.tokenizer
        requests = [{"prompt_token_ids": encode_prompt(tok, p, chat=self.chat)} for p in prompts]
        results = self.llm.generate(requests, self.sampling_params(max_new_tokens), use_tqdm=False)
        out = []
        for r in results:  # vLLM returns the requests' order
            ids = [t for t in r.outputs[0].token_ids if t != tok.eos_token_id]
            out.append(tok.decode(ids, skip_special_tokens=True).strip())
        if self.progress is not None:
            self.progress(len(prompts))
        return out


def make_generator(cfg: Any, tokenizer: Any, *, chat: bool,
                   progress: Callable[[int], None] | None = None) -> Generator:
    """The generator of ``cfg.backend`` for the model of ``cfg`` (a probe or teach config)."""
    if cfg.backend == "vllm":
        return VLLMGenerator.load(modeling.resolve_model_path(cfg.model), tokenizer, chat=chat,
                                  dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                                  progress=progress)
    model = modeling.load_causal_lm(cfg.model, dtype=cfg.dtype, device=cfg.device,
                           trust_remote_code=cfg.trust_remote_code)
    return HFGenerator(model, tokenizer, chat=chat, batch_size=cfg.batch_size, progress=progress)
