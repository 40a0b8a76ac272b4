"""Attention by document (METHOD.md section 6, the paper's Fig. 7), read layer by layer.

Every transformers decoder of today calls its attention through ``AttentionInterface``: it hands
the function the queries and keys of one layer after the rotary embedding, and the mask.
:class:`AttentionRows` registers an implementation that runs the model's own (sdpa, or eager)
for the layer's output, and beside it computes the softmax of only the few query rows asked for
(the last prompt token, the first answer token): (B, H, Q, T) instead of eager attention's
(B, H, T, T). Each layer's rows are averaged over heads and handed to a ``reduce`` function (here:
the mass on each document's tokens) at once, so no layer's full attention, and never every
layer's, is held; peak memory stays that of a plain forward pass (``bench/attention_memory.py``).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from pos2distill.errors import ConfigError
from pos2distill.training.heads import position_ids, unwrap

#: The name the row-recording attention is registered under (transformers' AttentionInterface).
ROWS = "pos2distill_rows"
#: Implementations whose output and mask the recorder reuses; others (flash, flex) run as sdpa.
_BASES = ("sdpa", "eager")

_active: "AttentionRows | None" = None


def _rows_attention(module: Any, query: Tensor, key: Tensor, value: Tensor,
                    attention_mask: Tensor | None, scaling: float | None = None,
                    dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, Any]:
    """The registered attention function: the base implementation's output, and the recorder's
    rows on the side."""
    rec = _active
    base = rec.base if rec is not None else "sdpa"
    if base == "eager":
        # transformers keeps each model's eager attention in its modeling module.
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    else:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        fn = ALL_ATTENTION_FUNCTIONS[base]
    out = fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if rec is not None:
        rec._record(module, query, key, attention_mask,
                    scaling if scaling is not None else query.shape[-1] ** -0.5,
                    kwargs.get("softcap"))
    return out[0], None


def row_attention(query: Tensor, key: Tensor, mask: Tensor | None, rows: Tensor, *,
                  scaling: float, softcap: float | None = None) -> Tensor:
    """Softmax attention probabilities of the query rows ``rows``, averaged over heads.

    Args:
        query: (B, H, T, D) one layer's queries (rotary applied).
        key: (B, Hkv, T, D) its keys; H is a multiple of Hkv (grouped-query attention: head h
            reads key head h // (H / Hkv)).
        mask: None (causal), (B, T) padding mask (1 = real token, causal implied), (B, 1|H, T, T)
            boolean (True = attend) or additive float mask, as the model's mask functions give.
        rows: (B, Q) long, the query positions to keep.
        scaling: the score scale (1/sqrt(D) for most models).
        softcap: the score soft cap of models that have one (``tanh(s / c) * c``).

    Returns:
        (B, Q, T) float32 probabilities over keys (each row sums to 1 over unmasked keys).
    """
    B, H, T, D = query.shape
    Hkv, Q = key.shape[1], rows.shape[1]
    q = query.gather(2, rows[:, None, :, None].expand(B, H, Q, D))                 # (B, H, Q, D)
    # Group the heads that share a key head, so keys are never repeated H / Hkv times.
    q = q.reshape(B, Hkv, (H // Hkv) * Q, D).float()
    scores = (q @ key.float().transpose(-1, -2)).reshape(B, H, Q, T) * scaling    # (B, H, Q, T)
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    causal = torch.arange(T, device=rows.device)[None, None, :] <= rows[:, :, None]   # (B, Q, T)
    if mask is None:
        scores = scores.masked_fill(~causal[:, None], float("-inf"))
    elif mask.dim() == 2:
        allowed = causal & mask[:, None, :].bool()
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    else:
        m = mask.expand(B, *mask.shape[1:])
        m = m.gather(2, rows[:, None, :, None].expand(B, m.shape[1], Q, m.shape[-1]))[..., :T]
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool \
            else scores + m.float()
    return torch.softmax(scores, dim=-1).mean(1)                                   # (B, Q, T)


class AttentionRows:
    """While entered, forward passes of ``model`` record, per layer, ``reduce`` of the head-mean
    attention probabilities of chosen query rows (see the module docstring).

    ``run(ids, att, rows, reduce)`` runs the model's decoder (no output head) and returns the
    per-layer results in layer order. A model whose attention does not go through transformers'
    AttentionInterface is refused with a :class:`ConfigError` naming it.
    """

    def __init__(self, model: Any, *, name: str = "the model"):
        self.model, self.name = unwrap(model), name
        self.base = "sdpa"
        self._original: str | None = None
        self._reduce: Callable[[Tensor], Any] | None = None
        self._rows: Tensor | None = None
        self._layers: dict[int, Any] = {}

    def __enter__(self) -> "AttentionRows":
        global _active
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

        can_set = getattr(self.model, "_can_set_attn_implementation", None)
        if not (callable(can_set) and can_set()):
            raise self._unsupported()
        self._original = self.model.config._attn_implementation
        self.base = self._original if self._original in _BASES else "sdpa"
        AttentionInterface.register(ROWS, _rows_attention)
        AttentionMaskInterface.register(ROWS, ALL_MASK_ATTENTION_FUNCTIONS[self.base])
        self.model.set_attn_implementation(ROWS)
        if self.model.config._attn_implementation != ROWS:
            raise self._unsupported()
        _active = self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active
        _active = None
        if self._original is not None:
            self.model.set_attn_implementation(self._original)

    def _unsupported(self) -> ConfigError:
        kind = getattr(getattr(self.model, "config", None), "model_type", type(self.model).__name__)
        return ConfigError(f"--model: {self.name} ({kind}) does not report its attention weights "
                           "through transformers' AttentionInterface, which analyze attention "
                           "reads layer by layer; use a model that does (Llama, Qwen, Mistral, "
                           "Gemma, Phi-3, ...)")

    def _record(self, module: Any, query: Tensor, key: Tensor, mask: Tensor | None,
                scaling: float, softcap: float | None) -> None:
        if self._rows is None or self._reduce is None:
            return
        layer = getattr(module, "layer_idx", None)
        layer = len(self._layers) if layer is None else int(layer)
        probs = row_attention(query, key, mask, self._rows, scaling=scaling, softcap=softcap)
        self._layers[layer] = self._reduce(probs)

    @torch.no_grad()
    def run(self, ids: Tensor, att: Tensor, rows: Tensor,
            reduce: Callable[[Tensor], Any]) -> list[Any]:
        """``reduce((B, Q, T) probabilities)`` of every layer, in layer order, for one batch.

        Args:
            ids, att: (B, T) left-padded token ids and attention mask.
            rows: (B, Q) long query positions.
            reduce: applied to each layer's head-mean probabilities as soon as they exist.
        """
        if _active is not self:
            raise RuntimeError("AttentionRows.run outside its `with` block")
        self._rows, self._reduce, self._layers = rows.to(ids.device), reduce, {}
        try:
            decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
            if decoder is not None:
                decoder(input_ids=ids, attention_mask=att, position_ids=position_ids(att),
                        use_cache=False)
            else:
                self.model(input_ids=ids, attention_mask=att, position_ids=position_ids(att),
                           use_cache=False, logits_to_keep=1)
        finally:
            layers, self._rows, self._reduce, self._layers = self._layers, None, None, {}
        if not layers:
            raise self._unsupported()
        return [layers[k] for k in sorted(layers)]


def span_matrix(spans: Sequence[Sequence[tuple[int, int]]], T: int) -> Tensor:
    """(B, T, D) 0/1 float: token t of row b belongs to document d (spans already in the
    padded row's coordinates)."""
    D = max(len(s) for s in spans)
    out = torch.zeros(len(spans), T, D)
    for b, row in enumerate(spans):
        for d, (a, e) in enumerate(row):
            out[b, a:e, d] = 1.0
    return out


def document_mass(probs: Tensor, assign: Tensor) -> Tensor:
    """(B, Q, D) attention mass on each document: ``probs`` (B, Q, T) summed over each
    document's tokens (``assign`` (B, T, D) from :func:`span_matrix`)."""
    return probs @ assign.to(probs.device, probs.dtype)
