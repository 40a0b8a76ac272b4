"""train options that must not change results beyond rounding: the cached teacher at k = V, the
teacher on another device, gradient checkpointing, the output-head chunk; and those that only
need to run (bf16 autocast) or refuse bad combinations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from conftest import save_model_dir, tiny_llama
from pos2distill.stages import cache, train
from pos2distill.config import CacheConfig, TrainConfig
from pos2distill.errors import ConfigError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> Path:
    return save_model_dir(tmp_path_factory, "opt-llama", tiny_llama(tok, initializer_range=0.2), tok)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, pairs_file: Path) -> Path:
    """The plain run (online frozen-copy teacher, float32) every option is compared with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train.main(_cfg(model_dir, pairs_file, out))
    return out


def _cfg(model_dir: Path, pairs_file: Path, out: Path, **kw: Any) -> TrainConfig:
    base = dict(pairs=str(pairs_file), model=str(model_dir), out=str(out), lr=1e-2, batch_size=4,
                epochs=2, warmup_ratio=0.25)
    return TrainConfig(**{**base, **kw})


def _epoch_kl(log: list[dict]) -> tuple[float, float]:
    """Summed per-step KL of the first and the second epoch (the same pairs, in other orders)."""
    half = len(log) // 2
    return sum(r["kl_mean"] for r in log[:half]), sum(r["kl_mean"] for r in log[half:])


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_same_run(out: Path, ref: Path, *, tol: float = 1e-5) -> None:
    a, b = _log(out), _log(ref)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=tol, abs=tol)
        assert x["kl_mean"] == pytest.approx(y["kl_mean"], rel=tol, abs=tol)
    wa, wb = load_file(out / "model" / "model.safetensors"), load_file(ref / "model" / "model.safetensors")
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], atol=10 * tol, rtol=0)


def test_cached_teacher_at_full_vocabulary_equals_online(model_dir: Path, pairs_file: Path,
                                                         reference: Path, tmp_path: Path) -> None:
    c = tmp_path / "cache"
    cache.main(CacheConfig(pairs=str(pairs_file), model=str(model_dir), out=str(c), top_k=0))
    out = tmp_path / "cached"
    summary = train.main(_cfg(model_dir, pairs_file, out, teacher_cache=str(c)))
    assert summary["teacher"] == "cache"
    _assert_same_run(out, reference)


def test_cached_teacher_small_k_is_a_lower_bound(model_dir: Path, pairs_file: Path, reference: Path,
                                            tmp_path: Path) -> None:
    c = tmp_path / "cache8"
    cache.main(CacheConfig(pairs=str(pairs_file), model=str(model_dir), out=str(c), top_k=8))
    out = tmp_path / "cached8"
    train.main(_cfg(model_dir, pairs_file, out, teacher_cache=str(c)))
    a, b = _log(out), _log(reference)
    # The estimator is a lower bound of the exact KL (same weights on step 1: same student); on
    # this random model the teacher spreads its mass, so 8 of ~400 tokens leave a large tail.
    assert 0 < a[0]["kl_mean"] <= b[0]["kl_mean"] + 1e-6
    assert _epoch_kl(a)[1] < _epoch_kl(a)[0]


def test_cache_of_other_pairs_is_refused(model_dir: Path, pairs_file: Path, tmp_path: Path,
                                         make_pairs_file: Any) -> None:
    c = tmp_path / "cache"
    cache.main(CacheConfig(pairs=str(pairs_file), model=str(model_dir), out=str(c), top_k=4))
    other = tmp_path / "other.jsonl"
    other.write_bytes(make_pairs_file(2, teacher_seed=1).read_bytes())
    with pytest.raises(ConfigError, match="another pairs file"):
        train.main(_cfg(model_dir, other, tmp_path / "x", teacher_cache=str(c)))
    with pytest.raises(ConfigError, match="temperature"):
        train.main(_cfg(model_dir, pairs_file, tmp_path / "y", teacher_cache=str(c),
                        temperature=2.0))
    with pytest.raises(ConfigError, match="no teacher"):
        train.main(_cfg(model_dir, pairs_file, tmp_path / "z", teacher_cache=str(c),
                        method="seqkd"))


@pytest.mark.parametrize("options", [
    pytest.param({"teacher_device": "cpu:0"}, id="teacher-on-its-own-device"),
    pytest.param({"gradient_checkpointing": True}, id="gradient-checkpointing"),
    pytest.param({"head_chunk": 3}, id="head-chunk"),
])
def test_memory_options_change_nothing(model_dir: Path, pairs_file: Path, reference: Path,
                                       tmp_path: Path, options: dict[str, Any]) -> None:
    out = tmp_path / "run"
    train.main(_cfg(model_dir, pairs_file, out, **options))
    _assert_same_run(out, reference)


def test_bf16_autocast_trains(model_dir: Path, pairs_file: Path, reference: Path,
                              tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    train.main(_cfg(model_dir, pairs_file, out, autocast="bfloat16"))
    a, b = _log(out), _log(reference)
    assert a[0]["kl_mean"] == pytest.approx(b[0]["kl_mean"], rel=0.1)   # bf16 rounding only
    assert _epoch_kl(a)[1] < _epoch_kl(a)[0]
    w = load_file(out / "model" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in w.values())            # weights stay float32


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="--autocast"):
        TrainConfig(autocast="fp8")
    with pytest.raises(ConfigError, match="--teacher-device"):
        TrainConfig(teacher_cache="c", teacher_device="cuda:1")
    with pytest.raises(ConfigError, match="--lora-dropout"):
        TrainConfig(lora_dropout=1.0)
    with pytest.raises(ConfigError, match="--head-chunk"):
        TrainConfig(head_chunk=0)
