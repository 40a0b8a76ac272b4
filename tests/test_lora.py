"""lora: only adapter weights train, the disabled-adapter teacher is the frozen base (no second
copy), and the saved adapter and merged model load with the usual peft/transformers calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import FakeGenerator, save_model_dir, tiny_llama
from pos2distill import lora, pairs, synthetic, teach, train
from pos2distill.config import TrainConfig
from pos2distill.errors import ConfigError
from pos2distill.records import write_jsonl
from pos2distill.teacher import OnlineTeacher

peft = pytest.importorskip("peft", reason="LoRA needs peft (pip install 'pos2distill[lora]')")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> Path:
    return save_model_dir(tmp_path_factory, "lora-llama", tiny_llama(tok, initializer_range=0.2), tok)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> Path:
    records = synthetic.generate("train", 4, n_documents=5)
    rows = teach.teacher_rows(records, FakeGenerator(), tok, adv_position=0, template="authors",
                              chat="auto", seed=0, max_new_tokens=8)
    path = tmp_path_factory.mktemp("lpairs") / "pairs.jsonl"
    write_jsonl(path, pairs.make_pairs(rows, tok, K=2, anchors=1, seed=0))
    return path


def _load(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()


def test_parse_targets() -> None:
    assert lora.parse_targets("all-linear") == "all-linear"
    assert lora.parse_targets(" q_proj, v_proj ") == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="--lora-targets"):
        lora.parse_targets("q_proj,lm_head")
    with pytest.raises(ConfigError, match="--lora-targets"):
        lora.parse_targets(" , ")


def test_disabled_adapter_teacher_is_the_frozen_base(model_dir: Path, tok: Any) -> None:
    base = _load(model_dir)
    student = lora.apply_lora(_load(model_dir), rank=4, alpha=8, dropout=0.0, targets="all-linear")
    with torch.no_grad():   # a trained adapter: make it non-zero
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids = torch.tensor([tok("Which city is home to Kavo", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        ref = base(ids).logits
        on = student(ids).logits
        with lora.teacher_context(student)():
            off = student(ids).logits
    assert (on - ref).abs().max() > 1e-3
    torch.testing.assert_close(off, ref, atol=1e-6, rtol=0)
    # The online teacher built on the student shares its weights: no copy.
    teacher = OnlineTeacher(student, context=lora.teacher_context(student))
    assert teacher.model is student
    with pytest.raises(ConfigError, match="--lora-targets"):
        lora.apply_lora(_load(model_dir), rank=2, alpha=4, dropout=0.0, targets="no_such_proj")


def test_lora_training_changes_only_the_adapter(model_dir: Path, pairs_file: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train.main(TrainConfig(pairs=str(pairs_file), model=str(model_dir), out=str(out),
                                     lr=1e-2, batch_size=4, epochs=2, lora_rank=4, lora_alpha=8,
                                     lora_targets="q_proj,v_proj,up_proj"))
    assert summary["teacher"] == "lora-base"
    assert summary["adapter"] == str(out / "adapter") and summary["model"] == str(out / "model")
    base = _load(model_dir)
    # The adapter loads with peft on top of the untouched base ...
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(_load(model_dir), out / "adapter").eval()
    trained_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert trained_b and all(p.abs().max() > 0 for p in trained_b)      # B starts at 0: trained
    # ... whose weights (everything but the adapter) are the base's.
    base_sd = base.state_dict()
    for n, p in adapted.get_base_model().state_dict().items():
        if "lora_" in n:
            continue
        key = n.replace(".base_layer", "")
        torch.testing.assert_close(p, base_sd[key], atol=0, rtol=0)
    # The merged model is a plain checkpoint equal to base + adapter, and differs from the base.
    merged = _load(out / "model")
    ids = torch.arange(5, 40).unsqueeze(0)
    with torch.no_grad():
        a, m, b = adapted(ids).logits, merged(ids).logits, base(ids).logits
    torch.testing.assert_close(m, a, atol=1e-4, rtol=1e-4)
    assert (m - b).abs().max() > 1e-3
    changed = {n for n, p in merged.state_dict().items() if not torch.equal(p, base_sd[n])}
    assert changed and all(any(t in n for t in ("q_proj", "v_proj", "up_proj")) for n in changed)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    # Both epochs see the same 12 pairs: the second one's mean KL is lower.
    half = len(log) // 2
    assert sum(r["kl_mean"] for r in log[half:]) < sum(r["kl_mean"] for r in log[:half])


def test_lora_without_merge_and_teacher_device_refused(model_dir: Path, pairs_file: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "nomerge"
    summary = train.main(TrainConfig(pairs=str(pairs_file), model=str(model_dir), out=str(out),
                                     lr=1e-2, batch_size=12, epochs=1, lora_rank=2,
                                     lora_merge=False))
    assert (out / "adapter").is_dir() and not (out / "model").exists()
    assert "model" not in summary
    with pytest.raises(ConfigError, match="--teacher-device"):
        train.main(TrainConfig(pairs=str(pairs_file), model=str(model_dir),
                               out=str(tmp_path / "x"), lora_rank=2, teacher_device="cpu"))


class Crash(Exception):
    pass


def test_lora_resume_after_a_crash_gives_the_same_adapter(model_dir: Path, pairs_file: Path,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    kw = dict(pairs=str(pairs_file), model=str(model_dir), lr=5e-2, batch_size=4, epochs=2,
              lora_rank=4, save_every=2)
    train.main(TrainConfig(**kw, out=str(tmp_path / "full")))
    real, calls = train.weighted_loss, {"n": 0}

    def crash_at_5(kl: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 5:
            raise Crash
        return real(kl, w)

    monkeypatch.setattr(train, "weighted_loss", crash_at_5)
    with pytest.raises(Crash):
        train.main(TrainConfig(**kw, out=str(tmp_path / "resumed")))
    monkeypatch.undo()
    train.main(TrainConfig(**kw, out=str(tmp_path / "resumed")))
    # Checkpoints of a LoRA run hold the adapter only (the base is the --model folder).
    ckpt = load_file(tmp_path / "resumed" / "checkpoint" / "model.safetensors")
    assert ckpt and all("lora_" in k for k in ckpt)
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
