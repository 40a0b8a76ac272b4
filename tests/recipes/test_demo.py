"""demo: the whole pipeline, reduced, on the tiny random model.

A random model answers no question, so the teacher would keep nothing and the pipeline would stop
at ``pairs``. The main test therefore swaps the generator for an oracle biased to the first
document (every stage still loads the model, and training runs for real); a second test checks the
error a user gets when the teacher keeps nothing, and a slow one shows it with the real generator.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import OracleHFGenerator, ReasoningOracleHFGenerator
from pos2distill.recipes import demo
from pos2distill.config import DemoConfig
from pos2distill.tasks import get_task
from pos2distill.tasks.positions import slot_key
from pos2distill.errors import ConfigError

S_KEYS = {"accuracy_by_position", "mean", "gap", "n_per_position", "exact_match", "stop_rate",
          "no_answer"}


def test_demo_end_to_end(tiny_model_dir: Path, tmp_path: Path, oracle_hf: Any) -> None:
    cfg = DemoConfig(model=str(tiny_model_dir), out=str(tmp_path / "demo"), n_test=2, n_train=8,
                     epochs=1, batch_size=4)
    result = demo.main(cfg)
    out = tmp_path / "demo"
    summary = json.loads((out / "summary.json").read_text())
    assert result["summary"] == str(out / "summary.json")
    assert result["report"] == str(out / "report" / "report.md")
    assert result["plot"] == str(out / "report" / "accuracy_by_position.png")

    assert {"before", "after", "config"} <= set(summary)
    # Documented: {"before": S, "after": S, "config": {...}}; the three counts are extra.
    assert set(summary) == {"before", "after", "config", "teacher_kept", "pairs", "train_steps"}
    for side in ("before", "after"):
        s = summary[side]
        assert set(s) == S_KEYS
        assert set(s["accuracy_by_position"]) == {str(p) for p in range(20)}
        # The oracle answers only when the gold document is first.
        assert s["accuracy_by_position"] == {str(p): (1.0 if p == 0 else 0.0) for p in range(20)}
        assert s["mean"] == pytest.approx(1 / 20)
        assert s["gap"] == 1.0
        assert s["n_per_position"] == 2
    assert summary["teacher_kept"] == 8
    assert summary["pairs"] == 8 * (4 + 1)
    assert summary["train_steps"] == 40 // 4
    assert set(summary["config"]) == {"demo", "probe_before", "teach", "pairs", "train",
                                      "probe_after", "report"}
    assert summary["config"]["demo"] == dataclasses.asdict(cfg)
    assert summary["config"]["train"]["lr"] == cfg.lr
    assert summary["config"]["probe_after"]["model"] == str(out / "train" / "model")

    for path in ("probe_before/rows.jsonl", "probe_before/summary.json", "probe_after/table.md",
                 "probe_after/accuracy_by_position.png", "teach.jsonl", "pairs.jsonl",
                 "train/log.jsonl", "train/model/config.json", "train/model/model.safetensors",
                 "report/report.md", "report/report.json", "report/accuracy_by_position.png"):
        assert (out / path).is_file(), path
    assert len((out / "probe_after" / "rows.jsonl").read_text().splitlines()) == 2 * 20
    assert len((out / "train" / "log.jsonl").read_text().splitlines()) == 10
    report = (out / "report" / "report.md").read_text()
    assert "| mean | 0.050 | 0.050 | +0.000 |" in report
    assert "| GAP (max − min) | 1.000 | 1.000 | +0.000 |" in report
    # The trained model's card holds the report (table and plot).
    card = (out / "train" / "model" / "README.md").read_text()
    assert "| GAP (max − min) | 1.000 | 1.000 | +0.000 |" in card
    assert (out / "train" / "model" / "results" / "retrieval-synthetic-test-d20.png").is_file()
    # Probes and teacher loaded a model; the after-probe loaded the trained one.
    before_model, teacher_model, after_model = [g.model for g in OracleHFGenerator.instances]
    for a, b in zip(before_model.parameters(), teacher_model.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b)
               for a, b in zip(before_model.parameters(), after_model.parameters()))
    assert OracleHFGenerator.instances[1].calls[0][1] == 32


def test_demo_summary_lists_positions_in_order(tmp_path: Path) -> None:
    from pos2distill.runinfo import write_json_atomic

    s = {"by_slot": [{"slot": [p], "accuracy": p / 20} for p in range(20)],
         "mean": 0.5, "gap": 0.95, "n_per_slot": 1}
    write_json_atomic(tmp_path / "summary.json", {"before": get_task("retrieval").headline(s)})
    on_disk = json.loads((tmp_path / "summary.json").read_text())["before"]
    assert list(on_disk["accuracy_by_position"].values()) == [p / 20 for p in range(20)]


def test_demo_stops_clearly_when_the_teacher_keeps_nothing(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Wrong(OracleHFGenerator):
        def generate(self, prompts: Any, *, max_new_tokens: int) -> list[str]:
            return ["nowhere"] * len(prompts)

    monkeypatch.setattr("pos2distill.generation.HFGenerator", Wrong)
    out = tmp_path / "demo"
    with pytest.raises(ConfigError, match=r"--teach: .*teach\.jsonl has no kept teacher "
                                          r"responses"):
        demo.main(DemoConfig(model=str(tiny_model_dir), out=str(out), n_test=1, n_train=3,
                             epochs=1, batch_size=4))
    assert (out / "teach.jsonl").read_text() == ""
    assert not (out / "pairs.jsonl").exists() and not (out / "summary.json").exists()


@pytest.mark.slow
def test_demo_with_the_real_generator_on_a_random_model(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    """What a user sees with an untrained model: the probe runs, the teacher keeps nothing."""
    with pytest.raises(ConfigError, match="has no kept teacher responses"):
        demo.main(DemoConfig(model=str(tiny_model_dir), out=str(tmp_path / "demo"), n_test=2,
                             n_train=8, epochs=1, batch_size=4))
    summary = json.loads((tmp_path / "demo" / "probe_before" / "summary.json").read_text())
    assert [e["slot"] for e in summary["by_slot"]] == [[p] for p in range(20)]


# ---------------------------------------------------------------------------------------------
# --task reasoning | both (R2, cross-task), with the reasoning oracle (right only when the hops
# are adjacent and in order, i.e. in the "connected" configurations and at the last two documents)

S2_KEYS = {"accuracy_by_configuration", "accuracy_by_group", "mean", "gap", "n_per_configuration"}
PAPER_KEYS = ["0,1", "5,6", "12,13", "17,18", "0,8", "5,13", "6,14", "8,16", "8,0", "13,5", "14,6",
              "16,8"]


def test_demo_reasoning_end_to_end(tiny_model_dir: Path, tmp_path: Path,
                                   reasoning_oracle_hf: Any) -> None:
    cfg = DemoConfig(model=str(tiny_model_dir), out=str(tmp_path / "demo"), task="reasoning",
                     n_test=2, n_train=6, r2_n_train=6, epochs=1, r2_epochs=1, batch_size=4)
    result = demo.main(cfg)
    out = tmp_path / "demo"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"before", "after", "config", "cross_task", "teacher_kept", "pairs",
                            "train_steps"}
    for side in ("before", "after"):
        s = summary[side]
        assert set(s) == S2_KEYS and list(s["accuracy_by_configuration"]) == PAPER_KEYS
        assert s["accuracy_by_configuration"] == {k: (1.0 if k in PAPER_KEYS[:4] else 0.0)
                                                  for k in PAPER_KEYS}
        assert s["accuracy_by_group"] == {"connected": 1.0, "disconnected": 0.0, "reversed": 0.0}
        assert s["gap"] == 1.0 and s["n_per_configuration"] == 2
    assert summary["teacher_kept"] == 6 and summary["pairs"] == 6 * 4
    assert summary["train_steps"] == 24 // 4
    assert summary["config"]["reasoning_train"]["method"] == "r2"
    assert summary["config"]["reasoning_teach"]["advantageous"] == "last"
    assert set(summary["config"]) == {"demo", "probe_before", "reasoning_probe_before",
                                      "reasoning_teach", "reasoning_pairs", "reasoning_train",
                                      "reasoning_probe_after", "reasoning_report",
                                      "r2_on_retrieval"}
    cross = summary["cross_task"]
    assert set(cross["models"]) == {"base", "r2"}
    assert cross["models"]["r2"]["trained_on"] == "reasoning"
    # The retrieval oracle answers only with the gold first: 1 of 20 positions, for both models.
    assert cross["models"]["r2"]["retrieval"] == {"mean": pytest.approx(0.05), "gap": 1.0,
                                                  "mean_delta": 0.0, "gap_delta": 0.0}
    assert cross["models"]["base"]["reasoning"]["mean"] == pytest.approx(4 / 12)
    table = (out / "cross_task.md").read_text()
    assert "| base model | 0.050 | 1.000 | 0.333 | 1.000 |" in table
    assert result["cross_task"] == str(out / "cross_task.md")
    assert result["report"] == str(out / "reasoning" / "report" / "report.md")
    for path in ("reasoning/teach.jsonl", "reasoning/pairs.jsonl", "reasoning/train/log.jsonl",
                 "reasoning/train/model/model.safetensors", "reasoning/probe_after/rows.jsonl",
                 "reasoning/report/accuracy_by_configuration.png", "cross/r2_on_retrieval/summary.json",
                 "probe_before/summary.json"):
        assert (out / path).is_file(), path
    # Generators in order: base retrieval probe, base reasoning probe, teacher, R2 model on
    # reasoning, R2 model on retrieval. The teacher is the base model; the R2 model was trained.
    gens = ReasoningOracleHFGenerator.instances
    assert len(gens) == 5
    params = [list(g.model.parameters()) for g in gens]
    assert all(torch.equal(a, b) for a, b in zip(params[1], params[2]))
    assert any(not torch.equal(a, b) for a, b in zip(params[1], params[3]))
    assert all(torch.equal(a, b) for a, b in zip(params[3], params[4]))


def test_demo_both_tasks(tiny_model_dir: Path, tmp_path: Path, reasoning_oracle_hf: Any) -> None:
    cfg = DemoConfig(model=str(tiny_model_dir), out=str(tmp_path / "demo"), task="both",
                     n_test=1, n_train=4, r2_n_train=4, epochs=1, r2_epochs=1,
                     batch_size=4)
    demo.main(cfg)
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary) == {"retrieval", "reasoning", "cross_task", "config"}
    assert set(summary["retrieval"]["before"]) == S_KEYS
    assert set(summary["reasoning"]["after"]) == S2_KEYS
    assert list(summary["cross_task"]["models"]) == ["base", "r1", "r2"]
    assert summary["cross_task"]["models"]["r1"]["trained_on"] == "retrieval"
    assert {"reasoning", "retrieval"} <= set(summary["cross_task"]["models"]["r1"])
    table = (tmp_path / "demo" / "cross_task.md").read_text()
    assert "after R1 (trained on retrieval)" in table and "after R2 (trained on reasoning)" in table
    assert (tmp_path / "demo" / "cross" / "r1_on_reasoning" / "summary.json").is_file()


def test_demo_r2_training_questions_are_their_own_and_zero_follows_r1s() -> None:
    def limits(**kw: Any) -> tuple[int, int]:
        cfg = DemoConfig(n_train=40, **kw)
        return (demo.stage_configs(cfg)["teach"].limit,
                demo.reasoning_stage_configs(cfg)["reasoning_teach"].limit)

    default = DemoConfig().r2_n_train
    assert default != 40 and limits() == (40, default)
    assert limits(r2_n_train=900) == (40, 900)
    assert limits(r2_n_train=0) == (40, 40)
    with pytest.raises(ConfigError, match="--r2-n-train: must be >= 0"):
        DemoConfig(r2_n_train=-1)


@pytest.mark.slow
def test_demo_reasoning_with_the_real_generator_on_a_random_model(tiny_model_dir: Path,
                                                                  tmp_path: Path) -> None:
    """An untrained model writes no chain-of-thought: the probes run, the teacher keeps nothing."""
    with pytest.raises(ConfigError, match="has no kept teacher responses"):
        demo.main(DemoConfig(model=str(tiny_model_dir), out=str(tmp_path / "demo"), n_test=1,
                             n_train=4, task="reasoning"))
    summary = json.loads((tmp_path / "demo" / "reasoning" / "probe_before" / "summary.json")
                         .read_text())
    assert [slot_key(c["slot"]) for c in summary["by_slot"]] == PAPER_KEYS
    assert all(c["no_answer"] == 1.0 for c in summary["by_slot"])


def test_demo_analyze_adds_each_analysis_of_base_and_trained_models(tmp_path: Path) -> None:
    # The embedded model itself: the analyses need a model that answers at the advantageous slot.
    cfg = DemoConfig(out=str(tmp_path / "demo"), task="both", n_test=1, n_train=8, r2_n_train=8,
                     epochs=1, r2_epochs=1, batch_size=4, analyze=True, analyze_limit=3)
    demo.main(cfg)
    out = tmp_path / "demo"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["analysis"]) == set(demo.analysis_configs(cfg))
    for name, path in summary["analysis"].items():
        analysis = json.loads(Path(path).read_text())
        assert analysis["analysis"] == demo.analysis_configs(cfg)[name].what
    assert (out / "analysis" / "tokens-r1" / "summary.json").is_file()
    assert (out / "reasoning" / "analysis" / "attention" / "summary.json").is_file()


J_KEYS = {"consistency", "fairness", "first_wins", "second_wins", "accuracy", "n_pairs"}


def test_demo_judge_on_the_embedded_judge(tmp_path: Path) -> None:
    """--task judge on the shipped judge, reduced: probe (with BPC), teach, pairs, R1 and swap-SFT
    on the same pairs, both probed; the summary holds the issue's J blocks."""
    cfg = DemoConfig(task="judge", out=str(tmp_path / "demo"), judge_n_test=6, judge_n_train=8,
                     judge_epochs=1, batch_size=4, split="dev")
    assert cfg.model == "tiny-judge"                    # the task's embedded default
    result = demo.main(cfg)
    out = tmp_path / "demo"
    summary = json.loads((out / "summary.json").read_text())
    assert result["summary"] == str(out / "summary.json")
    assert result["report"] == str(out / "judge" / "report" / "report.md")
    assert {"before", "after", "bpc", "swap_sft", "config"} <= set(summary)
    for side in ("before", "after", "bpc", "swap_sft"):
        assert set(summary[side]) == J_KEYS and summary[side]["n_pairs"] == 6, side
        j = summary[side]
        assert j["first_wins"] + j["second_wins"] <= 1.0 + 1e-9
        assert 0.0 <= j["consistency"] <= 1.0 and 0.0 <= j["accuracy"] <= 1.0
    # BPC averages both orders: consistent and fair by construction.
    assert summary["bpc"]["consistency"] == 1.0 and summary["bpc"]["fairness"] == 0.0
    assert summary["pairs"] == 2 * summary["teacher_kept"] > 0
    assert summary["config"]["judge_train"]["method"] == "r1"
    assert summary["config"]["judge_swap_sft"]["method"] == "swap-sft"
    config = summary["config"]
    assert config["judge_swap_sft"]["pairs"] == config["judge_train"]["pairs"]
    assert summary["config"]["judge_probe_before"]["n_documents"] == cfg.judge_n_documents
    rows = (out / "judge" / "probe_after" / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 2 * 6                           # every pair in both orders
    for path in ("judge/probe_before/verdicts_by_order.png", "judge/train/model/model.safetensors",
                 "judge/swap-sft/model/model.safetensors", "judge/report/report.md"):
        assert (out / path).is_file(), path


def test_demo_judge_refuses_analyze() -> None:
    with pytest.raises(ConfigError, match="--analyze"):
        DemoConfig(task="judge", analyze=True)
