"""teach, pairs and train for a judge: the teacher is the frozen judge's order-balanced verdict
(both orders), each pair is one order with that verdict distribution fixed at the verdict token,
and `train --method r1` / `swap-sft` train with the losses their names say (checked against an
independent per-example computation)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import FakeJudge, primacy_probs
from pos2distill.config import PairsConfig, TeachConfig, TrainConfig
from pos2distill.data.records import Record
from pos2distill.stages import pairs, teach, train
from pos2distill.tasks.prompts import encode_prompt
from pos2distill.training.losses import fixed_distribution_kl, per_token_kl, position_weights


@pytest.fixture(scope="module")
def judge_run(tmp_path_factory: pytest.TempPathFactory, judge_model_dir: Path
              ) -> tuple[Path, Path]:
    """(teach rows, pairs) of 4 synthetic judging items, taught by the primacy-biased fake."""
    out = tmp_path_factory.mktemp("judge-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("pos2distill.generation.HFGenerator", FakeJudge)
        result = teach.main(TeachConfig(task="judge", data="synthetic-judge:train", limit=4,
                                        n_documents=4, model=str(judge_model_dir),
                                        out=str(out / "teach.jsonl")))
    assert result["kept"] == 4 and result["adv_slot"] == ""
    pairs.main(PairsConfig(teach=str(out / "teach.jsonl"), model=str(judge_model_dir),
                           out=str(out / "pairs.jsonl")))
    return out / "teach.jsonl", out / "pairs.jsonl"


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_the_teacher_is_the_balanced_verdict_of_both_orders(judge_run: tuple[Path, Path]
                                                            ) -> None:
    for row in read(judge_run[0]):
        record = Record.from_dict(row["record"])
        p01, p10 = (primacy_probs(p) for p in row["teacher_prompts"])
        assert row["verdict_probs"][0] == pytest.approx(p01)
        assert row["verdict_probs"][1] == pytest.approx(p10)
        assert row["balanced"] == pytest.approx([(p01[0] + p10[1]) / 2, (p01[1] + p10[0]) / 2,
                                                 (p01[2] + p10[2]) / 2])
        # The greedy judge says [[A]] in both orders; the balanced verdict is the label.
        assert row["choices"] == ["first", "first"] and row["winner"] == record.label
        assert row["response"] == record.answers[0] + " " and row["correct"]
        # The rationale comes from the order whose own verdict names the balanced winner.
        assert row["rationale_order"] == (0 if record.label == "1" else 1)


def test_pairs_put_each_order_with_the_balanced_verdict_mapped_to_it(
        judge_run: tuple[Path, Path], judge_tok: Any) -> None:
    teach_rows = {r["id"]: r for r in read(judge_run[0])}
    rows = read(judge_run[1])
    assert len(rows) == 8 and {tuple(r["slot"]) for r in rows} == {(0, 1), (1, 0)}
    for r in rows:
        t = teach_rows[r["question_id"]]
        label = t["record"]["label"]
        shown_first = (r["slot"] == [0, 1]) == (label == "1")      # the winner is shown first
        assert r["response"] == t["response"] + ("[[A]]" if shown_first else "[[B]]")
        assert r["answers"] == [r["response"]]                     # swap-sft's gold = teacher's
        c1, c2, tie = t["balanced"]
        (fixed,) = r["fixed_tokens"]
        assert fixed["probs"] == pytest.approx([c1, c2, tie] if r["slot"] == [0, 1]
                                               else [c2, c1, tie])
        assert fixed["ids"] == judge_tok.convert_tokens_to_ids(["A", "B", "C"])
        ids = judge_tok(r["response"], add_special_tokens=False)["input_ids"]
        assert ids[fixed["index"]] == judge_tok.convert_tokens_to_ids("A" if shown_first else "B")
        assert r["teacher_prompt"] == t["teacher_prompts"][t["rationale_order"]]
        assert "Answer A:" in r["student_prompt"] and r["adv_slot"] == [] and not r["anchor"]


def _logits(model: Any, prompt_ids: list[int], target: list[int]) -> torch.Tensor:
    seq = prompt_ids + target
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0, len(prompt_ids) - 1:len(seq) - 1]


@pytest.mark.parametrize("method", ["r1", "swap-sft"])
def test_judge_training_losses(method: str, judge_run: tuple[Path, Path], judge_model_dir: Path,
                               judge_tok: Any, tmp_path: Path) -> None:
    rows = read(judge_run[1])
    model = AutoModelForCausalLM.from_pretrained(judge_model_dir).eval()
    losses, slots = [], []
    for r in rows:
        text = r["response"] if method == "r1" else r["answers"][0]
        target = judge_tok(text, add_special_tokens=False)["input_ids"] + [judge_tok.eos_token_id]
        s = _logits(model, encode_prompt(judge_tok, r["student_prompt"], chat=True), target)
        if method == "swap-sft":
            losses.append(torch.nn.functional.cross_entropy(s, torch.tensor(target)))
            continue
        t = _logits(model, encode_prompt(judge_tok, r["teacher_prompt"], chat=True), target)
        per_token = per_token_kl(t, s)
        (f,) = r["fixed_tokens"]
        per_token[f["index"]] = fixed_distribution_kl(torch.tensor([f["probs"]]),
                                                      torch.tensor([f["ids"]]),
                                                      s[f["index"]:f["index"] + 1])[0]
        losses.append(per_token.mean())
        slots.append(1 if r["slot"] == [0, 1] else 2)     # slot ids: () 0, (0,1) 1, (1,0) 2
    loss = torch.stack(losses)
    weights = torch.ones_like(loss) if method == "swap-sft" else position_weights(
        loss, torch.tensor(slots), anchor_position=0, anchor_weight=1.0)
    expected = float((weights * loss).sum())
    out = tmp_path / method
    summary = train.main(TrainConfig(pairs=str(judge_run[1]), model=str(judge_model_dir),
                                     out=str(out), method=method, batch_size=8, lr=1e-3))
    assert summary["steps"] == 1 and summary["examples"] == 8
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert log["loss"] == pytest.approx(expected, rel=1e-4) and math.isfinite(log["loss"])
    assert (out / "model" / "config.json").exists()
