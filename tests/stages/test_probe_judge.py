"""probe --task judge: both orders per item, verdicts and their probabilities, the order-bias
summary, BPC and stability, with a biased fake judge and end to end on a tiny random Llama."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch

from conftest import FakeJudge, truth
from pos2distill.config import ProbeConfig
from pos2distill.stages import probe
from pos2distill.tasks.judge import J_KEYS
from pos2distill.tasks.prompts import encode_prompt

def test_probe_judge_with_a_primacy_biased_fake(judge_model_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pos2distill.generation.HFGenerator", FakeJudge)
    cfg = ProbeConfig(task="judge", data="synthetic-judge:test", limit=6, n_documents=4,
                      model=str(judge_model_dir), out=str(tmp_path / "p"), calibrate="bpc",
                      samples=3)
    summary = probe.main(cfg)
    rows = [json.loads(x) for x in (tmp_path / "p" / "rows.jsonl").read_text().splitlines()]
    assert sorted((r["id"], tuple(r["slot"])) for r in rows) == sorted(
        (f"synth-judge-test-0-{k}", o) for k in range(6) for o in ((0, 1), (1, 0)))
    assert all(r["choice"] == "first" for r in rows)
    for r in rows:
        assert r["verdict_probs"][0] == max(r["verdict_probs"])      # greedy read "first"
        assert sum(r["verdict_probs"]) == pytest.approx(1.0)
        assert r["verdict_mass"] == pytest.approx(math.exp(-1.0))
        assert r["samples"] == ["first", "second", "first"]
        assert r["stability"] == pytest.approx(2 / 3)
    assert {k: summary[k] for k in J_KEYS} == {
        "consistency": 0.0, "fairness": -1.0, "first_wins": 1.0, "second_wins": 0.0,
        "accuracy": 0.5, "n_pairs": 6}
    assert summary["unparsed"] == 0 and summary["stability"] == pytest.approx(2 / 3)
    assert summary["bpc"]["accuracy"] == 1.0 and summary["bpc"]["consistency"] == 1.0
    assert summary["bpc"]["passes"] == 2
    assert (tmp_path / "p" / "verdicts_by_order.png").stat().st_size > 0
    table = (tmp_path / "p" / "table.md").read_text()
    assert "| consistency | 0.000 |" in table and "BPC accuracy" in table
    assert "consistency 0.000  fairness -1.000" in probe.describe(summary)


def test_unparsed_verdicts_are_counted_not_dropped(judge_model_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    class Mute(FakeJudge):
        def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
            return ["I cannot decide" if "Answer A: " + truth(p) in p else "Lima [[B]]"
                    for p in prompts]

    monkeypatch.setattr("pos2distill.generation.HFGenerator", Mute)
    summary = probe.main(ProbeConfig(task="judge", data="synthetic-judge:test", limit=4,
                                     n_documents=4, model=str(judge_model_dir),
                                     out=str(tmp_path / "p")))
    assert summary["n_pairs"] == 4 and summary["unparsed"] == 4 and summary["n_rows"] == 8
    assert summary["consistency"] == 0.0 and summary["accuracy"] == 0.5
    assert "unparsed 4" in probe.describe(summary)


def test_probe_judge_end_to_end_on_a_tiny_llama(judge_model_dir: Path, judge_tok: Any,
                                                tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg = ProbeConfig(task="judge", data="synthetic-judge:test", limit=3, n_documents=4,
                      model=str(judge_model_dir), out=str(tmp_path / "p"), max_new_tokens=4,
                      samples=2, temperature=1.0, calibrate="bpc")
    summary = probe.main(cfg)
    assert summary["n_pairs"] == 3 and summary["samples"] == 2
    rows = [json.loads(x) for x in (tmp_path / "p" / "rows.jsonl").read_text().splitlines()]
    assert all(len(r["samples"]) == 2 and sum(r["verdict_probs"]) == pytest.approx(1.0)
               for r in rows)
    # The verdict probabilities are the model's next-token distribution after the prompt, the
    # rationale and "[[", renormalised over A, B, C.
    from pos2distill.data import synthetic
    from pos2distill.tasks.judge import rationale_of, render_judge_example

    model = AutoModelForCausalLM.from_pretrained(judge_model_dir).eval()
    item = synthetic.generate_judge("test", 1, n_documents=4)[0]
    row = next(r for r in rows if r["id"] == item.id and r["slot"] == [1, 0])
    prompt, _ = render_judge_example(item, (1, 0), judge_tok)
    ids = encode_prompt(judge_tok, prompt, chat=True) + judge_tok(
        rationale_of(row["prediction"], ("[[A]]", "[[B]]", "[[C]]")) + "[[",
        add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)
    abc = p[judge_tok.convert_tokens_to_ids(["A", "B", "C"])]
    assert row["verdict_probs"] == pytest.approx((abc / abc.sum()).tolist(), abs=1e-5)


def test_report_compares_two_judge_probes(judge_model_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from pos2distill.config import ReportConfig
    from pos2distill.stages import report

    class Fair(FakeJudge):
        def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
            return [f"{truth(p)} " + ("[[A]]" if f"Answer A: {truth(p)}" in p else "[[B]]")
                    for p in prompts]

    def run(fake: type, out: str) -> None:
        monkeypatch.setattr("pos2distill.generation.HFGenerator", fake)
        probe.main(ProbeConfig(task="judge", data="synthetic-judge:test", limit=4,
                               n_documents=4, model=str(judge_model_dir),
                               out=str(tmp_path / out)))

    run(FakeJudge, "before")
    run(Fair, "after")
    result = report.main(ReportConfig(before=str(tmp_path / "before"),
                                      after=str(tmp_path / "after"), out=str(tmp_path / "r")))
    assert result["before"]["consistency"] == 0.0 and result["after"]["consistency"] == 1.0
    assert result["delta"]["accuracy"] == pytest.approx(0.5)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| consistency | 0.000 | 1.000 | +1.000 |" in md
    assert "| fairness | -1.000 | +0.000 | +1.000 |" in md
    assert (tmp_path / "r" / "verdicts_by_order.png").stat().st_size > 0
