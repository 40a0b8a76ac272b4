"""train: response alignment against unpadded forward passes, schedule and masks by hand, and short
R1 runs on a tiny random model (the loss goes down, gradient accumulation changes nothing, the
weights are those recorded before the loop was restructured, old pairs rows train like new ones)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import save_model_dir
from pos2distill.stages import train
from pos2distill.config import TrainConfig
from pos2distill.errors import ConfigError, DataError
from pos2distill.training import batches
from pos2distill.training.losses import per_example_kl
from pos2distill.training.optim import lr_lambda
from pos2distill.tasks.prompts import encode_prompt
from pos2distill.data.records import write_jsonl
from helpers import ALIGNMENT_ROWS as ROWS, pair_row
from reference import micro_kl, response_logits


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------

def test_response_mask_by_hand() -> None:
    assert batches.response_mask([1, 3, 2]).tolist() == [[False, False, True],
                                                       [True, True, True],
                                                       [False, True, True]]
    assert batches.response_mask([2]).tolist() == [[True, True]]


def test_left_pad_by_hand() -> None:
    ids, att = batches.left_pad([[5, 6], [7, 8, 9, 10], [11]], pad_id=0)
    assert ids.tolist() == [[0, 0, 5, 6], [7, 8, 9, 10], [0, 0, 0, 11]]
    assert att.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]


@pytest.mark.parametrize("step, expected", [
    (0, 0.25), (1, 0.5), (3, 1.0),                    # linear warm-up over 4 steps
    (4, 1.0),                                          # cosine starts at the peak
    (9, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 12))),
    (10, 0.55),                                        # half way: (0.1 + 1) / 2
    (16, 0.1), (40, 0.1),                              # floor, never below
])
def test_lr_lambda_by_hand(step: int, expected: float) -> None:
    assert lr_lambda(step, total=16, warmup=4, min_ratio=0.1) == pytest.approx(expected)


def test_lr_lambda_without_floor() -> None:
    assert lr_lambda(10, total=10, warmup=0, min_ratio=0.0) == pytest.approx(0.0)
    assert lr_lambda(0, total=10, warmup=0, min_ratio=0.0) == pytest.approx(1.0)


def test_encode_pair(tok: Any) -> None:
    row = pair_row("Oslo Lima", "Lima Oslo Paris", "Paris .")
    ex = batches.encode_pair(row, tok)
    response = tok("Paris .", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex.response_len == 3
    assert list(ex.student_ids) == encode_prompt(tok, row["student_prompt"], chat=True) + response
    assert list(ex.teacher_ids) == encode_prompt(tok, row["teacher_prompt"], chat=True) + response
    assert ex.student_ids.count(tok.bos_token_id) == 1
    assert (ex.slot, ex.adv_slot) == ((1,), (0,))


@pytest.mark.parametrize("fields, slot, adv_slot", [
    ({"slot": [3], "adv_slot": [0]}, (3,), (0,)),
    ({"position": 3, "adv_position": 0}, (3,), (0,)),                       # old retrieval row
    ({"position": 0, "adv_position": 0}, (0,), (0,)),                       # ... an anchor
    ({"position": 4, "adv_position": 8, "configuration": [4, 2],            # old reasoning row
      "adv_configuration": [8, 9]}, (4, 2), (8, 9)),
    ({"slot": [4, 2], "adv_slot": [8, 9], "position": 4, "configuration": [1, 1]}, (4, 2), (8, 9)),
    ({}, (), ()),
])
def test_slots_of_every_row_format(tmp_path: Path, fields: dict[str, Any], slot: tuple[int, ...],
                                   adv_slot: tuple[int, ...]) -> None:
    row = {"student_prompt": "s", "teacher_prompt": "t", "response": "r", "chat": True, **fields}
    write_jsonl(tmp_path / "p.jsonl", [row])
    [read] = batches.read_pairs(str(tmp_path / "p.jsonl"))
    assert (read.get("slot", ()), read.get("adv_slot", ())) == (slot, adv_slot)
    assert batches.is_anchor(read) == (slot == adv_slot != ())


# ---------------------------------------------------------------------------------------------
# Alignment: which logits are distilled
# ---------------------------------------------------------------------------------------------

def test_response_logits_align_with_unpadded_forward(sharp_model: Any, tok: Any) -> None:
    examples = [batches.encode_pair(r, tok) for r in ROWS]
    lens = [e.response_len for e in examples]
    assert lens == [3, 5, 2]
    R = max(lens)
    ids, att = batches.left_pad([e.student_ids for e in examples], tok.pad_token_id)
    mask = batches.response_mask(lens)
    with torch.no_grad():
        batched = response_logits(sharp_model, ids, att, R)           # (B, R, V)
    assert batched.shape == (3, R, len(tok))
    for b, e in enumerate(examples):
        seq = list(e.student_ids)
        T, r = len(seq), e.response_len
        n_prompt = T - r
        with torch.no_grad():
            full = sharp_model(torch.tensor([seq])).logits[0]                # (T, V); t predicts t+1
            alone = response_logits(sharp_model, torch.tensor([seq]),
                                          torch.ones(1, T, dtype=torch.long), r)[0]
        expected = full[n_prompt - 1:T - 1]                                 # last prompt pos .. pos before EOS
        assert expected.shape[0] == r
        torch.testing.assert_close(alone, expected, atol=1e-5, rtol=0)
        # Left padding does not change the values of the response positions.
        got = batched[b][mask[b]]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        # The first distilled distribution is the one at the last prompt token ...
        torch.testing.assert_close(got[0], full[n_prompt - 1], atol=1e-5, rtol=0)
        assert seq[n_prompt - 1] == tok.convert_tokens_to_ids("<|assistant|>")
        # ... and the last one predicts EOS; the distribution after EOS is not included.
        assert seq[-1] == tok.eos_token_id
        torch.testing.assert_close(got[-1], full[T - 2], atol=1e-5, rtol=0)
        assert not torch.allclose(got[-1], full[T - 1], atol=1e-3)


def test_micro_kl_matches_hand_alignment(sharp_model: Any, tok: Any) -> None:
    examples = [batches.encode_pair(r, tok) for r in ROWS]
    batch = batches.batch_tensors(examples, tok.pad_token_id, "cpu")
    with torch.no_grad():
        kl = micro_kl(sharp_model, sharp_model, batch)
    for b, e in enumerate(examples):
        r = e.response_len
        with torch.no_grad():
            s = sharp_model(torch.tensor([list(e.student_ids)])).logits[:, -r - 1:-1]
            t = sharp_model(torch.tensor([list(e.teacher_ids)])).logits[:, -r - 1:-1]
        ref = per_example_kl(t, s, torch.ones(1, r, dtype=torch.bool))
        assert kl[b].item() == pytest.approx(ref.item(), abs=1e-5)
        assert kl[b].item() > 1e-3   # different prompts: a real signal
    # Teacher prompt == student prompt gives 0 whatever the padding.
    same = [batches.Example(e.student_ids, e.student_ids, e.response_len, (1,), (0,))
            for e in examples]
    with torch.no_grad():
        zero = micro_kl(sharp_model, sharp_model,
                              batches.batch_tensors(same, tok.pad_token_id, "cpu"))
    assert zero.abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------------------
# Short runs of train.main
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sharp_model_dir(tmp_path_factory: pytest.TempPathFactory, sharp_model: Any, tok: Any) -> Path:
    return save_model_dir(tmp_path_factory, "sharp-random-llama", sharp_model, tok)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _load(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()


def _mean_kl(student: Any, teacher: Any, pairs_path: Path, tok: Any) -> float:
    examples = [batches.encode_pair(r, tok) for r in batches.read_pairs(str(pairs_path))]
    with torch.no_grad():
        return micro_kl(student, teacher,
                              batches.batch_tensors(examples, tok.pad_token_id, "cpu")).mean().item()


def _cfg(pairs_file: Path, model_dir: Path, out: Path, **kw: Any) -> TrainConfig:
    base = dict(pairs=str(pairs_file), model=str(model_dir), out=str(out), lr=1e-2, batch_size=4,
                epochs=4, warmup_ratio=0.25)
    return TrainConfig(**{**base, **kw})


def test_r1_steps_lower_the_kl(pairs_file: Path, sharp_model_dir: Path, sharp_model: Any,
                               tok: Any, tmp_path: Path) -> None:
    frozen = copy.deepcopy(sharp_model)
    before = _mean_kl(frozen, frozen, pairs_file, tok)
    summary = train.main(_cfg(pairs_file, sharp_model_dir, tmp_path / "run"))
    assert summary["steps"] == 12 * 4 // 4 and summary["examples"] == 12
    assert summary["adv_slot"] == [0]
    trained = _load(tmp_path / "run" / "model")
    after = _mean_kl(trained, frozen, pairs_file, tok)
    assert before > 0.03
    assert after < 0.5 * before
    # The starting weights are untouched (the teacher is a copy, the fixture model is not trained).
    for p, q in zip(frozen.parameters(), sharp_model.parameters()):
        assert torch.equal(p, q)
    log = _log(tmp_path / "run")
    assert [row["step"] for row in log] == list(range(1, 13))
    assert log[0]["kl_mean"] == pytest.approx(_first_batch_kl(pairs_file, sharp_model, tok),
                                              abs=1e-6)
    assert set(log[0]) == {"step", "lr", "loss", "kl_mean", "kl_by_position",
                           "weight_by_position", "grad_norm"}
    # The folder is a normal Hugging Face checkpoint with its tokenizer.
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(tmp_path / "run" / "model")) == len(tok)
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text()) == summary


def _first_batch_kl(pairs_file: Path, model: Any, tok: Any) -> float:
    """KL of the first optimizer batch, rebuilt from train.main's seeded shuffle (seed 0)."""
    import random

    examples = [batches.encode_pair(r, tok) for r in batches.read_pairs(str(pairs_file))]
    perm = list(range(len(examples)))
    random.Random(0).shuffle(perm)
    batch = batches.batch_tensors([examples[i] for i in perm[:4]], tok.pad_token_id, "cpu")
    with torch.no_grad():
        return micro_kl(model, model, batch).mean().item()


@pytest.mark.parametrize("grad_accum", [2, 4])
def test_grad_accum_gives_the_same_training(pairs_file: Path, sharp_model_dir: Path,
                                            tmp_path: Path, grad_accum: int) -> None:
    a = train.main(_cfg(pairs_file, sharp_model_dir, tmp_path / "a", epochs=1))
    b = train.main(_cfg(pairs_file, sharp_model_dir, tmp_path / "b", epochs=1,
                        grad_accum=grad_accum))
    assert a["steps"] == b["steps"] == 3
    log_a, log_b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert log_a[0]["loss"] == pytest.approx(log_b[0]["loss"], abs=1e-5)
    for ra, rb in zip(log_a, log_b):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
        assert ra["weight_by_position"] == pytest.approx(rb["weight_by_position"], abs=1e-5)
    ma, mb = _load(tmp_path / "a" / "model"), _load(tmp_path / "b" / "model")
    diff = torch.cat([(p - q).abs().flatten() for p, q in zip(ma.parameters(), mb.parameters())])
    # Summing micro-batch gradients rounds differently, and Adam divides each gradient by its own
    # running size, so an element whose gradient is near zero can move by a fair part of lr (1e-2)
    # for a 1e-7 change in that gradient. All but 0.5 % of elements must agree to 1e-6, and none may
    # differ by a tenth of one Adam step.
    assert (diff > 1e-6).float().mean().item() < 5e-3
    assert diff.max().item() < 1e-3
    # Not vacuous: training moved most weights beyond both tolerances.
    start = _load(sharp_model_dir)
    moved = torch.cat([(p - q).abs().flatten() for p, q in zip(ma.parameters(), start.parameters())])
    assert (moved > 1e-3).float().mean().item() > 0.5


def test_read_pairs_errors(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "bad.jsonl", [{**pair_row("a", "b", "c")}, {"student_prompt": "x"}])
    with pytest.raises(DataError) as info:
        batches.read_pairs(str(tmp_path / "bad.jsonl"))
    assert info.value.line == 2 and info.value.field == "teacher_prompt"
    write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataError, match="no training pairs"):
        batches.read_pairs(str(tmp_path / "empty.jsonl"))


def test_several_advantageous_slots_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [pair_row("a", "b", "Oslo"), {**pair_row("a", "b", "Oslo"), "adv_slot": [3]}]
    write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=r"several advantageous slots \[\[0\], \[3\]\]"):
        train.main(TrainConfig(pairs=str(tmp_path / "p.jsonl"), model=str(tiny_model_dir),
                               out=str(tmp_path / "out")))


def test_train_config_validation() -> None:
    with pytest.raises(ConfigError, match="--batch-size 6 is not divisible by --grad-accum 4"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ConfigError, match="--formula: 'nope'"):
        TrainConfig(formula="nope")
    with pytest.raises(ConfigError, match="--warmup-ratio"):
        TrainConfig(warmup_ratio=1.0)
    with pytest.raises(ConfigError, match="--lr: must be > 0"):
        TrainConfig(lr=0)


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------

def test_temperature_is_used(pairs_file: Path, sharp_model_dir: Path, tmp_path: Path) -> None:
    train.main(_cfg(pairs_file, sharp_model_dir, tmp_path / "t1", epochs=1 / 3))
    train.main(_cfg(pairs_file, sharp_model_dir, tmp_path / "t2", epochs=1 / 3, temperature=2.0))
    assert _log(tmp_path / "t1")[0]["kl_mean"] != pytest.approx(_log(tmp_path / "t2")[0]["kl_mean"])


def test_logged_lr_is_the_lr_of_that_step(pairs_file: Path, sharp_model_dir: Path,
                                          tmp_path: Path) -> None:
    # 12 pairs, batch 3: 4 steps; warm-up round(0.5 * 4) = 2 steps; factors 0.5, 1, 1, 0.55.
    train.main(_cfg(pairs_file, sharp_model_dir, tmp_path / "lr", epochs=1, batch_size=3,
                    warmup_ratio=0.5, lr=1e-3, min_lr_ratio=0.1))
    lrs = [row["lr"] for row in _log(tmp_path / "lr")]
    assert lrs == pytest.approx([0.5e-3, 1e-3, 1e-3, 0.55e-3])


def test_log_every_zero_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--log-every"):
        TrainConfig(log_every=0)


# ---------------------------------------------------------------------------------------------
# Checkpoints, resume and non-finite losses (the real SIGKILL test is tests/test_resume.py)
# ---------------------------------------------------------------------------------------------

class Crash(Exception):
    """Stands in for a kill in the middle of a step."""


def _failing_loss(monkeypatch: pytest.MonkeyPatch, at_call: int, *, nan: bool = False) -> None:
    """Make the ``at_call``-th weighted loss crash or be NaN. A step computes 1 + grad_accum of
    them: the batch loss (the one checked for NaN), then one per micro-batch's backward pass."""
    real = train.weighted_loss
    calls = {"n": 0}

    def loss(kl: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == at_call:
            if not nan:
                raise Crash
            return real(kl, weights) * float("nan")
        return real(kl, weights)

    monkeypatch.setattr(train, "weighted_loss", loss)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return dict(_load(model_dir).state_dict())


def test_resume_after_a_crash_gives_the_same_weights_and_log(
        pairs_file: Path, sharp_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    full = train.main(_cfg(pairs_file, sharp_model_dir, tmp_path / "full", save_every=3))
    out = tmp_path / "crashed"
    cfg = _cfg(pairs_file, sharp_model_dir, out, save_every=3)
    _failing_loss(monkeypatch, at_call=1 + 2 * 8)    # dies in step 9: checkpoint at 6, log to 8
    with pytest.raises(Crash):
        train.main(cfg)
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 6 and not (out / "model").exists()
    assert [row["step"] for row in _log(out)] == list(range(1, 9))
    monkeypatch.undo()
    # Resuming with other values of fields that do not change results is allowed.
    assert train.main(TrainConfig(**{**cfg.__dict__, "save_every": 5})) == {
        **full, "model": str(out / "model"), "log": str(out / "log.jsonl")}
    assert _log(out) == _log(tmp_path / "full")       # steps 7, 8 logged once, none missing
    a, b = _weights(tmp_path / "full" / "model"), _weights(out / "model")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    # A finished run is not trained again.
    monkeypatch.setattr("pos2distill.modeling.load_causal_lm",
                        lambda *a, **k: pytest.fail("a finished run must not load the model"))
    assert train.main(cfg)["steps"] == 12


def test_a_checkpoint_of_another_config_is_refused(pairs_file: Path, sharp_model_dir: Path,
                                                    tmp_path: Path) -> None:
    import shutil

    train.main(_cfg(pairs_file, sharp_model_dir, tmp_path / "a", epochs=1))
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "checkpoint", tmp_path / "b" / "checkpoint")
    with pytest.raises(ConfigError, match="checkpoint of a different config"):
        train.main(_cfg(pairs_file, sharp_model_dir, tmp_path / "b", epochs=1, lr=2e-2))


def test_optimizer_state_is_never_unpickled(pairs_file: Path, sharp_model_dir: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _cfg(pairs_file, sharp_model_dir, out, epochs=1)
    train.main(cfg)
    (out / "train_summary.json").unlink()             # pretend it was killed before the end
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Evil(marker)}, out / "checkpoint" / "optimizer.pt")
    with pytest.raises(ConfigError, match="unreadable checkpoint"):
        train.main(cfg)
    assert not marker.exists()


class _Evil:
    """Unpickling this runs code: exactly what weights_only=True must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_a_nan_loss_stops_training_and_keeps_the_last_checkpoint(
        pairs_file: Path, sharp_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        grad_accum: int) -> None:
    from pos2distill.errors import TrainingError

    out = tmp_path / "run"
    _failing_loss(monkeypatch, at_call=1 + 4 * (1 + grad_accum), nan=True)   # step 5's batch loss
    with pytest.raises(TrainingError) as info:
        train.main(_cfg(pairs_file, sharp_model_dir, out, save_every=2, grad_accum=grad_accum))
    message = str(info.value)
    assert message.startswith("step 5: the loss is nan; training stopped")
    assert "last good checkpoint (step 4)" in message and str(out / "checkpoint") in message
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 4
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert [row["step"] for row in _log(out)] == [1, 2, 3, 4]
    assert not (out / "model").exists()


def test_save_every_is_validated() -> None:
    assert TrainConfig(save_every=0).save_every == 0
    with pytest.raises(ConfigError, match="--save-every: must be >= 0"):
        TrainConfig(save_every=-1)


# ---------------------------------------------------------------------------------------------
# Regression: the weights of short runs, recorded before the training loop was restructured
# ---------------------------------------------------------------------------------------------

REFERENCE = Path(__file__).parents[1] / "fixtures" / "train_reference"
REFERENCE_RUNS = {"r1": {}, "sft": {"method": "sft"}, "r1-accum2": {"grad_accum": 2},
                  "r1-lora": {"lora_rank": 4},
                  "kl+align-cache": {"method": "kl+align", "teacher_cache": "CACHE"}}


def _digest(weights: dict[str, torch.Tensor]) -> str:
    """sha256 of every tensor's bytes, by name: equal digests are bit-identical weights."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(weights[name].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("run", [
    "r1", "sft", "r1-accum2",
    pytest.param("r1-lora", marks=pytest.mark.slow),
    pytest.param("kl+align-cache", marks=pytest.mark.slow)])
def test_weights_match_the_recorded_reference(run: str, sharp_model_dir: Path,
                                              tmp_path: Path) -> None:
    """A 3-step run (2 for the cache run, whose method drops the anchors) on frozen pairs gives
    the weights and log rows recorded with the code before the loop was restructured: bit for
    bit with the torch and transformers versions that recorded them, to rounding with others."""
    from safetensors.torch import load_file
    import transformers

    from pos2distill.config import CacheConfig
    from pos2distill.stages import cache

    if run == "r1-lora":
        pytest.importorskip("peft", reason="LoRA needs peft")
    reference = json.loads((REFERENCE / "reference.json").read_text())
    expected = reference["runs"][run]
    kw = dict(REFERENCE_RUNS[run])
    pairs_path = REFERENCE / "pairs.jsonl"
    if kw.get("teacher_cache") == "CACHE":
        kw["teacher_cache"] = str(tmp_path / "cache")
        cache.main(CacheConfig(pairs=str(pairs_path), model=str(sharp_model_dir),
                               out=kw["teacher_cache"], top_k=8))
    out = tmp_path / "run"
    train.main(TrainConfig(pairs=str(pairs_path), model=str(sharp_model_dir), out=str(out),
                           lr=1e-2, batch_size=4, epochs=1, warmup_ratio=0.25, **kw))
    log = _log(out)
    same_versions = reference["recorded_with"] == {"torch": torch.__version__,
                                                   "transformers": transformers.__version__}
    if same_versions:
        assert log == expected["log"]
        assert _digest(load_file(out / "model" / "model.safetensors")) == expected["sha256"]
    else:
        assert [r["step"] for r in log] == [r["step"] for r in expected["log"]]
        for got, want in zip(log, expected["log"]):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)


def test_old_pairs_rows_train_like_new_ones(sharp_model_dir: Path, tmp_path: Path) -> None:
    """Retrieval rows written before slots (``position``/``adv_position``) and the same rows with
    ``slot``/``adv_slot`` give the same log and bit-identical weights (the reasoning rows'
    ``configuration``: tests/test_reasoning.py)."""
    from safetensors.torch import load_file

    old = [json.loads(line) for line in (REFERENCE / "pairs.jsonl").read_text().splitlines()]
    assert all("position" in r and "slot" not in r for r in old)
    new = [{**{k: v for k, v in r.items() if k not in ("position", "adv_position")},
            "task": "retrieval", "slot": [r["position"]], "adv_slot": [r["adv_position"]]}
           for r in old]
    for name, rows in (("old", old), ("new", new)):
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
        summary = train.main(_cfg(tmp_path / f"{name}.jsonl", sharp_model_dir, tmp_path / name,
                                  epochs=1))
        assert summary["adv_slot"] == [0]
    assert _log(tmp_path / "old") == _log(tmp_path / "new")
    assert set(_log(tmp_path / "new")[0]["kl_by_position"]) <= {"0", "1", "2", "3", "4"}
    a = load_file(tmp_path / "old" / "model" / "model.safetensors")
    b = load_file(tmp_path / "new" / "model" / "model.safetensors")
    assert _digest(a) == _digest(b)
