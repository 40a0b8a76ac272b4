"""methods: the registry, and one test per method showing that `train --method NAME` trains with the
loss its name says, on a fixed batch (the logged loss of step 1, with the starting weights, against
an independent per-example computation from unpadded forward passes)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from helpers import teacher_rows
from conftest import FakeGenerator, save_model_dir
from pos2distill.stages import pairs, train
from pos2distill.data import synthetic
from pos2distill.config import TrainConfig
from pos2distill.errors import ConfigError, DataError
from pos2distill.training.losses import per_example_kl, position_weights
from pos2distill.training import teacher as teacher_module
from pos2distill.training.methods import METHOD_NAMES, METHODS, get_method
from pos2distill.tasks.prompts import encode_prompt
from pos2distill.data.records import write_jsonl


def test_registry_is_the_documented_table() -> None:
    table = {name: (m.loss, m.formula, m.anchors, m.target) for name, m in METHODS.items()}
    assert table == {
        "sft": ("ce", None, True, "gold"),
        "seqkd": ("ce", None, False, "response"),
        "kl": ("kl", "uniform", False, "response"),
        "kl+align": ("kl", None, False, "response"),
        "r1": ("kl", None, True, "response"),
        "r2": ("ce", None, True, "response"),
        "swap-sft": ("ce", None, True, "gold"),
    }
    assert METHOD_NAMES == ("sft", "seqkd", "kl", "kl+align", "r1", "r2", "swap-sft")
    assert [m for m in METHOD_NAMES if METHODS[m].needs_teacher] == ["kl", "kl+align", "r1"]
    with pytest.raises(ConfigError, match="--method: 'r3' is not one of sft, seqkd"):
        get_method("r3")


def test_formula_resolution() -> None:
    assert get_method("r1").resolve_formula("paper") == "paper"
    assert get_method("r1").resolve_formula("uniform") == "uniform"
    assert get_method("kl").resolve_formula("pos2distill") == "uniform"
    assert get_method("kl+align").resolve_formula("paper") == "paper"
    assert get_method("seqkd").resolve_formula("pos2distill") is None
    with pytest.raises(ConfigError, match="--method kl\\+align uses position-aware weights"):
        TrainConfig(method="kl+align", formula="uniform")


# ---------------------------------------------------------------------------------------------
# The loss of every method on a fixed batch
# ---------------------------------------------------------------------------------------------

GOLD_FIRST = "Quito"   # a city no synthetic response starts with: SFT's target differs from SeqKD's


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, sharp_model: Any, tok: Any) -> Path:
    return save_model_dir(tmp_path_factory, "methods-llama", sharp_model, tok)


@pytest.fixture(scope="module")
def fixed_pairs(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> tuple[Path, list[dict]]:
    """12 pairs: 4 questions x (K=2 trivial positions + 1 anchor), 5 documents. The gold answers
    are (GOLD_FIRST, the true city), so the first gold answer is not the teacher's response."""
    records = synthetic.generate("train", 4, n_documents=5)
    rows = teacher_rows(records, FakeGenerator(), tok, task="retrieval", adv=(0,),
                        template="authors", chat="auto", seed=0, max_new_tokens=8)
    made = pairs.make_pairs(rows, tok, K=2, anchors=1, seed=0)
    for row in made:
        assert row["answers"] == [row["response"]]          # pairs copies the record's answers
        row["answers"] = [GOLD_FIRST, row["response"]]
    path = tmp_path_factory.mktemp("fixed-pairs") / "pairs.jsonl"
    write_jsonl(path, made)
    return path, made


def _unpadded_logits(model: Any, prompt_ids: list[int], target_ids: list[int]) -> torch.Tensor:
    """(1, R, V) logits predicting the R target tokens after the prompt, from one unpadded row."""
    seq = prompt_ids + target_ids
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[:, len(prompt_ids) - 1:len(seq) - 1]


def _target(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]


def expected_loss(method: str, rows: list[dict], model: Any, tok: Any) -> tuple[float, int]:
    """(batch loss, number of examples) computed per example, independently of train.py."""
    m = METHODS[method]
    used = [r for r in rows if m.anchors or not r["anchor"]]
    losses, positions = [], []
    for r in used:
        target = _target(tok, r["answers"][0] if m.target == "gold" else r["response"])
        s = _unpadded_logits(model, encode_prompt(tok, r["student_prompt"], chat=True), target)
        if m.loss == "ce":
            ce = torch.nn.functional.cross_entropy(s[0], torch.tensor(target))  # mean over tokens
            losses.append(ce)
        else:
            t = _unpadded_logits(model, encode_prompt(tok, r["teacher_prompt"], chat=True), target)
            losses.append(per_example_kl(t, s, torch.ones(1, len(target), dtype=torch.bool))[0])
        positions.append(r["slot"][0] if "slot" in r else r["position"])
    loss = torch.stack(losses)
    if m.loss == "ce":
        weights = torch.ones_like(loss)
    else:
        weights = position_weights(loss, torch.tensor(positions), anchor_position=0,
                                   anchor_weight=1.0, formula=m.resolve_formula("pos2distill"))
    return float((weights * loss).sum()), len(used)


@pytest.mark.parametrize("method", ["sft", "seqkd", "kl", "kl+align", "r1", "r2"])
def test_each_method_trains_with_its_loss(method: str, fixed_pairs: tuple[Path, list[dict]],
                                          model_dir: Path, sharp_model: Any, tok: Any,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, rows = fixed_pairs
    expected, n = expected_loss(method, rows, sharp_model, tok)
    assert n == (12 if METHODS[method].anchors else 8)
    kl_calls = _guard_the_teacher(monkeypatch, kl_allowed=METHODS[method].needs_teacher)
    out = tmp_path / "run"
    # One optimizer step over every example the method uses: the logged loss is the batch loss
    # at the starting weights, whatever the data order.
    summary = train.main(TrainConfig(pairs=str(path), model=str(model_dir), out=str(out),
                                     method=method, batch_size=n, epochs=1, lr=1e-3))
    assert summary["steps"] == 1 and summary["examples"] == n and summary["method"] == method
    row = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert row["loss"] == pytest.approx(expected, rel=1e-4)
    kind = METHODS[method].loss
    assert f"{kind}_mean" in row and f"{kind}_by_position" in row
    assert row["loss"] > 0.1
    # The guard watches what a KL method really calls: a teacher was built and a KL computed.
    assert (kl_calls["n"] > 0) == METHODS[method].needs_teacher


def _guard_the_teacher(monkeypatch: pytest.MonkeyPatch, *, kl_allowed: bool) -> dict[str, int]:
    """Without ``kl_allowed``, building a teacher (a copy of the model, an online or cached
    teacher) or computing a per-token KL (dense or top-k, where
    :mod:`pos2distill.training.teacher` looks them up) fails the test. Either way the per-token
    KL calls are counted."""
    calls = {"n": 0}

    def watched(real: Any) -> Any:
        def kl(*args: Any, **kwargs: Any) -> torch.Tensor:
            calls["n"] += 1
            if not kl_allowed:
                pytest.fail("KL computed")
            return real(*args, **kwargs)
        return kl

    for name in ("per_token_kl", "topk_token_kl"):
        monkeypatch.setattr(teacher_module, name, watched(getattr(teacher_module, name)))
    if not kl_allowed:
        def built(*args: Any, **kwargs: Any) -> Any:
            pytest.fail("teacher built")

        monkeypatch.setattr(train, "copy", SimpleNamespace(deepcopy=built))
        monkeypatch.setattr(train, "OnlineTeacher", built)
        monkeypatch.setattr(train, "CachedTeacher", built)
    return calls


def test_the_methods_differ_on_the_fixed_batch(fixed_pairs: tuple[Path, list[dict]],
                                               sharp_model: Any, tok: Any) -> None:
    """Not vacuous: on this batch every method's loss is a different number (swap-sft is sft
    on judge pairs, so on these retrieval pairs it is sft's number)."""
    names = [m for m in METHOD_NAMES if m != "swap-sft"]
    values = [round(expected_loss(m, fixed_pairs[1], sharp_model, tok)[0], 4) for m in names]
    assert len(set(values)) == len(values), dict(zip(names, values))


def test_ce_methods_take_pairs_without_teacher_fields(tok: Any, model_dir: Path,
                                                      tmp_path: Path) -> None:
    """R2 pairs hold hop-position pairs and no teacher prompt: cross-entropy reads only what it
    needs; a KL method on the same file names the missing field."""
    chat = "<|bos|><|user|>\nWhich city is home to Kavo<|end|>\n<|assistant|>\n"
    rows = [{"student_prompt": chat, "chat": True, "response": "Lima", "slot": [3, 4]},
            {"student_prompt": chat, "chat": True, "response": "Oslo Lima", "slot": [4, 3]}]
    write_jsonl(tmp_path / "r2.jsonl", rows)
    summary = train.main(TrainConfig(pairs=str(tmp_path / "r2.jsonl"), model=str(model_dir),
                                     out=str(tmp_path / "r2"), method="r2", batch_size=2))
    assert summary["examples"] == 2
    with pytest.raises(DataError, match="field 'teacher_prompt'"):
        train.main(TrainConfig(pairs=str(tmp_path / "r2.jsonl"), model=str(model_dir),
                               out=str(tmp_path / "kl"), method="kl", batch_size=2))


def test_a_method_without_anchors_on_anchor_only_pairs(fixed_pairs: tuple[Path, list[dict]],
                                                       model_dir: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "anchors.jsonl", [r for r in fixed_pairs[1] if r["anchor"]])
    with pytest.raises(DataError, match="only anchor rows, and --method seqkd"):
        train.main(TrainConfig(pairs=str(tmp_path / "anchors.jsonl"), model=str(model_dir),
                               out=str(tmp_path / "out"), method="seqkd"))
