"""Teacher forcing: the logits a model gives each token of a fixed response after a prompt.

Rows are left-padded so every response ends at the last position (as in training,
:mod:`pos2distill.training.batches`). Only the hidden states that predict response tokens are
kept, and the output head runs on one row when that row is asked for, so a batch never builds
[batch, sequence, vocabulary] (a 150k-word vocabulary would make that gigabytes).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from pos2distill.training.batches import left_pad
from pos2distill.training.heads import head, plain_head, response_hidden, response_logits_full


class Forced:
    """One teacher-forced batch: ``logits(b)`` is row b's (r_b, V) float64 logits, the first of
    them predicting the first response token from the last prompt position.

    Args:
        model: a causal LM in eval mode.
        seqs: prompt + response token ids per row.
        response_lens: r_b >= 1, the response tokens at the end of each row.
        pad_id: the padding id (any id will do: padded positions are masked).
    """

    @torch.no_grad()
    def __init__(self, model: Any, seqs: Sequence[Sequence[int]], response_lens: Sequence[int],
                 *, pad_id: int):
        self.model, self.lens = model, list(response_lens)
        device = next(model.parameters()).device
        ids, att = left_pad(seqs, pad_id)
        ids, att = ids.to(device), att.to(device)
        self.R = max(self.lens)
        self.plain = plain_head(model)
        if self.plain:
            self.hidden = response_hidden(model, ids, att, self.R)                # (B, R, H)
        else:
            self.full = response_logits_full(model, ids, att, self.R)             # (B, R, V)

    @torch.no_grad()
    def logits(self, b: int) -> Tensor:
        r = self.lens[b]
        if self.plain:
            return head(self.model, self.hidden[b, self.R - r:]).double()         # (r, V)
        return self.full[b, self.R - r:].double()
