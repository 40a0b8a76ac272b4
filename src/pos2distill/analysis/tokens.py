"""Token shifting (METHOD.md section 6, the paper's Table 9 and Fig. 8): per-token statistics of
the advantageous response teacher-forced under a trivial-position prompt, and their summary by
position. Pure functions: tensors and rows in, numbers out.

Words used here:

- *response* ``r``: the answer the model gives with the gold document at the advantageous
  position (the part the task distils: the first line for retrieval), EOS included when the model
  stops there;
- *per-token KL* at token t: ``KL(p(·|P^adv, r<t) ‖ p(·|P^i, r<t))``;
- *spike*: the token with the largest KL;
- *first divergence* ``t*``: the first token where the trivial-position model's argmax is not
  ``r_t`` (None when it reproduces the whole response);
- *rank*: the rank of ``r_t*`` in the trivial-position distribution at ``t*`` (1 when nothing
  diverges);
- *recovery*: a row the model gets wrong on its own is answered right with ``r_t*`` forced at
  ``t*`` and greedy decoding after it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from pos2distill.tasks.positions import Slot
from pos2distill.training.losses import per_token_kl

#: Rank buckets of the Fig. 8 histogram: (label, lowest rank, highest rank).
RANK_BUCKETS = (("1", 1, 1), ("2", 2, 2), ("3-5", 3, 5), ("6-10", 6, 10), ("11-50", 11, 50),
                (">50", 51, math.inf))
TOP_K = (1, 5, 10)


def token_stats(adv_logits: Tensor, logits: Tensor, tokens: Sequence[int]) -> dict[str, Any]:
    """The statistics of one (question, trivial position) row.

    Args:
        adv_logits: (r, V) logits of the response's tokens with the gold document at the
            advantageous position (row t predicts token t).
        logits: (r, V) the same with the gold document at the trivial position.
        tokens: the r response token ids.

    Returns:
        ``kl`` (r floats), ``kl_mean``, ``spike_index`` (0-based) and ``spike_kl``,
        ``first_divergence`` (0-based, or None), ``rank`` (1-based) of the response's token there,
        ``student_token`` (the trivial-position argmax there, or None) and ``nll`` (r floats, the
        response's negative log-likelihood under the trivial-position prompt).
    """
    y = torch.as_tensor(list(tokens), device=logits.device)
    kl = per_token_kl(adv_logits, logits)                                          # (r,)
    argmax = logits.argmax(-1)
    diverged = (argmax != y).nonzero().flatten()
    first = int(diverged[0]) if len(diverged) else None
    rank = 1 if first is None else 1 + int((logits[first] > logits[first, y[first]]).sum())
    nll = -torch.log_softmax(logits, -1).gather(-1, y[:, None]).squeeze(-1)
    spike = int(kl.argmax())
    return {"kl": kl.tolist(), "kl_mean": float(kl.mean()), "spike_index": spike,
            "spike_kl": float(kl[spike]), "first_divergence": first, "rank": rank,
            "student_token": None if first is None else int(argmax[first]), "nll": nll.tolist()}


def mean_by_index(values: Sequence[Sequence[float]]) -> list[float]:
    """Mean of the t-th value over the rows that have one, for every t (rows differ in length)."""
    out = []
    for t in range(max((len(v) for v in values), default=0)):
        col = [v[t] for v in values if len(v) > t]
        out.append(sum(col) / len(col))
    return out


def rank_histogram(ranks: Sequence[int]) -> dict[str, int]:
    """How many ranks fall in each of :data:`RANK_BUCKETS`."""
    return {label: sum(lo <= r <= hi for r in ranks) for label, lo, hi in RANK_BUCKETS}


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarize_slot(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One position's summary from its rows (each a :func:`token_stats` dict plus ``correct``,
    the trivial-position model's own answer scored, and ``recovered``, None for rows that do not
    diverge).

    ``kl_mean`` is the mean of the rows' token-mean KL (R1's per-example loss); ``kl_by_token`` the
    mean KL at each token index, whose largest value is ``spike_kl`` at ``spike_index`` (0-based;
    the Table 9 view); ``mean_max_kl`` the mean of each row's largest KL; ``top{1,5,10}_share`` the
    share of rows whose rank is within k (``top{k}_share_failures``: among the rows the model gets
    wrong, the paper's Fig. 8 view); ``recovery`` the share of the rows the model gets wrong
    on its own that are answered correctly after forcing (None when it gets none wrong);
    ``recovery_diverged`` the same over every diverging row (a row may diverge after its answer
    and be right anyway); ``accuracy`` the model's own answers."""
    by_token = mean_by_index([r["kl"] for r in rows])
    spike = max(range(len(by_token)), key=by_token.__getitem__) if by_token else 0
    ranks = [r["rank"] for r in rows]
    diverging = [r for r in rows if r["first_divergence"] is not None]
    failures = [r for r in diverging if not r["correct"]]
    return {"count": len(rows),
            "kl_mean": sum(r["kl_mean"] for r in rows) / len(rows),
            "spike_kl": by_token[spike] if by_token else 0.0, "spike_index": spike,
            "kl_by_token": by_token,
            "mean_max_kl": sum(max(r["kl"]) for r in rows) / len(rows),
            "diverged": len(diverging) / len(rows),
            **{f"top{k}_share": sum(x <= k for x in ranks) / len(ranks) for k in TOP_K},
            **{f"top{k}_share_failures": _share([r["rank"] <= k for r in failures])
               for k in TOP_K},
            "rank_histogram": rank_histogram(ranks),
            "recovery": _share([bool(r["recovered"]) for r in failures]),
            "recovery_diverged": _share([bool(r["recovered"]) for r in diverging]),
            "accuracy": sum(bool(r["correct"]) for r in rows) / len(rows)}


def summarize(rows: Sequence[dict[str, Any]], slots: Sequence[Slot]) -> list[dict[str, Any]]:
    """:func:`summarize_slot` of every slot that has rows, in ``slots`` order."""
    out = []
    for slot in slots:
        members = [r for r in rows if tuple(r["slot"]) == tuple(slot)]
        if members:
            out.append({"slot": list(slot), **summarize_slot(members)})
    return out
