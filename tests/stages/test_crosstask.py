"""Cross-task table: hand-made probe summaries in, means, GAPs and deltas out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pos2distill.stages.crosstask import cross_task, markdown


def s(mean: float, gap: float) -> dict[str, float]:
    return {"mean": mean, "gap": gap}


SUMMARIES = {"base": {"retrieval": s(0.7, 0.8), "reasoning": s(0.5, 0.4)},
             "r1": {"retrieval": s(0.95, 0.05), "reasoning": s(0.55, 0.3)},
             "r2": {"retrieval": s(0.65, 0.9), "reasoning": s(0.8, 0.05)}}


def test_cross_task_values() -> None:
    block = cross_task(SUMMARIES)
    r1, r2 = block["models"]["r1"], block["models"]["r2"]
    assert r1["trained_on"] == "retrieval" and r2["trained_on"] == "reasoning"
    assert r1["reasoning"] == {"mean": 0.55, "gap": 0.3, "mean_delta": pytest.approx(0.05),
                               "gap_delta": pytest.approx(-0.1)}
    assert r2["retrieval"]["mean_delta"] == pytest.approx(-0.05)
    assert block["models"]["base"]["retrieval"] == {"mean": 0.7, "gap": 0.8}   # no delta to itself
    assert list(block["models"]) == ["base", "r1", "r2"]


def test_cross_task_markdown() -> None:
    table = markdown(cross_task(SUMMARIES))
    lines = table.splitlines()
    assert lines[2] == "| base model | 0.700 | 0.800 | 0.500 | 0.400 |"
    assert lines[3] == ("| after R1 (trained on retrieval) | 0.950* (+0.250) | 0.050* (-0.750) | "
                        "0.550 (+0.050) | 0.300 (-0.100) |")
    assert lines[4].startswith("| after R2 (trained on reasoning) | 0.650 (-0.050) | 0.900 (+0.100)")


def test_cross_task_needs_the_base_model_and_allows_a_missing_task() -> None:
    with pytest.raises(ValueError, match="base"):
        cross_task({"r1": SUMMARIES["r1"]})
    block = cross_task({"base": SUMMARIES["base"], "r2": {"reasoning": s(0.8, 0.05)}})
    assert "retrieval" not in block["models"]["r2"]
    assert "| – | – |" in markdown(block)


def _probe_dir(root: Path, name: str, mean: float, gap: float, task: str | None) -> str:
    from pos2distill.runinfo import write_json_atomic

    # Retrieval probes in the form written before slots existed (no task), reasoning in today's.
    summary = ({"task": task, "mean": mean, "gap": gap, "by_slot": [], "best_slot": [0, 1],
                "worst_slot": [0, 1], "n_per_slot": 1, "by_group": {}} if task else
               {"mean": mean, "gap": gap, "by_position": [], "best_position": 0,
                "worst_position": 0, "n_per_position": 1})
    write_json_atomic(root / name / "summary.json", summary)
    return str(root / name)


def test_crosstask_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pos2distill.cli import main

    args = ["crosstask", "--out", str(tmp_path / "out")]
    for model, by_task in SUMMARIES.items():
        for task, s_ in by_task.items():
            path = _probe_dir(tmp_path, f"{model}-{task}", s_["mean"], s_["gap"],
                              "reasoning" if task == "reasoning" else None)
            args += [f"--{model}-{task}", path]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| base model | 0.700 | 0.800 | 0.500 | 0.400 |" in printed
    assert json.loads((tmp_path / "out" / "cross_task.json").read_text()) == cross_task(SUMMARIES)
    # A retrieval probe given as a reasoning one is refused in one line.
    bad = ["crosstask", "--base-retrieval", str(tmp_path / "base-retrieval"),
           "--r2-reasoning", str(tmp_path / "base-retrieval"), "--out", str(tmp_path / "x")]
    assert main(bad) == 2
    assert "not a reasoning one" in capsys.readouterr().err
    assert main(["crosstask", "--r1-reasoning", str(tmp_path / "r1-reasoning")]) == 2
    assert "--base-retrieval or --base-reasoning" in capsys.readouterr().err
