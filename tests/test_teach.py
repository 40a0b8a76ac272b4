"""teach: exact teacher prompts at the advantageous position, correctness, resume, auto position."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeGenerator, first_title
from pos2distill.data import synthetic
from pos2distill.stages import teach
from pos2distill.config import TeachConfig
from pos2distill.errors import ConfigError, DataError
from pos2distill.tasks.positions import place_gold, rng_for
from pos2distill.tasks.prompts import render_prompt
from pos2distill.data.records import Record, write_jsonl


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return synthetic.generate("train", 5, n_documents=6)


def test_teacher_rows_keep_exact_prompts(records: list[Record], tok: Any) -> None:
    gen = FakeGenerator()
    rows = teach.teacher_rows(records, gen, tok, adv_position=0, template="authors", chat="auto",
                              seed=3, max_new_tokens=9)
    assert len(gen.calls) == 1 and gen.calls[0][1] == 9
    assert gen.calls[0][0] == [row["teacher_prompt"] for row in rows]
    for record, row in zip(records, rows):
        expected = render_prompt(place_gold(record, 0, rng_for(3, record.id, 0)), tok,
                                 template="authors", chat="auto")
        assert row["teacher_prompt"] == expected
        assert first_title(expected) == record.gold_document.title
        assert row["id"] == record.id and row["record"] == record.to_dict()
        assert Record.from_dict(row["record"]) == record
        assert (row["adv_position"], row["template"], row["chat"]) == (0, "authors", "auto")
        assert row["response"] == f"{record.answers[0]}\nand some more text"
        assert row["correct"] is True


def test_teacher_rows_with_a_custom_instruction(records: list[Record], tok: Any) -> None:
    rows = teach.teacher_rows(records, FakeGenerator(), tok, adv_position=0, template="authors",
                              chat="auto", seed=3, max_new_tokens=9,
                              instruction="Answer the question.")
    for record, row in zip(records, rows):
        assert row["teacher_prompt"] == render_prompt(
            place_gold(record, 0, rng_for(3, record.id, 0)), tok, template="authors",
            instruction="Answer the question.")
        assert row["teacher_prompt"].startswith("<|bos|><|user|>\nAnswer the question.\n- Title: ")
        assert row["instruction"] == "Answer the question." and row["correct"] is True
    # The default rows say so too: the pairs render their student prompts from the row.
    default = teach.teacher_rows(records[:1], FakeGenerator(), tok, adv_position=0,
                                 template="authors", chat="auto", seed=3, max_new_tokens=9)
    assert default[0]["instruction"] == ""


def test_teacher_rows_mark_wrong_answers(records: list[Record], tok: Any) -> None:
    # The oracle only answers when the gold document is first: at position 2 every answer is wrong.
    rows = teach.teacher_rows(records, FakeGenerator(), tok, adv_position=2, template="authors",
                              chat="auto", seed=0, max_new_tokens=4)
    assert [row["correct"] for row in rows] == [False] * len(records)
    # A mix: correct for questions 0, 2 and 4, wrong for 1 and 3.
    prompts = [render_prompt(place_gold(r, 0, rng_for(0, r.id, 0)), tok) for r in records]
    reply = {p: (f"In {r.answers[0]}." if k % 2 == 0 else "nobody knows")
             for k, (p, r) in enumerate(zip(prompts, records))}
    rows = teach.teacher_rows(records, FakeGenerator(reply.__getitem__), tok, adv_position=0,
                              template="authors", chat="auto", seed=0, max_new_tokens=4)
    assert [row["correct"] for row in rows] == [True, False, True, False, True]


def test_read_teacher_rows_names_the_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [{"id": "a", "record": {}, "adv_position": 0, "teacher_prompt": "p",
                        "response": "r", "template": "authors"},
                       {"id": "b", "record": {}, "adv_position": 0, "teacher_prompt": "p",
                        "template": "authors"}])
    with pytest.raises(DataError) as info:
        teach.read_teacher_rows(path)
    assert info.value.line == 2 and info.value.field == "response"
    assert "t.jsonl:2" in str(info.value)


def test_resolve_advantageous(tmp_path: Path) -> None:
    assert teach.resolve_advantageous(TeachConfig(advantageous="last"), 20) == 19
    assert teach.resolve_advantageous(TeachConfig(advantageous="-2"), 20) == 18
    (tmp_path / "summary.json").write_text(json.dumps({"best_position": 7}))
    cfg = TeachConfig(advantageous="auto", probe=str(tmp_path))
    assert teach.resolve_advantageous(cfg, 20) == 7
    with pytest.raises(ConfigError, match="needs --probe"):
        TeachConfig(advantageous="auto")


def test_teach_main_keeps_correct_rows_and_reuses_a_complete_run(
        tiny_model_dir: Path, tmp_path: Path, oracle_hf: Any, monkeypatch: pytest.MonkeyPatch,
        tok: Any) -> None:
    out = tmp_path / "teach.jsonl"
    cfg = TeachConfig(model=str(tiny_model_dir), data="synthetic:train", limit=6, n_documents=5,
                      out=str(out), batch_size=2)
    result = teach.main(cfg)
    assert result == {"kept": 6, "total": 6, "adv_position": 0, "out": str(out)}
    rows = teach.read_teacher_rows(out)
    recs = synthetic.generate("train", 6, n_documents=5)
    assert [row["id"] for row in rows] == [r.id for r in recs]
    assert all(row["correct"] and row["chat"] == "auto" for row in rows)
    assert rows[0]["teacher_prompt"] == render_prompt(
        place_gold(recs[0], 0, rng_for(0, recs[0].id, 0)), tok)
    assert not out.with_name(out.name + ".partial").exists()
    assert out.with_name(out.name + ".run.json").exists()

    monkeypatch.setattr("pos2distill.modeling.load_causal_lm",
                        lambda *a, **k: pytest.fail("a complete run must not load the model"))
    assert teach.main(cfg) == result
    with pytest.raises(ConfigError, match="different config"):
        teach.main(TeachConfig(**{**cfg.__dict__, "advantageous": "last"}))


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


def test_teach_main_resumes_a_partial_run(tiny_model_dir: Path, tmp_path: Path,
                                          oracle_hf: Any) -> None:
    out = tmp_path / "teach.jsonl"
    cfg = TeachConfig(model=str(tiny_model_dir), data="synthetic:train", limit=5, n_documents=5,
                      out=str(out), advantageous="last", batch_size=1)
    # Nothing is correct at the last position for the first-position oracle.
    assert teach.main(cfg)["kept"] == 0
    assert out.read_text() == ""
    full = out.with_name(out.name + ".partial")
    # Simulate an interrupted run: two rows written, then the process died.
    out.unlink()
    recs = synthetic.generate("train", 5, n_documents=5)
    rows = teach.teacher_rows(recs[:2], FakeGenerator(), _tok(tiny_model_dir),
                              adv_position=4, template="authors", chat="auto", seed=0,
                              max_new_tokens=32)
    write_jsonl(full, rows)
    oracle_hf.instances.clear()
    assert teach.main(cfg) == {"kept": 0, "total": 5, "adv_position": 4, "out": str(out)}
    (gen,) = oracle_hf.instances
    assert sum(len(p) for p, _ in gen.calls) == 3          # only the missing questions


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
    assert list(tmp_path.iterdir()) == [data]                 # nothing written

    out = tmp_path / "skip.jsonl"
    result = teach.main(TeachConfig(model=str(short_context_model_dir), data=str(data),
                                    max_new_tokens=4, out=str(out), too_long="skip"))
    assert result == {"kept": 1, "total": 1, "skipped": 1, "adv_position": 0, "out": str(out)}
    assert [row["id"] for row in teach.read_teacher_rows(out)] == ["synth-test-0-0"]

    out = tmp_path / "cut.jsonl"
    result = teach.main(TeachConfig(model=str(short_context_model_dir), data=str(data),
                                    max_new_tokens=4, out=str(out), too_long="truncate"))
    assert result == {"kept": 2, "total": 2, "truncated": 1, "adv_position": 0, "out": str(out)}
    short, cut = teach.read_teacher_rows(out)
    assert (short["dropped_distractors"], cut["dropped_distractors"]) == (0, 1)
    # The stored record is the one the teacher saw (3 documents), so the pairs use it too.
    assert len(cut["record"]["documents"]) == 3
    assert "Lima Lima" not in cut["teacher_prompt"]
    rows = pairs.make_pairs([cut], tok, K=2, anchors=1, seed=0)
    assert sorted(row["position"] for row in rows) == [0, 1, 2]
