"""analyze: the three analyses end to end on tiny models; token recovery on a model built so that
one forced token flips the answer; attention masses against eager attention summed over spans
found independently; bad input is one line and exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from conftest import FakeGenerator, reasoning_oracle_answer, save_model_dir, tiny_llama
from helpers import teacher_rows
from pos2distill import cli
from pos2distill.config import AnalyzeConfig
from pos2distill.data import synthetic
from pos2distill.data.records import write_jsonl
from pos2distill.errors import ConfigError
from pos2distill.stages import analyze
from pos2distill.tasks.prompts import encode_prompt
from pos2distill.training.heads import position_ids

N_DOCS = 4


def _cfg(model: Path, out: Path, **kw: Any) -> AnalyzeConfig:
    base = dict(model=str(model), n_documents=N_DOCS, limit=3, out=str(out), batch_size=8,
                max_new_tokens=6)
    return AnalyzeConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def teach_file(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> Path:
    """Correct retrieval responses at the first position (the oracle's), 3 questions."""
    records = synthetic.generate("test", 3, n_documents=N_DOCS)
    rows = teacher_rows(records, FakeGenerator(), tok, task="retrieval", adv=(0,),
                        template="authors", chat="auto", seed=0, max_new_tokens=8)
    path = tmp_path_factory.mktemp("teach") / "teach.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory: pytest.TempPathFactory, sharp_model: Any, tok: Any) -> Path:
    return save_model_dir(tmp_path_factory, "sharp-llama", sharp_model, tok)


# ---------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize("values, message", [
    ({"what": "heads"}, "--what: 'heads' is not one of tokens, thoughts, attention"),
    ({"what": "tokens", "compare": "m"}, "--compare draws two models' attention"),
    ({"advantageous": "auto"}, "--advantageous auto: analyze takes the advantageous slot"),
    ({"configurations": "0,1"}, "--configurations places the documents of --task reasoning"),
    ({"batch_size": 0}, "--batch-size"),
])
def test_config_errors_name_the_flag(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        AnalyzeConfig(**values)


def test_config_defaults() -> None:
    cfg = AnalyzeConfig(what="attention")
    assert (cfg.out, cfg.limit, cfg.advantageous) == ("runs/analyze/attention", 100, "first")
    assert AnalyzeConfig(task="reasoning").advantageous == "last"


def test_what_is_also_the_first_argument(tmp_path: Path) -> None:
    from pos2distill.options import from_args

    for argv, what in ((["analyze", "thoughts", "--limit", "5"], "thoughts"),
                       (["analyze", "--what", "attention"], "attention")):
        args = cli.build_parser().parse_args(argv)
        del args.quiet
        assert from_args(AnalyzeConfig, args).what == what


# ---------------------------------------------------------------------------------------------
# tokens: a model whose answer one forced token flips


class FlipModel(torch.nn.Module):
    """A causal LM written by hand over the tiny tokenizer, reading synthetic ``authors`` prompts
    token by token. Right after the question: with the asked person's document first it answers
    the gold city (logit 4) before the first document's city (2); otherwise the first document's
    city (4) before the gold city (3, rank 2). After any first token: EOS (5). So at every other
    position the answer diverges at token 1 with the gold token second, and forcing it gives the
    right answer."""

    def __init__(self, tok: Any):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.V, self.eos = len(tok), tok.eos_token_id
        self.id = tok.convert_tokens_to_ids
        self.cities = [self.id(c) for c in synthetic.CITIES]

    def next_logits(self, seq: list[int]) -> torch.Tensor:
        out = torch.zeros(self.V)
        if self.id("Question") not in seq:
            return out
        q = seq.index(self.id("Question")) + 7                  # "... home to NAME"
        if len(seq) <= q:
            return out
        if len(seq) > q + 1:                                    # an answer has started
            out[self.eos] = 5.0
            return out
        docs = [(seq[j + 2], seq[j + 3]) for j in range(q) if seq[j] == self.id("Title")
                and seq[j + 1] == self.id(":")]
        gold = dict(docs)[seq[q]]
        first_title, wrong = docs[0]
        if wrong == gold:
            wrong = next(c for c in self.cities if c != gold)
        if first_title == seq[q]:
            out[gold], out[wrong] = 4.0, 2.0
        else:
            out[wrong], out[gold] = 4.0, 3.0
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                logits_to_keep: int = 0, **_: Any) -> Any:
        rows = []
        for ids, att in zip(input_ids.tolist(), attention_mask.tolist()):
            real = [i for i, a in zip(ids, att) if a]
            pad = len(ids) - len(real)
            rows.append(torch.stack([torch.zeros(self.V)] * pad
                                    + [self.next_logits(real[:t + 1]) for t in range(len(real))]))
        logits = torch.stack(rows)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 max_new_tokens: int, pad_token_id: int, eos_token_id: int, **_: Any
                 ) -> torch.Tensor:
        out = []
        for ids, att in zip(input_ids.tolist(), attention_mask.tolist()):
            real, new = [i for i, a in zip(ids, att) if a], []
            while len(new) < max_new_tokens and (not new or new[-1] != eos_token_id):
                new.append(int(self.next_logits(real + new).argmax()))
            out.append(ids + new + [pad_token_id] * (max_new_tokens - len(new)))
        return torch.tensor(out)


def test_recovery_on_a_model_that_one_token_flips(tmp_path: Path, tok: Any, tiny_model_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = FlipModel(tok)
    monkeypatch.setattr(analyze, "load_causal_lm", lambda *a, **k: model)
    summary = analyze.run_tokens(_cfg(tiny_model_dir, tmp_path / "t"))
    assert (summary["questions"], summary["analysed"]) == (3, 3)
    adv = torch.zeros(len(tok))
    stu = torch.zeros(len(tok))
    rows = [json.loads(line) for line in (tmp_path / "t" / "rows.jsonl").open()]
    assert len(rows) == 3 * (N_DOCS - 1)
    for row in rows:
        gold, = (tok.convert_tokens_to_ids(a) for a in row["answers"])
        assert row["token_ids"] == [gold, tok.eos_token_id]          # the model stops: EOS kept
        assert (row["first_divergence"], row["rank"]) == (0, 2)
        assert row["correct"] is False and row["recovered"] is True
        assert row["answer"] != row["answers"][0] and row["forced_answer"] == row["answers"][0]
        # KL at token 1 in closed form, 0 at EOS. With the gold first, the first document's
        # city is the gold one, so the runner-up is the first other city.
        adv.zero_(), stu.zero_()
        adv[gold], adv[next(c for c in model.cities if c != gold)] = 4.0, 2.0
        stu[gold], stu[row["student_token"]] = 3.0, 4.0
        p, q = torch.log_softmax(adv.double(), -1), torch.log_softmax(stu.double(), -1)
        assert row["kl"] == pytest.approx([float((p.exp() * (p - q)).sum()), 0.0], abs=1e-9)
    for e in summary["by_slot"]:
        assert e["slot"] != [0]
        assert (e["diverged"], e["top1_share"], e["top5_share"], e["top10_share"]) == (1, 0, 1, 1)
        assert (e["accuracy"], e["recovery"], e["recovery_diverged"]) == (0, 1, 1)
        assert (e["top1_share_failures"], e["top5_share_failures"]) == (0, 1)
        assert (e["spike_index"], e["kl_by_token"][1]) == (0, 0.0)
        assert e["kl_mean"] == pytest.approx(e["spike_kl"] / 2)
    for name in ("summary.json", "table.md", "kl_by_token.png", "rank_histogram.png", "run.json"):
        assert (tmp_path / "t" / name).exists()
    assert "| 2 |" in (tmp_path / "t" / "table.md").read_text()
    assert analyze.describe(summary).startswith("tokens: 3 questions")


def test_tokens_with_a_teach_file_on_a_random_llama(tmp_path: Path, tiny_model_dir: Path,
                                                    teach_file: Path) -> None:
    summary = analyze.run_tokens(_cfg(tiny_model_dir, tmp_path / "t", teach=str(teach_file),
                                      positions="1,3"))
    assert summary["responses"] == f"teach:{teach_file}"
    assert [e["slot"] for e in summary["by_slot"]] == [[1], [3]]
    rows = [json.loads(line) for line in (tmp_path / "t" / "rows.jsonl").open()]
    assert len(rows) == 6
    for e in summary["by_slot"]:
        mine = [r for r in rows if r["slot"] == e["slot"]]
        assert e["kl_mean"] == pytest.approx(sum(r["kl_mean"] for r in mine) / len(mine))
        for key in ("kl_mean", "spike_kl", "spike_index", "top10_share", "recovery"):
            assert key in e
    for r in rows:
        assert r["response"] == r["answers"][0]                      # the oracle's first line
        assert all(k >= 0 for k in r["kl"])


# ---------------------------------------------------------------------------------------------
# thoughts


def test_thoughts_on_reasoning(tmp_path: Path, tok: Any, tiny_model_dir: Path) -> None:
    records = synthetic.generate_reasoning("test", 2, n_documents=6)
    rows = teacher_rows(records, FakeGenerator(reasoning_oracle_answer), tok, task="reasoning",
                        adv=(4, 5), template="reasoning", chat="auto", seed=0, max_new_tokens=8)
    teach = tmp_path / "teach.jsonl"
    write_jsonl(teach, rows)
    summary = analyze.run_thoughts(_cfg(tiny_model_dir, tmp_path / "th", what="thoughts",
                                        task="reasoning",
                                        n_documents=6, teach=str(teach),
                                        configurations="0,1;4,1;5,0"))
    assert [e["slot"] for e in summary["by_slot"]] == [[4, 5], [0, 1], [4, 1], [5, 0]]
    assert summary["hop_checks"] == {"facts": 2}
    for e in summary["by_slot"]:
        assert e["correct"] + e["retrieval_failed"] + e["reasoning_failed"] == pytest.approx(1)
        assert e["ppl_adv"] >= 1 and e["ppl_gold"] >= 1
    # The oracle's chain is the reference chain: both perplexities are the same number.
    assert all(e["ppl_adv"] == pytest.approx(e["ppl_gold"]) for e in summary["by_slot"])
    assert set(summary["by_group"]) == {"connected", "reversed"}
    for name in ("table.md", "chain_classes.png", "perplexity.png"):
        assert (tmp_path / "th" / name).exists()


def test_thoughts_on_retrieval_measure_perplexity_only(tmp_path: Path, tiny_model_dir: Path,
                                                       teach_file: Path) -> None:
    summary = analyze.run_thoughts(_cfg(tiny_model_dir, tmp_path / "th", what="thoughts",
                                        teach=str(teach_file)))
    assert [e["slot"] for e in summary["by_slot"]] == [[0], [1], [2], [3]]
    assert "hop_checks" not in summary and "correct" not in summary["by_slot"][0]
    assert not (tmp_path / "th" / "chain_classes.png").exists()
    assert analyze.describe(summary).startswith("thoughts: 3 questions  PPL at other slots")


# ---------------------------------------------------------------------------------------------
# attention


def _doc_spans(ids: list[int], tok: Any) -> list[tuple[int, int]]:
    """Document spans found without the package's code: each `- Title : NAME CITY` block."""
    words = tok.convert_ids_to_tokens(ids)
    return [(j, j + 5) for j in range(len(words) - 1) if words[j] == "-"
            and words[j + 1] == "Title"]


def test_attention_masses_are_eager_attention_summed_over_the_spans(
        tmp_path: Path, tok: Any, tiny_model_dir: Path, sharp_dir: Path) -> None:
    cfg = _cfg(tiny_model_dir, tmp_path / "a", what="attention", compare=str(sharp_dir), limit=2)
    summary = analyze.run_attention(cfg)
    for m in (summary, summary["compare"]):
        assert len(m["matrix"]) == N_DOCS and len(m["matrix"][0]) == N_DOCS
        assert [sum(r) for r in m["matrix"]] == pytest.approx(m["document_share"])
        assert all(0 < v < 1 for v in m["document_share"])
        assert len(m["by_query"]["first_answer"]["by_layer"]) == m["layers"] == 2
    rows = [json.loads(line) for line in (tmp_path / "a" / "rows.jsonl").open()]
    assert len(rows) == 2 * 2 * N_DOCS
    # Recompute two rows with eager attention, every layer's full matrix.
    s = analyze.setup(cfg)
    model = tiny_llama(tok)
    model.load_state_dict(analyze._load(cfg, cfg.model).state_dict())
    model.set_attn_implementation("eager")
    for row in rows[:N_DOCS]:
        record = next(r for r in s.records if r.id == row["id"])
        prompt = encode_prompt(tok, s.prompt(record, (0,)), chat=True)
        with torch.no_grad():
            first = int(model(torch.tensor([prompt])).logits[0, -1].argmax())
        ids = encode_prompt(tok, s.prompt(record, tuple(row["slot"])), chat=True) + [first]
        x = torch.tensor([ids])
        with torch.no_grad():
            att = model(x, output_attentions=True, position_ids=position_ids(torch.ones_like(x)))
        probs = torch.stack(att.attentions).mean(2)[:, 0]                     # (L, T, T)
        spans = _doc_spans(ids, tok)
        assert len(spans) == N_DOCS
        for q, t in (("last_prompt", len(ids) - 2), ("first_answer", len(ids) - 1)):
            want = [float(probs[:, t, a:b].sum(-1).mean()) for a, b in spans]
            assert row[q] == pytest.approx(want, abs=1e-5)
    for name in ("attention.png", "attention_first_answer.png", "attention_gold_by_layer.png",
                 "table.md"):
        assert (tmp_path / "a" / name).exists()
    assert "sharp-llama" in analyze.describe(summary)


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit code 2, nothing written


def _one_line(capsys: pytest.CaptureFixture[str], start: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(start), err
    return err


def test_positions_out_of_range(tmp_path: Path, tiny_model_dir: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-q", "analyze", "tokens", "--model", str(tiny_model_dir), "--n-documents",
                     "4", "--positions", "0,7", "--limit", "1", "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "pos2distill analyze: error: --positions: [7] outside 0..3")
    assert not (tmp_path / "o").exists()


def test_a_teach_file_of_another_model(tmp_path: Path, tiny_model_dir: Path, sharp_dir: Path,
                                       teach_file: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    teach = tmp_path / "teach.jsonl"
    teach.write_text(teach_file.read_text())
    (tmp_path / "teach.jsonl.run.json").write_text(json.dumps(
        {"stage": "teach", "config": {"model": str(sharp_dir), "seed": 0}}))
    assert cli.main(["-q", "analyze", "tokens", "--model", str(tiny_model_dir), "--n-documents",
                     "4", "--teach", str(teach), "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, f"pos2distill analyze: error: --teach: {teach} holds responses of --model "
                      f"{sharp_dir}")
    assert not (tmp_path / "o").exists()


def test_a_teach_file_rendered_another_way(tmp_path: Path, tiny_model_dir: Path, teach_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rows = [json.loads(line) for line in teach_file.open()]
    for row in rows:
        row["teacher_prompt"] = row["teacher_prompt"].replace("<|user|>\n", "<|user|>\nHi. ")
    teach = tmp_path / "teach.jsonl"
    write_jsonl(teach, rows)
    assert cli.main(["-q", "analyze", "thoughts", "--model", str(tiny_model_dir),
                     "--teach", str(teach), "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "pos2distill analyze: error: --teach: ")
    assert not (tmp_path / "o").exists()


def test_a_model_without_attention_outputs(tmp_path: Path, tiny_model_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "_can_set_attn_implementation", lambda self: False)
    assert cli.main(["-q", "analyze", "attention", "--model", str(tiny_model_dir),
                     "--n-documents", "4", "--limit", "1", "--out", str(tmp_path / "o")]) == 2
    err = _one_line(capsys, f"pos2distill analyze: error: --model: {tiny_model_dir} (llama) "
                            "does not report its attention weights")
    assert "AttentionInterface" in err
    assert not (tmp_path / "o").exists()


def test_reasoning_data_needs_the_reasoning_task(tmp_path: Path, tiny_model_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-q", "analyze", "thoughts", "--model", str(tiny_model_dir), "--data",
                     "synthetic-reasoning:test", "--limit", "1", "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "pos2distill analyze: error: synthetic-reasoning:test: question")


def test_perplexity_is_the_exponent_of_the_mean_nll() -> None:
    assert analyze.thought_stats.perplexity([0.0, math.log(4.0)]) == pytest.approx(2.0)
