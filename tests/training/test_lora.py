"""lora: only adapter weights train, the disabled-adapter teacher is the frozen base (no second
copy), and the saved adapter and merged model load with the usual peft/transformers calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import save_model_dir, tiny_llama
from pos2distill.training import lora
from pos2distill.stages import train
from pos2distill.config import TrainConfig
from pos2distill.errors import ConfigError
from pos2distill.training.teacher import OnlineTeacher

peft = pytest.importorskip("peft", reason="LoRA needs peft (pip install 'pos2distill[lora]')")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> Path:
    return save_model_dir(tmp_path_factory, "lora-llama", tiny_llama(tok, initializer_range=0.2), tok)


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
    # Both folders have a card of ours (peft's own card is replaced): peft for the adapter.
    from pos2distill import modelcard

    assert modelcard.read_metadata(out / "adapter")["library_name"] == "peft"
    assert modelcard.read_metadata(out / "model")["library_name"] == "transformers"
    assert "| `--lora-rank` | 4 |" in (out / "adapter" / "README.md").read_text()


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

    def crash_in_step_5(losses: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 1 + 2 * 4:      # two per step: the batch loss, then the backward's
            raise Crash
        return real(losses, w)

    monkeypatch.setattr(train, "weighted_loss", crash_in_step_5)
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


# --- QLoRA: bitsandbytes needs CUDA and is not installed here; the wiring is tested around it. ---

def test_quantization_kwargs() -> None:
    from transformers import BitsAndBytesConfig

    assert lora.quantization_kwargs(TrainConfig(lora_rank=4)) == {}
    kw = lora.quantization_kwargs(TrainConfig(lora_rank=4, load_in_4bit=True), "cuda:1")
    q = kw["quantization_config"]
    assert isinstance(q, BitsAndBytesConfig) and kw["device_map"] == {"": "cuda:1"}
    assert q.load_in_4bit and not q.load_in_8bit
    assert (q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == ("nf4", True)
    assert q.bnb_4bit_compute_dtype == torch.bfloat16                 # the default compute dtype
    q16 = lora.quantization_kwargs(TrainConfig(lora_rank=4, load_in_4bit=True, autocast="float16",
                                               device="cuda"))
    assert q16["quantization_config"].bnb_4bit_compute_dtype == torch.float16   # from --autocast
    assert q16["device_map"] == {"": "cuda"}
    q8 = lora.quantization_kwargs(TrainConfig(lora_rank=4, load_in_8bit=True))
    q8 = q8["quantization_config"]
    assert q8.load_in_8bit and not q8.load_in_4bit


def test_quantization_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="quantised full fine-tuning is not supported"):
        TrainConfig(load_in_4bit=True)
    with pytest.raises(ConfigError,
                       match="--load-in-8bit: .* fine-tuning is not supported; add --lora-rank"):
        TrainConfig(load_in_8bit=True)
    with pytest.raises(ConfigError, match="choose one"):
        TrainConfig(lora_rank=4, load_in_4bit=True, load_in_8bit=True)
    import importlib.util

    real_find = importlib.util.find_spec
    installed = {"bitsandbytes": None}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: installed[name]
                        if name in installed else real_find(name, *a))
    with pytest.raises(ConfigError, match="--load-in-4bit needs bitsandbytes and a CUDA GPU"):
        lora.check_quantization_support("--load-in-4bit", "cuda")
    installed["bitsandbytes"] = real_find("torch")          # "installed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU and none is visible"):
        lora.check_quantization_support("--load-in-4bit", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="use --device cuda"):
        lora.check_quantization_support("--load-in-8bit", "cpu")
    lora.check_quantization_support("--load-in-4bit", "cuda:0")   # all there: no error


def test_load_in_4bit_is_one_line_error_here(model_dir: Path, pairs_file: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """No bitsandbytes or no CUDA on this machine: one line, exit code 2, nothing loaded."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available():
        pytest.skip("bitsandbytes and a GPU are present")
    from pos2distill import cli

    code = cli.main(["-q", "train", "--pairs", str(pairs_file), "--model", str(model_dir),
                     "--lora-rank", "4", "--load-in-4bit", "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 2 and "--load-in-4bit" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "q").exists()


def test_qlora_wiring(model_dir: Path, pairs_file: Path, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With the bitsandbytes checks passed, training loads the base with the quantisation
    arguments, runs peft's k-bit preparation before the adapter, and builds the merged model from
    the saved adapter and a fresh unquantised base (the load itself is faked: the arguments are
    recorded and the model loads in float32)."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(lora, "check_quantization_support", lambda flag, device: None)
    real_load, loads = AutoModelForCausalLM.from_pretrained, []

    def fake_load(path: Any, *args: Any, **kw: Any) -> Any:
        loads.append({k: kw.get(k) for k in ("quantization_config", "device_map")})
        kw.pop("quantization_config", None)
        kw.pop("device_map", None)
        return real_load(path, *args, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_load)
    calls = []
    real_prepare, real_apply, real_merge = (lora.prepare_quantized, lora.apply_lora,
                                            lora.merge_from_disk)

    def prepare(m: Any, **kw: Any) -> Any:
        calls.append(("prepare", kw))
        return real_prepare(m, **kw)

    def apply(m: Any, **kw: Any) -> Any:
        calls.append(("lora", type(m).__name__))
        return real_apply(m, **kw)

    def merge(base: Any, d: Path) -> Any:
        calls.append(("merge", Path(d).name))
        return real_merge(base, d)

    monkeypatch.setattr(lora, "prepare_quantized", prepare)
    monkeypatch.setattr(lora, "apply_lora", apply)
    monkeypatch.setattr(lora, "merge_from_disk", merge)
    out = tmp_path / "qlora"
    summary = train.main(TrainConfig(pairs=str(pairs_file), model=str(model_dir), out=str(out),
                                     lr=1e-2, batch_size=6, epochs=1, lora_rank=4,
                                     load_in_4bit=True))
    assert summary["teacher"] == "lora-base"
    student_load, merge_load = loads                   # the student, then the base for the merge
    assert student_load["quantization_config"].load_in_4bit
    assert student_load["device_map"] == {"": "cpu"}
    assert merge_load == {"quantization_config": None, "device_map": None}
    assert [c[0] for c in calls] == ["prepare", "lora", "merge"]
    assert calls[0][1] == {"gradient_checkpointing": False}
    assert calls[1][1] == "LlamaForCausalLM" and calls[2][1] == "adapter"
    # The merged model is the fresh base plus the trained adapter.
    from peft import PeftModel

    monkeypatch.undo()
    adapted = PeftModel.from_pretrained(_load(model_dir), out / "adapter").eval()
    merged = _load(out / "model")
    ids = torch.arange(5, 40).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)
        assert (merged(ids).logits - _load(model_dir)(ids).logits).abs().max() > 1e-4


def test_quantization_flags_count_in_the_fingerprint_only_when_set() -> None:
    from pos2distill.runinfo import fingerprint

    plain, q4 = TrainConfig(lora_rank=4), TrainConfig(lora_rank=4, load_in_4bit=True)
    # Unset, the flags leave the fingerprint of runs made before they existed unchanged ...
    assert fingerprint(plain) == fingerprint(plain, ignore=("load_in_4bit", "load_in_8bit"))
    # ... set, a quantised run never resumes an unquantised one.
    assert fingerprint(q4, ignore=train.RESUME_IGNORES) != \
        fingerprint(plain, ignore=train.RESUME_IGNORES)
