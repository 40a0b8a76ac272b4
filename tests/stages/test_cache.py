"""cache: `pos2distill cache` writes a teacher cache that round-trips, matches the online teacher,
and is refused when corrupted or made for other pairs, another model or another temperature."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from conftest import save_model_dir, tiny_llama
from pos2distill.tiny.tokenizer import build_tokenizer
from pos2distill.stages import cache, pairs, teach
from pos2distill import cli
from pos2distill.config import CacheConfig
from pos2distill.errors import ConfigError
from pos2distill.training.batches import batch_tensors, encode_pair, read_pairs
from pos2distill.training.cache import META_FILE, TENSOR_FILE, CacheReader, bytes_per_token
from pos2distill.training.heads import head
from pos2distill.training.teacher import CachedTeacher, OnlineTeacher

V = len(build_tokenizer())  # the random test models' vocabulary (the tiny tokenizer's)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> Path:
    return save_model_dir(tmp_path_factory, "cache-llama", tiny_llama(tok, initializer_range=0.2), tok)


def _reader(out: Path, pairs_file: Path, model_dir: Path, **kw: Any) -> CacheReader:
    args = dict(pairs=str(pairs_file), model_path=str(model_dir), temperature=1.0,
                vocab_size=V, n_pairs=9)
    return CacheReader(out, **{**args, **kw})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory, pairs_file: Path, model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c"
    summary = cache.main(CacheConfig(pairs=str(pairs_file), model=str(model_dir), out=str(out),
                                     top_k=V, batch_size=2))
    assert summary["entries"] == 3 and summary["top_k"] == V
    return out


def test_round_trip_and_equals_online_teacher(cache_dir: Path, pairs_file: Path, model_dir: Path,
                                              tok: Any) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    reader = _reader(cache_dir, pairs_file, model_dir)
    meta = json.loads((cache_dir / META_FILE).read_text())
    assert meta["n_pairs"] == 9 and meta["n_entries"] == 3 and meta["top_k"] == V
    tensors = load_file(cache_dir / TENSOR_FILE)
    assert tensors["entry_of_pair"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert tensors["logprobs"].shape == (meta["n_tokens"], V)
    examples = [encode_pair(r, tok) for r in read_pairs(str(pairs_file))]
    b = batch_tensors([examples[i] for i in (4, 0, 8)], tok.pad_token_id, "cpu")
    b["index"] = torch.tensor([4, 0, 8])
    targets = CachedTeacher(reader).targets(b, b["mask"])
    online = OnlineTeacher(model).targets(b, b["mask"])
    with torch.no_grad():
        t_logp = torch.log_softmax(head(model, online.hidden), -1)
    full = torch.full_like(t_logp, float("nan")).scatter(-1, targets.rows["ids"].long(),
                                                         targets.rows["logprobs"])
    torch.testing.assert_close(full, t_logp, atol=1e-5, rtol=0)
    assert bool(torch.isinf(targets.rows["log_tail"]).all())


def test_small_k_tail_mass(pairs_file: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "k4"
    cache.main(CacheConfig(pairs=str(pairs_file), model=str(model_dir), out=str(out), top_k=4))
    t = load_file(out / TENSOR_FILE)
    assert t["logprobs"].shape[1] == 4
    total = t["logprobs"].double().exp().sum(-1) + t["log_tail"].double().exp()
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
    size = (out / TENSOR_FILE).stat().st_size
    n = t["targets"].numel()
    assert bytes_per_token(4) * n < size < bytes_per_token(4) * n + 2000


def test_corrupted_file_is_refused(cache_dir: Path, pairs_file: Path, model_dir: Path,
                                   tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(cache_dir, bad)
    data = bytearray((bad / TENSOR_FILE).read_bytes())
    data[-5] ^= 0xFF
    (bad / TENSOR_FILE).write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="corrupted"):
        _reader(bad, pairs_file, model_dir)
    (bad / TENSOR_FILE).write_bytes(bytes(data[:100]))
    with pytest.raises(ConfigError, match="corrupted"):
        _reader(bad, pairs_file, model_dir)
    (bad / META_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        _reader(bad, pairs_file, model_dir)
    with pytest.raises(ConfigError, match="not a teacher cache"):
        _reader(tmp_path / "missing", pairs_file, model_dir)


def test_mismatched_cache_is_refused(cache_dir: Path, pairs_file: Path, model_dir: Path,
                                     tmp_path: Path, tok: Any) -> None:
    other_pairs = tmp_path / "other.jsonl"
    other_pairs.write_text(pairs_file.read_text().replace("Title", "Title", 1) + "\n")
    with pytest.raises(ConfigError, match="another pairs file"):
        _reader(cache_dir, other_pairs, model_dir)
    other_model = tmp_path / "m2"
    tiny_llama(tok, seed=3).save_pretrained(other_model)
    with pytest.raises(ConfigError, match="another model"):
        _reader(cache_dir, pairs_file, other_model)
    with pytest.raises(ConfigError, match="temperature 1.0, this run uses 2.0"):
        _reader(cache_dir, pairs_file, model_dir, temperature=2.0)
    # A pair whose response tokens differ from the cached ones (another tokenizer) is refused.
    reader = _reader(cache_dir, pairs_file, model_dir)
    with pytest.raises(ConfigError, match="response tokens"):
        reader.rows([0], [1])


def test_cache_cli_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-q", "cache", "--pairs", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.jsonl" in err[0]
    with pytest.raises(ConfigError, match="--top-k"):
        CacheConfig(top_k=-1)


def test_default_k_error_bound_on_the_embedded_model(tmp_path: Path) -> None:
    """On the shipped tiny model with its own greedy answers (the demo's teach settings), the
    cached estimator at the default k is a lower bound of the exact KL within 1e-3 nats/token on
    average (bench/cache_error.py measures the same on 200 questions)."""
    from pos2distill.config import DEFAULT_TOP_K, PairsConfig, TeachConfig
    from pos2distill.training.heads import response_hidden
    from pos2distill.training.losses import topk_token_kl
    from pos2distill.modeling import load_causal_lm, load_tokenizer, resolve_model_path

    teach.main(TeachConfig(model="tiny", data="synthetic:train", limit=12,
                           out=str(tmp_path / "teach.jsonl")))
    pairs.main(PairsConfig(teach=str(tmp_path / "teach.jsonl"), out=str(tmp_path / "pairs.jsonl"),
                           K=4, anchors=1))
    p = str(tmp_path / "pairs.jsonl")
    cache.main(CacheConfig(pairs=p, model="tiny", out=str(tmp_path / "c")))
    tok, model = load_tokenizer("tiny"), load_causal_lm("tiny")
    rows = read_pairs(p)
    reader = CacheReader(tmp_path / "c", pairs=p, model_path=resolve_model_path("tiny"),
                               temperature=1.0, vocab_size=model.config.vocab_size,
                               n_pairs=len(rows))
    assert reader.k == DEFAULT_TOP_K
    examples = [encode_pair(r, tok) for r in rows]
    b = batch_tensors(examples, tok.pad_token_id, "cpu")
    b["index"] = torch.arange(len(rows))
    with torch.no_grad():
        logits = head(model, response_hidden(model, b["s_ids"], b["s_att"], b["mask"].shape[1])[b["mask"]])
        exact = OnlineTeacher(model).targets(b, b["mask"]).token_loss(logits, 0, len(logits))
        r = CachedTeacher(reader).targets(b, b["mask"]).rows
        est = topk_token_kl(r["logprobs"], r["ids"], r["log_tail"], logits)
    err = exact - est
    assert exact.mean() > 0.1                       # a real KL to estimate
    assert err.min() > -1e-5                        # a lower bound, up to rounding
    assert err.mean() < 1e-3


def test_rerun_reuses_a_complete_cache_and_refuses_another(cache_dir: Path, pairs_file: Path,
                                                           model_dir: Path) -> None:
    before = (cache_dir / TENSOR_FILE).stat().st_mtime_ns
    again = cache.main(CacheConfig(pairs=str(pairs_file), model=str(model_dir), out=str(cache_dir),
                                   top_k=V))
    assert again["entries"] == 3 and (cache_dir / TENSOR_FILE).stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match=f"top-{V} cache"):
        cache.main(CacheConfig(pairs=str(pairs_file), model=str(model_dir), out=str(cache_dir),
                               top_k=8))
    with pytest.raises(ConfigError, match="holds another cache"):
        cache.main(CacheConfig(pairs=str(pairs_file), model=str(model_dir), out=str(cache_dir),
                               temperature=2.0))


def test_bf16_autocast_cache_is_close(cache_dir: Path, pairs_file: Path, model_dir: Path,
                                      tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    cache.main(CacheConfig(pairs=str(pairs_file), model=str(model_dir), out=str(out), top_k=V,
                           autocast="bfloat16"))
    a, b = load_file(out / TENSOR_FILE), load_file(cache_dir / TENSOR_FILE)
    assert a["targets"].tolist() == b["targets"].tolist()
    def dense(t: dict[str, torch.Tensor]) -> torch.Tensor:   # (N, V) probabilities
        return torch.zeros(t["ids"].shape).scatter(-1, t["ids"].long(), t["logprobs"].exp())

    pa, pb = dense(a), dense(b)
    assert (pa - pb).abs().max() < 0.05                                  # bf16 rounding only
    assert (pa * (pa.clamp_min(1e-30).log() - pb.clamp_min(1e-30).log())).sum(-1).max() < 0.02


@pytest.fixture(scope="module")
def pairs_file(make_pairs_file: Any) -> Path:
    return make_pairs_file(3, K=2)
