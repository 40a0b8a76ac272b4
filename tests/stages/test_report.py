"""report: the files of two probe folders' comparison, for both tasks, from summaries of today's
format and of the format written before slots existed. (The numbers of a comparison, by hand,
are tested with the Task in tests/tasks/test_base.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import retrieval_summary as summary
from pos2distill.stages import report
from pos2distill.config import ReportConfig
from pos2distill.errors import ConfigError
from pos2distill.tasks import get_task


def old_summary(accs: dict[int, float], counts: dict[int, int], best: int) -> dict[str, Any]:
    """:func:`summary` as probe wrote it before slots existed (no ``task``, positions)."""
    values = list(accs.values())
    return {"model": "some/model", "data": "synthetic:test", "n_documents": 5,
            "by_position": [{"position": p, "accuracy": a, "stderr": 0.01 * (p + 1),
                             "count": counts[p]} for p, a in accs.items()],
            "mean": sum(values) / len(values), "gap": max(values) - min(values),
            "best_position": best,
            "worst_position": min(accs, key=accs.get),  # type: ignore[arg-type]
            "n_per_position": min(counts.values())}


BEFORE_ARGS = ({0: 0.8, 2: 0.4, 4: 0.6}, {0: 10, 2: 10, 4: 10}, 0)
AFTER_ARGS = ({4: 0.7, 0: 0.75, 2: 0.65}, {0: 10, 2: 9, 4: 10}, 0)
BEFORE, AFTER = summary(*BEFORE_ARGS), summary(*AFTER_ARGS)


def reasoning_summary(correct: dict[tuple[int, int], list[float]]) -> dict[str, Any]:
    rows = [{"slot": list(s), "correct": c, "extracted": "x" if c else None}
            for s, cs in correct.items() for c in cs]
    return get_task("reasoning").summarize(rows, list(correct))


SUMMARIES = {
    "retrieval": (BEFORE, AFTER),
    "reasoning": (reasoning_summary({(0, 1): [1.0, 1.0], (0, 2): [0.0, 1.0], (2, 0): [0.0, 0.0]}),
                  reasoning_summary({(0, 1): [1.0, 0.0], (0, 2): [1.0, 1.0], (2, 0): [1.0, 0.0]})),
}


def write_probe(folder: Path, s: dict[str, Any]) -> Path:
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(s))
    return folder


@pytest.mark.parametrize("task_name", ["retrieval", "reasoning"])
def test_report_main(tmp_path: Path, task_name: str) -> None:
    task = get_task(task_name)
    before, after = SUMMARIES[task_name]
    write_probe(tmp_path / "b", before)
    write_probe(tmp_path / "a", after)
    out = tmp_path / "report"
    result = report.main(ReportConfig(before=str(tmp_path / "b"),
                                      after=str(tmp_path / "a" / "summary.json"), out=str(out)))
    cmp = task.compare(before, after)
    plot = {"retrieval": "accuracy_by_position.png",
            "reasoning": "accuracy_by_configuration.png"}[task_name]
    assert result == {"report": str(out / "report.md"), "plot": str(out / plot), **cmp}
    assert (out / "report.md").read_text() == task.comparison_table(cmp)
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(cmp))
    assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="no probe summary found"):
        report.main(ReportConfig(before=str(tmp_path / "missing"), after=str(tmp_path / "a"),
                                 out=str(out)))


def test_report_refuses_probes_of_different_tasks(tmp_path: Path) -> None:
    write_probe(tmp_path / "r", BEFORE)
    write_probe(tmp_path / "q", SUMMARIES["reasoning"][1])
    with pytest.raises(ConfigError, match=r"different tasks \(retrieval vs reasoning\)"):
        report.main(ReportConfig(before=str(tmp_path / "r"), after=str(tmp_path / "q"),
                                 out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_report_on_probe_folders_written_before_slots(tmp_path: Path) -> None:
    """summary.json with by_position, best_position, worst_position, n_per_position and no
    task: read as a retrieval probe, and reported exactly as today's summaries are."""
    write_probe(tmp_path / "b", old_summary(*BEFORE_ARGS))
    write_probe(tmp_path / "a", old_summary(*AFTER_ARGS))
    out = tmp_path / "report"
    result = report.main(ReportConfig(before=str(tmp_path / "b"), after=str(tmp_path / "a"),
                                      out=str(out)))
    task = get_task("retrieval")
    cmp = task.compare(BEFORE, AFTER)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(cmp))
    assert on_disk["task"] == "retrieval"
    assert [r["slot"] for r in on_disk["by_slot"]] == [[0], [2], [4]]
    assert [r["delta"] for r in on_disk["by_slot"]] == pytest.approx([-0.05, 0.25, 0.1])
    assert [r["count"] for r in on_disk["by_slot"]] == [10, 9, 10]
    assert on_disk["before"]["best_slot"] == [0] and on_disk["after"]["best_slot"] == [0]
    assert on_disk["advantageous_slot"] == [0]
    assert on_disk["advantageous_delta"] == pytest.approx(-0.05)
    assert on_disk["mean_delta"] == pytest.approx(0.1)
    assert on_disk["gap_delta"] == pytest.approx(-0.3)
    assert (out / "report.md").read_text() == task.comparison_table(cmp)
    assert result["plot"] == str(out / "accuracy_by_position.png")
    assert (out / "accuracy_by_position.png").read_bytes()[:4] == b"\x89PNG"

    # An old probe compares with a new one too (a model probed before and after the upgrade).
    write_probe(tmp_path / "new", AFTER)
    mixed = report.main(ReportConfig(before=str(tmp_path / "b"), after=str(tmp_path / "new"),
                                     out=str(tmp_path / "mixed")))
    assert json.loads((tmp_path / "mixed" / "report.json").read_text()) == on_disk
    assert mixed["report"] == str(tmp_path / "mixed" / "report.md")


# ---------------------------------------------------------------------------------------------
# Probes of several --n-documents, and the trained model's card
# ---------------------------------------------------------------------------------------------

def write_multi(folder: Path, summaries: dict[int, dict[str, Any]], model: str) -> Path:
    """A probe folder of several counts: nD/summary.json and heatmap.json (2 depth bins)."""
    folder.mkdir()
    for n, s in summaries.items():
        write_probe(folder / f"n{n}", {**s, "model": model, "data": "synthetic:test",
                                       "n_documents": n})
    counts = sorted(summaries)
    (folder / "heatmap.json").write_text(json.dumps({
        "task": "retrieval", "model": model, "data": "synthetic:test", "n_documents": counts,
        "depth_bins": [[0, 50], [50, 100]], "accuracy": [[0.5] * len(counts), [None] * len(counts)],
        "count": [[2] * len(counts), [0] * len(counts)],
        "folders": {str(n): f"n{n}" for n in counts}}))
    return folder


def test_report_of_several_counts(tmp_path: Path) -> None:
    task = get_task("retrieval")
    write_multi(tmp_path / "b", {5: BEFORE, 7: BEFORE}, "base")
    write_multi(tmp_path / "a", {5: AFTER, 7: BEFORE}, "trained")
    out = tmp_path / "r"
    result = report.main(ReportConfig(before=str(tmp_path / "b"), after=str(tmp_path / "a"),
                                      out=str(out)))
    assert result["report"] == str(out / "report.md") and result["plot"] == str(out / "heatmap.png")
    assert "card" not in result                              # "trained" is no model folder
    # Each count is the report of its two folders.
    for n, before, after in ((5, BEFORE, AFTER), (7, BEFORE, BEFORE)):
        one = report.main(ReportConfig(before=str(tmp_path / "b" / f"n{n}"),
                                       after=str(tmp_path / "a" / f"n{n}"),
                                       out=str(tmp_path / f"one{n}")))
        assert {k: v for k, v in one.items() if k not in ("report", "plot")} == \
            {k: v for k, v in result["by_documents"][str(n)].items() if k not in ("report", "plot")}
        assert (out / f"n{n}" / "report.md").read_text() == (tmp_path / f"one{n}" /
                                                             "report.md").read_text()
    text = (out / "report.md").read_text()
    assert text.startswith("# Accuracy by gold depth × documents\n\n![before and after](heatmap.png)")
    assert "## 5 documents" in text and "![7 documents](n7/accuracy_by_position.png)" in text
    assert task.comparison_table(result["by_documents"]["5"]) in text
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert set(json.loads((out / "report.json").read_text())) == {"task", "heatmap",
                                                                  "by_documents"}


def test_report_of_several_counts_refuses_a_mismatch(tmp_path: Path) -> None:
    write_multi(tmp_path / "b", {5: BEFORE, 7: BEFORE}, "base")
    write_multi(tmp_path / "a", {5: AFTER}, "trained")
    write_probe(tmp_path / "one", AFTER)
    with pytest.raises(ConfigError, match=r"different --n-documents \(5,7 vs 5\)"):
        report.main(ReportConfig(before=str(tmp_path / "b"), after=str(tmp_path / "a"),
                                 out=str(tmp_path / "r")))
    with pytest.raises(ConfigError, match=r"--before holds probes of several --n-documents .* "
                                          r"\(e.g. --before .*/b/n20\)"):
        report.main(ReportConfig(before=str(tmp_path / "b"), after=str(tmp_path / "one"),
                                 out=str(tmp_path / "r")))


def test_report_fills_the_card_of_the_trained_model(tmp_path: Path) -> None:
    from pos2distill import modelcard

    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    card = modelcard.render_card({"library_name": "transformers", "tags": ["pos2distill"]},
                                 f"# run\n\n## Results\n\n{modelcard.RESULTS_START}\nnot yet\n"
                                 f"{modelcard.RESULTS_END}\n")
    (model / "README.md").write_text(card)
    probed = {"data": "synthetic:test", "n_documents": 5}
    write_probe(tmp_path / "b", {**BEFORE, **probed, "model": "some/model"})
    write_probe(tmp_path / "a", {**AFTER, **probed, "model": str(model)})
    result = report.main(ReportConfig(before=str(tmp_path / "b"), after=str(tmp_path / "a"),
                                      out=str(tmp_path / "r")))
    assert result["card"] == str(model / "README.md")
    section = modelcard.results_section((model / "README.md").read_text())
    key = "retrieval-synthetic-test-d5"
    assert section.startswith(f"<!-- pos2distill:result {key} -->\n"
                              f"![before and after](results/{key}.png)\n\n"
                              "**retrieval on `synthetic:test`, 5 documents** (9 questions per "
                              "gold position): before = `some/model`, after = this model.")
    assert get_task("retrieval").comparison_table(get_task("retrieval").compare(BEFORE, AFTER)) \
        in section
    assert (model / "results" / f"{key}.png").read_bytes() == \
        (tmp_path / "r" / "accuracy_by_position.png").read_bytes()
    # Several counts: a block per count and one for the heatmaps.
    write_multi(tmp_path / "mb", {5: BEFORE, 7: BEFORE}, "base")
    write_multi(tmp_path / "ma", {5: AFTER, 7: AFTER}, str(model))
    report.main(ReportConfig(before=str(tmp_path / "mb"), after=str(tmp_path / "ma"),
                             out=str(tmp_path / "mr")))
    section = modelcard.results_section((model / "README.md").read_text())
    keys = [line.split()[2] for line in section.splitlines()
            if line.startswith("<!-- pos2distill:result ")]
    assert keys == [key, "retrieval-synthetic-test-d7", "retrieval-synthetic-test-depth"]
    assert (model / "results" / "retrieval-synthetic-test-depth.png").read_bytes() == \
        (tmp_path / "mr" / "heatmap.png").read_bytes()
