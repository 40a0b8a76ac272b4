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

from conftest import OracleHFGenerator
from pos2distill import demo
from pos2distill.config import DemoConfig
from pos2distill.errors import ConfigError

S_KEYS = {"accuracy_by_position", "mean", "gap", "n_per_position"}


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
    # Probes and teacher loaded a model; the after-probe loaded the trained one.
    before_model, teacher_model, after_model = [g.model for g in OracleHFGenerator.instances]
    for a, b in zip(before_model.parameters(), teacher_model.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b)
               for a, b in zip(before_model.parameters(), after_model.parameters()))
    assert OracleHFGenerator.instances[1].calls[0][1] == 32


def test_demo_summary_lists_positions_in_order(tmp_path: Path) -> None:
    from pos2distill.runinfo import write_json_atomic

    s = {"by_position": [{"position": p, "accuracy": p / 20} for p in range(20)],
         "mean": 0.5, "gap": 0.95, "n_per_position": 1}
    write_json_atomic(tmp_path / "summary.json", {"before": demo.position_summary(s)})
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
    assert len(summary["by_position"]) == 20
