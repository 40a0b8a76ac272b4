"""probe: accuracy by position with a fake generator, and the command end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeGenerator, first_title
from pos2distill.stages import probe
from pos2distill.data import synthetic
from pos2distill.config import ProbeConfig
from pos2distill.errors import ConfigError
from pos2distill.tasks.prompts import INSTRUCTIONS
from pos2distill.data.records import Document, Record, write_records


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return synthetic.generate("test", 4, n_documents=5)


def test_probe_prompts_put_gold_at_each_position(records: list[Record], tok: Any) -> None:
    items = probe.probe_prompts(records, [0, 2, 4], tok, template="authors", chat="auto", seed=0)
    assert [(r.id, p) for r, p, _ in items] == [(r.id, p) for r in records for p in (0, 2, 4)]
    for record, position, prompt in items:
        subject = record.question.split()[-1]
        titles = [line[len("- Title: "):] for line in prompt.splitlines()
                  if line.startswith("- Title: ")]
        assert len(titles) == 5 and titles.index(subject) == position
        assert prompt.startswith("<|bos|><|user|>\n") and prompt.endswith(record.question)
    # Same seed: same prompts (the same distractor orders for every model compared).
    again = probe.probe_prompts(records, [0, 2, 4], tok, template="authors", chat="auto", seed=0)
    assert [p for *_, p in again] == [p for *_, p in items]
    other = probe.probe_prompts(records, [0, 2, 4], tok, template="authors", chat="auto", seed=1)
    assert [p for *_, p in other] != [p for *_, p in items]


def test_probe_prompts_with_a_custom_instruction(records: list[Record], tok: Any) -> None:
    default = probe.probe_prompts(records, [0, 4], tok, template="authors", chat="auto", seed=0)
    custom = probe.probe_prompts(records, [0, 4], tok, template="authors", chat="auto", seed=0,
                                 instruction="Answer the question.")
    for (r, p, d), (r2, p2, c) in zip(default, custom, strict=True):
        assert (r, p) == (r2, p2)
        assert c.startswith("<|bos|><|user|>\nAnswer the question.\n- Title: ")
        assert c.replace("Answer the question.", INSTRUCTIONS["authors"], 1) == d


def test_run_probe_with_a_first_position_biased_fake(records: list[Record], tok: Any) -> None:
    items = probe.probe_prompts(records, [0, 2, 4], tok, template="authors", chat="auto", seed=0)
    gen = FakeGenerator()
    chunks: list[list[dict]] = []
    probe.run_probe(items, gen, max_new_tokens=7, chunk=5, on_rows=chunks.append)
    assert [len(c) for c in chunks] == [5, 5, 2]
    assert [len(prompts) for prompts, _ in gen.calls] == [5, 5, 2]
    assert all(n == 7 for _, n in gen.calls)
    rows = [row for c in chunks for row in c]
    assert [(row["id"], row["position"]) for row in rows] == [(r.id, p) for r, p, _ in items]
    for row, (record, position, prompt) in zip(rows, items):
        assert row["answers"] == list(record.answers)
        assert row["correct"] == (1.0 if position == 0 else 0.0)
        assert row["prediction"].splitlines()[0] == (record.answers[0] if position == 0
                                                     else "I do not know")
        assert (first_title(prompt) == record.question.split()[-1]) == (position == 0)

    summary = probe.summarize_rows(rows)
    assert [(s["position"], s["accuracy"], s["count"]) for s in summary["by_position"]] == \
           [(0, 1.0, 4), (2, 0.0, 4), (4, 0.0, 4)]
    assert summary["mean"] == pytest.approx(1 / 3)
    assert summary["gap"] == 1.0
    assert summary["best_position"] == 0 and summary["worst_position"] == 2
    assert summary["n_per_position"] == 4


def test_score_rows_uses_best_subspan_em(records: list[Record]) -> None:
    r = records[0]
    city = r.answers[0]
    items = [(r, 0, "p0"), (r, 1, "p1"), (r, 2, "p2"), (r, 3, "p3")]
    preds = [f"He lives in {city.upper()}.", f"\n\nthe {city}", f"Nowhere\n{city}", ""]
    rows = probe.score_rows(items, preds)
    assert [row["correct"] for row in rows] == [1.0, 1.0, 0.0, 0.0]
    assert rows[1] == {"id": r.id, "position": 1, "prediction": f"\n\nthe {city}",
                       "answers": [city], "correct": 1.0}


def test_summarize_rows_by_hand() -> None:
    rows = ([{"position": 0, "correct": c} for c in (1.0, 1.0, 0.0, 1.0)]
            + [{"position": 3, "correct": c} for c in (0.0, 1.0)]
            + [{"position": 1, "correct": 0.0}])
    s = probe.summarize_rows(rows)
    assert [(r["position"], r["accuracy"], r["count"]) for r in s["by_position"]] == \
           [(0, 0.75, 4), (1, 0.0, 1), (3, 0.5, 2)]
    assert s["by_position"][0]["stderr"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5)
    assert s["by_position"][1]["stderr"] == 0.0
    assert s["mean"] == pytest.approx((0.75 + 0.0 + 0.5) / 3)     # over positions, not examples
    assert s["gap"] == 0.75
    assert s["best_position"] == 0 and s["worst_position"] == 1 and s["n_per_position"] == 1


def test_markdown_table_is_one_based() -> None:
    summary = {"by_position": [{"position": 0, "accuracy": 0.75, "stderr": 0.2166, "count": 4},
                               {"position": 19, "accuracy": 0.5, "stderr": 0.25, "count": 2}],
               "mean": 0.625, "gap": 0.25, "best_position": 0}
    assert probe.markdown_table(summary) == (
        "| gold position | accuracy | s.e. | n |\n"
        "|---:|---:|---:|---:|\n"
        "| 1 | 0.750 | 0.217 | 4 |\n"
        "| 20 | 0.500 | 0.250 | 2 |\n"
        "\n"
        "mean 0.625 · GAP 0.250 · best position 1 (1-based)\n")


def test_load_summary_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no probe summary found"):
        probe.load_summary(tmp_path)


# ---------------------------------------------------------------------------------------------
# End to end on the tiny random model
# ---------------------------------------------------------------------------------------------

def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / probe.ROWS).read_text().splitlines() if line]


def test_probe_main_end_to_end_and_resume(tiny_model_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "probe"
    cfg = ProbeConfig(model=str(tiny_model_dir), data="synthetic:test", limit=3, n_documents=5,
                      out=str(out), positions="all", batch_size=4, max_new_tokens=3)
    summary = probe.main(cfg)
    for name in (probe.ROWS, probe.SUMMARY, probe.TABLE, probe.PLOT, "run.json"):
        assert (out / name).is_file(), name
    assert (out / probe.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(out)
    assert len(rows) == 3 * 5
    keys = sorted((r["id"], r["position"]) for r in rows)
    assert keys == sorted((f"synth-test-0-{k}", p) for k in range(3) for p in range(5))
    on_disk = json.loads((out / probe.SUMMARY).read_text())
    assert on_disk == summary
    assert summary["n_documents"] == 5 and summary["model"] == str(tiny_model_dir)
    assert [r["position"] for r in summary["by_position"]] == list(range(5))
    assert summary["n_per_position"] == 3
    assert summary == {"model": str(tiny_model_dir), "data": "synthetic:test", "n_documents": 5,
                       **probe.summarize_rows(rows)}
    assert (out / probe.TABLE).read_text() == probe.markdown_table(summary)

    # Same config again (batch size does not count): nothing to generate, no duplicate rows.
    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a complete probe must not load the model again")

    monkeypatch.setattr("pos2distill.modeling.load_causal_lm", no_model)
    again = probe.main(ProbeConfig(**{**cfg.__dict__, "batch_size": 7}))
    assert _rows(out) == rows and again == summary
    monkeypatch.undo()

    # Interrupted after 6 rows: the rest is generated, identical to the first run.
    (out / probe.ROWS).write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    resumed = probe.main(cfg)
    new_rows = _rows(out)
    assert len(new_rows) == 15 and new_rows[:6] == rows[:6]
    assert sorted(new_rows, key=lambda r: (r["id"], r["position"])) == \
           sorted(rows, key=lambda r: (r["id"], r["position"]))
    assert resumed == summary

    # A different config in the same folder is refused before anything is mixed.
    with pytest.raises(ConfigError, match="different config"):
        probe.main(ProbeConfig(**{**cfg.__dict__, "seed": 1}))
    with pytest.raises(ConfigError, match="different config"):
        probe.main(ProbeConfig(**{**cfg.__dict__, "positions": "0,4"}))
    assert len(_rows(out)) == 15


def test_probe_main_records_the_instruction(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe"
    cfg = ProbeConfig(model=str(tiny_model_dir), data="synthetic:test", limit=1, n_documents=3,
                      out=str(out), max_new_tokens=2, instruction="Answer the question.")
    probe.main(cfg)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["instruction"] == "Answer the question."
    with pytest.raises(ConfigError, match="different config"):
        probe.main(ProbeConfig(**{**cfg.__dict__, "instruction": ""}))


def test_probe_main_on_a_records_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    recs = [Record(id=f"r{i}", question=f"Where does {name} live?", answers=(city,),
                   documents=(Document("Kavo", "Kavo lives in Oslo."),
                              Document(name, f"{name} lives in {city}."),
                              Document("Dilu", "Dilu lives in Rome.")), gold=(1,))
            for i, (name, city) in enumerate([("Tude", "Lima"), ("Zeme", "Paris")])]
    data = tmp_path / "mine.jsonl"
    write_records(data, recs)
    out = tmp_path / "probe"
    summary = probe.main(ProbeConfig(model=str(tiny_model_dir), data=str(data), out=str(out),
                                     positions="first,last", template="litm", chat="off",
                                     max_new_tokens=2))
    rows = _rows(out)
    assert sorted((r["id"], r["position"]) for r in rows) == \
           [("r0", 0), ("r0", 2), ("r1", 0), ("r1", 2)]
    assert [r["position"] for r in summary["by_position"]] == [0, 2]
    assert summary["n_documents"] == 3 and summary["n_per_position"] == 2
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "probe" and str(data) in run["inputs"]


def test_changed_data_file_is_not_mixed_with_old_rows(tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    docs = (Document("Kavo", "Kavo lives in Oslo."), Document("Tude", "Tude lives in Lima."))
    data = tmp_path / "mine.jsonl"
    write_records(data, [Record(id="r0", question="Where does Tude live?", answers=("Lima",),
                                documents=docs, gold=(1,))])
    cfg = ProbeConfig(model=str(tiny_model_dir), data=str(data), out=str(tmp_path / "probe"),
                      positions="0", max_new_tokens=1)
    probe.main(cfg)
    # Same file name, new gold answer: the old rows are no longer valid.
    write_records(data, [Record(id="r0", question="Where does Tude live?", answers=("Paris",),
                                documents=docs, gold=(1,))])
    try:
        probe.main(cfg)
    except ConfigError:
        return                                            # refusing is a fine answer too
    assert [row["answers"] for row in _rows(tmp_path / "probe")] == [["Paris"]]


def test_resume_after_a_half_written_row(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe"
    cfg = ProbeConfig(model=str(tiny_model_dir), data="synthetic:test", limit=2, n_documents=3,
                      out=str(out), positions="all", max_new_tokens=1)
    probe.main(cfg)
    rows = _rows(out)
    text = "".join(json.dumps(r) + "\n" for r in rows[:3]) + json.dumps(rows[3])[:20]
    (out / probe.ROWS).write_text(text)
    probe.main(cfg)
    assert sorted(map(json.dumps, _rows(out))) == sorted(map(json.dumps, rows))


# ---------------------------------------------------------------------------------------------
# Prompts longer than the model's context (--too-long)
# ---------------------------------------------------------------------------------------------

def long_and_short_records() -> list[Record]:
    """Two 4-document questions: the first fits the 64-token test model with 4 new tokens (55
    prompt tokens), the second has a long last distractor (64 tokens) and fits without it."""
    short, other = synthetic.generate("test", 2, n_documents=4)
    docs = other.documents[:-1] + (Document(other.documents[-1].title, "Lima " * 10),)
    return [short, Record(id=other.id, question=other.question, answers=other.answers,
                          documents=docs, gold=other.gold)]


def test_probe_too_long_fail_skip_truncate(short_context_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "mixed.jsonl"
    write_records(data, long_and_short_records())
    base = dict(model=str(short_context_model_dir), data=str(data), positions="all",
                max_new_tokens=4)

    with pytest.raises(ConfigError, match=r"synth-test-0-1' with its gold at position 1: the "
                                          r"prompt has 64 tokens, more than the 60 that fit"):
        probe.main(ProbeConfig(**base, out=str(tmp_path / "fail")))
    assert not (tmp_path / "fail").exists()                   # refused before writing anything

    skip = probe.main(ProbeConfig(**base, out=str(tmp_path / "skip"), too_long="skip"))
    assert sorted({r["id"] for r in _rows(tmp_path / "skip")}) == ["synth-test-0-0"]
    assert skip["too_long"] == {"policy": "skip", "max_prompt_tokens": 60, "skipped": 4,
                                "truncated": 0}

    cut = probe.main(ProbeConfig(**base, out=str(tmp_path / "cut"), too_long="truncate"))
    # The long question loses its last distractor: the gold still fits at positions 1 to 3, not 4.
    assert sorted((r["id"], r["position"]) for r in _rows(tmp_path / "cut")) == \
           [("synth-test-0-0", p) for p in range(4)] + [("synth-test-0-1", p) for p in range(3)]
    assert cut["too_long"] == {"policy": "truncate", "max_prompt_tokens": 60, "skipped": 1,
                               "truncated": 3}
    assert [r["count"] for r in cut["by_position"]] == [2, 2, 2, 1]
