"""Attention rows read layer by layer against eager attention's full matrices: grouped-query
attention, left padding, every mask form; document masses equal sums over the spans; the model
is left as it was; a model whose attention the recorder cannot read is refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pos2distill.analysis import attention
from pos2distill.analysis.attention import (AttentionRows, document_mass, row_attention,
                                            span_matrix)
from pos2distill.errors import ConfigError
from pos2distill.training.heads import position_ids


def _model(heads: int = 4, kv_heads: int = 2, layers: int = 3) -> Any:
    cfg = LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, initializer_range=0.5)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _eager(model: Any, ids: torch.Tensor, att: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every layer's full (B, H, T, T) attention, the slow way."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=att, position_ids=position_ids(att),
                    output_attentions=True)
    model.set_attn_implementation(before)
    return out.attentions


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 60, (3, 11), generator=gen)
    att = torch.ones_like(ids)
    att[0, :4], att[1, :1] = 0, 0                                   # left padding
    return ids, att


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("base", ["sdpa", "eager"])
def test_rows_equal_eager_attention(heads: int, kv_heads: int, padded: bool, base: str) -> None:
    model = _model(heads, kv_heads)
    model.set_attn_implementation(base)
    ids, att = _batch()
    if not padded:
        att = torch.ones_like(ids)                   # sdpa then passes no mask at all (causal)
    rows = torch.tensor([[9, 10], [5, 10], [4, 10]])
    with AttentionRows(model) as rec:
        got = rec.run(ids, att, rows, lambda p: p.clone())
    assert model.config._attn_implementation == base                 # left as it was
    full = _eager(model, ids, att)
    assert len(got) == len(full) == 3
    for layer, ref in zip(got, full):
        want = ref.mean(1).gather(1, rows[:, :, None].expand(3, 2, ids.shape[1]))
        assert torch.allclose(layer, want, atol=1e-6)
        assert torch.allclose(layer.sum(-1), torch.ones(3, 2), atol=1e-6)


def test_row_attention_float_mask_and_softcap() -> None:
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 2, 5, 4, generator=gen), torch.randn(2, 1, 5, 4, generator=gen)
    rows = torch.tensor([[4], [3]])
    allowed = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    allowed[0, :, :, 0] = False                                      # a padded first key
    additive = torch.zeros(2, 1, 5, 5).masked_fill(~allowed, torch.finfo(torch.float32).min)
    a = row_attention(q, k, allowed, rows, scaling=0.5, softcap=3.0)
    b = row_attention(q, k, additive, rows, scaling=0.5, softcap=3.0)
    assert torch.allclose(a, b, atol=1e-6)
    scores = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 0.5
    scores = torch.tanh(scores / 3.0) * 3.0
    scores = scores.masked_fill(~allowed, float("-inf"))
    ref = torch.softmax(scores, -1).mean(1)[[0, 1], [4, 3]]
    assert torch.allclose(a[:, 0], ref, atol=1e-6)
    assert a[0, 0, 0] == 0                                          # the padded key


def test_document_mass_is_the_sum_over_each_span() -> None:
    probs = torch.softmax(torch.randn(2, 2, 10, generator=torch.Generator().manual_seed(3)), -1)
    spans = [[(1, 3), (3, 4), (6, 9)], [(2, 5), (5, 7), (7, 8)]]
    mass = document_mass(probs, span_matrix(spans, 10))
    for b, row in enumerate(spans):
        for d, (a, e) in enumerate(row):
            assert torch.allclose(mass[b, :, d], probs[b, :, a:e].sum(-1))
    assert (mass.sum(-1) <= 1 + 1e-6).all()


def test_a_model_that_cannot_switch_attention_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    monkeypatch.setattr(type(model), "_can_set_attn_implementation", lambda self: False)
    with pytest.raises(ConfigError, match="does not report its attention weights"):
        with AttentionRows(model, name="/m"):
            pass


def test_attention_that_bypasses_the_interface_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose layers never call the registered function (custom attention code)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    monkeypatch.setattr(attention, "_rows_attention", sdpa_attention_forward)
    model = _model()
    ids, att = _batch()
    with pytest.raises(ConfigError, match="does not report its attention weights"):
        with AttentionRows(model, name="/m") as rec:
            rec.run(ids, att, torch.tensor([[10]] * 3), lambda p: p)
    assert model.config._attn_implementation == "sdpa"


def test_run_outside_the_block_is_a_bug() -> None:
    rec = AttentionRows(_model())
    with pytest.raises(RuntimeError):
        rec.run(*_batch(), torch.tensor([[10]] * 3), lambda p: p)
