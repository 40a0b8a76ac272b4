"""report: before/after numbers by hand, mismatched probes, markdown and files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pos2distill.stages import report
from pos2distill.config import ReportConfig
from pos2distill.errors import ConfigError


def summary(accs: dict[int, float], counts: dict[int, int], best: int) -> dict[str, Any]:
    values = list(accs.values())
    return {"by_position": [{"position": p, "accuracy": a, "stderr": 0.01 * (p + 1),
                             "count": counts[p]} for p, a in accs.items()],
            "mean": sum(values) / len(values), "gap": max(values) - min(values),
            "best_position": best, "worst_position": min(accs, key=accs.get),
            "n_per_position": min(counts.values())}


BEFORE = summary({0: 0.8, 2: 0.4, 4: 0.6}, {0: 10, 2: 10, 4: 10}, best=0)
AFTER = summary({4: 0.7, 0: 0.75, 2: 0.65}, {0: 10, 2: 9, 4: 10}, best=0)


def test_compare_by_hand() -> None:
    cmp = report.compare(BEFORE, AFTER)
    rows = cmp["by_position"]
    assert [r["position"] for r in rows] == [0, 2, 4]
    assert [r["before"] for r in rows] == [0.8, 0.4, 0.6]
    assert [r["after"] for r in rows] == [0.75, 0.65, 0.7]
    assert [r["delta"] for r in rows] == pytest.approx([-0.05, 0.25, 0.1])
    assert [r["count"] for r in rows] == [10, 9, 10]
    assert [(r["before_stderr"], r["after_stderr"]) for r in rows] == \
           [(0.01, 0.01), (0.03, 0.03), (0.05, 0.05)]
    assert cmp["before"] == {"mean": pytest.approx(0.6), "gap": pytest.approx(0.4),
                             "best_position": 0}
    assert cmp["after"] == {"mean": pytest.approx(0.7), "gap": pytest.approx(0.1),
                            "best_position": 0}
    assert cmp["mean_delta"] == pytest.approx(0.1)
    assert cmp["gap_delta"] == pytest.approx(-0.3)
    assert cmp["advantageous_position"] == 0
    assert cmp["advantageous_delta"] == pytest.approx(-0.05)


def test_advantageous_position_is_the_best_before() -> None:
    before = summary({0: 0.5, 1: 0.9}, {0: 2, 1: 2}, best=1)
    after = summary({0: 0.5, 1: 0.6}, {0: 2, 1: 2}, best=1)
    cmp = report.compare(before, after)
    assert cmp["advantageous_position"] == 1
    assert cmp["advantageous_delta"] == pytest.approx(-0.3)


@pytest.mark.parametrize("after_positions", [[0, 2], [0, 2, 4, 6], [0, 1, 4]])
def test_mismatched_positions(after_positions: list[int]) -> None:
    after = summary({p: 0.5 for p in after_positions}, {p: 3 for p in after_positions}, best=0)
    with pytest.raises(ConfigError, match="different positions") as info:
        report.compare(BEFORE, after)
    assert "[0, 2, 4]" in str(info.value) and str(after_positions) in str(info.value)
    assert "--positions" in str(info.value)


def test_markdown() -> None:
    text = report.markdown(report.compare(BEFORE, AFTER))
    assert text == (
        "| gold position | before | after | Δ |\n"
        "|---:|---:|---:|---:|\n"
        "| 1 | 0.800 | 0.750 | -0.050 |\n"
        "| 3 | 0.400 | 0.650 | +0.250 |\n"
        "| 5 | 0.600 | 0.700 | +0.100 |\n"
        "\n"
        "| | before | after | Δ |\n"
        "|---|---:|---:|---:|\n"
        "| mean | 0.600 | 0.700 | +0.100 |\n"
        "| GAP (max − min) | 0.400 | 0.100 | -0.300 |\n"
        "| position 1 (best before) | 0.800 | 0.750 | -0.050 |\n")


def test_report_main(tmp_path: Path) -> None:
    for name, s in (("b", BEFORE), ("a", AFTER)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(s))
    out = tmp_path / "report"
    result = report.main(ReportConfig(before=str(tmp_path / "b"),
                                      after=str(tmp_path / "a" / "summary.json"), out=str(out)))
    assert result["report"] == str(out / "report.md")
    assert result["plot"] == str(out / "accuracy_by_position.png")
    assert (out / "report.md").read_text() == report.markdown(report.compare(BEFORE, AFTER))
    assert json.loads((out / "report.json").read_text()) == \
           json.loads(json.dumps(report.compare(BEFORE, AFTER)))
    assert (out / "accuracy_by_position.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="no probe summary found"):
        report.main(ReportConfig(before=str(tmp_path / "missing"), after=str(tmp_path / "a"),
                                 out=str(out)))
