"""The judge Task: rendering (golden strings), verdict reading (fuzzed), orders and templates."""

from __future__ import annotations

import dataclasses
import random
import string
from pathlib import Path
from typing import Any

import pytest

from pos2distill.config import AnalyzeConfig, ProbeConfig, TeachConfig
from pos2distill.data import synthetic
from pos2distill.data.records import Document, Record
from pos2distill.errors import ConfigError, DataError
from pos2distill.tasks import get_task
from pos2distill.tasks.judge import (ORDERS, find_verdict, gold_response, parse_orders,
                                     parse_verdicts, place_order, rationale_of, read_verdict,
                                     render_judge_example, verdict_continuations)
from pos2distill.tasks.prompts import user_message

JUDGE = get_task("judge")

ITEM = Record(id="j", question="Which city is home to Kavo", answers=("Lima",),
              documents=(Document("Dilu", "Oslo"), Document("Kavo", "Lima"),
                         Document("Reba", "Rome"), Document("Tude", "Oslo")),
              gold=(1,), kind="judge", candidates=("Lima", "Oslo"), label="1")

GOLDEN = {(0, 1): ("- Title: Dilu\nOslo\n- Title: Kavo\nLima\n- Title: Reba\nRome\n"
                   "- Title: Tude\nOslo\n\nQuestion: Which city is home to Kavo\n"
                   "Answer A: Lima\nAnswer B: Oslo\n"
                   "Which answer is right? Give a short reason, then [[A]] or [[B]] "
                   "([[C]] for a tie).", "Lima [[A]]"),
          (1, 0): ("- Title: Dilu\nOslo\n- Title: Kavo\nLima\n- Title: Reba\nRome\n"
                   "- Title: Tude\nOslo\n\nQuestion: Which city is home to Kavo\n"
                   "Answer A: Oslo\nAnswer B: Lima\n"
                   "Which answer is right? Give a short reason, then [[A]] or [[B]] "
                   "([[C]] for a tie).", "Lima [[B]]")}


@pytest.mark.parametrize("order", ORDERS)
def test_judge_prompt_and_gold_response_golden(tok: Any, order: tuple[int, int]) -> None:
    prompt, response = render_judge_example(ITEM, order, tok, chat="off")
    body, gold = GOLDEN[order]
    assert prompt == body + "\nAnswer:" and response == gold
    chat_prompt, _ = render_judge_example(ITEM, order, tok)
    assert chat_prompt == f"<|bos|><|user|>\n{body}"


def test_an_item_without_documents_renders_without_a_context_block() -> None:
    bare = Record(id="m", question="Say hi", answers=(), documents=(), gold=(), kind="judge",
                  candidates=("hi", "hello"), label="tie")
    assert user_message(place_order(bare, (1, 0)), "judge").startswith(
        "Question: Say hi\nAnswer A: hello\nAnswer B: hi\n")
    assert gold_response(place_order(bare, (1, 0))) == "[[C]]"


def test_synthetic_20_document_prompt_stays_short(tok: Any) -> None:
    from pos2distill.tasks.prompts import encode_prompt

    item = synthetic.generate_judge("test", 1, n_documents=20)[0]
    prompt, _ = render_judge_example(item, (0, 1), tok)
    assert len(encode_prompt(tok, prompt, chat=True)) < 200


def test_place_reorders_candidates_and_renames_the_label_but_not_the_documents() -> None:
    swapped = JUDGE.place(ITEM, (1, 0), random.Random(0))
    assert swapped.candidates == ("Oslo", "Lima") and swapped.label == "2"
    assert swapped.documents == ITEM.documents and swapped.gold == ITEM.gold
    assert JUDGE.place(ITEM, (0, 1), random.Random(0)) == ITEM
    with pytest.raises(DataError, match="not a judging item"):
        place_order(Record("q", "q?", ("a",), (Document("t", "x"),), (0,)), (0, 1))


@pytest.mark.parametrize("text, choice", [
    ("Lima [[A]]", "first"), ("Lima [ [ B ] ]", "second"), ("[[C]]", "tie"),
    ("[[A]] no wait, [[B]]", "second"), ("[[B]] ... [[A]]\n", "first"), ("Lima", None),
    ("", None), ("[[A", None), ("[[D]]", None)])
def test_read_verdict_takes_the_last_verdict(text: str, choice: str | None) -> None:
    assert read_verdict(text) == choice


def test_rationale_is_the_text_before_the_last_verdict() -> None:
    assert rationale_of("Lima [[A]]", ("[[A]]", "[[B]]")) == "Lima "
    assert rationale_of("[[B]]", ("[[A]]", "[[B]]")) == ""
    assert rationale_of(" Oslo ", ("[[A]]", "[[B]]")) == "Oslo "
    assert find_verdict("x [[B]] y", ("[[A]]", "[[B]]")) == ("second", 2)


def test_verdict_parser_fuzz_never_crashes_and_finds_planted_verdicts() -> None:
    rng = random.Random(0)
    alphabet = string.printable + "[]AB C\u00e9\u4e2d"
    verdict_sets = [("[[A]]", "[[B]]", "[[C]]"), ("A", "B"), ("<yes>", "<no>", "<tie>"),
                    ("Answer 1", "Answer 2")]
    for _ in range(1500):
        verdicts = rng.choice(verdict_sets)
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        assert read_verdict(text, verdicts) in ("first", "second", "tie", None)
        k = rng.randrange(len(verdicts))
        planted = text + " " + verdicts[k] + " " + "".join(
            c for c in rng.sample(string.ascii_lowercase, 5) if c not in "".join(verdicts).lower())
        assert read_verdict(planted, verdicts) == ("first", "second", "tie")[k]


@pytest.mark.parametrize("spec, message", [
    ("[[A]]", "2 or 3"), ("a,b,c,d", "2 or 3"), ("[[A]],", "empty"), ("X,X", "repeats"),
    ("A,[[A]]", "inside")])
def test_bad_verdict_strings_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_verdicts(spec)
    assert parse_verdicts(" <1> , <2> ") == ("<1>", "<2>")


def test_orders() -> None:
    assert parse_orders("all") == [(0, 1), (1, 0)] and parse_orders("1,0") == [(1, 0)]
    assert parse_orders("1,0;0,1;1,0") == [(1, 0), (0, 1)]
    with pytest.raises(ConfigError, match="--orders"):
        parse_orders("0,2")


def test_verdict_token_is_found_after_the_shared_prefix(tok: Any) -> None:
    # The test tokenizer knows no "[" or "A": every verdict is unknown tokens, no single
    # distinguishing token.
    assert verdict_continuations(tok, "Lima ", ("[[A]]", "[[B]]")) is None
    prefix, tokens = verdict_continuations(tok, "Lima ", ("Oslo", "Rome", "Paris"))
    assert prefix == tok("Lima", add_special_tokens=False)["input_ids"]
    assert tokens == [tok.convert_tokens_to_ids(c) for c in ("Oslo", "Rome", "Paris")]
    prefix, tokens = verdict_continuations(tok, "", ("Lima Oslo", "Lima Rome"))
    assert prefix == [tok.convert_tokens_to_ids("Lima")] and len(tokens) == 2


def test_judge_templates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both answer slots"):
        ProbeConfig(task="judge", template="authors")
    bad = tmp_path / "bad.txt"
    bad.write_text("Q: {question}\nA: {answer_a}\n")
    with pytest.raises(ConfigError, match=r"\{answer_b\} missing"):
        ProbeConfig(task="judge", template=str(bad))
    good = tmp_path / "good.txt"
    good.write_text("{documents}\nQ: {question}\n1) {answer_a}\n2) {answer_b}\n{instruction}")
    cfg = ProbeConfig(task="judge", template=str(good), verdicts="<1>,<2>")
    body = user_message(place_order(ITEM, (1, 0)), cfg.template, instruction=cfg.instruction)
    assert body.endswith("Q: Which city is home to Kavo\n1) Oslo\n2) Lima\n"
                         "Which answer is right? Give a short reason, then <1> or <2>.")
    with pytest.raises(ConfigError, match="judge templates ask --task judge"):
        ProbeConfig(task="retrieval", template="judge")
    with pytest.raises(ConfigError, match="--verdicts"):
        ProbeConfig(task="retrieval", verdicts="x,y")


def test_only_judging_items_are_kept() -> None:
    assert JUDGE.keep([ITEM], "f") == [ITEM]
    with pytest.raises(DataError, match="not a judging item"):
        JUDGE.keep([ITEM, synthetic.generate("test", 1)[0]], "f")


def test_score_item_maps_the_verdict_through_the_order() -> None:
    assert JUDGE.score_item(ITEM, (0, 1), "Lima [[A]]") == 1.0
    assert JUDGE.score_item(ITEM, (1, 0), "Lima [[A]]") == 0.0
    assert JUDGE.score_item(ITEM, (1, 0), "Lima [[B]]") == 1.0
    assert JUDGE.score_item(ITEM, (1, 0), "Lima") == 0.0
    assert JUDGE.score_item(dataclasses.replace(ITEM, label=None), (0, 1), "[[A]]") is None


def test_judge_teacher_options() -> None:
    assert TeachConfig(task="judge", data="synthetic-judge:train").advantageous == "balanced"
    assert JUDGE.advantageous("balanced", 20) == ()
    with pytest.raises(ConfigError, match="no advantageous order"):
        JUDGE.advantageous("first", 20)
    with pytest.raises(ConfigError, match="--backend hf"):
        TeachConfig(task="judge", backend="vllm")
    with pytest.raises(ConfigError, match="--task judge is not analysed"):
        AnalyzeConfig(task="judge")
