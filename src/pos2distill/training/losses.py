"""Loss maths for Pos2Distill, as pure functions of tensors.

Pos2Distill-R1 (METHOD.md section 2) splits into three steps, each a function here:

1. :func:`per_example_kl` -- ``L_e``, the token-averaged forward KL from the teacher (gold document
   at the advantageous position) to the student (gold document at position ``i_e``)  (2.3).
2. :func:`position_weights` -- the detached, position-aware weights ``w_e``  (2.4, 2.5).
3. :func:`weighted_loss` -- the batch loss ``sum_e w_e * L_e``  (2.4).

:func:`r1_loss` composes them. :func:`per_example_cross_entropy` serves the cross-entropy objectives
(SFT, SeqKD and Pos2Distill-R2, METHOD.md section 3).

Conventions shared by every function:

* Logits are *aligned*: ``logits[b, t]`` is the distribution that predicts response token ``t`` of
  example ``b``. The caller does the usual one-step shift, so that the first response token is
  predicted from the last prompt position (METHOD.md 2.3 asks for that token to be distilled).
* ``mask[b, t]`` is true for the response tokens that count: the first response token through EOS
  inclusive. Only masked-in positions are ever read, so masked-out logits and targets may hold
  anything (padding, ``-100`` ignore ids, even non-finite values) without affecting the result.
* Log-probabilities are computed in at least float32: bf16/fp16 inputs are upcast, because the KL is
  a small difference of large log-probabilities and half precision loses it.
* Nothing here gathers across ranks. Position weights depend on the whole global batch, so the
  training loop gathers the per-example losses and positions first and then calls
  :func:`position_weights` on the concatenation (the weights are a function of the multiset of
  ``(loss, position)`` pairs, so shard order does not matter).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pos2distill.training.methods import WEIGHT_FORMULAS

__all__ = [
    "WEIGHT_FORMULAS",
    "per_example_kl",
    "per_token_kl",
    "topk_token_kl",
    "fixed_distribution_kl",
    "position_weights",
    "weighted_loss",
    "per_example_cross_entropy",
    "r1_loss",
]



# ----------------------------------------------------------------------------- helpers


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs; float32/float64 stay as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_logits_and_mask(logits: Tensor, mask: Tensor, name: str) -> None:
    if logits.dim() != 3:
        raise ValueError(f"{name} must have shape (B, T, V), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {logits.dtype}")
    if tuple(mask.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"mask must have shape (B, T) = {tuple(logits.shape[:2])}, got {tuple(mask.shape)}"
        )


def _masked_row_mean(token_values: Tensor, rows: Tensor, batch_size: int) -> Tensor:
    """Mean of per-token values per example.

    Args:
        token_values: (N,) values of the N masked-in tokens.
        rows: (N,) long, the example index of each token.
        batch_size: B.

    Returns:
        (B,) mean per example; 0 for an example with no masked-in token (never 0/0 = NaN).
    """
    sums = token_values.new_zeros(batch_size).index_add(0, rows, token_values)
    counts = torch.bincount(rows, minlength=batch_size).to(token_values.dtype)
    return sums / counts.clamp(min=1)


# ----------------------------------------------------------------------------- R1: KL


def per_example_kl(teacher_logits: Tensor, student_logits: Tensor, mask: Tensor, *,
                   temperature: float = 1.0) -> Tensor:
    """Token-averaged forward KL per example (METHOD.md 2.3).

    ``L_e = (1/T_e) sum_{t in mask_e} KL(p_teacher(.|t) || p_student(.|t))`` with
    ``p = softmax(logits / temperature)`` and ``KL(p || q) = sum_v p_v (log p_v - log q_v)``.

    The teacher is the frozen model at the advantageous position: its logits are detached, so no
    gradient reaches them. The result is *not* multiplied by ``temperature ** 2`` (the Hinton
    rescaling that keeps gradient magnitudes comparable across temperatures); the paper uses
    temperature 1, where the two agree.

    Args:
        teacher_logits: (B, T, V) float, aligned as described in the module docstring.
        student_logits: (B, T, V) float, same alignment; gradients flow into these.
        mask: (B, T) bool or 0/1, true for the response tokens that count.
        temperature: softmax temperature, > 0.

    Returns:
        (B,) per-example KL in float32 (float64 if the inputs are float64). A row with no
        masked-in token gives exactly 0.
    """
    _check_logits_and_mask(student_logits, mask, "student_logits")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits {tuple(teacher_logits.shape)} and student_logits "
            f"{tuple(student_logits.shape)} must have the same shape"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    keep = mask != 0                                            # (B, T) bool
    rows = keep.nonzero(as_tuple=True)[0]                       # (N,) example index per token
    # Only the masked-in tokens are read: cheaper than a full (B, T, V) computation, and padding
    # logits never enter the arithmetic (so they cannot turn a masked sum into NaN).
    dtype = torch.promote_types(_compute_dtype(teacher_logits.dtype),
                                _compute_dtype(student_logits.dtype))
    token_kl = per_token_kl(teacher_logits[keep].to(dtype), student_logits[keep].to(dtype),
                            temperature=temperature)            # (N,)
    return _masked_row_mean(token_kl, rows, student_logits.shape[0])


def per_token_kl(teacher_logits: Tensor, student_logits: Tensor, *,
                 temperature: float = 1.0) -> Tensor:
    """``KL(softmax(t / T) || softmax(s / T))`` of each row: the summand of :func:`per_example_kl`.

    Args:
        teacher_logits: (N, V) float, detached here.
        student_logits: (N, V) float, same dtype; gradients flow into these.
        temperature: softmax temperature, > 0.

    Returns:
        (N,) per-token KL, in the inputs' dtype.
    """
    t_logp = torch.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    s_logp = torch.log_softmax(student_logits / temperature, dim=-1)  # (N, V)
    t_p = t_logp.exp()
    # Vocabulary entries the teacher gives probability 0 (e.g. -inf padding logits) contribute 0,
    # not 0 * (-inf - x) = NaN.
    terms = torch.where(t_p > 0, t_p * (t_logp - s_logp), torch.zeros_like(t_p))
    return terms.sum(dim=-1)                                    # (N,)


def topk_token_kl(teacher_logprobs: Tensor, teacher_ids: Tensor, teacher_log_tail: Tensor,
                  student_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Per-token KL from a teacher known only by its top-k and a tail bucket (the teacher cache).

    The teacher distribution ``p`` is stored as its k largest log-probabilities ``log p_i`` (ids
    ``i in K``) and the log of the remaining mass ``m = 1 - sum_{i in K} p_i``. The student ``q``
    is grouped the same way, with ``q_tail = 1 - sum_{i in K} q_i``, and the estimator is the exact
    KL between the two (k + 1)-bucket distributions::

        KL_k = sum_{i in K} p_i (log p_i - log q_i) + m (log m - log q_tail)

    Grouping never increases a KL (data processing), and the gap is exactly
    ``KL - KL_k = m * KL(p_tail / m || q_tail_dist / q_tail) >= 0``: it vanishes when k = V (m = 0)
    or when the student spreads its tail mass like the teacher, and it is at most ``m`` times the
    KL of the renormalised tails, so a small tail mass bounds it. The gradient with respect to the
    student logits is that of the exact KL with the teacher's tail replaced by the student's own
    tail shape, scaled to mass m.

    Args:
        teacher_logprobs: (N, k) float, the teacher's top-k log-probabilities at ``temperature``.
        teacher_ids: (N, k) integer vocabulary ids of those entries (distinct within a row).
        teacher_log_tail: (N,) float, ``log m`` (``-inf`` when the top-k hold all the mass).
        student_logits: (N, V) float; gradients flow into these.
        temperature: softmax temperature of the student, > 0 (the cache's own temperature).

    Returns:
        (N,) per-token estimate, float32 at least (float64 for float64 student logits).
    """
    dtype = _compute_dtype(student_logits.dtype)
    s_logp = torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1)       # (N, V)
    s_top = s_logp.gather(-1, teacher_ids.long())                                   # (N, k)
    t_top = teacher_logprobs.detach().to(dtype)
    t_p = t_top.exp()
    head = torch.where(t_p > 0, t_p * (t_top - s_top), torch.zeros_like(t_p)).sum(-1)  # (N,)
    log_m = teacher_log_tail.detach().to(dtype)
    m = log_m.exp()
    # log q_tail as a log-sum-exp over the student's entries outside the teacher's top k (never
    # log(1 - sum), which cancels). Rows with m = 0 (nothing outside the top k) read zeros instead:
    # their term is 0, and an all -inf log-sum-exp would send NaN through torch.where's gradient.
    s_rest = s_logp.scatter(-1, teacher_ids.long(), float("-inf"))                  # (N, V)
    s_rest = torch.where((m > 0).unsqueeze(-1), s_rest, torch.zeros_like(s_rest))
    s_log_tail = torch.logsumexp(s_rest, dim=-1)                                     # (N,)
    tail = torch.where(m > 0, m * (log_m - s_log_tail), torch.zeros_like(m))
    return head + tail


def fixed_distribution_kl(probs: Tensor, ids: Tensor, student_logits: Tensor, *,
                          temperature: float = 1.0) -> Tensor:
    """Per-token KL from a teacher distribution given outright on a few tokens (the judge's
    order-balanced verdict distribution, METHOD.md 6b): ``KL(p || q) = sum_k p_k (log p_k -
    log q_{ids_k})`` with ``q = softmax(student_logits / temperature)`` over the whole vocabulary
    and ``p`` zero outside ``ids``. Entries with ``p_k = 0`` (padding) add nothing. This is
    :func:`topk_token_kl` with no tail mass.

    Args:
        probs: (M, K) float, each row sums to 1 (padding entries 0).
        ids: (M, K) integer vocabulary ids of those entries (padding: any id).
        student_logits: (M, V) float; gradients flow into these.
        temperature: softmax temperature of the student, > 0.

    Returns:
        (M,) per-token KL, float32 at least.
    """
    logp = torch.log(probs.detach().to(_compute_dtype(student_logits.dtype)))     # -inf for 0
    no_tail = torch.full(probs.shape[:1], float("-inf"), dtype=logp.dtype, device=logp.device)
    return topk_token_kl(logp, ids, no_tail, student_logits, temperature=temperature)


# ----------------------------------------------------------------------------- R1: weights


def position_weights(per_example_loss: Tensor, positions: Tensor, *, anchor_position: int,
                     anchor_weight: float, formula: str = "pos2distill") -> Tensor:
    """Position-aware example weights for Pos2Distill-R1 (METHOD.md 2.4 and 2.5).

    Examples whose student gold position equals ``anchor_position`` are *anchors* (the anchoring
    term ``lambda * L_Anc`` of 2.5): with ``"pos2distill"`` each gets ``w_e = anchor_weight`` (a
    sum over anchors, as the authors' code trains), with ``"paper"`` each gets
    ``anchor_weight / (number of anchors in the batch)`` (``lambda`` times their mean, as the paper
    writes ``L_Anc``), with ``"uniform"`` ``anchor_weight``. The others are *trivial*
    examples, grouped by position ``p``: ``U`` is the set of trivial positions present, ``S_p`` the
    examples at ``p`` and ``m_p`` the mean loss over ``S_p``. Anchors take no part in ``U`` or the
    softmax. Then, with ``s_p = softmax_{q in U}(m_q)_p``:

    * ``"pos2distill"`` (default; the form the authors' released code trains with):
      ``w_e = (|U| * s_p / |S_p|) * L_e / max_{e' in S_p} L_{e'}``.
    * ``"paper"`` (the formula printed in the paper, ``alpha_ij``):
      ``w_e = s_p * L_e / max_{e' in S_p} L_{e'}``.
    * ``"uniform"`` (plain KL, the ablation baseline): ``w_e = 1``.

    The softmax up-weights the positions the student currently finds hardest; the ``L / max`` ratio
    does the same within a position. With ``|U|`` and ``1/|S_p|`` the examples of position ``p``
    carry a total weight of at most ``c_p`` and the ``c_p`` sum to ``|U|``: every position present
    weighs about 1 however many examples it has, and the loss scale does not depend on the batch
    size. The paper form lacks both factors, so its scale does.

    A position whose losses are all 0 (already distilled) has max 0: its examples get weight 0
    instead of 0/0. The losses are KL values, non-negative up to rounding; they are clamped at 0
    here so that a rounding error of -1e-9 can never flip the sign of a weight.

    The weights are a function of the whole batch, so in distributed training call this on the
    gathered losses and positions of all ranks. The result is detached: weights are constants in
    the backward pass.

    Args:
        per_example_loss: (B,) float, ``L_e`` (e.g. from :func:`per_example_kl`).
        positions: (B,) integer, the student's 0-based gold position of each example, or any
            integer id of its slot (only equality and order are used; ``train`` passes
            :func:`pos2distill.training.batches.slot_ids`, which keep the order of positions).
        anchor_position: the advantageous position (0, the first document, by default
            elsewhere), or the id of the advantageous slot.
        anchor_weight: ``lambda`` >= 0, the weight of every anchor example.
        formula: one of :data:`WEIGHT_FORMULAS`.

    Returns:
        (B,) weights, detached, with the dtype and device of ``per_example_loss``.
    """
    if formula not in WEIGHT_FORMULAS:
        raise ValueError(f"formula must be one of {WEIGHT_FORMULAS}, got {formula!r}")
    if per_example_loss.dim() != 1:
        raise ValueError(f"per_example_loss must have shape (B,), got "
                         f"{tuple(per_example_loss.shape)}")
    if tuple(positions.shape) != tuple(per_example_loss.shape):
        raise ValueError(f"positions must have shape {tuple(per_example_loss.shape)} like "
                         f"per_example_loss, got {tuple(positions.shape)}")
    if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise ValueError(f"positions must be an integer tensor, got {positions.dtype}")
    if not anchor_weight >= 0:
        raise ValueError(f"anchor_weight must be >= 0, got {anchor_weight}")

    # float64 so that softmax and ratios do not depend on the training precision.
    loss = per_example_loss.detach().to(torch.float64).clamp(min=0)   # (B,)
    positions = positions.detach().to(loss.device)
    is_anchor = positions == anchor_position                           # (B,) bool
    n_anchors = int(is_anchor.sum())
    per_anchor = anchor_weight / n_anchors if formula == "paper" and n_anchors else anchor_weight
    weights = torch.full_like(loss, float(per_anchor))

    trivial = ~is_anchor
    if trivial.any():
        if formula == "uniform":
            weights[trivial] = 1.0
        else:
            weights[trivial] = _trivial_weights(loss[trivial], positions[trivial], formula)
    return weights.to(per_example_loss.dtype)


def _trivial_weights(loss: Tensor, positions: Tensor, formula: str) -> Tensor:
    """Weights of the trivial examples only.

    Args:
        loss: (N,) float64, non-negative losses of the trivial examples.
        positions: (N,) integer gold positions.
        formula: ``"pos2distill"`` or ``"paper"``.

    Returns:
        (N,) float64 weights.
    """
    # bin_of[e] indexes the position of example e in U (sorted unique positions).
    _, bin_of, bin_size = torch.unique(positions, return_inverse=True, return_counts=True)
    n_bins = bin_size.numel()                                          # |U|
    bin_size = bin_size.to(loss.dtype)                                 # |S_p|, (|U|,)
    bin_mean = loss.new_zeros(n_bins).index_add(0, bin_of, loss) / bin_size           # m_p
    bin_max = loss.new_zeros(n_bins).scatter_reduce(0, bin_of, loss, reduce="amax",
                                                    include_self=False)               # (|U|,)
    share = torch.softmax(bin_mean, dim=0)                             # s_p, (|U|,)
    if formula == "pos2distill":
        coef = n_bins * share / bin_size                               # c_p / |S_p|
    else:
        coef = share
    max_e = bin_max[bin_of]                                            # (N,)
    # An all-zero bin gets weight 0; the where() keeps 0/0 out of the result.
    ratio = torch.where(max_e > 0, loss / torch.where(max_e > 0, max_e, torch.ones_like(max_e)),
                        torch.zeros_like(loss))
    return coef[bin_of] * ratio


def weighted_loss(per_example_loss: Tensor, weights: Tensor) -> Tensor:
    """Batch loss ``sum_e w_e * L_e`` (METHOD.md 2.4).

    The weights are detached here as well, so that gradients flow only through ``L_e``, whatever
    the caller passes.

    Args:
        per_example_loss: (B,) float.
        weights: (B,) float.

    Returns:
        () scalar.
    """
    if per_example_loss.dim() != 1 or weights.shape != per_example_loss.shape:
        raise ValueError(f"per_example_loss and weights must both have shape (B,), got "
                         f"{tuple(per_example_loss.shape)} and {tuple(weights.shape)}")
    return (weights.detach().to(per_example_loss.dtype) * per_example_loss).sum()


# ----------------------------------------------------------------------------- cross-entropy


def per_example_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Token-averaged negative log-likelihood per example.

    ``CE_e = -(1/T_e) sum_{t in mask_e} log softmax(logits[e, t])[targets[e, t]]``: the loss of SFT,
    SeqKD and Pos2Distill-R2 (METHOD.md 3, one term ``-log p(C^adv | P^(pre_k, post_k))`` per
    example, length-normalised like :func:`per_example_kl`).

    Args:
        logits: (B, T, V) float, aligned as described in the module docstring.
        targets: (B, T) integer token ids; only masked-in entries are read, so ``-100`` padding
            is fine.
        mask: (B, T) bool or 0/1.

    Returns:
        (B,) float32 (float64 for float64 logits); 0 for a row with no masked-in token.
    """
    _check_logits_and_mask(logits, mask, "logits")
    if tuple(targets.shape) != tuple(mask.shape):
        raise ValueError(f"targets must have shape (B, T) = {tuple(mask.shape)}, got "
                         f"{tuple(targets.shape)}")
    keep = mask != 0
    rows = keep.nonzero(as_tuple=True)[0]                               # (N,)
    logp = torch.log_softmax(logits[keep].to(_compute_dtype(logits.dtype)), dim=-1)  # (N, V)
    nll = -logp.gather(-1, targets[keep].long().unsqueeze(-1)).squeeze(-1)          # (N,)
    return _masked_row_mean(nll, rows, logits.shape[0])


# ----------------------------------------------------------------------------- R1 composed


def r1_loss(teacher_logits: Tensor, student_logits: Tensor, mask: Tensor, positions: Tensor, *,
            anchor_position: int, anchor_weight: float = 1.0, formula: str = "pos2distill",
            temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Pos2Distill-R1 loss on one (non-distributed) batch (METHOD.md 2.3 to 2.5).

    Composes :func:`per_example_kl`, :func:`position_weights` and :func:`weighted_loss`. For
    distributed training, call the three steps yourself and gather between the first two.

    Args:
        teacher_logits: (B, T, V) float.
        student_logits: (B, T, V) float.
        mask: (B, T) bool or 0/1.
        positions: (B,) integer student gold positions.
        anchor_position, anchor_weight, formula: see :func:`position_weights`.
        temperature: see :func:`per_example_kl`.

    Returns:
        ``(loss, kl, weights)``: () scalar loss with gradient, (B,) per-example KL, (B,) detached
        weights.
    """
    kl = per_example_kl(teacher_logits, student_logits, mask, temperature=temperature)
    weights = position_weights(kl, positions, anchor_position=anchor_position,
                               anchor_weight=anchor_weight, formula=formula)
    return weighted_loss(kl, weights), kl, weights
