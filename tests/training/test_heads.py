"""heads and teacher: response-only, chunked logits give the full computation's per-example KL,
value and gradient; the top-k estimator against the exact KL."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from conftest import tiny_llama
from pos2distill.stages.cache import topk_rows
from pos2distill.training.batches import batch_tensors, encode_pair
from pos2distill.training.heads import chunked_token_map, head, plain_head, response_hidden
from pos2distill.training.losses import per_example_kl, per_token_kl, topk_token_kl
from pos2distill.training.teacher import OnlineTeacher, ResponseLoss, TopKTargets
from reference import micro_kl
from helpers import ALIGNMENT_ROWS as ROWS


@pytest.fixture(scope="module")
def double_model(tok: Any) -> Any:
    return tiny_llama(tok, initializer_range=0.2).double()


def _batch(tok: Any) -> dict[str, torch.Tensor]:
    examples = [encode_pair(r, tok) for r in ROWS]
    b = batch_tensors(examples, tok.pad_token_id, "cpu")
    b["index"] = torch.arange(len(examples))
    return b


def _full_reference(student: Any, teacher: Any, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """The computation the response-only path replaces: full [B, T, V] logits of both models."""
    R = b["mask"].shape[1]
    pos_s = (b["s_att"].cumsum(-1) - 1).clamp(min=0)
    pos_t = (b["t_att"].cumsum(-1) - 1).clamp(min=0)
    s = student(input_ids=b["s_ids"], attention_mask=b["s_att"], position_ids=pos_s).logits
    with torch.no_grad():
        t = teacher(input_ids=b["t_ids"], attention_mask=b["t_att"], position_ids=pos_t).logits
    return per_example_kl(t[:, -R - 1:-1], s[:, -R - 1:-1], b["mask"])


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_response_only_kl_equals_full_value_and_gradient(double_model: Any, tok: Any,
                                                         chunk: int) -> None:
    student = copy.deepcopy(double_model).train()
    teacher = copy.deepcopy(double_model).eval().requires_grad_(False)
    with torch.no_grad():   # make the student differ from the teacher
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    b = _batch(tok)
    assert plain_head(student)
    ref = _full_reference(student, teacher, b)
    ref_grads = torch.autograd.grad(ref.sum() * 1.7 + ref[0], list(student.parameters()))
    kl = ResponseLoss(student, chunk=chunk)(b["s_ids"], b["s_att"], b["mask"],
                                          OnlineTeacher(teacher).targets(b, b["mask"]))
    grads = torch.autograd.grad(kl.sum() * 1.7 + kl[0], list(student.parameters()))
    torch.testing.assert_close(kl, ref, atol=1e-12, rtol=1e-10)
    assert kl.min() > 1e-3
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-9)


def test_response_only_matches_existing_micro_kl(sharp_model: Any, tok: Any) -> None:
    """Float32 on the existing R1 path (logits_to_keep): the same numbers up to rounding."""
    b = _batch(tok)
    with torch.no_grad():
        old = micro_kl(sharp_model, sharp_model, b)
        new = ResponseLoss(sharp_model, chunk=2)(b["s_ids"], b["s_att"], b["mask"],
                                               OnlineTeacher(sharp_model).targets(b, b["mask"]))
    torch.testing.assert_close(new, old, atol=1e-6, rtol=1e-5)


def test_response_hidden_never_full_vocab(double_model: Any, tok: Any) -> None:
    b = _batch(tok)
    R = b["mask"].shape[1]
    h = response_hidden(double_model, b["s_ids"], b["s_att"], R)
    assert h.shape == (3, R, double_model.config.hidden_size)


def test_chunked_token_map_checkpointing_matches_plain() -> None:
    torch.manual_seed(0)
    h = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor, s: int, e: int) -> torch.Tensor:
        return torch.log_softmax(x @ w.T, -1)[:, 0] * (torch.arange(s, e) + 1)

    a = chunked_token_map(h, fn, chunk=3)
    ga = torch.autograd.grad(a.sum(), [h, w])
    b = fn(h, 0, 7)
    gb = torch.autograd.grad(b.sum(), [h, w])
    torch.testing.assert_close(a, b)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError):
        chunked_token_map(h, fn, chunk=0)


# ---------------------------------------------------------------------------------------------
# The top-k + tail estimator
# ---------------------------------------------------------------------------------------------

def test_topk_kl_by_hand() -> None:
    # Teacher (0.5, 0.3, 0.2), student (0.25, 0.25, 0.5); k = 1 keeps token 0 and a tail of 0.5.
    p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.25, 0.5]], dtype=torch.float64)
    lp, ids, tail = topk_rows(p.log(), 1)
    assert ids.tolist() == [[0]]
    assert tail.exp().item() == pytest.approx(0.5)
    est = topk_token_kl(lp.double(), ids, tail.double(), q.log())
    expected = 0.5 * torch.log(torch.tensor(0.5 / 0.25)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))
    assert est.item() == pytest.approx(expected.item(), abs=1e-7)


def test_topk_kl_equals_exact_at_full_vocabulary_value_and_gradient() -> None:
    torch.manual_seed(1)
    t = torch.randn(6, 11, dtype=torch.float64) * 3
    s = (torch.randn(6, 11, dtype=torch.float64) * 3).requires_grad_()
    exact = per_token_kl(t, s)
    g_exact, = torch.autograd.grad(exact.sum(), s)
    lp, ids, tail = topk_rows(t, 11)
    assert torch.isinf(tail).all()
    est = topk_token_kl(lp.double(), ids, tail.double(), s)
    g_est, = torch.autograd.grad(est.sum(), s)
    torch.testing.assert_close(est, exact, atol=1e-6, rtol=1e-6)   # float32 storage of log p
    torch.testing.assert_close(g_est, g_exact, atol=1e-6, rtol=1e-6)
    assert torch.isfinite(g_est).all()


@pytest.mark.parametrize("k", [1, 3, 7])
def test_topk_kl_gap_is_tail_mass_times_tail_kl(k: int) -> None:
    """KL - KL_k = m * KL(renormalised teacher tail || renormalised student tail) >= 0."""
    torch.manual_seed(k)
    t = torch.randn(5, 9, dtype=torch.float64) * 2
    s = torch.randn(5, 9, dtype=torch.float64) * 2
    exact = per_token_kl(t, s)
    lp, ids, log_tail = topk_rows(t, k)
    est = topk_token_kl(lp.double(), ids, log_tail.double(), s)
    rest = torch.ones_like(t, dtype=torch.bool).scatter(-1, ids.long(), False)
    for n in range(5):
        pt = torch.softmax(t[n], -1)[rest[n]]
        qs = torch.softmax(s[n], -1)[rest[n]]
        m = pt.sum()
        gap = m * (pt / m * ((pt / m).log() - (qs / qs.sum()).log())).sum()
        assert (exact[n] - est[n]).item() == pytest.approx(gap.item(), abs=1e-6)
        assert exact[n] - est[n] >= -1e-6
        assert m.item() == pytest.approx(log_tail[n].double().exp().item(), rel=1e-5)


def test_topk_kl_finite_when_student_tail_vanishes() -> None:
    lp = torch.log(torch.tensor([[0.9]]))
    ids = torch.tensor([[0]])
    tail = torch.log(torch.tensor([0.1]))
    s = torch.tensor([[80.0, -80.0, -80.0]], requires_grad=True)
    v = topk_token_kl(lp, ids, tail, s)
    g, = torch.autograd.grad(v.sum(), s)
    assert torch.isfinite(v).all() and torch.isfinite(g).all()


def test_cached_targets_equal_online_at_full_vocabulary(double_model: Any, tok: Any) -> None:
    """The student side through TopKTargets with k = V gives the online teacher's KL and gradient."""
    student = copy.deepcopy(double_model).train()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    b = _batch(tok)
    online = OnlineTeacher(double_model).targets(b, b["mask"])
    with torch.no_grad():
        t_logits = head(double_model, online.hidden)
    lp, ids, tail = topk_rows(t_logits, t_logits.shape[-1])
    cached = TopKTargets({"logprobs": lp, "ids": ids, "log_tail": tail}, temperature=1.0)
    m = ResponseLoss(student, chunk=4)
    a = m(b["s_ids"], b["s_att"], b["mask"], online)
    ga = torch.autograd.grad(a.sum(), list(student.parameters()))
    c = m(b["s_ids"], b["s_att"], b["mask"], cached)
    gc = torch.autograd.grad(c.sum(), list(student.parameters()))
    torch.testing.assert_close(c, a, atol=1e-6, rtol=1e-5)
    for x, y in zip(gc, ga):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)
