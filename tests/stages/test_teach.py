"""teach: exact teacher prompts at the advantageous slot, correctness, resume, auto slot, old
teacher rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeGenerator, first_title, reasoning_oracle_answer
from helpers import teacher_rows
from pos2distill.data import synthetic
from pos2distill.stages import teach
from pos2distill.config import TeachConfig
from pos2distill.errors import ConfigError, DataError
from pos2distill.tasks import get_task
from pos2distill.tasks.positions import place_gold, place_hops, rng_for
from pos2distill.tasks.prompts import render_prompt
from pos2distill.data.records import Record, write_jsonl


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return synthetic.generate("train", 5, n_documents=6)


def test_teacher_rows_keep_exact_prompts(records: list[Record], tok: Any) -> None:
    gen = FakeGenerator()
    rows = teacher_rows(records, gen, tok, task="retrieval", adv=(0,), template="authors",
                        chat="auto", seed=3, max_new_tokens=9)
    assert len(gen.calls) == 1 and gen.calls[0][1] == 9
    assert gen.calls[0][0] == [row["teacher_prompt"] for row in rows]
    for record, row in zip(records, rows):
        expected = render_prompt(place_gold(record, 0, rng_for(3, record.id, 0)), tok,
                                 template="authors", chat="auto")
        assert row["teacher_prompt"] == expected
        assert first_title(expected) == record.gold_document.title
        assert row["id"] == record.id and row["record"] == record.to_dict()
        assert Record.from_dict(row["record"]) == record
        assert (row["task"], row["adv_slot"], row["template"], row["chat"]) == \
               ("retrieval", [0], "authors", "auto")
        assert row["dropped_distractors"] == 0
        assert row["response"] == f"{record.answers[0]}\nand some more text"
        assert row["correct"] is True


def test_teacher_rows_with_a_custom_instruction(records: list[Record], tok: Any) -> None:
    rows = teacher_rows(records, FakeGenerator(), tok, task="retrieval", adv=(0,),
                        template="authors", chat="auto", seed=3, max_new_tokens=9,
                        instruction="Answer the question.")
    for record, row in zip(records, rows):
        assert row["teacher_prompt"] == render_prompt(
            place_gold(record, 0, rng_for(3, record.id, 0)), tok, template="authors",
            instruction="Answer the question.")
        assert row["teacher_prompt"].startswith("<|bos|><|user|>\nAnswer the question.\n- Title: ")
        assert row["instruction"] == "Answer the question." and row["correct"] is True
    # The default rows say so too: the pairs render their student prompts from the row.
    default = teacher_rows(records[:1], FakeGenerator(), tok, task="retrieval", adv=(0,),
                           template="authors", chat="auto", seed=3, max_new_tokens=9)
    assert default[0]["instruction"] == ""


def test_teacher_rows_mark_wrong_answers(records: list[Record], tok: Any) -> None:
    # The oracle only answers when the gold document is first: at position 2 every answer is wrong.
    rows = teacher_rows(records, FakeGenerator(), tok, task="retrieval", adv=(2,),
                        template="authors", chat="auto", seed=0, max_new_tokens=4)
    assert [row["correct"] for row in rows] == [False] * len(records)
    # A mix: correct for questions 0, 2 and 4, wrong for 1 and 3.
    prompts = [render_prompt(place_gold(r, 0, rng_for(0, r.id, 0)), tok) for r in records]
    reply = {p: (f"In {r.answers[0]}." if k % 2 == 0 else "nobody knows")
             for k, (p, r) in enumerate(zip(prompts, records))}
    rows = teacher_rows(records, FakeGenerator(reply.__getitem__), tok, task="retrieval",
                        adv=(0,), template="authors", chat="auto", seed=0, max_new_tokens=4)
    assert [row["correct"] for row in rows] == [True, False, True, False, True]


@pytest.mark.parametrize("adv", [{"adv_position": 0}, {"task": "retrieval", "adv_slot": [0]}])
def test_read_teacher_rows_names_the_missing_field(tmp_path: Path, adv: dict) -> None:
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [{"id": "a", "record": {}, **adv, "teacher_prompt": "p",
                        "response": "r", "template": "authors"},
                       {"id": "b", "record": {}, **adv, "teacher_prompt": "p",
                        "template": "authors"}])
    with pytest.raises(DataError) as info:
        teach.read_teacher_rows(path)
    assert info.value.line == 2 and info.value.field == "response"
    assert "t.jsonl:2" in str(info.value)
    # Neither an advantageous slot nor an old advantageous position: not a teach output.
    write_jsonl(path, [{"id": "a", "record": {}, "teacher_prompt": "p", "response": "r",
                        "template": "authors"}])
    with pytest.raises(DataError) as info:
        teach.read_teacher_rows(path)
    assert info.value.line == 1 and info.value.field == "adv_slot"


def test_read_teacher_rows_upgrades_rows_written_before_slots(tmp_path: Path) -> None:
    common = {"record": {}, "teacher_prompt": "p", "response": "r", "template": "authors"}
    old_retrieval = {"id": "a", **common, "adv_position": 3}
    old_reasoning = {"id": "b", **common, "task": "reasoning", "adv_position": 18,
                     "adv_configuration": [18, 19]}
    new = {"id": "c", **common, "task": "reasoning", "adv_slot": [8, 0]}
    write_jsonl(tmp_path / "t.jsonl", [old_retrieval, old_reasoning, new])
    assert teach.read_teacher_rows(tmp_path / "t.jsonl") == [
        {**old_retrieval, "task": "retrieval", "adv_slot": [3]},
        {**old_reasoning, "adv_slot": [18, 19]},
        new]
    assert teach.upgrade_teacher_row(new) is new


def test_resolve_advantageous(tmp_path: Path) -> None:
    retrieval, reasoning = get_task("retrieval"), get_task("reasoning")
    assert teach.resolve_advantageous(TeachConfig(), retrieval, 20) == (0,)
    assert teach.resolve_advantageous(TeachConfig(advantageous="last"), retrieval, 20) == (19,)
    assert teach.resolve_advantageous(TeachConfig(advantageous="-2"), retrieval, 20) == (18,)
    assert teach.resolve_advantageous(TeachConfig(task="reasoning"), reasoning, 20) == (18, 19)
    assert teach.resolve_advantageous(TeachConfig(task="reasoning", advantageous="first"),
                                      reasoning, 20) == (0, 1)
    # auto: the best slot of --probe, whether its summary.json is today's or from before slots.
    rows = [{"slot": [p], "correct": float(p == 7)} for p in (0, 7, 19)]
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "summary.json").write_text(
        json.dumps(retrieval.summarize(rows, [(0,), (7,), (19,)])))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps(
        {"by_position": [{"position": p, "accuracy": float(p == 7), "stderr": 0.0, "count": 1}
                         for p in (0, 7, 19)],
         "mean": 1 / 3, "gap": 1.0, "best_position": 7, "worst_position": 0,
         "n_per_position": 1}))
    for probe_dir in ("new", "old", "new/summary.json"):
        cfg = TeachConfig(advantageous="auto", probe=str(tmp_path / probe_dir))
        assert teach.resolve_advantageous(cfg, retrieval, 20) == (7,)
    hops = [{"slot": list(s), "correct": float(s == (2, 3)), "extracted": "x"}
            for s in ((0, 1), (2, 3), (3, 2))]
    (tmp_path / "hops").mkdir()
    (tmp_path / "hops" / "summary.json").write_text(
        json.dumps(reasoning.summarize(hops, [(0, 1), (2, 3), (3, 2)])))
    cfg = TeachConfig(task="reasoning", advantageous="auto", probe=str(tmp_path / "hops"))
    assert teach.resolve_advantageous(cfg, reasoning, 20) == (2, 3)
    with pytest.raises(ConfigError, match="a --task reasoning probe; --advantageous auto needs "
                                          "a --task retrieval one"):
        teach.resolve_advantageous(TeachConfig(advantageous="auto", probe=str(tmp_path / "hops")),
                                   retrieval, 20)
    with pytest.raises(ConfigError, match="needs --probe"):
        TeachConfig(advantageous="auto")


#: Per task: the synthetic training set, its (even, for reasoning) document count, the default
#: advantageous slot (where the oracle answers right: first position / connected hops) and another
#: --advantageous (a different config).
MAIN = {
    "retrieval": dict(data="synthetic:train", n_documents=5, template="authors",
                      records=lambda n: synthetic.generate("train", n, n_documents=5),
                      place=place_gold, adv=0, adv_key="0", other="last"),
    "reasoning": dict(data="synthetic-reasoning:train", n_documents=4, template="reasoning",
                      records=lambda n: synthetic.generate_reasoning("train", n, n_documents=4),
                      place=place_hops, adv=(2, 3), adv_key="2,3", other="first"),
}


@pytest.mark.parametrize("task_name", ["retrieval", "reasoning"])
def test_teach_main_keeps_correct_rows_and_reuses_a_complete_run(
        tiny_model_dir: Path, tmp_path: Path, reasoning_oracle_hf: Any,
        monkeypatch: pytest.MonkeyPatch, tok: Any, task_name: str) -> None:
    spec = MAIN[task_name]
    out = tmp_path / "teach.jsonl"
    cfg = TeachConfig(task=task_name, model=str(tiny_model_dir), data=spec["data"], limit=6,
                      n_documents=spec["n_documents"], out=str(out), batch_size=2)
    result = teach.main(cfg)
    assert result == {"kept": 6, "total": 6, "adv_slot": spec["adv_key"], "out": str(out)}
    rows = teach.read_teacher_rows(out)
    recs = spec["records"](6)
    assert [row["id"] for row in rows] == [r.id for r in recs]
    assert all(row["correct"] and row["chat"] == "auto" for row in rows)
    adv = spec["adv"]
    slot = adv if isinstance(adv, tuple) else (adv,)
    assert all(row["task"] == task_name and row["adv_slot"] == list(slot) for row in rows)
    assert all(row["template"] == spec["template"] for row in rows)
    assert rows[0]["teacher_prompt"] == render_prompt(
        spec["place"](recs[0], adv, rng_for(0, recs[0].id, adv)), tok, template=spec["template"])
    assert not out.with_name(out.name + ".partial").exists()
    assert out.with_name(out.name + ".run.json").exists()

    monkeypatch.setattr("pos2distill.modeling.load_causal_lm",
                        lambda *a, **k: pytest.fail("a complete run must not load the model"))
    assert teach.main(cfg) == result
    with pytest.raises(ConfigError, match="different config"):
        teach.main(TeachConfig(**{**cfg.__dict__, "advantageous": spec["other"]}))


def test_teach_main_records_the_instruction(tiny_model_dir: Path, tmp_path: Path,
                                            oracle_hf: Any) -> None:
    out = tmp_path / "teach.jsonl"
    cfg = TeachConfig(model=str(tiny_model_dir), data="synthetic:train", limit=2, n_documents=4,
                      out=str(out), instruction="Answer the question.")
    assert teach.main(cfg)["kept"] == 2
    rows = teach.read_teacher_rows(out)
    assert all(row["instruction"] == "Answer the question." for row in rows)
    assert all("\nAnswer the question.\n- Title: " in row["teacher_prompt"] for row in rows)
    run = json.loads(out.with_name(out.name + ".run.json").read_text())
    assert run["config"]["instruction"] == "Answer the question."
    # Another instruction is another run: refused in the same place, never mixed.
    with pytest.raises(ConfigError, match="different config"):
        teach.main(TeachConfig(**{**cfg.__dict__, "instruction": ""}))


#: Per task: an advantageous slot where the oracle is always wrong (the gold / the hops
#: somewhere else than first / connected in order).
WRONG = {"retrieval": dict(data="synthetic:train", n_documents=5, advantageous="last", adv=(4,),
                           template="authors", answer=None,
                           records=lambda n: synthetic.generate("train", n, n_documents=5)),
         "reasoning": dict(data="synthetic-reasoning:train", n_documents=4, advantageous="3,2",
                           adv=(3, 2), template="reasoning", answer=reasoning_oracle_answer,
                           records=lambda n: synthetic.generate_reasoning("train", n,
                                                                          n_documents=4))}


@pytest.mark.parametrize("task_name", ["retrieval", "reasoning"])
def test_teach_main_resumes_a_partial_run(tiny_model_dir: Path, tmp_path: Path,
                                          reasoning_oracle_hf: Any, task_name: str) -> None:
    spec = WRONG[task_name]
    out = tmp_path / "teach.jsonl"
    cfg = TeachConfig(task=task_name, model=str(tiny_model_dir), data=spec["data"], limit=5,
                      n_documents=spec["n_documents"], out=str(out),
                      advantageous=spec["advantageous"], batch_size=1)
    # Nothing is correct at that slot for the oracle.
    assert teach.main(cfg)["kept"] == 0
    assert out.read_text() == ""
    full = out.with_name(out.name + ".partial")
    # Simulate an interrupted run: two rows written, then the process died.
    out.unlink()
    recs = spec["records"](5)
    gen = FakeGenerator(spec["answer"]) if spec["answer"] else FakeGenerator()
    rows = teacher_rows(recs[:2], gen, _tok(tiny_model_dir), task=task_name, adv=spec["adv"],
                        template=spec["template"], chat="auto", seed=0, max_new_tokens=32)
    write_jsonl(full, rows)
    reasoning_oracle_hf.instances.clear()
    assert teach.main(cfg) == {"kept": 0, "total": 5,
                               "adv_slot": ",".join(map(str, spec["adv"])), "out": str(out)}
    (gen,) = reasoning_oracle_hf.instances
    assert sum(len(p) for p, _ in gen.calls) == 3          # only the missing questions


def test_teach_main_resumes_a_partial_run_written_before_slots(tiny_model_dir: Path,
                                                               tmp_path: Path,
                                                               oracle_hf: Any) -> None:
    out = tmp_path / "teach.jsonl"
    cfg = TeachConfig(model=str(tiny_model_dir), data="synthetic:train", limit=4, n_documents=5,
                      out=str(out))
    teach.main(cfg)
    rows = teach.read_teacher_rows(out)
    # Interrupted after two rows, which an older version wrote (adv_position, no task/adv_slot).
    out.unlink()
    old = [{**{k: v for k, v in row.items() if k not in ("task", "adv_slot")},
            "adv_position": 0} for row in rows[:2]]
    write_jsonl(out.with_name(out.name + ".partial"), old)
    oracle_hf.instances.clear()
    assert teach.main(cfg) == {"kept": 4, "total": 4, "adv_slot": "0", "out": str(out)}
    (gen,) = oracle_hf.instances
    assert sum(len(p) for p, _ in gen.calls) == 2
    assert [{k: v for k, v in row.items() if k != "adv_position"}
            for row in teach.read_teacher_rows(out)] == rows


def _tok(model_dir: Path) -> Any:
    from pos2distill.modeling import load_tokenizer

    return load_tokenizer(str(model_dir))


def test_teach_too_long_fail_skip_truncate(short_context_model_dir: Path, tmp_path: Path,
                                           oracle_hf: Any, tok: Any,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from test_probe import long_and_short_records

    from pos2distill import cli
    from pos2distill.stages import pairs

    data = tmp_path / "mixed.jsonl"
    write_jsonl(data, [r.to_dict() for r in long_and_short_records()])
    args = ["-q", "teach", "--model", str(short_context_model_dir), "--data", str(data),
            "--max-new-tokens", "4"]

    assert cli.main([*args, "--out", str(tmp_path / "fail.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prompt has 64 tokens" in err and "--too-long" in err
    # Nothing written (but the hidden lock file beside the output, which stays; see runinfo).
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [data]

    out = tmp_path / "skip.jsonl"
    result = teach.main(TeachConfig(model=str(short_context_model_dir), data=str(data),
                                    max_new_tokens=4, out=str(out), too_long="skip"))
    assert result == {"kept": 1, "total": 1, "skipped": 1, "adv_slot": "0", "out": str(out)}
    assert [row["id"] for row in teach.read_teacher_rows(out)] == ["synth-test-0-0"]

    out = tmp_path / "cut.jsonl"
    result = teach.main(TeachConfig(model=str(short_context_model_dir), data=str(data),
                                    max_new_tokens=4, out=str(out), too_long="truncate"))
    assert result == {"kept": 2, "total": 2, "truncated": 1, "adv_slot": "0", "out": str(out)}
    short, cut = teach.read_teacher_rows(out)
    assert (short["dropped_distractors"], cut["dropped_distractors"]) == (0, 1)
    # The stored record is the one the teacher saw (3 documents), so the pairs use it too.
    assert len(cut["record"]["documents"]) == 3
    assert "Lima Lima" not in cut["teacher_prompt"]
    rows = pairs.make_pairs([cut], tok, K=2, anchors=1, seed=0)
    assert sorted(row["slot"] for row in rows) == [[0], [1], [2]]
