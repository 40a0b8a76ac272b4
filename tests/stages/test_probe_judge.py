"""probe --task judge: both orders per item, verdicts and their probabilities, the order-bias
summary, BPC and stability, with a biased fake judge and end to end on a tiny random Llama."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import torch

from conftest import tiny_llama
from pos2distill.config import ProbeConfig
from pos2distill.stages import probe
from pos2distill.tasks.judge import J_KEYS
from pos2distill.tasks.prompts import encode_prompt

_SUBJECT = re.compile(r"Question: Which city is home to (\w+)")
_ANSWER = re.compile(r"^Answer ([AB]): (\w+)$", re.MULTILINE)


def truth(prompt: str) -> str:
    name = _SUBJECT.search(prompt).group(1)                          # type: ignore[union-attr]
    return re.search(rf"^- Title: {name}\n(\w+)$", prompt, re.MULTILINE).group(1)  # type: ignore


def primacy_probs(prompt: str) -> list[float]:
    """A judge that knows the city but weighs the answer shown first 5 times: greedy always
    picks [[A]] (right only when the true answer is shown first); its probabilities still lean
    to the truth, so BPC gets every pair right."""
    shown = dict(_ANSWER.findall(prompt))
    t = truth(prompt)
    w = [5 * (1 if shown["A"] == t else 0.25), 1 if shown["B"] == t else 0.25, 0.05]
    return [x / sum(w) for x in w]


class FakeJudge:
    """Drop-in for HFGenerator: greedy = the truth and the argmax verdict of ``primacy_probs``;
    samples alternate [[A]], [[B]], [[A]]; scores the verdict token with ``primacy_probs``."""

    def __init__(self, model: Any, tokenizer: Any, *, chat: bool, batch_size: int = 32,
                 progress: Callable[[int], None] | None = None):
        self.tokenizer, self.progress = tokenizer, progress

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        if self.progress:
            self.progress(len(prompts))
        out = []
        for p in prompts:
            probs = primacy_probs(p)
            out.append(f"{truth(p)} {('[[A]]', '[[B]]', '[[C]]')[probs.index(max(probs))]}")
        return out

    def next_token_logprobs(self, prompts: Sequence[str], continuations: Sequence[Sequence[int]],
                            tokens: Sequence[Sequence[int]]) -> list[list[float]]:
        return [[math.log(x) - 1.0 for x in primacy_probs(p)] for p in prompts]

    def sample(self, prompts: Sequence[str], *, n: int, temperature: float,
               max_new_tokens: int) -> list[list[str]]:
        return [[("x [[A]]", "x [[B]]")[k % 2] for k in range(n)] for _ in prompts]


@pytest.fixture(scope="module")
def judge_tok() -> Any:
    """The test tokenizer grown by the judge template's words (as the embedded judge's is)."""
    from pos2distill.tiny.tokenizer import build_tokenizer, corpus_words

    return build_tokenizer(corpus_words() + ["[", "]", "A", "B", "C", "(", ")", "Give", "short",
                                             "then", "or", "tie", "right"])


@pytest.fixture(scope="module")
def judge_model_dir(tmp_path_factory: pytest.TempPathFactory, judge_tok: Any) -> Path:
    path = tmp_path_factory.mktemp("judge-llama")
    tiny_llama(judge_tok, initializer_range=0.2).save_pretrained(path)
    judge_tok.save_pretrained(path)
    return path


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
