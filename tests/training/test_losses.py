"""Tests for pos2distill.training.losses: hand-computed values, invariants, and a slow loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from pos2distill.training.losses import (
    per_example_cross_entropy,
    per_example_kl,
    position_weights,
    r1_loss,
    weighted_loss,
)

LOG3 = math.log(3.0)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Every tensor here is tiny: intra-op threads only add wake-up latency, which on a busy
    # 2-core machine made one log_softmax call take milliseconds. Restored after the module.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


# ----------------------------------------------------------------------------- slow references


def ref_kl(teacher, student, mask, temperature=1.0):
    """Loop-based L_e: python floats for the teacher, 0-d torch ops for the student (for autograd).

    Returns a list of B 0-d tensors (plain 0.0 floats for fully masked rows).
    """
    B, T, V = student.shape
    out = []
    for b in range(B):
        total, count = 0.0, 0
        for t in range(T):
            if not bool(mask[b, t]):
                continue
            zt = [float(teacher[b, t, v]) / temperature for v in range(V)]
            lse_t = math.log(sum(math.exp(z) for z in zt))
            log_pt = [z - lse_t for z in zt]
            zs = [student[b, t, v] / temperature for v in range(V)]
            lse_s = torch.log(sum(torch.exp(z) for z in zs))
            kl = 0.0
            for v in range(V):
                kl = kl + math.exp(log_pt[v]) * (log_pt[v] - (zs[v] - lse_s))
            total = total + kl
            count += 1
        out.append(total / count if count else torch.zeros((), dtype=student.dtype))
    return out


def ref_weights(losses, positions, anchor_position, anchor_weight, formula):
    """Loop-based position weights, straight from METHOD.md 2.4 and 2.5, in python floats."""
    n_anchors = sum(p == anchor_position for p in positions)
    groups: dict[int, list[int]] = {}
    for e, p in enumerate(positions):
        if p != anchor_position:
            groups.setdefault(p, []).append(e)
    means = {p: sum(losses[e] for e in es) / len(es) for p, es in groups.items()}
    z = sum(math.exp(m) for m in means.values())
    weights = []
    for e, p in enumerate(positions):
        if p == anchor_position:   # the paper: lambda times the mean over the batch's anchors
            weights.append(anchor_weight / n_anchors if formula == "paper" else anchor_weight)
            continue
        if formula == "uniform":
            weights.append(1.0)
            continue
        es = groups[p]
        softmax_p = math.exp(means[p]) / z
        peak = max(losses[i] for i in es)
        ratio = losses[e] / peak if peak > 0 else 0.0
        if formula == "pos2distill":
            weights.append(len(groups) * softmax_p / len(es) * ratio)
        else:
            weights.append(softmax_p * ratio)
    return weights


def ref_cross_entropy(logits, targets, mask):
    B, T, V = logits.shape
    out = []
    for b in range(B):
        nll, count = 0.0, 0
        for t in range(T):
            if not bool(mask[b, t]):
                continue
            z = [float(logits[b, t, v]) for v in range(V)]
            lse = math.log(sum(math.exp(x) for x in z))
            nll += lse - z[int(targets[b, t])]
            count += 1
        out.append(nll / count if count else 0.0)
    return out


def _random_batch(seed, B=6, T=4, V=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(B, T, V, generator=g, dtype=dtype) * 2
    student = torch.randn(B, T, V, generator=g, dtype=dtype) * 2
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0] = False                      # one fully masked row
    mask[1] = True                       # one fully unmasked row
    return teacher, student, mask


# ----------------------------------------------------------------------------- per_example_kl


def test_kl_hand_computed_two_token_vocab():
    # Token 0: p_t = (1/2, 1/2), p_s = (1/4, 3/4) -> KL = 1/2 log 2 + 1/2 log(2/3) = 1/2 log(4/3).
    # Token 1: equal logits -> 0. Token 2 is masked out and holds garbage.
    teacher = _t([[[0.0, 0.0], [1.0, -1.0], [50.0, -50.0]]])
    student = _t([[[0.0, LOG3], [1.0, -1.0], [-50.0, 50.0]]])
    mask = torch.tensor([[True, True, False]])
    expected = (0.5 * math.log(4.0 / 3.0) + 0.0) / 2
    got = per_example_kl(teacher, student, mask)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_kl_hand_computed_three_token_vocab():
    # p_t = (1/4, 1/2, 1/4), p_s uniform: KL = 2 * 1/4 log(3/4) + 1/2 log(3/2).
    teacher = _t([[[0.0, math.log(2.0), 0.0]]])
    student = _t([[[0.3, 0.3, 0.3]]])
    expected = 0.5 * math.log(0.75) + 0.5 * math.log(1.5)
    got = per_example_kl(teacher, student, torch.ones(1, 1, dtype=torch.bool))
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_kl_temperature_hand_computed():
    # Teacher logits (0, 2 log 3), student uniform (any temperature keeps it uniform).
    # T = 1: p_t = (1/10, 9/10).  T = 2: logits/2 = (0, log 3) -> p_t = (1/4, 3/4).
    teacher = _t([[[0.0, 2 * LOG3]]])
    student = _t([[[0.0, 0.0]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    kl_t1 = 0.1 * math.log(0.1 / 0.5) + 0.9 * math.log(0.9 / 0.5)
    kl_t2 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert per_example_kl(teacher, student, mask).item() == pytest.approx(kl_t1, abs=1e-12)
    # No T^2 rescaling: the value is the plain KL of the tempered distributions.
    got = per_example_kl(teacher, student, mask, temperature=2.0).item()
    assert got == pytest.approx(kl_t2, abs=1e-12)
    with pytest.raises(ValueError):
        per_example_kl(teacher, student, mask, temperature=0.0)


def test_kl_equal_logits_is_zero_and_kl_nonnegative():
    teacher, student, mask = _random_batch(0)
    zeros = torch.zeros(6, dtype=torch.float64)
    assert torch.equal(per_example_kl(teacher, teacher.clone(), mask), zeros)
    kl = per_example_kl(teacher, student, mask)
    assert (kl >= 0).all()
    assert (kl[1:][mask[1:].any(dim=1)] > 0).all()


def test_kl_fully_masked_row_is_zero_not_nan():
    teacher, student, _ = _random_batch(1)
    mask = torch.zeros(6, 4, dtype=torch.bool)
    mask[2, :2] = True
    student = student.clone().requires_grad_(True)
    kl = per_example_kl(teacher, student, mask)
    assert torch.isfinite(kl).all()
    assert kl[0].item() == 0.0 and kl[5].item() == 0.0
    kl.sum().backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[0].abs().sum().item() == 0.0


def test_kl_masked_positions_do_not_matter():
    teacher, student, mask = _random_batch(2)
    base = per_example_kl(teacher, student, mask)
    # Overwrite masked-out logits on both sides with junk, including non-finite values.
    t2, s2 = teacher.clone(), student.clone()
    t2[~mask] = torch.randn_like(t2[~mask]) * 100
    s2[~mask] = float("nan")
    s2[..., 0] = torch.where(mask, s2[..., 0], float("-inf"))
    assert torch.equal(per_example_kl(t2, s2, mask), base)
    # An integer 0/1 mask behaves like the bool mask.
    assert torch.equal(per_example_kl(teacher, student, mask.long()), base)


def test_kl_teacher_zero_probabilities_are_not_nan():
    # A -inf teacher logit (vocab padding) is probability 0 and contributes 0, not NaN.
    teacher = _t([[[0.0, 0.0, float("-inf")]]])
    student = _t([[[0.0, LOG3, 0.0]]])
    # p_t = (1/2, 1/2, 0), p_s = (1/5, 3/5, 1/5).
    expected = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.6)
    got = per_example_kl(teacher, student, torch.ones(1, 1, dtype=torch.bool))
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_kl_matches_loop_reference_value_and_gradient():
    teacher, student, mask = _random_batch(3)
    for temperature in (1.0, 1.7):
        s_fast = student.clone().requires_grad_(True)
        s_ref = student.clone().requires_grad_(True)
        got = per_example_kl(teacher, s_fast, mask, temperature=temperature)
        ref = ref_kl(teacher, s_ref, mask, temperature=temperature)
        torch.testing.assert_close(got, torch.stack([torch.as_tensor(r, dtype=torch.float64)
                                                     for r in ref]), rtol=1e-10, atol=1e-12)
        # Gradient of an arbitrary fixed combination of the per-example values.
        coeffs = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
        (coeffs * got).sum().backward()
        sum(c * r for c, r in zip(coeffs.tolist(), ref)).backward()
        torch.testing.assert_close(s_fast.grad, s_ref.grad, rtol=1e-10, atol=1e-12)


def test_kl_gradient_closed_form():
    # d L_e / d z_s[t] = (p_s - p_t) / (T_e * temperature) on masked tokens, 0 elsewhere.
    teacher, student, mask = _random_batch(4)
    student.requires_grad_(True)
    per_example_kl(teacher, student, mask, temperature=2.0).sum().backward()
    p_t = torch.softmax(teacher / 2.0, dim=-1)
    p_s = torch.softmax(student.detach() / 2.0, dim=-1)
    counts = mask.sum(dim=1).clamp(min=1).to(torch.float64)[:, None, None]
    expected = (p_s - p_t) / (counts * 2.0) * mask[..., None]
    torch.testing.assert_close(student.grad, expected, rtol=1e-10, atol=1e-12)


def test_kl_teacher_gets_no_gradient():
    teacher, student, mask = _random_batch(5)
    teacher.requires_grad_(True)
    student.requires_grad_(True)
    per_example_kl(teacher, student, mask).sum().backward()
    assert teacher.grad is None
    assert student.grad is not None


def test_kl_half_precision_is_upcast():
    teacher, student, mask = _random_batch(6, dtype=torch.float32)
    got = per_example_kl(teacher.bfloat16(), student.bfloat16(), mask)
    assert got.dtype == torch.float32
    ref = per_example_kl(teacher.bfloat16().double(), student.bfloat16().double(), mask)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)


def test_kl_shape_errors():
    t = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError):
        per_example_kl(t, torch.zeros(2, 3, 5), torch.ones(2, 3))
    with pytest.raises(ValueError):
        per_example_kl(t, t, torch.ones(2, 4))
    with pytest.raises(ValueError):
        per_example_kl(t[0], t[0], torch.ones(3))


# ----------------------------------------------------------------------------- position_weights

# A batch with two anchors (position 0), three examples at position 3 and one at position 7.
HAND_L = [5.0, 1.0, 3.0, 2.0, 0.5, 9.0]
HAND_POS = [0, 3, 3, 3, 7, 0]
# U = {3, 7}; m_3 = 2, m_7 = 0.5; max_3 = 3, max_7 = 0.5; |S_3| = 3, |S_7| = 1.
S3 = math.exp(2.0) / (math.exp(2.0) + math.exp(0.5))
S7 = math.exp(0.5) / (math.exp(2.0) + math.exp(0.5))


def _hand_inputs():
    return _t(HAND_L), torch.tensor(HAND_POS)


def test_weights_pos2distill_hand_computed():
    loss, pos = _hand_inputs()
    w = position_weights(loss, pos, anchor_position=0, anchor_weight=0.7)
    # c_3 = 2 * S3 spread over 3 examples; c_7 = 2 * S7 on one example.
    expected = [0.7, (2 * S3 / 3) * (1 / 3), (2 * S3 / 3) * (3 / 3), (2 * S3 / 3) * (2 / 3),
                2 * S7 * 1.0, 0.7]
    torch.testing.assert_close(w, _t(expected), rtol=1e-12, atol=0)


def test_weights_paper_hand_computed():
    loss, pos = _hand_inputs()
    w = position_weights(loss, pos, anchor_position=0, anchor_weight=0.7, formula="paper")
    # Two anchors: lambda * mean over them, so 0.7 / 2 each.
    expected = [0.35, S3 * (1 / 3), S3 * 1.0, S3 * (2 / 3), S7 * 1.0, 0.35]
    torch.testing.assert_close(w, _t(expected), rtol=1e-12, atol=0)


def test_weights_uniform():
    loss, pos = _hand_inputs()
    w = position_weights(loss, pos, anchor_position=0, anchor_weight=0.7, formula="uniform")
    torch.testing.assert_close(w, _t([0.7, 1.0, 1.0, 1.0, 1.0, 0.7]), rtol=0, atol=0)


def test_weights_anchor_excluded_from_softmax():
    loss, pos = _hand_inputs()
    base = position_weights(loss, pos, anchor_position=0, anchor_weight=1.0)
    # Anchor losses are not part of U: changing them changes no trivial weight.
    loss2 = loss.clone()
    loss2[[0, 5]] = torch.tensor([100.0, 0.0], dtype=torch.float64)
    w2 = position_weights(loss2, pos, anchor_position=0, anchor_weight=1.0)
    assert torch.equal(w2, base)
    assert w2[0].item() == 1.0 and w2[5].item() == 1.0
    # Calling position 3 the anchor instead: those get exactly lambda, U = {0, 7}.
    w3 = position_weights(loss, pos, anchor_position=3, anchor_weight=0.25)
    assert w3[1:4].tolist() == [0.25, 0.25, 0.25]
    s0 = math.exp(7.0) / (math.exp(7.0) + math.exp(0.5))        # m_0 = (5 + 9) / 2 = 7
    s7 = 1.0 - s0
    expected = [(2 * s0 / 2) * (5 / 9), 0.25, 0.25, 0.25, 2 * s7, (2 * s0 / 2) * 1.0]
    torch.testing.assert_close(w3, _t(expected), rtol=1e-12, atol=0)


def test_weights_all_zero_bin_gets_zero_not_nan():
    # Position 4 is already distilled (all losses 0) but still takes part in the softmax (m_4 = 0).
    loss = _t([0.0, 0.0, 1.0, 2.0])
    pos = torch.tensor([4, 4, 3, 0])
    for formula, scale in (("pos2distill", 2.0), ("paper", 1.0)):
        w = position_weights(loss, pos, anchor_position=0, anchor_weight=1.0, formula=formula)
        assert torch.isfinite(w).all()
        s3 = math.exp(1.0) / (math.exp(1.0) + math.exp(0.0))
        torch.testing.assert_close(w, _t([0.0, 0.0, scale * s3, 1.0]), rtol=1e-12, atol=0)


def test_weights_only_anchors_and_empty_batch():
    w = position_weights(_t([1.0, 2.0]), torch.tensor([0, 0]), anchor_position=0, anchor_weight=0.5)
    assert w.tolist() == [0.5, 0.5]
    empty = position_weights(_t([]), torch.tensor([], dtype=torch.long), anchor_position=0,
                             anchor_weight=1.0)
    assert empty.shape == (0,)


def test_weights_match_loop_reference():
    g = torch.Generator().manual_seed(7)
    loss = torch.rand(40, generator=g, dtype=torch.float64) * 3
    pos = torch.randint(0, 6, (40,), generator=g)
    loss[pos == 5] = 0.0                                          # include an all-zero bin
    for formula in ("pos2distill", "paper", "uniform"):
        w = position_weights(loss, pos, anchor_position=2, anchor_weight=0.3, formula=formula)
        ref = ref_weights(loss.tolist(), pos.tolist(), 2, 0.3, formula)
        torch.testing.assert_close(w, _t(ref), rtol=1e-12, atol=1e-15)


def test_weights_permute_with_batch():
    g = torch.Generator().manual_seed(8)
    loss = torch.rand(16, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 5, (16,), generator=g)
    perm = torch.randperm(16, generator=g)
    for formula in ("pos2distill", "paper", "uniform"):
        w = position_weights(loss, pos, anchor_position=0, anchor_weight=1.0, formula=formula)
        wp = position_weights(loss[perm], pos[perm], anchor_position=0, anchor_weight=1.0,
                              formula=formula)
        torch.testing.assert_close(wp, w[perm], rtol=1e-12, atol=1e-15)


def test_weights_from_gathered_shards_equal_full_batch():
    # The training loop all-gathers (loss, position) from every rank and concatenates: the weights
    # of a rank's examples must be the same as if the whole global batch were on one device.
    g = torch.Generator().manual_seed(9)
    loss = torch.rand(12, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 4, (12,), generator=g)
    full = position_weights(loss, pos, anchor_position=0, anchor_weight=1.0)
    # Contiguous shards (rank 0 holds the first half).
    gathered = position_weights(torch.cat([loss[:6], loss[6:]]), torch.cat([pos[:6], pos[6:]]),
                                anchor_position=0, anchor_weight=1.0)
    torch.testing.assert_close(gathered, full, rtol=1e-12, atol=0)
    # Strided shards (rank r holds examples r, r + 2, ...): gathered order differs, values follow.
    order = torch.cat([torch.arange(0, 12, 2), torch.arange(1, 12, 2)])
    gathered = position_weights(torch.cat([loss[0::2], loss[1::2]]),
                                torch.cat([pos[0::2], pos[1::2]]), anchor_position=0,
                                anchor_weight=1.0)
    torch.testing.assert_close(gathered, full[order], rtol=1e-12, atol=1e-15)
    # A rank weighting only its own shard would get different numbers: the gather is needed.
    local = position_weights(loss[:6], pos[:6], anchor_position=0, anchor_weight=1.0)
    assert not torch.allclose(local, full[:6])


def test_weights_detached_and_dtype():
    loss = torch.tensor([0.5, 1.5, 2.0, 0.1], requires_grad=True)
    pos = torch.tensor([0, 1, 1, 2])
    w = position_weights(loss * 2, pos, anchor_position=0, anchor_weight=1.0)
    assert not w.requires_grad and w.grad_fn is None
    assert w.dtype == torch.float32


def test_weights_errors():
    loss, pos = _hand_inputs()
    with pytest.raises(ValueError):
        position_weights(loss, pos, anchor_position=0, anchor_weight=1.0, formula="softmax")
    with pytest.raises(ValueError):
        position_weights(loss, pos[:-1], anchor_position=0, anchor_weight=1.0)
    with pytest.raises(ValueError):
        position_weights(loss[None], pos[None], anchor_position=0, anchor_weight=1.0)
    with pytest.raises(ValueError):
        position_weights(loss, pos, anchor_position=0, anchor_weight=-0.1)
    with pytest.raises(ValueError):
        position_weights(loss, pos.double(), anchor_position=0, anchor_weight=1.0)


# ----------------------------------------------------------------------------- weighted_loss


def test_weighted_loss_value_and_detached_weights():
    loss = _t([1.0, 2.0, 4.0]).requires_grad_(True)
    weights = _t([0.5, 0.25, 2.0]).requires_grad_(True)
    total = weighted_loss(loss, weights)
    assert total.shape == ()
    assert total.item() == pytest.approx(0.5 + 0.5 + 8.0)
    total.backward()
    assert loss.grad.tolist() == [0.5, 0.25, 2.0]
    assert weights.grad is None
    with pytest.raises(ValueError):
        weighted_loss(loss, weights[:2])


# ----------------------------------------------------------------------------- cross-entropy


def test_cross_entropy_hand_computed_and_masking():
    # p = (1/4, 3/4) on every token. Row 0: targets 1, 0 -> (-log 3/4 - log 1/4) / 2.
    # Row 1: one counted token (target 1); the masked-out one has an ignore id of -100.
    # Row 2: fully masked -> 0.
    logits = _t([[[0.0, LOG3]] * 2] * 3)
    targets = torch.tensor([[1, 0], [1, -100], [-100, -100]])
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    got = per_example_cross_entropy(logits, targets, mask)
    expected = [(-math.log(0.75) - math.log(0.25)) / 2, -math.log(0.75), 0.0]
    torch.testing.assert_close(got, _t(expected), rtol=1e-12, atol=1e-15)
    # Changing masked-out logits changes nothing.
    logits2 = logits.clone()
    logits2[~mask] = float("nan")
    torch.testing.assert_close(per_example_cross_entropy(logits2, targets, mask), got,
                               rtol=0, atol=0)


def test_cross_entropy_matches_reference_and_torch():
    teacher, logits, mask = _random_batch(10)
    targets = torch.randint(0, 5, (6, 4), generator=torch.Generator().manual_seed(10))
    got = per_example_cross_entropy(logits, targets, mask)
    torch.testing.assert_close(got, _t(ref_cross_entropy(logits, targets, mask)),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):
        per_example_cross_entropy(logits, targets[:, :3], mask)


# ----------------------------------------------------------------------------- r1_loss


def test_r1_loss_matches_reference_value_and_gradient():
    teacher, student, mask = _random_batch(11)
    positions = torch.tensor([0, 3, 3, 5, 0, 5])
    for formula in ("pos2distill", "paper"):
        s_fast = student.clone().requires_grad_(True)
        s_ref = student.clone().requires_grad_(True)
        loss, kl, w = r1_loss(teacher, s_fast, mask, positions, anchor_position=0,
                              anchor_weight=0.6, formula=formula, temperature=1.3)
        ref_l = ref_kl(teacher, s_ref, mask, temperature=1.3)
        ref_w = ref_weights([float(x.detach()) for x in ref_l], positions.tolist(), 0, 0.6,
                            formula)
        ref_total = sum(wi * li for wi, li in zip(ref_w, ref_l))
        torch.testing.assert_close(w, _t(ref_w), rtol=1e-10, atol=1e-12)
        assert loss.item() == pytest.approx(ref_total.item(), rel=1e-10, abs=1e-12)
        loss.backward()
        ref_total.backward()
        torch.testing.assert_close(s_fast.grad, s_ref.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(kl, per_example_kl(teacher, student, mask, temperature=1.3))


def test_r1_loss_decreases_under_sgd():
    teacher, student, _ = _random_batch(12, dtype=torch.float32)
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[:, 3] = False
    positions = torch.tensor([0, 2, 2, 4, 7, 0])
    student = student.clone().requires_grad_(True)
    history, kls = [], []
    for _ in range(20):
        loss, kl, _w = r1_loss(teacher, student, mask, positions, anchor_position=0)
        history.append(loss.item())
        kls.append(kl.detach())
        student.grad = None
        loss.backward()
        with torch.no_grad():                       # plain SGD step, lr 2
            student -= 2.0 * student.grad
    assert history[-1] < 0.2 * history[0]
    assert (kls[-1] < kls[0]).all()


# ----------------------------------------------------------------------------- judge: fixed KL


def test_fixed_distribution_kl_by_hand() -> None:
    from pos2distill.training.losses import fixed_distribution_kl

    # Vocabulary of 3; the student is uniform, the teacher 0.75 / 0.25 on tokens 2 and 0.
    logits = torch.zeros(1, 3, dtype=torch.float64)
    probs = torch.tensor([[0.75, 0.25, 0.0]], dtype=torch.float64)   # third entry: padding
    ids = torch.tensor([[2, 0, 1]])
    expected = 0.75 * math.log(0.75 * 3) + 0.25 * math.log(0.25 * 3)
    got = fixed_distribution_kl(probs, ids, logits)
    assert got.item() == pytest.approx(expected)
    # Equal to the dense KL against the same distribution written over the whole vocabulary.
    dense = torch.log(torch.tensor([[0.25, 1e-300, 0.75]], dtype=torch.float64))
    student = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64, requires_grad=True)
    fixed = fixed_distribution_kl(probs, ids, student)
    p = dense.exp()
    ref = (p * (dense - torch.log_softmax(student, -1))).sum(-1)
    assert fixed.item() == pytest.approx(ref.item(), abs=1e-12)
    g_fixed, = torch.autograd.grad(fixed.sum(), student)
    student2 = student.detach().clone().requires_grad_(True)
    g_ref, = torch.autograd.grad((p * (dense - torch.log_softmax(student2, -1))).sum(), student2)
    assert torch.allclose(g_fixed, g_ref)
    # The student putting exactly p on those tokens gives 0.
    exact = torch.log(torch.tensor([[0.25, 0.0, 0.75]], dtype=torch.float64).clamp(min=1e-300))
    assert fixed_distribution_kl(probs, ids, exact).item() == pytest.approx(0.0, abs=1e-12)
