"""probe: scores by slot with fake generators, for both tasks, and the command end to end on a tiny
model (resume, rows written before slots existed, --too-long)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeGenerator, first_title, reasoning_oracle_answer
from pos2distill.stages import probe
from pos2distill.data import synthetic
from pos2distill.config import ProbeConfig
from pos2distill.errors import ConfigError
from pos2distill.tasks import get_task
from pos2distill.tasks.positions import slot_key, slot_rng
from pos2distill.tasks.prompts import INSTRUCTIONS, render_prompt
from pos2distill.data.records import Document, Record, write_records

RETRIEVAL, REASONING = get_task("retrieval"), get_task("reasoning")
_DOC = re.compile(r"^- Title: (\w+)\n(.*)$", re.MULTILINE)


def shown_documents(prompt: str) -> list[Document]:
    return [Document(t, x) for t, x in _DOC.findall(prompt)]


def gold_slot(prompt: str, record: Record) -> tuple[int, ...]:
    """Where a rendered prompt shows the record's gold documents (in hop order)."""
    docs = shown_documents(prompt)
    return tuple(docs.index(record.documents[g]) for g in record.gold)


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return synthetic.generate("test", 4, n_documents=5)


#: Per task: questions (5 or 6 documents), slots to probe, the template.
PROMPTS = {
    "retrieval": (lambda: synthetic.generate("test", 4, n_documents=5),
                  [(0,), (2,), (4,)], "authors"),
    "reasoning": (lambda: synthetic.generate_reasoning("test", 4, n_documents=6),
                  [(0, 1), (4, 1), (5, 0), (2, 5)], "reasoning"),
}


@pytest.mark.parametrize("task_name", ["retrieval", "reasoning"])
def test_probe_prompts_put_gold_at_each_slot(tok: Any, task_name: str) -> None:
    make, slots, template = PROMPTS[task_name]
    task, recs = get_task(task_name), make()
    n_documents = len(recs[0].documents)
    items = probe.probe_prompts(recs, slots, tok, task=task, template=template, chat="auto",
                                seed=0)
    assert [(r.id, s) for r, s, _ in items] == [(r.id, s) for r in recs for s in slots]
    for record, slot, prompt in items:
        assert len(shown_documents(prompt)) == n_documents
        assert gold_slot(prompt, record) == slot
        assert prompt.startswith("<|bos|><|user|>\n") and prompt.endswith(record.question)
        assert prompt == render_prompt(task.place(record, slot, slot_rng(0, record.id, slot)),
                                       tok, template=template, chat="auto")
    # Same seed: same prompts (the same distractor orders for every model compared).
    again = probe.probe_prompts(recs, slots, tok, task=task, template=template, chat="auto",
                                seed=0)
    assert [p for *_, p in again] == [p for *_, p in items]
    other = probe.probe_prompts(recs, slots, tok, task=task, template=template, chat="auto",
                                seed=1)
    assert [p for *_, p in other] != [p for *_, p in items]


def test_retrieval_prompts_are_those_of_before_slots(records: list[Record], tok: Any) -> None:
    """A one-document slot is seeded by its position alone, as probes before slots were."""
    from pos2distill.tasks.positions import place_gold, rng_for

    items = probe.probe_prompts(records, [(0,), (3,)], tok, task=RETRIEVAL, template="authors",
                                chat="auto", seed=2)
    assert [p for *_, p in items] == [
        render_prompt(place_gold(r, p, rng_for(2, r.id, p)), tok, template="authors")
        for r in records for p in (0, 3)]


@pytest.mark.parametrize("task_name", ["retrieval", "reasoning"])
def test_probe_prompts_with_a_custom_instruction(tok: Any, task_name: str) -> None:
    make, slots, template = PROMPTS[task_name]
    task, recs = get_task(task_name), make()
    default = probe.probe_prompts(recs, slots, tok, task=task, template=template, chat="auto",
                                  seed=0)
    custom = probe.probe_prompts(recs, slots, tok, task=task, template=template, chat="auto",
                                 seed=0, instruction="Answer the question.")
    for (r, p, d), (r2, p2, c) in zip(default, custom, strict=True):
        assert (r, p) == (r2, p2)
        assert c.startswith("<|bos|><|user|>\nAnswer the question.\n- Title: ")
        assert c.replace("Answer the question.", INSTRUCTIONS[template], 1) == d


def test_run_probe_with_a_first_position_biased_fake(records: list[Record], tok: Any) -> None:
    slots = [(0,), (2,), (4,)]
    items = probe.probe_prompts(records, slots, tok, task=RETRIEVAL, template="authors",
                                chat="auto", seed=0)
    gen = FakeGenerator()
    chunks: list[list[dict]] = []
    probe.run_probe(items, gen, RETRIEVAL, max_new_tokens=7, chunk=5, on_rows=chunks.append)
    assert [len(c) for c in chunks] == [5, 5, 2]
    assert [len(prompts) for prompts, _ in gen.calls] == [5, 5, 2]
    assert all(n == 7 for _, n in gen.calls)
    rows = [row for c in chunks for row in c]
    assert [(row["id"], tuple(row["slot"])) for row in rows] == [(r.id, s) for r, s, _ in items]
    for row, (record, slot, prompt) in zip(rows, items):
        assert row["task"] == "retrieval"
        assert row["answers"] == list(record.answers)
        assert row["correct"] == (1.0 if slot == (0,) else 0.0)
        assert row["prediction"].splitlines()[0] == (record.answers[0] if slot == (0,)
                                                     else "I do not know")
        assert (first_title(prompt) == record.question.split()[-1]) == (slot == (0,))

    summary = RETRIEVAL.summarize(rows, slots)
    assert [(s["slot"], s["accuracy"], s["count"]) for s in summary["by_slot"]] == \
           [([0], 1.0, 4), ([2], 0.0, 4), ([4], 0.0, 4)]
    assert summary["mean"] == pytest.approx(1 / 3)
    assert summary["gap"] == 1.0
    assert summary["best_slot"] == [0] and summary["worst_slot"] == [2]
    assert summary["n_per_slot"] == 4


def test_run_probe_with_a_connected_hops_fake(tok: Any) -> None:
    recs = synthetic.generate_reasoning("test", 3, n_documents=4)
    slots = [(0, 1), (0, 3), (3, 0)]
    items = probe.probe_prompts(recs, slots, tok, task=REASONING, template="reasoning",
                                chat="auto", seed=0)
    gen = FakeGenerator(reasoning_oracle_answer)
    chunks: list[list[dict]] = []
    probe.run_probe(items, gen, REASONING, max_new_tokens=30, chunk=4, on_rows=chunks.append)
    assert [len(c) for c in chunks] == [4, 4, 1]
    assert all(n == 30 for _, n in gen.calls)
    rows = [row for c in chunks for row in c]
    assert [(row["id"], tuple(row["slot"])) for row in rows] == [(r.id, s) for r, s, _ in items]
    expected = {(0, 1): (1.0, "connected", True), (0, 3): (0.0, "disconnected", None),
                (3, 0): (0.0, "reversed", "Atlantis")}
    for row, (record, slot, _) in zip(rows, items):
        correct, group, extracted = expected[slot]
        assert (row["task"], row["correct"], row["group"]) == ("reasoning", correct, group)
        assert row["extracted"] == (record.answers[0] if extracted is True else extracted)
        assert row["answers"] == list(record.answers)

    summary = REASONING.summarize(rows, slots)
    assert [(s["slot"], s["accuracy"], s["count"], s["no_answer"]) for s in summary["by_slot"]] \
        == [([0, 1], 1.0, 3, 0.0), ([0, 3], 0.0, 3, 1.0), ([3, 0], 0.0, 3, 0.0)]
    assert summary["mean"] == pytest.approx(1 / 3) and summary["gap"] == 1.0
    assert summary["best_slot"] == [0, 1] and summary["worst_slot"] == [0, 3]
    assert {g: v["mean"] for g, v in summary["by_group"].items()} == \
           {"connected": 1.0, "disconnected": 0.0, "reversed": 0.0}


def test_score_rows_uses_best_subspan_em(records: list[Record]) -> None:
    r = records[0]
    city = r.answers[0]
    items = [(r, (0,), "p0"), (r, (1,), "p1"), (r, (2,), "p2"), (r, (3,), "p3")]
    preds = [f"He lives in {city.upper()}.", f"\n\nthe {city}", f"Nowhere\n{city}", ""]
    rows = probe.score_rows(RETRIEVAL, items, preds)
    assert [row["correct"] for row in rows] == [1.0, 1.0, 0.0, 0.0]
    assert rows[1] == {"id": r.id, "task": "retrieval", "slot": [1],
                       "prediction": f"\n\nthe {city}", "answers": [city], "correct": 1.0}


def test_score_rows_uses_reasoning_em() -> None:
    (r,) = synthetic.generate_reasoning("test", 1, n_documents=4)
    city = r.answers[0]
    items = [(r, (0, 1), "p0"), (r, (1, 0), "p1"), (r, (0, 3), "p2"), (r, (2, 3), "p3")]
    preds = [f"So the answer is: {city.upper()}.", f"The answer is {city}\nThe answer is Oslo",
             f"{city}", f"The answer is: {city} or Oslo"]
    rows = probe.score_rows(REASONING, items, preds)
    assert [row["correct"] for row in rows] == [1.0, 0.0, 0.0, 0.0]
    assert rows[0] == {"id": r.id, "task": "reasoning", "slot": [0, 1],
                       "prediction": preds[0], "answers": [city], "correct": 1.0,
                       "group": "connected", "extracted": f"{city.upper()}."}
    assert [(row["group"], row["extracted"]) for row in rows[1:]] == \
           [("reversed", "Oslo"), ("disconnected", None), ("connected", f"{city} or Oslo")]


def test_load_summary_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no probe summary found"):
        probe.load_summary(tmp_path)


# ---------------------------------------------------------------------------------------------
# End to end on the tiny random model
# ---------------------------------------------------------------------------------------------

def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / probe.ROWS).read_text().splitlines() if line]


def _key(row: dict) -> tuple[str, list[int]]:
    return row["id"], row["slot"]


#: Per task: the synthetic test set, its document count, the slot option, a spec of 5 slots
#: and those slots, another spec, and the question ids.
E2E = {
    "retrieval": dict(data="synthetic:test", n_documents=5, option="positions", spec="all",
                      slots=[(p,) for p in range(5)], other="0,4", ids="synth-test-0-{}"),
    "reasoning": dict(data="synthetic-reasoning:test", n_documents=4, option="configurations",
                      spec="0,1;1,2;2,3;3,0;0,2", slots=[(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)],
                      other="0,1", ids="synth-reasoning-test-0-{}"),
}


@pytest.mark.parametrize("task_name", ["retrieval", "reasoning"])
def test_probe_main_end_to_end_and_resume(tiny_model_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, task_name: str) -> None:
    spec, task = E2E[task_name], get_task(task_name)
    out = tmp_path / "probe"
    cfg = ProbeConfig(task=task_name, model=str(tiny_model_dir), data=spec["data"], limit=3,
                      n_documents=spec["n_documents"], out=str(out), batch_size=4,
                      max_new_tokens=3, **{spec["option"]: spec["spec"]})
    summary = probe.main(cfg)
    for name in (probe.ROWS, probe.SUMMARY, probe.TABLE, task.plot_file, "run.json"):
        assert (out / name).is_file(), name
    assert (out / task.plot_file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(out)
    assert len(rows) == 3 * 5
    keys = sorted((r["id"], tuple(r["slot"])) for r in rows)
    assert keys == sorted((spec["ids"].format(k), s) for k in range(3) for s in spec["slots"])
    assert all(r["task"] == task_name and "position" not in r for r in rows)
    on_disk = json.loads((out / probe.SUMMARY).read_text())
    assert on_disk == summary
    assert summary["task"] == task_name
    assert summary["n_documents"] == spec["n_documents"] and summary["model"] == str(tiny_model_dir)
    assert [tuple(e["slot"]) for e in summary["by_slot"]] == spec["slots"]
    assert summary["n_per_slot"] == 3
    assert summary == {"model": str(tiny_model_dir), "data": spec["data"],
                       "n_documents": spec["n_documents"], **task.summarize(rows, spec["slots"])}
    assert (out / probe.TABLE).read_text() == task.table(summary)

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
    assert sorted(new_rows, key=_key) == sorted(rows, key=_key)
    assert resumed == summary

    # A different config in the same folder is refused before anything is mixed.
    with pytest.raises(ConfigError, match="different config"):
        probe.main(ProbeConfig(**{**cfg.__dict__, "seed": 1}))
    with pytest.raises(ConfigError, match="different config"):
        probe.main(ProbeConfig(**{**cfg.__dict__, spec["option"]: spec["other"]}))
    assert len(_rows(out)) == 15


def old_row(row: dict) -> dict:
    """A probe row as probe wrote it before slots existed (no ``task``, no ``slot``):
    retrieval rows had ``position``, reasoning rows ``configuration`` and ``positions``."""
    common = {k: row[k] for k in ("id", "prediction", "answers", "correct")}
    if row["task"] == "retrieval":
        return {"id": row["id"], "position": row["slot"][0], **common}
    return {"id": row["id"], "configuration": slot_key(row["slot"]), "positions": row["slot"],
            "group": row["group"], **common, "extracted": row["extracted"]}


#: Per task: a probe of 2 questions × 3 slots the oracle fakes answer.
OLD = {"retrieval": dict(data="synthetic:test", n_documents=3, positions="all"),
       "reasoning": dict(task="reasoning", data="synthetic-reasoning:test", n_documents=4,
                         configurations="0,1;1,0;0,2")}


@pytest.mark.parametrize("task_name", ["retrieval", "reasoning"])
def test_probe_resumes_rows_written_before_slots(tiny_model_dir: Path, tmp_path: Path,
                                                 reasoning_oracle_hf: Any,
                                                 task_name: str) -> None:
    out = tmp_path / "probe"
    cfg = ProbeConfig(model=str(tiny_model_dir), limit=2, out=str(out), max_new_tokens=4,
                      **OLD[task_name])
    summary = probe.main(cfg)
    rows = _rows(out)
    (gen,) = reasoning_oracle_hf.instances
    prompts = [p for call, _ in gen.calls for p in call]
    assert len(rows) == len(prompts) == 6
    assert summary["by_slot"][0]["accuracy"] == 1.0            # the oracles are right there

    # Interrupted after 4 rows, written by a version from before slots.
    old = [old_row(r) for r in rows]
    (out / probe.ROWS).write_text("".join(json.dumps(r) + "\n" for r in old[:4]))
    reasoning_oracle_hf.instances.clear()
    assert probe.main(cfg) == summary
    (gen,) = reasoning_oracle_hf.instances
    assert [p for call, _ in gen.calls for p in call] == prompts[4:]   # only the missing ones
    assert _rows(out) == old[:4] + rows[4:]                    # the old rows are kept as they are

    # Every row old: nothing to generate.
    (out / probe.ROWS).write_text("".join(json.dumps(r) + "\n" for r in old))
    reasoning_oracle_hf.instances.clear()
    assert probe.main(cfg) == summary
    assert reasoning_oracle_hf.instances == [] and _rows(out) == old


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
    assert sorted(_key(r) for r in rows) == [("r0", [0]), ("r0", [2]), ("r1", [0]), ("r1", [2])]
    assert [e["slot"] for e in summary["by_slot"]] == [[0], [2]]
    assert summary["n_documents"] == 3 and summary["n_per_slot"] == 2
    assert summary["task"] == "retrieval"
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

    with pytest.raises(ConfigError, match=r"synth-test-0-1' with its gold document\(s\) at "
                                          r"position\(s\) 1: the prompt has 64 tokens, more "
                                          r"than the 60 that fit"):
        probe.main(ProbeConfig(**base, out=str(tmp_path / "fail")))
    assert not (tmp_path / "fail").exists()                   # refused before writing anything

    skip = probe.main(ProbeConfig(**base, out=str(tmp_path / "skip"), too_long="skip"))
    assert sorted({r["id"] for r in _rows(tmp_path / "skip")}) == ["synth-test-0-0"]
    assert skip["too_long"] == {"policy": "skip", "max_prompt_tokens": 60, "skipped": 4,
                                "truncated": 0}

    cut = probe.main(ProbeConfig(**base, out=str(tmp_path / "cut"), too_long="truncate"))
    # The long question loses its last distractor: the gold still fits at positions 1 to 3, not 4.
    assert sorted(_key(r) for r in _rows(tmp_path / "cut")) == \
           [("synth-test-0-0", [p]) for p in range(4)] + [("synth-test-0-1", [p]) for p in range(3)]
    assert cut["too_long"] == {"policy": "truncate", "max_prompt_tokens": 60, "skipped": 1,
                               "truncated": 3}
    assert [r["count"] for r in cut["by_slot"]] == [2, 2, 2, 1]


# ---------------------------------------------------------------------------------------------
# Several --n-documents: one folder per count and the depth × documents heatmap
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, positions_to_bins", [
    (10, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),            # one position per bin
    (20, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]),
    (4, [1, 3, 6, 8]),                                # middles at 12.5, 37.5, 62.5, 87.5 %
    (5, [1, 3, 5, 7, 9]),                             # 10 % is the lower edge of bin 1
])
def test_depth_bin_by_hand(n: int, positions_to_bins: list[int]) -> None:
    assert [probe.depth_bin(p, n, 10) for p in range(n)] == positions_to_bins
    # Two bins: the middle document of an odd count sits on the edge and goes to the upper one.
    assert [probe.depth_bin(p, n, 2) for p in range(n)] == [int(p + 0.5 >= n / 2) for p in range(n)]


def test_depth_heatmap_by_hand() -> None:
    def row(p: int, correct: float) -> dict:
        return {"slot": [p], "correct": correct}

    rows = {4: [row(0, 1.0), row(1, 0.0), row(2, 1.0), row(3, 1.0), row(0, 0.0)],
            2: [row(0, 1.0), row(1, 0.0), row(1, 1.0)]}
    heat = probe.depth_heatmap(rows)
    # min(10, 2) = 2 bins: 0-50 % and 50-100 %; with 4 documents positions 0, 1 | 2, 3.
    assert heat == {"n_documents": [2, 4], "depth_bins": [[0.0, 50.0], [50.0, 100.0]],
                    "accuracy": [[1.0, 1 / 3], [0.5, 1.0]], "count": [[1, 3], [2, 2]]}
    assert probe.depth_heatmap({3: [row(0, 1.0)]})["accuracy"] == [[1.0], [None], [None]]
    assert probe.heatmap_table(heat) == (
        "| gold depth (% of the documents) | 2 documents | 4 documents |\n"
        "|---|---:|---:|\n| 0–50 | 1.000 | 0.333 |\n| 50–100 | 0.500 | 1.000 |\n")


def test_several_counts_config() -> None:
    from pos2distill.options import from_mapping

    assert ProbeConfig(n_documents=[20]).n_documents == 20       # one count stays a number
    assert ProbeConfig(n_documents=[10, 20]).n_documents == [10, 20]
    assert from_mapping(ProbeConfig, {"n_documents": [4, 6]}).n_documents == [4, 6]
    with pytest.raises(ConfigError, match="must be an int or a list of int"):
        from_mapping(ProbeConfig, {"n_documents": "10,20"})
    with pytest.raises(ConfigError, match="repeats a count"):
        ProbeConfig(n_documents=[10, 10])
    with pytest.raises(ConfigError, match="--n-documents: must be > 0"):
        ProbeConfig(n_documents=[10, 0])
    with pytest.raises(ConfigError, match="--task reasoning places several"):
        ProbeConfig(task="reasoning", n_documents=[10, 20])


def test_several_counts_end_to_end(tiny_model_dir: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pos2distill import modeling

    loads = []
    load = modeling.load_causal_lm
    monkeypatch.setattr("pos2distill.modeling.load_causal_lm",
                        lambda *a, **k: loads.append(a) or load(*a, **k))
    common = dict(model=str(tiny_model_dir), data="synthetic:test", limit=2, batch_size=8,
                  max_new_tokens=2)
    out = tmp_path / "multi"
    result = probe.main(ProbeConfig(**common, n_documents=[4, 6], out=str(out)))
    assert len(loads) == 1                                   # one model load for both counts
    assert sorted(p.name for p in out.iterdir()) == ["heatmap.json", "heatmap.md", "heatmap.png",
                                                     "n4", "n6", "run.json"]
    # Each count's folder is what a one-count probe into it writes (and its run.json agrees).
    for n in (4, 6):
        single = probe.main(ProbeConfig(**common, n_documents=n, out=str(out / f"n{n}")))
        assert single == result["by_documents"][str(n)]
        assert single["n_documents"] == n and single["n_per_slot"] == 2
    assert len(loads) == 1                                   # nothing left to generate
    heat = probe.load_heatmap(out)
    rows = {n: _rows(out / f"n{n}") for n in (4, 6)}
    assert heat == {"task": "retrieval", "model": str(tiny_model_dir), "data": "synthetic:test",
                    **probe.depth_heatmap(rows), "folders": {"4": "n4", "6": "n6"}}
    assert len(heat["depth_bins"]) == 4
    assert (out / "heatmap.md").read_text() == probe.heatmap_table(heat)
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert probe.describe(result).endswith(f"heatmap: {out / 'heatmap.png'}")
    # Other counts in the same folder are refused; a single count keeps today's layout.
    with pytest.raises(ConfigError, match="different config"):
        probe.main(ProbeConfig(**common, n_documents=[4, 8], out=str(out)))
    probe.main(ProbeConfig(**common, n_documents=4, out=str(tmp_path / "one")))
    assert not list((tmp_path / "one").glob("heatmap*")) and not (tmp_path / "one" / "n4").exists()
