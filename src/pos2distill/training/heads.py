"""Response-only logits: run the backbone, apply the output head only where a response token is
predicted, a chunk of tokens at a time. Never [batch, sequence, vocabulary].

Sequences are left-padded so every response ends at the last position (see :mod:`pos2distill.training.batches`).
With R the longest response in the batch, the hidden states at the last R+1 positions minus the very
last one predict the R final tokens. :func:`response_hidden` returns those (B, R, H) hidden states;
the caller keeps the masked-in ones, (N, H), and :func:`chunked_token_map` turns them into per-token
values through the output head ``chunk`` tokens at a time. Under autograd each chunk is recomputed in
the backward pass (activation checkpointing), so the peak holds one chunk of logits, (chunk, V),
instead of (N, V) for the whole micro-batch.

Models whose logits are not simply ``lm_head(final hidden state)`` (a logit soft-cap or scale in the
config) go through the model's own forward with ``logits_to_keep``, which is exact for every model.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

_SPECIAL_HEAD = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale",
                 "logits_scaling")


def unwrap(model: Any) -> Any:
    """The transformers model inside DDP/accelerate or peft wrappers (peft keeps the LoRA layers
    injected in it, so the unwrapped model still runs with the adapter)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def plain_head(model: Any) -> bool:
    """True when ``logits = output_embeddings(last hidden state)`` exactly for this model."""
    m = unwrap(model)
    config = getattr(m, "config", None)
    if config is None or m.get_output_embeddings() is None or not hasattr(m, "get_decoder"):
        return False
    return not any(getattr(config, name, None) not in (None, 1, 1.0) for name in _SPECIAL_HEAD)


def position_ids(att: Tensor) -> Tensor:
    """Positions counting real tokens only, so left padding does not shift rotary positions."""
    return (att.cumsum(-1) - 1).clamp(min=0)


def response_hidden(model: Any, ids: Tensor, att: Tensor, R: int) -> Tensor:
    """(B, R, H) final hidden states that predict the last R tokens of each left-padded row.

    Args:
        model: a transformers causal LM (possibly peft-wrapped) with a plain head (:func:`plain_head`).
        ids, att: (B, T) left-padded token ids and attention mask.
        R: number of final positions predicted.
    """
    m = unwrap(model)
    out = m.get_decoder()(input_ids=ids, attention_mask=att, position_ids=position_ids(att),
                          use_cache=False)
    return out.last_hidden_state[:, -(R + 1):-1]


def response_logits_full(model: Any, ids: Tensor, att: Tensor, R: int) -> Tensor:
    """(B, R, V) logits predicting the last R tokens, through the model's own forward.

    The fallback for models with a special head; only the last R+1 positions reach the head."""
    out = model(input_ids=ids, attention_mask=att, position_ids=position_ids(att),
                logits_to_keep=R + 1, use_cache=False)
    return out.logits[:, :-1]


def head(model: Any, hidden: Tensor) -> Tensor:
    """(..., V) logits from (..., H) final hidden states."""
    return unwrap(model).get_output_embeddings()(hidden)


def chunked_token_map(hidden: Tensor, fn: Callable[[Tensor, int, int], Tensor], *,
                      chunk: int) -> Tensor:
    """``cat([fn(hidden[s:e], s, e) for each chunk])``, one chunk of tokens at a time.

    ``fn`` maps (n, H) hidden states of tokens ``s:e`` to (n,) values (e.g. per-token KL through the
    output head). When gradients are needed, each chunk runs under non-reentrant activation
    checkpointing: its (n, V) logits are freed after the forward and recomputed in the backward.

    Args:
        hidden: (N, H).
        fn: (hidden chunk, start, end) -> (n,) values.
        chunk: tokens per chunk, > 0 (``train --head-chunk``; the peak holds (chunk, V) logits).

    Returns:
        (N,) values.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be > 0, got {chunk}")
    N = hidden.shape[0]
    if N == 0:
        return fn(hidden, 0, 0)
    grad = torch.is_grad_enabled()
    outs = []
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        if grad and N > chunk:
            outs.append(checkpoint(fn, hidden[s:e], s, e, use_reentrant=False))
        else:
            outs.append(fn(hidden[s:e], s, e))
    return torch.cat(outs)
