"""Slow, plain references the tests check the training code against: full logits of the last R+1
positions through the model's own forward (no response-only hidden states, no chunked head), then
the per-example losses of :mod:`pos2distill.training.losses`."""

from __future__ import annotations

from typing import Any

import torch

from pos2distill.training.losses import per_example_cross_entropy, per_example_kl


def response_logits(model: Any, ids: torch.Tensor, att: torch.Tensor, R: int) -> torch.Tensor:
    """(B, R, V) logits predicting the last R tokens of each left-padded row."""
    # Position ids count real tokens only, so left padding does not shift rotary positions.
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=R + 1,
                use_cache=False)
    return out.logits[:, :-1]


def micro_kl(student: Any, teacher: Any, b: dict[str, torch.Tensor], *,
             temperature: float = 1.0) -> torch.Tensor:
    """(B,) per-example KL(teacher ‖ student) of one micro-batch; grad flows into the student."""
    R = b["mask"].shape[1]
    with torch.no_grad():
        t_logits = response_logits(teacher, b["t_ids"], b["t_att"], R)
    s_logits = response_logits(student, b["s_ids"], b["s_att"], R)
    return per_example_kl(t_logits, s_logits, b["mask"], temperature=temperature)


def micro_ce(student: Any, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) per-example cross-entropy of the student on its target tokens (EOS included, prompt
    ignored) of one micro-batch: the loss of sft, seqkd and r2. Targets are the last R tokens of
    the left-padded rows, predicted by the logits of :func:`response_logits`."""
    R = b["mask"].shape[1]
    s_logits = response_logits(student, b["s_ids"], b["s_att"], R)
    return per_example_cross_entropy(s_logits, b["s_ids"][:, -R:], b["mask"])
