"""The R1 teacher, online or cached, and the student side of the per-example KL.

A teacher turns a micro-batch into *targets*: an object that, given the student's logits for a
chunk of the micro-batch's response tokens, returns their per-token KL. Two kinds:

* :class:`OnlineTeacher` runs the frozen model on the advantageous prompts (a separate frozen copy,
  possibly on another device, or with LoRA the student's own base weights with the adapter
  disabled) and keeps only the (N, H) hidden states of the response tokens; the output head runs a
  chunk at a time, inside the teacher's context, when the student asks (:class:`DenseTargets`).
* :class:`CachedTeacher` reads the top-k rows of ``pos2distill cache`` (:class:`TopKTargets`).

Cross-entropy methods use :class:`CrossEntropyTargets` in the same place.

:class:`ResponseLoss` is the student side as an ``nn.Module``, so that accelerate/DDP wraps the whole
computation: backbone, response positions, chunked head, per-token loss, per-example mean.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from typing import Any, Callable, ContextManager, Protocol

import torch
from torch import Tensor

from pos2distill.training.heads import (chunked_token_map, head, plain_head, response_hidden,
                                        response_logits_full)
from pos2distill.training.losses import (_compute_dtype, _masked_row_mean,
                                         fixed_distribution_kl, per_token_kl, topk_token_kl)


class Targets(Protocol):
    def token_loss(self, student_logits: Tensor, start: int, end: int) -> Tensor:
        """(n,) loss (KL, or cross-entropy) of response tokens ``start:end`` of the micro-batch,
        from their (n, V) student logits."""
        ...


class DenseTargets:
    """The exact teacher distribution, from its (N, H) hidden states (or (N, V) logits for models
    with a special head), turned into logits a chunk at a time."""

    def __init__(self, model: Any, hidden: Tensor | None, logits: Tensor | None, *,
                 context: Callable[[], ContextManager[Any]], temperature: float):
        self.model, self.hidden, self.logits = model, hidden, logits
        self.context, self.temperature = context, temperature

    def token_loss(self, student_logits: Tensor, start: int, end: int) -> Tensor:
        with torch.no_grad(), self.context():
            t = head(self.model, self.hidden[start:end]) if self.hidden is not None \
                else self.logits[start:end]
        t = t.to(student_logits.device)
        dtype = torch.promote_types(_compute_dtype(t.dtype), _compute_dtype(student_logits.dtype))
        return per_token_kl(t.to(dtype), student_logits.to(dtype), temperature=self.temperature)


class TopKTargets:
    """The cached teacher: top-k log-probabilities, ids and log tail mass of each token."""

    def __init__(self, rows: dict[str, Tensor], *, temperature: float):
        self.rows, self.temperature = rows, temperature

    def token_loss(self, student_logits: Tensor, start: int, end: int) -> Tensor:
        d = student_logits.device
        return topk_token_kl(self.rows["logprobs"][start:end].to(d), self.rows["ids"][start:end].to(d),
                             self.rows["log_tail"][start:end].to(d), student_logits,
                             temperature=self.temperature)


class CrossEntropyTargets:
    """Cross-entropy on the response tokens themselves (sft, seqkd, r2): no teacher."""

    def __init__(self, batch: dict[str, Tensor], mask: Tensor):
        R = mask.shape[1]
        self.tokens = batch["s_ids"][:, -R:][mask != 0]                            # (N,)

    def token_loss(self, student_logits: Tensor, start: int, end: int) -> Tensor:
        logp = torch.log_softmax(student_logits.to(_compute_dtype(student_logits.dtype)), dim=-1)
        return -logp.gather(-1, self.tokens[start:end].long().unsqueeze(-1)).squeeze(-1)


class FixedTokenTargets:
    """Another teacher's targets, except at the response tokens whose distribution the pairs fix
    (a judge's order-balanced verdict, METHOD.md 6b): there the per-token loss is
    :func:`~pos2distill.training.losses.fixed_distribution_kl`."""

    def __init__(self, inner: Targets, index: Tensor, ids: Tensor, probs: Tensor, *,
                 temperature: float):
        self.inner, self.index, self.ids, self.probs = inner, index, ids, probs
        self.temperature = temperature

    def token_loss(self, student_logits: Tensor, start: int, end: int) -> Tensor:
        loss = self.inner.token_loss(student_logits, start, end)                  # (n,)
        here = (self.index >= start) & (self.index < end)
        if not bool(here.any()):
            return loss
        rows = self.index[here] - start
        fixed = fixed_distribution_kl(self.probs[here].to(student_logits.device),
                                      self.ids[here].to(student_logits.device),
                                      student_logits[rows], temperature=self.temperature)
        return loss.index_put((rows.to(loss.device),), fixed.to(loss.dtype))


def with_fixed_tokens(targets: Targets, batch: dict[str, Tensor], *,
                      temperature: float) -> Targets:
    """``targets``, with the batch's fixed teacher tokens (``fixed_*`` tensors of
    :func:`pos2distill.training.batches.fixed_tensors`) when it has any."""
    if "fixed_index" not in batch:
        return targets
    return FixedTokenTargets(targets, batch["fixed_index"], batch["fixed_ids"],
                             batch["fixed_probs"], temperature=temperature)


class OnlineTeacher:
    """The frozen model run on the fly.

    Args:
        model: the teacher model. With LoRA pass the student itself and ``context`` = its
            ``disable_adapter`` (no second copy of the weights).
        device: where the teacher runs (another GPU, or ``cpu`` to offload it); hidden states and
            logits move to the student's device a chunk at a time.
        context: entered around every teacher computation (default: nothing).
    """

    def __init__(self, model: Any, *, temperature: float = 1.0, device: str | None = None,
                 context: Callable[[], ContextManager[Any]] = nullcontext,
                 autocast: Callable[[], ContextManager[Any]] = nullcontext):
        self.model, self.temperature, self.context, self.autocast = model, temperature, context, autocast
        self.device = device if device is not None else str(next(model.parameters()).device)

    @torch.no_grad()
    def targets(self, batch: dict[str, Tensor], mask: Tensor) -> DenseTargets:
        ids, att = batch["t_ids"].to(self.device), batch["t_att"].to(self.device)
        keep = mask.to(self.device)
        R = mask.shape[1]
        with self.context(), self.autocast():
            if plain_head(self.model):
                hidden = response_hidden(self.model, ids, att, R)[keep]            # (N, H)
                return DenseTargets(self.model, hidden, None, context=self._head_context,
                                    temperature=self.temperature)
            logits = response_logits_full(self.model, ids, att, R)[keep]           # (N, V)
        return DenseTargets(self.model, None, logits, context=nullcontext,
                            temperature=self.temperature)

    def _head_context(self) -> Any:
        stack = ExitStack()
        stack.enter_context(self.context())
        stack.enter_context(self.autocast())
        return stack


class CachedTeacher:
    """Targets from a teacher cache (:class:`pos2distill.training.cache.CacheReader`)."""

    def __init__(self, reader: Any, *, temperature: float = 1.0, check_tokens: bool = True):
        self.reader, self.temperature, self.check_tokens = reader, temperature, check_tokens

    def targets(self, batch: dict[str, Tensor], mask: Tensor) -> TopKTargets:
        lens = mask.sum(1).tolist()
        tokens = None
        if self.check_tokens:
            R = mask.shape[1]
            tail = batch["s_ids"][:, -R:]
            tokens = [tail[b][mask[b]].tolist() for b in range(mask.shape[0])]
        rows = self.reader.rows(batch["index"].tolist(), lens, tokens)
        return TopKTargets(rows, temperature=self.temperature)


class ResponseLoss(torch.nn.Module):
    """Per-example loss of a micro-batch, as the student's forward: KL(teacher ‖ student) with
    teacher targets, cross-entropy with :class:`CrossEntropyTargets`.

    ``forward(ids, att, mask, targets)`` -> (B,): the student reads its left-padded prompts and
    responses; only the hidden states of the masked-in response tokens reach the output head,
    ``chunk`` tokens at a time; the per-token loss is averaged per example exactly like
    :func:`pos2distill.training.losses.per_example_kl` and :func:`~pos2distill.training.losses.per_example_cross_entropy`.
    """

    def __init__(self, model: Any, *, chunk: int):
        super().__init__()
        self.model, self.chunk = model, chunk

    @property
    def _no_split_modules(self) -> Any:
        """The wrapped model's layer classes (FSDP's transformer auto-wrap policy reads them)."""
        return getattr(self.model, "_no_split_modules", None)

    def forward(self, ids: Tensor, att: Tensor, mask: Tensor, targets: Targets) -> Tensor:
        R = mask.shape[1]
        keep = mask != 0
        rows = keep.nonzero(as_tuple=True)[0]                                     # (N,)
        if plain_head(self.model):
            hidden = response_hidden(self.model, ids, att, R)[keep]               # (N, H)
            model = self.model

            def fn(h: Tensor, s: int, e: int) -> Tensor:
                return targets.token_loss(head(model, h), s, e)

            token_loss = chunked_token_map(hidden, fn, chunk=self.chunk)
        else:
            logits = response_logits_full(self.model, ids, att, R)[keep]          # (N, V)
            token_loss = torch.cat([targets.token_loss(logits[s:s + self.chunk], s,
                                                   min(len(logits), s + self.chunk))
                                  for s in range(0, len(logits), self.chunk)]) \
                if len(logits) else logits.new_zeros(0)
        return _masked_row_mean(token_loss, rows, ids.shape[0])

