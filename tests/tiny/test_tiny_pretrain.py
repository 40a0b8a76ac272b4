"""The tiny model's pretraining recipe: data builders and a two-step smoke run."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pos2distill.data import synthetic
from pos2distill.tiny.pretrain import (PretrainConfig, _copy_examples, _doc_copy_examples,
                                       _recall_examples, main, pretrain)
from pos2distill.tiny.tokenizer import build_tokenizer


def _content(tok) -> list[int]:
    return tok.convert_tokens_to_ids(list(synthetic.NAMES) + list(synthetic.CITIES))


def test_copy_examples_repeat_with_loss_on_the_repeat() -> None:
    tok = build_tokenizer()
    seqs, masks = _copy_examples(random.Random(0), PretrainConfig(), 20, _content(tok), 2)
    for seq, mask in zip(seqs, masks):
        n = (len(seq) - 1) // 2
        assert seq[0] == 2 and seq[1:1 + n] == seq[1 + n:]
        assert mask == [0] * (1 + n) + [1] * n


def test_recall_answers_are_what_followed_the_query_at_chosen_distances() -> None:
    tok = build_tokenizer()
    cfg = PretrainConfig(copy_middle_fraction=0.0)
    seqs, masks = _recall_examples(random.Random(1), cfg, 10, _content(tok), 2)
    length = cfg.copy_long[1]
    distances = []
    for seq, mask in zip(seqs, masks):
        assert len(set(seq[1:1 + length])) == length           # distinct keys: no ambiguity
        for j in range(1 + length, len(seq), 2):
            first = seq.index(seq[j])
            assert seq[j + 1] == seq[first + 1] and mask[j + 1] == 1 and mask[j] == 0
            distances.append(j - first)
    # Short or long, never in between when the middle fraction is 0.
    assert all(d <= cfg.copy_short[1] + 1 or d >= cfg.copy_long[0] - 1 for d in distances)
    assert any(d <= cfg.copy_short[1] for d in distances) and any(d >= cfg.copy_long[0] for d in distances)


def test_position_probs_sum_to_one_and_favour_the_edges() -> None:
    probs = PretrainConfig(edge=3, edge_mass=0.8).position_probs()
    assert abs(sum(probs) - 1) < 1e-12 and len(probs) == 20
    assert probs[0] == probs[19] > probs[10]


def test_smoke_run_saves_a_loadable_model(tmp_path: Path) -> None:
    cfg = PretrainConfig(out=str(tmp_path / "m"), layers=1, hidden=16, heads=2, intermediate=32,
                         batch_size=2, copy_steps=2, docs_steps=1, reason_steps=2, lookup_steps=2,
                         eval_every=2, prefix_max=10, rope_theta=50.0,
                         eval_per_position=1, n_documents=4)
    out = pretrain(cfg)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 1 and tok.chat_template
    assert model.config.rope_parameters["rope_theta"] == 50.0
    assert (out / "pretrain_config.json").exists()


def test_init_keeps_its_rope_base_unless_given_one(tmp_path: Path) -> None:
    small = dict(layers=1, hidden=16, heads=2, intermediate=32, batch_size=2, copy_steps=1,
                 lookup_steps=0, n_documents=4)
    first = pretrain(PretrainConfig(out=str(tmp_path / "a"), rope_theta=50.0, **small))
    kept = pretrain(PretrainConfig(out=str(tmp_path / "b"), init=str(first), **small))
    rebased = pretrain(PretrainConfig(out=str(tmp_path / "c"), init=str(first), rope_theta=7.0,
                                      **small))
    fresh = pretrain(PretrainConfig(out=str(tmp_path / "d"), **small))
    theta = {d: AutoModelForCausalLM.from_pretrained(d).config.rope_parameters["rope_theta"]
             for d in (kept, rebased, fresh)}
    assert theta == {kept: 50.0, rebased: 7.0, fresh: 10000.0}
    # The rotary tables follow the saved base: a re-based model differs from its init.
    ids = torch.tensor([[2, 10, 11, 12, 13, 14]])
    a = AutoModelForCausalLM.from_pretrained(kept).model.rotary_emb(torch.zeros(1), ids)[0]
    b = AutoModelForCausalLM.from_pretrained(rebased).model.rotary_emb(torch.zeros(1), ids)[0]
    assert not torch.allclose(a, b)


def test_doc_copy_examples_repeat_document_shaped_pairs() -> None:
    tok = build_tokenizer()
    struct = tok.convert_tokens_to_ids(["-", "Title", ":"])
    seqs, masks = _doc_copy_examples(random.Random(0), PretrainConfig(), 10, _content(tok), 2, struct)
    for seq, mask in zip(seqs, masks):
        n = (len(seq) - 1) // 2
        assert seq[1:1 + n] == seq[1 + n:] and n % 5 == 0
        assert all(seq[1 + i:4 + i] == struct for i in range(0, n, 5))
        assert mask == [0] * (1 + n) + [1] * n


def test_doc_copy_prefix_puts_repeats_late_without_a_second_match() -> None:
    tok = build_tokenizer()
    struct = tok.convert_tokens_to_ids(["-", "Title", ":"])
    cfg = PretrainConfig(prefix_max=100)
    seqs, masks = _doc_copy_examples(random.Random(0), cfg, 40, _content(tok), 2, struct)
    prefixes = []
    for seq, mask in zip(seqs, masks):
        n = sum(mask)                                   # loss on the repeat only
        start = len(seq) - 2 * n                        # where the first copy starts
        prefix, first, second = seq[1:start], seq[start:start + n], seq[start + n:]
        assert first == second and mask == [0] * (len(seq) - n) + [1] * n
        assert len(prefix) % 5 == 0 and len(prefix) <= cfg.prefix_max
        assert not set(prefix) & (set(first) - set(struct))   # one match per looked-up token
        prefixes.append(len(prefix))
    assert min(prefixes) < 30 and max(prefixes) > 70


def _doc_examples(cfg: PretrainConfig, n: int) -> tuple[list[list[int]], list[list[int]]]:
    """``n`` document repeats of ``cfg`` (seed 0) over the real tokenizer's names and cities."""
    tok = build_tokenizer()
    struct = tok.convert_tokens_to_ids(["-", "Title", ":"])
    return _doc_copy_examples(random.Random(0), cfg, n, _content(tok), 2, struct)


def test_late_fraction_puts_short_repeats_behind_a_long_prefix() -> None:
    cfg = PretrainConfig(late_fraction=0.5, late_prefix=(110, 130), copy_short=(4, 15),
                         copy_long=(100, 115), copy_middle_fraction=0.0)
    seqs, masks = _doc_examples(cfg, 200)
    late = 0
    for seq, mask in zip(seqs, masks):
        n = sum(mask)
        start = len(seq) - 2 * n
        assert seq[start:start + n] == seq[start + n:]
        prefix = start - 1
        if prefix:                                    # late: a long prefix, a short repeat
            late += 1
            assert 110 <= prefix <= 130 and n <= 15
        else:                                         # early: no prefix, short or long repeat
            assert n <= 15 or 100 <= n <= 115
    assert 70 < late < 130


def test_early_gap_recalls_a_short_start_from_far_back() -> None:
    cfg = PretrainConfig(late_fraction=0.5, late_prefix=(110, 130), copy_short=(4, 40),
                         early_gap=(60, 110))
    seqs, masks = _doc_examples(cfg, 200)
    for seq, mask in zip(seqs, masks):
        n = sum(mask)
        repeat = seq[len(seq) - n:]
        assert n <= 40 and mask[len(seq) - n:] == [1] * n
        first = [i for i in range(1, len(seq) - n) if seq[i:i + n] == repeat]
        assert len(first) == 1                        # exactly one earlier occurrence to copy from
        source, distance = first[0], len(seq) - n - first[0]
        if source == 1:                               # early: at the start, recalled from far back
            assert 60 <= distance - n <= 110
        else:                                         # late: behind a long prefix, right before
            assert 110 <= source - 1 <= 130 and distance == n


def test_conflict_examples_put_the_true_city_at_an_edge_and_a_decoy_in_the_middle() -> None:
    cfg = PretrainConfig(conflict_fraction=0.5, conflict_edge=3, n_documents=20)
    seqs, masks = _doc_examples(cfg, 40)
    conflicts = [(s, m) for s, m in zip(seqs, masks) if len(s) == 1 + 5 * 23]
    assert len(conflicts) == 20
    for seq, mask in conflicts:
        pairs = [(seq[1 + 5 * i + 3], seq[1 + 5 * i + 4]) for i in range(20)]
        queries = [(seq[1 + 5 * i + 3], seq[1 + 5 * i + 4]) for i in range(20, 23)]
        assert [i for i, x in enumerate(mask) if x] == [1 + 5 * i + 4 for i in range(20, 23)]
        for name, city in queries:
            where = [i for i, (n, _) in enumerate(pairs) if n == name]
            assert len(where) == 2
            edge, middle = where if where[0] < 3 else where[::-1]
            assert (edge < 3 or edge >= 17) and 3 <= middle < 17
            assert pairs[edge][1] == city != pairs[middle][1]


@pytest.mark.parametrize("bad", [dict(late_fraction=1.5), dict(early_gap=(90, 60)),
                                 dict(conflict_fraction=0.5, conflict_edge=7), dict(rope_theta=-1.0),
                                 dict(format_documents=1), dict(format_fraction=1.5)])
def test_config_rejects_impossible_data_settings(bad: dict) -> None:
    with pytest.raises(ValueError, match="--"):
        PretrainConfig(**bad)


def test_reason_pairs_put_the_edge_mass_on_connected_in_order_edge_pairs() -> None:
    cfg = PretrainConfig(reason_edge=3, reason_edge_mass=0.7)
    pairs, probs = cfg.reason_pairs()
    assert len(pairs) == 20 * 19 and abs(sum(probs) - 1) < 1e-12
    p = dict(zip(pairs, probs))
    edge = [(0, 1), (1, 2), (2, 3), (16, 17), (17, 18), (18, 19)]
    assert abs(sum(p[x] for x in edge) - 0.7) < 1e-12
    assert p[(8, 9)] == p[(9, 8)] == p[(0, 8)] == p[(1, 0)] < p[(0, 1)]


def test_reasoning_example_targets_the_reference_chain_after_the_prompt() -> None:
    from pos2distill.tiny.pretrain import _reasoning_example

    tok = build_tokenizer()
    record = synthetic.generate_reasoning("train", 1, n_documents=6)[0]
    seq, mask = _reasoning_example(record, tok, (4, 1), random.Random(0))
    target = [t for t, m in zip(seq, mask) if m]
    assert tok.decode(target[:-1]) == synthetic.record_cot(record)   # decoded as text is written
    assert target[-1] == tok.eos_token_id and tok.unk_token_id not in seq
    assert mask == sorted(mask)                             # prompt first, then the chain only


def test_chain_accuracy_is_one_exactly_when_greedy_follows_the_chain() -> None:
    import torch

    from pos2distill.tiny.pretrain import _reasoning_example, chain_accuracy

    tok = build_tokenizer()
    records = synthetic.generate_reasoning("test", 2, n_documents=4)
    seq, mask = _reasoning_example(records[0], tok, (0, 1), random.Random("1234|x|(0, 1)"))

    class Oracle(torch.nn.Module):
        """Predicts the next token of the right sequence when it is given (argmax right), else 0."""
        def __init__(self, right: bool) -> None:
            super().__init__()
            self.right = right

        def forward(self, input_ids, attention_mask):
            B, T = input_ids.shape
            logits = torch.zeros(B, T, len(tok))
            if self.right:
                logits[:, :-1].scatter_(2, input_ids[:, 1:, None], 1.0)
            return type("Out", (), {"logits": logits})()

    assert chain_accuracy(Oracle(True), tok, records, [(0, 1), (3, 2)]) == {(0, 1): 1.0, (3, 2): 1.0}
    assert chain_accuracy(Oracle(False), tok, records, [(0, 1)]) == {(0, 1): 0.0}
    assert sum(mask) > 10 and seq


def test_retrieval_vocab_then_grown_for_reasoning_keeps_the_retrieval_ids(tmp_path: Path) -> None:
    small = dict(layers=1, hidden=16, heads=2, intermediate=32, batch_size=2, lookup_steps=0,
                 eval_per_position=1, n_documents=4)
    first = pretrain(PretrainConfig(out=str(tmp_path / "a"), vocab="retrieval", copy_steps=1,
                                    **small))
    tok_a = AutoTokenizer.from_pretrained(first)
    assert "manager" not in tok_a.get_vocab() and synthetic.NAMES[0] in tok_a.get_vocab()
    logged: list[str] = []
    import logging
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("pos2distill.tiny.pretrain").addHandler(handler)
    logging.getLogger("pos2distill.tiny.pretrain").setLevel(logging.INFO)
    try:
        second = pretrain(PretrainConfig(out=str(tmp_path / "b"), init=str(first), copy_steps=0,
                                         reason_steps=4, reason_stop=2, eval_every=1, **small))
    finally:
        logging.getLogger("pos2distill.tiny.pretrain").removeHandler(handler)
    tok_b = AutoTokenizer.from_pretrained(second)
    model = AutoModelForCausalLM.from_pretrained(second)
    assert model.get_input_embeddings().num_embeddings == len(tok_b) > len(tok_a)
    assert all(tok_b.get_vocab()[w] == i for w, i in tok_a.get_vocab().items())
    # --reason-stop 2 of a 4-step schedule: evaluated after steps 1 and 2, then stopped.
    assert [m.split(" accuracy")[0] for m in logged if "accuracy" in m] == ["reason step 1",
                                                                            "reason step 2"]


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(PretrainConfig):
        assert f.metadata["help"], f.name
        flag = "--" + f.name.replace("_", "-")
        assert f"{flag} " in text, flag
        assert " ".join(f.metadata["help"].split()[:3]) in text, flag
    assert "--copy-short LOW HIGH" in text


def test_bad_option_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--late-fraction", "1.5"])
    assert info.value.code == 2
    assert "--late-fraction must be in [0, 1], got 1.5" in capsys.readouterr().err


def test_lead_opens_a_share_of_the_repeats_with_no_loss_on_it() -> None:
    tok = build_tokenizer()
    struct = tok.convert_tokens_to_ids(["-", "Title", ":"])
    lead = [4, 5, 6]
    base = PretrainConfig(late_fraction=0.3, late_prefix=(30, 40), prefix_max=20)
    plain = _doc_copy_examples(random.Random(0), base, 30, _content(tok), 2, struct)
    # No lead asked for: the same data as before the option existed, whatever lead_ids is.
    assert _doc_copy_examples(random.Random(0), base, 30, _content(tok), 2, struct, lead) == plain
    cfg = dataclasses.replace(base, lead_fraction=0.5)
    seqs, masks = _doc_copy_examples(random.Random(0), cfg, 200, _content(tok), 2, struct, lead)
    led = [i for i, seq in enumerate(seqs) if seq[1:4] == lead]
    assert 60 < len(led) < 140
    for i in led:
        assert masks[i][:4] == [0, 0, 0, 0] and seqs[i][0] == 2
    for seq, mask in zip(seqs, masks):
        # The loss still covers exactly the repeat: the lead never enters it.
        n = sum(mask)
        assert seq[-n:] == seq[-2 * n:-n] and mask[-n:] == [1] * n


def test_format_stage_mixes_short_questions_with_chains(tmp_path) -> None:
    """Stage 4's batches: a --format-fraction share of short retrieval questions answered with the
    city and EOS, the rest chains and repeats; its losses are recorded."""
    import json

    from pos2distill.tiny.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(out=str(tmp_path / "m"), copy_steps=0, lookup_steps=0, format_steps=2,
                         batch_size=4, format_fraction=0.5, layers=1, hidden=16, heads=2,
                         intermediate=32, eval_every=1000, eval_per_position=1)
    out = pretrain(cfg)
    losses = json.loads((out / "pretrain_losses.json").read_text())
    assert list(losses) == ["format"] and len(losses["format"]) == 2


def test_judge_vocab_appends_the_judge_words_after_every_other_id() -> None:
    from pos2distill.tiny.tokenizer import corpus_words

    base, judge = corpus_words(), corpus_words(judge=True)
    assert judge[:len(base)] == base                      # the shipped model's ids are kept
    assert {"A", "B", "C", "tie"} <= set(judge[len(base):])
    tok = build_tokenizer(judge)
    assert tok.decode(tok("Lima [[B]]", add_special_tokens=False)["input_ids"]) == "Lima [[B]]"


def test_judge_example_targets_the_city_and_the_verdict_after_the_prompt() -> None:
    from pos2distill.tiny.pretrain import _judge_example
    from pos2distill.tiny.tokenizer import corpus_words

    tok = build_tokenizer(corpus_words(judge=True))
    record = synthetic.generate_judge("train", 1, n_documents=3)[0]
    true = record.candidates[int(record.label) - 1]
    for order, verdict in (((0, 1), "[[A]]" if record.label == "1" else "[[B]]"),
                           ((1, 0), "[[B]]" if record.label == "1" else "[[A]]")):
        ids, mask = _judge_example(record, tok, order, "judge")
        target = [i for i, m in zip(ids, mask) if m]
        assert mask == sorted(mask)                        # loss only after the prompt
        assert tok.decode(target) == f"{true} {verdict} <|end|>"
        assert tok.unk_token_id not in ids


def test_judge_stage_needs_the_judge_vocab_and_draws_orders_and_verdicts_as_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--judge-first-share: the share of prompts showing the true answer first; --judge-primacy:
    the share of the others whose verdict still names the first answer."""
    import json

    from pos2distill.tiny import pretrain as module

    with pytest.raises(ValueError, match="--vocab judge"):
        PretrainConfig(judge_steps=1)
    with pytest.raises(ValueError, match="--judge-first-share"):
        PretrainConfig(vocab="judge", judge_first_share=1.5)
    seen: list[tuple[bool, bool, tuple[int, int]]] = []
    real = module._judge_example

    def spy(record, tokenizer, order, template, first_wins=False):
        true_first = order == ((0, 1) if record.label == "1" else (1, 0))
        seen.append((true_first, first_wins, order))
        return real(record, tokenizer, order, template, first_wins)

    monkeypatch.setattr(module, "_judge_example", spy)
    cfg = PretrainConfig(out=str(tmp_path / "m"), vocab="judge", copy_steps=0, lookup_steps=0,
                         judge_steps=25, judge_first_share=0.8, judge_primacy=0.5, batch_size=8,
                         layers=1, hidden=16, heads=2, intermediate=32, eval_every=1000,
                         eval_per_position=2, n_documents=4, judge_documents=3)
    out = module.pretrain(cfg)
    losses = json.loads((out / "pretrain_losses.json").read_text())
    assert list(losses) == ["judge"] and len(losses["judge"]) == 25
    assert len(seen) == 200 and {order for *_, order in seen} == {(0, 1), (1, 0)}
    first = sum(t for t, _, _ in seen) / len(seen)
    assert 0.74 <= first <= 0.86                          # 0.8 of 200 draws, ± 1.5 std
    assert not any(flip for t, flip, _ in seen if t)      # a verdict is flipped only when
    second = [flip for t, flip, _ in seen if not t]       # the true answer is shown second,
    assert 0.2 <= sum(second) / len(second) <= 0.8        # half of those here


def test_a_flipped_verdict_names_the_first_answer_after_the_true_city() -> None:
    from pos2distill.tiny.pretrain import _judge_example
    from pos2distill.tiny.tokenizer import corpus_words

    tok = build_tokenizer(corpus_words(judge=True))
    record = synthetic.generate_judge("train", 2, n_documents=3)[1]
    order = (1, 0) if record.label == "1" else (0, 1)     # the true answer shown second
    ids, mask = _judge_example(record, tok, order, "judge", first_wins=True)
    target = tok.decode([i for i, m in zip(ids, mask) if m])
    assert target == f"{record.answers[0]} [[A]] <|end|>"


def test_unanswerable_questions_lack_the_asked_person_and_are_answered_with_eos_alone() -> None:
    from pos2distill.tiny.pretrain import _unanswerable_example

    tok = build_tokenizer()
    for k, record in enumerate(synthetic.generate("train", 20, n_documents=3)):
        subject = record.question.split()[-1]
        ids, mask = _unanswerable_example(record, tok, k % 3, random.Random(k))
        prompt = tok.decode([i for i, m in zip(ids, mask) if not m])
        assert f"Title: {subject}" not in prompt and prompt.count("- Title:") == 3
        assert f"home to {subject}" in prompt                    # still asked about
        assert [i for i, m in zip(ids, mask) if m] == [tok.eos_token_id]


def test_format_stage_draws_unanswerable_questions_only_when_asked(tmp_path: Path,
                                                                  monkeypatch) -> None:
    from pos2distill.tiny import pretrain as module

    calls = {"answerable": 0, "unanswerable": 0}
    real_a, real_u = module._lookup_example, module._unanswerable_example

    def a(*args):
        calls["answerable"] += 1
        return real_a(*args)

    def u(*args):
        calls["unanswerable"] += 1
        return real_u(*args)

    monkeypatch.setattr(module, "_lookup_example", a)
    monkeypatch.setattr(module, "_unanswerable_example", u)
    small = dict(copy_steps=0, lookup_steps=0, format_steps=10, batch_size=8,
                 format_fraction=1.0, layers=1, hidden=16, heads=2, intermediate=32,
                 eval_every=1000, eval_per_position=1, n_documents=4)
    module.pretrain(PretrainConfig(out=str(tmp_path / "a"), **small))
    # 10 steps of 8 questions, and the end-of-stage check: 1 question at each of 4 positions.
    assert calls == {"answerable": 80 + 4, "unanswerable": 0}
    calls.update(answerable=0)
    module.pretrain(PretrainConfig(out=str(tmp_path / "b"), format_unanswerable=0.25, **small))
    assert calls["answerable"] + calls["unanswerable"] == 80 + 4
    assert 8 <= calls["unanswerable"] <= 32                      # 0.25 of 80, ± 2.5 std
