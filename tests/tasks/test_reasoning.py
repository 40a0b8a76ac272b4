"""Pos2Distill-R2 through the stages: probe by hop configuration, teacher chain-of-thought at the
advantageous pair, K configuration pairs, cross-entropy masking, a few R2 steps, report.

Generation is faked by an oracle that reasons correctly only when the two hop documents are
adjacent and in order (see ``conftest.reasoning_oracle_answer``); models are tiny random Llamas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import FakeGenerator, ReasoningOracleHFGenerator, reasoning_oracle_answer
from helpers import teacher_rows as teacher_rows_of
from pos2distill.stages import pairs, probe, report, teach, train
from pos2distill.tasks import get_task, reasoning
from pos2distill.data import synthetic
from pos2distill.config import PairsConfig, ProbeConfig, ReportConfig, TeachConfig, TrainConfig
from pos2distill.errors import ConfigError, DataError
from pos2distill.tasks.positions import hop_group, place_hops, rng_for, slot_key
from pos2distill.tasks.prompts import INSTRUCTIONS, encode_prompt, render_prompt
from pos2distill.data.records import Document, Record, write_jsonl
from pos2distill.training import batches
from reference import micro_ce

_DOC = re.compile(r"^- Title: (\w+)\n(.*)$", re.MULTILINE)


def hop_positions(prompt: str, record: Record) -> tuple[int, int]:
    """Where a rendered prompt shows the record's first and second hop documents."""
    docs = [Document(t, x) for t, x in _DOC.findall(prompt)]
    hops = [record.documents[g] for g in record.gold]
    return docs.index(hops[0]), docs.index(hops[1])


def test_config_resolves_task_defaults() -> None:
    assert ProbeConfig().template == "authors" and ProbeConfig().task == "retrieval"
    assert ProbeConfig(task="reasoning").template == "reasoning"
    assert ProbeConfig(task="reasoning", template="authors").template == "authors"
    assert TeachConfig().advantageous == "first"
    assert TeachConfig(task="reasoning").advantageous == "last"
    with pytest.raises(ConfigError, match="--task"):
        ProbeConfig(task="math")
    with pytest.raises(ConfigError, match="use --configurations"):
        ProbeConfig(task="reasoning", positions="0,1")
    with pytest.raises(ConfigError, match="--configurations places the documents of --task "
                                          "reasoning; with --task retrieval use --positions"):
        ProbeConfig(configurations="connected")


@pytest.mark.parametrize("spec, expected", [("last", (18, 19)), ("first", (0, 1)),
                                            ("8,0", (8, 0)), ("-2,-1", (18, 19))])
def test_resolve_configuration(spec: str, expected: tuple[int, int]) -> None:
    assert reasoning.resolve_configuration(spec, 20) == expected


@pytest.mark.parametrize("spec", ["middle", "3,3", "0,20", "1,2,3"])
def test_resolve_configuration_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match="--advantageous"):
        reasoning.resolve_configuration(spec, 20)


def test_two_hop_records_leaves_out_others(caplog: pytest.LogCaptureFixture) -> None:
    two = synthetic.generate_reasoning("test", 2, n_documents=4)
    three = Record(id="3", question="q", answers=("a",), documents=two[0].documents,
                   gold=(0, 1, 2), kind="multihop")
    task = get_task("reasoning")
    assert task.keep([two[0], three, two[1]], "f.jsonl") == two
    assert "left out 1 of 3" in caplog.text
    with pytest.raises(DataError, match="exactly 2 hop"):
        task.keep([three], "f.jsonl")


# ---------------------------------------------------------------------------------------------
# probe --task reasoning


def test_probe_by_configuration(tiny_model_dir: Path, tmp_path: Path,
                                reasoning_oracle_hf: Any) -> None:
    cfg = ProbeConfig(task="reasoning", model=str(tiny_model_dir), data="synthetic-reasoning:test",
                      limit=3, out=str(tmp_path / "p"))
    summary = probe.main(cfg)
    assert summary["task"] == "reasoning" and summary["n_documents"] == 20
    keys = [slot_key(c["slot"]) for c in summary["by_slot"]]
    assert keys == ["0,1", "5,6", "12,13", "17,18", "0,8", "5,13", "6,14", "8,16",
                    "8,0", "13,5", "14,6", "16,8"]
    for c in summary["by_slot"]:
        assert c["count"] == 3 and c["group"] == hop_group(tuple(c["slot"]))
        assert c["accuracy"] == (1.0 if c["group"] == "connected" else 0.0)
        assert c["no_answer"] == (1.0 if c["group"] == "disconnected" else 0.0)
    assert summary["by_group"]["connected"]["mean"] == 1.0
    assert summary["by_group"]["reversed"]["mean"] == 0.0
    assert summary["mean"] == pytest.approx(4 / 12) and summary["gap"] == 1.0
    assert summary["best_slot"] == [0, 1] and summary["n_per_slot"] == 3
    out = tmp_path / "p"
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 36
    # Each row's prompt really had the hops where the row says.
    (gen,) = ReasoningOracleHFGenerator.instances
    records = {r.id: r for r in synthetic.generate_reasoning("test", 3)}
    prompts = [p for call, _ in gen.calls for p in call]
    for row, prompt in zip(rows, prompts):
        assert list(hop_positions(prompt, records[row["id"]])) == row["slot"]
        assert row["task"] == "reasoning" and row["group"] == hop_group(tuple(row["slot"]))
    assert rows[0]["extracted"] == records[rows[0]["id"]].answers[0]
    table = (out / "table.md").read_text()
    assert "| 9,1 | reversed | 0.000 |" in table and "best hop positions 1,2 (1-based)" in table
    assert (out / "accuracy_by_configuration.png").stat().st_size > 0
    # Resuming does not generate again.
    assert probe.main(cfg) == summary
    assert len(ReasoningOracleHFGenerator.instances) == 1


def test_probe_explicit_configurations_and_scaling(tiny_model_dir: Path, tmp_path: Path,
                                                   reasoning_oracle_hf: Any) -> None:
    summary = probe.main(ProbeConfig(task="reasoning", model=str(tiny_model_dir),
                                     data="synthetic-reasoning:test", limit=2, n_documents=10,
                                     configurations="3,4;4,3", out=str(tmp_path / "p")))
    assert [c["slot"] for c in summary["by_slot"]] == [[3, 4], [4, 3]]
    assert [c["accuracy"] for c in summary["by_slot"]] == [1.0, 0.0]
    with pytest.raises(ConfigError, match="outside 0..9"):
        probe.main(ProbeConfig(task="reasoning", model=str(tiny_model_dir), n_documents=10,
                               data="synthetic-reasoning:test", limit=2, configurations="0,10",
                               out=str(tmp_path / "q")))


def test_probe_reasoning_on_retrieval_data_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="exactly 2 hop"):
        probe.main(ProbeConfig(task="reasoning", model=str(tiny_model_dir), data="synthetic:test",
                               limit=2, out=str(tmp_path / "p")))


def test_probe_reasoning_too_long_truncates_and_keeps_hops(tok: Any, tmp_path: Path,
                                                           reasoning_oracle_hf: Any) -> None:
    from conftest import tiny_llama

    model_dir = tmp_path / "short"
    tiny_llama(tok, max_position_embeddings=110).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    summary = probe.main(ProbeConfig(task="reasoning", model=str(model_dir),
                                     data="synthetic-reasoning:test", limit=2, n_documents=8,
                                     configurations="0,1;1,0", too_long="truncate",
                                     max_new_tokens=4, chat="off", out=str(tmp_path / "p")))
    assert summary["too_long"]["truncated"] == 4
    assert [c["accuracy"] for c in summary["by_slot"]] == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------
# teach --task reasoning


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return synthetic.generate_reasoning("train", 6, n_documents=10)


def test_teacher_chain_of_thought_at_the_last_two(records: list[Record], tok: Any) -> None:
    gen = FakeGenerator(reasoning_oracle_answer)
    rows = teacher_rows_of(records, gen, tok, task="reasoning", adv=(8, 9), template="reasoning",
                           chat="auto", seed=1, max_new_tokens=40)
    for record, row in zip(records, rows):
        prompt = render_prompt(place_hops(record, (8, 9), rng_for(1, record.id, (8, 9))), tok,
                               template="reasoning")
        assert row["teacher_prompt"] == prompt and hop_positions(prompt, record) == (8, 9)
        assert row["task"] == "reasoning" and row["adv_slot"] == [8, 9]
        assert row["correct"] is True
        assert row["response"].startswith(synthetic.record_cot(record))
    # Reversed hops: the oracle's chain ends with a wrong answer, so nothing is kept.
    rows = teacher_rows_of(records, gen, tok, task="reasoning", adv=(9, 8), template="reasoning",
                           chat="auto", seed=1, max_new_tokens=40)
    assert not any(row["correct"] for row in rows)


def test_teach_main_reasoning_default_and_auto(tiny_model_dir: Path, tmp_path: Path,
                                               reasoning_oracle_hf: Any) -> None:
    common = dict(task="reasoning", model=str(tiny_model_dir), data="synthetic-reasoning:train",
                  limit=4, n_documents=10)
    result = teach.main(TeachConfig(**common, out=str(tmp_path / "t.jsonl")))
    assert result["adv_slot"] == "8,9" and result["kept"] == 4
    # auto: the best configuration of a reasoning probe (here the first connected pair).
    probe.main(ProbeConfig(task="reasoning", model=str(tiny_model_dir), n_documents=10,
                           data="synthetic-reasoning:test", limit=2, configurations="4,0;2,3",
                           out=str(tmp_path / "p")))
    result = teach.main(TeachConfig(**common, advantageous="auto", probe=str(tmp_path / "p"),
                                    out=str(tmp_path / "auto.jsonl")))
    assert result["adv_slot"] == "2,3" and result["kept"] == 4
    # A retrieval probe has no configurations to take the best of.
    probe.main(ProbeConfig(model=str(tiny_model_dir), data="synthetic:test", limit=1,
                           n_documents=4, out=str(tmp_path / "rp")))
    with pytest.raises(ConfigError, match="a --task retrieval probe; --advantageous auto needs "
                                          "a --task reasoning one"):
        teach.main(TeachConfig(**common, advantageous="auto", probe=str(tmp_path / "rp"),
                               out=str(tmp_path / "bad.jsonl")))


# ---------------------------------------------------------------------------------------------
# pairs: K configurations per question, the CoT as target


@pytest.fixture(scope="module")
def teacher_rows(records: list[Record], tok: Any) -> list[dict[str, Any]]:
    rows = teacher_rows_of(records, FakeGenerator(reasoning_oracle_answer), tok, task="reasoning",
                           adv=(8, 9), template="reasoning", chat="auto", seed=0,
                           max_new_tokens=40)
    assert all(row["correct"] for row in rows)
    return rows


def test_reasoning_pairs(teacher_rows: list[dict[str, Any]], records: list[Record],
                         tok: Any) -> None:
    rows = pairs.make_pairs(teacher_rows, tok, K=4, anchors=1, seed=0)
    assert len(rows) == 6 * 4                                   # no anchors in R2
    by_id = {r.id: r for r in records}
    for question in {r["question_id"] for r in rows}:
        mine = [r for r in rows if r["question_id"] == question]
        configs = [tuple(r["slot"]) for r in mine]
        assert len(set(configs)) == 4 and (8, 9) not in configs
        assert len({r["student_prompt"] for r in mine}) == 4
    for row in rows:
        record = by_id[row["question_id"]]
        pair = tuple(row["slot"])
        assert hop_positions(row["student_prompt"], record) == pair
        assert row["adv_slot"] == [8, 9] and row["anchor"] is False
        assert row["task"] == "reasoning"
        # The target is the teacher's chain-of-thought, cut after its answer line.
        assert row["response"] == synthetic.record_cot(record)
        assert row["teacher_prompt"] == next(t["teacher_prompt"] for t in teacher_rows
                                             if t["id"] == record.id)
        assert row["chat"] is True and row["answers"] == list(record.answers)
    # Same seed, same pairs; the configurations come from a named set when asked.
    assert pairs.make_pairs(teacher_rows, tok, K=4, anchors=1, seed=0) == rows
    named = pairs.make_pairs(teacher_rows, tok, K=3, anchors=0, seed=0,
                             configurations="reversed")
    assert {hop_group(tuple(r["slot"])) for r in named} == {"reversed"}
    with pytest.raises(ConfigError, match="--K 5 is larger than the 4"):
        pairs.make_pairs(teacher_rows, tok, K=5, anchors=0, seed=0, configurations="reversed")


def test_reasoning_pairs_keep_the_teachers_instruction(records: list[Record], tok: Any) -> None:
    instruction = "Answer the question. End with: The answer is: X"
    rows = teacher_rows_of(records, FakeGenerator(reasoning_oracle_answer), tok, task="reasoning",
                           adv=(8, 9), template="reasoning", chat="auto", seed=0,
                           max_new_tokens=40, instruction=instruction)
    assert all(row["correct"] and row["instruction"] == instruction for row in rows)
    for row in pairs.make_pairs(rows, tok, K=2, anchors=0, seed=0):
        for key in ("student_prompt", "teacher_prompt"):
            assert row[key].startswith(f"<|bos|><|user|>\n{instruction}\n- Title: ")
            assert INSTRUCTIONS["reasoning"] not in row[key]
    # Rows written before --instruction existed render the template's own.
    old = [{k: v for k, v in row.items() if k != "instruction"} for row in rows]
    for row in pairs.make_pairs(old, tok, K=1, anchors=0, seed=0):
        assert row["student_prompt"].startswith(f"<|bos|><|user|>\n{INSTRUCTIONS['reasoning']}\n")


def test_pairs_main_reasoning_needs_K(teacher_rows: list[dict[str, Any]], tiny_model_dir: Path,
                                      tmp_path: Path) -> None:
    write_jsonl(tmp_path / "t.jsonl", teacher_rows)
    with pytest.raises(ConfigError, match="this task has no anchors"):
        pairs.main(PairsConfig(teach=str(tmp_path / "t.jsonl"), model=str(tiny_model_dir), K=0,
                               anchors=1, out=str(tmp_path / "p.jsonl")))
    # The refused command left nothing behind: the corrected one runs in the same place.
    result = pairs.main(PairsConfig(teach=str(tmp_path / "t.jsonl"), model=str(tiny_model_dir),
                                    K=2, out=str(tmp_path / "p.jsonl")))
    assert result["pairs"] == 2 * len(teacher_rows)


# ---------------------------------------------------------------------------------------------
# train --method r2 on these pairs


def test_r2_cross_entropy_masks_the_prompt_and_keeps_eos(teacher_rows: list[dict[str, Any]],
                                                         sharp_model: Any, tok: Any) -> None:
    rows = pairs.make_pairs(teacher_rows[:2], tok, K=2, anchors=0, seed=0)
    examples = [batches.encode_pair(r, tok, teacher=False) for r in rows]
    b = batches.batch_tensors(examples, tok.pad_token_id, "cpu")
    with torch.no_grad():
        ce = micro_ce(sharp_model, b)
    for k, (row, ex) in enumerate(zip(rows, examples)):
        prompt = encode_prompt(tok, row["student_prompt"], chat=True)
        target = tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert list(ex.student_ids) == prompt + target            # EOS is the last target
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            logp = sharp_model(ids).logits[0].log_softmax(-1)
        # Only the target tokens count: the logit before each target token predicts it.
        expected = -sum(logp[len(prompt) - 1 + t, target[t]] for t in range(len(target))) / len(target)
        assert ce[k].item() == pytest.approx(expected.item(), rel=1e-4)
        # The prompt tokens are not scored: scoring them too gives a value the check above (same
        # tolerance) would refuse.
        assert ce[k].item() != pytest.approx(
            -logp[torch.arange(len(prompt) + len(target) - 1), ids[0, 1:]].mean().item(), rel=1e-4)


def test_a_few_r2_steps_lower_the_loss(teacher_rows: list[dict[str, Any]], tok: Any,
                                       tmp_path: Path) -> None:
    from conftest import tiny_llama

    model_dir = tmp_path / "m"
    tiny_llama(tok, initializer_range=0.2).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rows = pairs.make_pairs(teacher_rows[:2], tok, K=2, anchors=0, seed=0)
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    # One batch of all 4 pairs, seen 8 times: the logged loss is that fixed batch's loss.
    summary = train.main(TrainConfig(pairs=str(tmp_path / "pairs.jsonl"), model=str(model_dir),
                                     out=str(tmp_path / "run"), method="r2", lr=1e-2,
                                     batch_size=4, epochs=8, warmup_ratio=0.0))
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 8 and summary["method"] == "r2"
    assert log[-1]["ce_mean"] < 0.5 * log[0]["ce_mean"]
    # The log groups by configuration (the row's slot), written like the probe's tables.
    assert set(log[0]["ce_by_position"]) == {slot_key(tuple(_slot(r))) for r in rows}


def _slot(row: dict[str, Any]) -> list[int]:
    return row["slot"] if "slot" in row else row["configuration"]


def test_old_reasoning_rows_train_like_new_ones(teacher_rows: list[dict[str, Any]], tok: Any,
                                                tmp_path: Path) -> None:
    """Reasoning rows written before slots (``configuration``/``adv_configuration`` beside a
    squeezed ``position``/``adv_position``) and the same rows with ``slot``/``adv_slot`` train a
    position-aware KL method to the same log and bit-identical weights; the weights group by
    configuration, not by the squeezed first hop."""
    from safetensors.torch import load_file

    from conftest import tiny_llama

    model_dir = tmp_path / "m"
    tiny_llama(tok, initializer_range=0.2).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    made = pairs.make_pairs(teacher_rows, tok, K=4, anchors=0, seed=0)
    legacy = ("position", "adv_position", "configuration", "adv_configuration", "slot", "adv_slot")
    adv = [8, 9]
    base = [{k: v for k, v in r.items() if k not in legacy} for r in made]
    old = [{**b, "position": _slot(r)[0], "adv_position": adv[0], "configuration": _slot(r),
            "adv_configuration": adv} for b, r in zip(base, made)]
    new = [{**b, "slot": _slot(r), "adv_slot": adv} for b, r in zip(base, made)]
    # Configurations sharing a first hop: grouping by the squeezed position would differ.
    assert len({tuple(_slot(r)) for r in made}) > len({_slot(r)[0] for r in made})
    logs, weights = [], []
    for name, rows in (("old", old), ("new", new)):
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
        summary = train.main(TrainConfig(pairs=str(tmp_path / f"{name}.jsonl"),
                                         model=str(model_dir), out=str(tmp_path / name),
                                         method="kl+align", lr=1e-2, batch_size=8, epochs=1))
        assert summary["adv_slot"] == adv and summary["steps"] == 3
        logs.append([json.loads(x) for x in
                     (tmp_path / name / "log.jsonl").read_text().splitlines()])
        weights.append(load_file(tmp_path / name / "model" / "model.safetensors"))
    assert logs[0] == logs[1]
    assert all("," in key for row in logs[1] for key in row["weight_by_position"])
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


# ---------------------------------------------------------------------------------------------
# report


def test_report_reasoning(tmp_path: Path, tiny_model_dir: Path, reasoning_oracle_hf: Any) -> None:
    common = dict(task="reasoning", model=str(tiny_model_dir), data="synthetic-reasoning:test",
                  limit=2, n_documents=10)
    probe.main(ProbeConfig(**common, out=str(tmp_path / "a")))
    probe.main(ProbeConfig(**common, out=str(tmp_path / "b")))
    result = report.main(ReportConfig(before=str(tmp_path / "a"), after=str(tmp_path / "b"),
                                      out=str(tmp_path / "r")))
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| connected (mean) | 1.000 | 1.000 | +0.000 |" in md
    assert "| reversed (mean) | 0.000 | 0.000 | +0.000 |" in md
    assert "| GAP (max − min) | 1.000 | 1.000 | +0.000 |" in md
    assert result["plot"].endswith("accuracy_by_configuration.png")
    assert (tmp_path / "r" / "accuracy_by_configuration.png").stat().st_size > 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["task"] == "reasoning"
    probe.main(ProbeConfig(model=str(tiny_model_dir), data="synthetic:test", limit=1,
                           n_documents=4, out=str(tmp_path / "ret")))
    with pytest.raises(ConfigError, match="different tasks"):
        report.main(ReportConfig(before=str(tmp_path / "a"), after=str(tmp_path / "ret"),
                                 out=str(tmp_path / "x")))


def test_summaries_follow_the_order_of_the_configurations() -> None:
    rows = [{"slot": list(p), "correct": c, "extracted": "x"}
            for p, c in [((8, 0), 1.0), ((8, 0), 0.0), ((0, 1), 1.0)]]
    s = get_task("reasoning").summarize(rows, [(0, 1), (8, 0)])
    assert [c["slot"] for c in s["by_slot"]] == [[0, 1], [8, 0]]
    assert [c["accuracy"] for c in s["by_slot"]] == [1.0, 0.5]
    assert s["gap"] == 0.5 and s["worst_slot"] == [8, 0]
    assert set(s["by_group"]) == {"connected", "reversed"}


def test_old_reasoning_rows_and_summaries_still_read() -> None:
    """Rows and summaries written before slots existed (configuration keys) are upgraded."""
    task = get_task("reasoning")
    old_rows = [{"id": "q", "configuration": "8,0", "positions": [8, 0], "group": "reversed",
                 "prediction": "p", "extracted": None, "answers": ["a"], "correct": 0.0}]
    s = task.summarize(old_rows, [(8, 0)])
    assert s["by_slot"][0]["slot"] == [8, 0] and s["by_slot"][0]["no_answer"] == 1.0
    old = {"task": "reasoning", "mean": 0.0, "gap": 0.0, "by_group": {},
           "by_configuration": [{"configuration": "8,0", "positions": [8, 0],
                                 "group": "reversed", "accuracy": 0.0, "stderr": 0.0,
                                 "count": 1, "no_answer": 1.0}],
           "best_configuration": "8,0", "worst_configuration": "8,0", "n_per_configuration": 1}
    new = task.upgrade_summary(old)
    assert new["best_slot"] == [8, 0] and new["n_per_slot"] == 1
    assert task.headline(new)["accuracy_by_configuration"] == {"8,0": 0.0}
