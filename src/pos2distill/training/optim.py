"""The optimiser and learning-rate schedule of ``train``: AdamW with weight decay on matrices only,
linear warm-up then cosine decay to a floor."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def lr_lambda(step: int, *, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(trainable: Sequence[torch.nn.Parameter], *, lr: float, weight_decay: float,
                    betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over ``trainable``; weights (2 or more dimensions) decay, biases and norms do not."""
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)


def build_schedule(opt: torch.optim.Optimizer, *, total: int, warmup_ratio: float,
                   min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`lr_lambda` over ``total`` optimizer steps, ``round(warmup_ratio * total)`` (at least
    1) of them warm-up. Without warm-up the first step runs at the peak and the cosine reaches
    ``min_ratio`` at the last one."""
    warmup = max(1, round(warmup_ratio * total)) if warmup_ratio > 0 else 0
    if warmup:
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_lambda(s, total=total, warmup=warmup, min_ratio=min_ratio))
    # A one-step warm-up seen one step late: factor 1 at step 0, then the cosine.
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s + 1, total=total, warmup=1, min_ratio=min_ratio))
