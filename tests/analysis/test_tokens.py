"""Token shifting statistics: hand-computed values on a 3-word vocabulary, the teacher-forced
logits of left-padded batches against a float64 loop over full logits, and the summaries."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from conftest import tiny_llama
from pos2distill.analysis.forcing import Forced
from pos2distill.analysis.tokens import (mean_by_index, rank_histogram, summarize,
                                         summarize_slot, token_stats)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def _softmax(x: list[float]) -> list[float]:
    m = max(x)
    e = [math.exp(v - m) for v in x]
    return [v / sum(e) for v in e]


def test_hand_computed_three_word_vocabulary() -> None:
    adv = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    stu = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 2.0], [1.0, 0.0, 0.5]], dtype=torch.float64)
    tokens = [0, 1, 2]
    s = token_stats(adv, stu, tokens)
    expected = [_kl(_softmax(a), _softmax(b)) for a, b in zip(adv.tolist(), stu.tolist())]
    assert s["kl"] == pytest.approx(expected, abs=1e-12)
    assert s["kl"][0] == 0.0                                        # same logits: no divergence
    assert s["spike_index"] == 1 and s["spike_kl"] == pytest.approx(expected[1])
    assert s["kl_mean"] == pytest.approx(sum(expected) / 3)
    # Token 1: the student's argmax is word 2, the response's word 1 ranks second.
    assert (s["first_divergence"], s["rank"], s["student_token"]) == (1, 2, 2)
    assert s["nll"] == pytest.approx([-math.log(_softmax(r)[t]) for r, t in
                                      zip(stu.tolist(), tokens)])


def test_no_divergence_has_rank_one() -> None:
    logits = torch.tensor([[0.0, 5.0], [4.0, 0.0]], dtype=torch.float64)
    s = token_stats(logits, logits, [1, 0])
    assert s["first_divergence"] is None and s["rank"] == 1 and s["student_token"] is None
    assert s["kl"] == [0.0, 0.0]


def test_rank_counts_only_strictly_better_words() -> None:
    stu = torch.tensor([[3.0, 1.0, 3.0, 5.0, 0.0]], dtype=torch.float64)
    assert token_stats(stu, stu, [0])["rank"] == 2                  # a tie (word 2) is not better
    assert token_stats(stu, stu, [4])["rank"] == 5


def test_forced_logits_and_kl_match_a_float64_loop_over_full_logits(tok: Any) -> None:
    """Left-padded batches, only the response positions through the head: the same per-token KL
    as an unpadded forward pass of each row alone, every token's KL summed word by word."""
    model = tiny_llama(tok, initializer_range=0.2).double()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(7, len(tok), (n,), generator=gen).tolist() for n in (9, 4, 13)]
    responses = [torch.randint(7, len(tok), (n,), generator=gen).tolist() for n in (3, 5, 1)]
    adv_prompt = torch.randint(7, len(tok), (6,), generator=gen).tolist()
    forced = Forced(model, [p + r for p, r in zip(prompts, responses)],
                    [len(r) for r in responses], pad_id=0)
    adv = Forced(model, [adv_prompt + r for r in responses], [len(r) for r in responses], pad_id=0)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        with torch.no_grad():
            full = model(torch.tensor([p + r])).logits[0].double()            # (T, V)
            full_adv = model(torch.tensor([adv_prompt + r])).logits[0].double()
        ref_s = full[len(p) - 1:len(p) - 1 + len(r)]
        ref_t = full_adv[len(adv_prompt) - 1:len(adv_prompt) - 1 + len(r)]
        assert torch.allclose(forced.logits(b), ref_s, atol=1e-10)
        stats = token_stats(adv.logits(b), forced.logits(b), r)
        loop = []
        for t in range(len(r)):
            pt = torch.softmax(ref_t[t], -1).tolist()
            qs = torch.softmax(ref_s[t], -1).tolist()
            loop.append(sum(a * (math.log(a) - math.log(c)) for a, c in zip(pt, qs)))
        assert stats["kl"] == pytest.approx(loop, rel=1e-9, abs=1e-12)


def test_mean_by_index_and_rank_histogram() -> None:
    assert mean_by_index([[1.0, 2.0, 3.0], [3.0], [2.0, 4.0]]) == [2.0, 3.0, 3.0]
    assert mean_by_index([]) == []
    assert rank_histogram([1, 1, 2, 4, 10, 11, 51, 400]) == {
        "1": 2, "2": 1, "3-5": 1, "6-10": 1, "11-50": 1, ">50": 2}


def _row(slot: int, kl: list[float], first: int | None, rank: int, correct: bool,
         recovered: bool | None) -> dict[str, Any]:
    return {"slot": [slot], "kl": kl, "kl_mean": sum(kl) / len(kl), "first_divergence": first,
            "rank": rank, "correct": correct, "recovered": recovered}


def test_summary_of_a_position() -> None:
    rows = [_row(3, [0.0, 0.5], None, 1, True, None),
            _row(3, [0.2, 0.1, 0.6], 0, 4, False, True),
            _row(3, [0.1, 0.1], 1, 30, False, False),
            _row(3, [0.0, 0.9], 1, 2, True, True)]
    s = summarize_slot(rows)
    assert s["count"] == 4
    assert s["kl_mean"] == pytest.approx((0.25 + 0.3 + 0.1 + 0.45) / 4)
    assert s["kl_by_token"] == pytest.approx([0.075, 0.4, 0.6])
    assert (s["spike_index"], s["spike_kl"]) == (2, pytest.approx(0.6))
    assert s["mean_max_kl"] == pytest.approx((0.5 + 0.6 + 0.1 + 0.9) / 4)
    assert s["diverged"] == 0.75
    assert (s["top1_share"], s["top5_share"], s["top10_share"]) == (0.25, 0.75, 0.75)
    assert (s["top5_share_failures"], s["top10_share_failures"]) == (0.5, 0.5)
    assert s["recovery"] == 0.5                  # of the two wrong answers, one recovered
    assert s["recovery_diverged"] == pytest.approx(2 / 3)
    assert s["accuracy"] == 0.5


def test_summary_without_failures_has_no_recovery() -> None:
    s = summarize_slot([_row(1, [0.0], None, 1, True, None)])
    assert s["recovery"] is None and s["recovery_diverged"] is None


def test_summaries_follow_the_slot_order() -> None:
    rows = [_row(5, [0.1], None, 1, True, None), _row(2, [0.3], None, 1, True, None)]
    assert [e["slot"] for e in summarize(rows, [(2,), (9,), (5,)])] == [[2], [5]]
