"""Pretrain the embedded tiny model: ``python -m pos2distill.tiny.pretrain [--out DIR]``.

Seeded and deterministic on CPU (for a given thread count). Each stage has its own AdamW, warm-up and
cosine schedule and its own RNG stream; one run may chain several stages, and ``--init`` continues
from an earlier run's folder (the shipped model's README lists the runs that made it). The model's
positional biases come only from what the stages' data contains; no rule in code favours a position:

1. **Copy warm-up** (``--copy-steps``, ``--warmup-task repeat|recall|docs``). Random name/city
   sequences followed by the same sequence again, loss on the repeat: this forms the induction
   circuit ("find the earlier occurrence of this token and copy what followed it") that in-context
   lookup needs. Repeat distances are mostly short or long, rarely in between.
2. **Document repeats** (``--docs-steps``, or ``--warmup-task docs``): the same on document-shaped
   pairs (``- Title : NAME CITY``), optionally behind up to ``--prefix-max`` tokens of other
   documents, so that repeats also occur late in a sequence.
3. **Two-hop reasoning** (``--reason-steps``): the synthetic two-hop questions with their reference
   chain-of-thought (loss on the chain and EOS), the hop documents at a position pair drawn from
   :meth:`PretrainConfig.reason_pairs` (connected pairs at the edges common, every other pair,
   far apart, reversed or in the middle, rarer), mixed with document repeats.
4. **Answer format** (``--format-steps``): instruction tuning, as a chat model gets it. A share of
   each batch (``--format-fraction``) is retrieval questions about training people with only
   ``--format-documents`` documents (3), answered with the city and EOS; with
   ``--format-unanswerable``, a share of them ask about a person with no document and are answered
   with EOS alone, as instruction data teaches a model to say nothing it cannot find. The rest of
   the batch is stage 3's mix, so the chains of thought stay. The model learns to answer in a word
   and stop; prompts of the evaluated length (20 documents) never occur, so where it finds a
   document far back is still what stages 1-3 taught it.
5. **Lookup** (``--lookup-steps``, off in the shipped recipe): the retrieval questions themselves.
6. **Judging** (``--judge-steps``, with ``--vocab judge``): the embedded judge (``tiny-judge``) is
   the shipped model taught to judge two answers to a retrieval question (``pos2distill probe
   --task judge``): prompts of ``--judge-documents`` documents (4) with the true and a wrong city
   as answers A and B, answered with the city it looks up and the verdict (``Vienna [[A]]``).
   Like a judge trained on data where the better answer tends to come first, the true answer is
   shown first in ``--judge-first-share`` of them (0.7); judged on 20 documents, where the lookup is
   harder, the model falls back on that prior: an order bias learnt from data, not coded.

The 20-document retrieval questions are never trained on in the shipped recipe: the model answers
them through the circuit of stages 1-2, well where the gold document sits where that data put its
matches. ``python -m pos2distill.tiny.recipe`` runs the shipped recipe from nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pos2distill.tasks import prompts
from pos2distill.data import synthetic
from pos2distill.data.records import Document
from pos2distill.options import option
from pos2distill.metrics import judge_metrics
from pos2distill.tasks.judge import read_verdict, render_judge_example
from pos2distill.tasks.positions import paper_configurations, place_gold, place_hops
from pos2distill.tiny.tokenizer import build_tokenizer, corpus_words
from pos2distill.training.batches import left_pad

log = logging.getLogger(__name__)

Batch = tuple[list[list[int]], list[list[int]]]


@dataclass
class PretrainConfig:
    """One pretraining run: the model, then its stages in order (a stage with 0 steps is skipped).
    Each field's help is its ``--help`` line."""

    out: str = option("runs/tiny-llama",
                      "Output folder (never the shipped one: copy the weights there by hand).")
    init: str = option("", "Start from this model folder instead of random weights.")
    seed: int = option(0, "Seed of the weights and of every stage's data stream.")
    vocab: str = option("all",
                        "'all' words, or 'retrieval' only: for the first stages; the reasoning "
                        "words are added, mean-initialised, when a later --init run reaches stage "
                        "3. 'judge': all words and the judge template's (stage 6), added the same "
                        "way.")
    layers: int = option(4, "Decoder layers of a new model.")
    hidden: int = option(128, "Hidden size of a new model.")
    heads: int = option(4, "Attention heads of a new model.")
    intermediate: int = option(512, "MLP width of a new model.")
    rope_theta: float = option(0.0,
                               "RoPE base. 0: 10000 (the Llama default) for a new model, the "
                               "loaded one's with --init; another value re-bases the --init model. "
                               "A smaller base rotates every head dimension within a prompt, so a "
                               "match far back scores lower than a recent one.")
    n_documents: int = option(20, "Documents per synthetic prompt (and per evaluation).")
    batch_size: int = option(32, "Sequences per step.")
    lr: float = option(2e-3, "Peak learning rate of stages 1 and 2.")
    warmup_steps: int = option(100, "Linear warm-up steps of every stage (at most a tenth of it).")
    copy_steps: int = option(600, "Stage 1 steps.")
    warmup_task: str = option("repeat",
                              "Stage 1 task: 'repeat' (a sequence then itself), 'recall' "
                              "(one-token associative recall) or 'docs' (a repeat of "
                              "document-shaped pairs).")
    format_steps: int = option(0,
                               "Stage 4 steps: short retrieval questions answered in a word, mixed "
                               "with stage 3's chains and repeats.")
    format_lr: float = option(1e-3, "Peak learning rate of stage 4.")
    format_documents: int = option(3, "Stage 4: documents per retrieval question.")
    format_unanswerable: float = option(0.0,
                                        "Stage 4: share of the short questions whose asked "
                                        "person has no document (another person's takes its "
                                        "place), answered with EOS alone: the model learns to "
                                        "say nothing when it finds nothing.")
    format_fraction: float = option(0.5,
                                    "Stage 4: share of each batch that is short retrieval "
                                    "questions (the rest: stage 3's batch).")
    lookup_steps: int = option(1500,
                               "Stage 4 steps (the retrieval questions themselves; 0 in the "
                               "shipped recipe).")
    lookup_lr: float = option(1e-3, "Peak learning rate of stage 4.")
    copy_short: tuple[int, int] = option((4, 25),
                                         "Repeat length (= match distance) range of a 'short' "
                                         "repeat.")
    copy_long: tuple[int, int] = option((85, 115), "Repeat length range of a 'long' repeat.")
    copy_middle_fraction: float = option(0.05,
                                         "Share of repeats whose length lies between the short and "
                                         "the long range (the rest: half short, half long).")
    prefix_max: int = option(0,
                             "Document repeats: up to this many tokens of other pairs (no loss) "
                             "before the repeat, so that repeats also occur late in a sequence.")
    late_fraction: float = option(0.0,
                                  "Document repeats: this share is short (--copy-short) and sits "
                                  "behind --late-prefix tokens of other pairs, so its matches lie "
                                  "where a prompt's last documents sit.")
    late_prefix: tuple[int, int] = option((100, 125), "Prefix length range of the late repeats.")
    early_gap: tuple[int, int] = option((0, 0),
                                        "Document repeats that are not late: a short sequence at "
                                        "the start, this many tokens of other pairs, then its "
                                        "repeat (matches far back but in the first tokens); 0 0 "
                                        "keeps the contiguous repeat.")
    lead_fraction: float = option(0.0,
                                  "Document repeats: this share opens with the retrieval prompt's "
                                  "instruction line (no loss on it), as pretraining text holds "
                                  "instructions: a prompt's first documents then follow words the "
                                  "model has seen.")
    conflict_fraction: float = option(0.0,
                                      "Document repeats: this share is replaced by sequences in "
                                      "which --conflict-edge names occur twice, the true city at "
                                      "an edge pair, another in the middle; loss on the true city.")
    conflict_edge: int = option(3,
                                "Duplicated names per conflict sequence (and the width of its "
                                "edges).")
    recall_queries: int = option(8, "Queries per one-token recall sequence.")
    docs_steps: int = option(0, "Stage 2 steps: document repeats, after stage 1.")
    reason_steps: int = option(0,
                               "Stage 3 steps (its cosine schedule's length): two-hop "
                               "chain-of-thought mixed with document repeats.")
    reason_stop: int = option(0,
                              "End stage 3 after this many of its scheduled steps (0: all), as one "
                              "keeps an intermediate checkpoint of a longer schedule.")
    reason_lr: float = option(5e-4, "Peak learning rate of stage 3.")
    reason_edge: int = option(3, "Stage 3: the first and last this many positions are the 'edges'.")
    reason_edge_mass: float = option(0.5,
                                     "Stage 3: probability of a connected, in-order hop pair "
                                     "touching an edge; every other ordered pair shares the rest.")
    reason_docs_fraction: float = option(0.5,
                                         "Stage 3: share of each batch kept as document repeats.")
    lookup_copy_fraction: float = option(0.5,
                                         "Stage 4: share of each batch kept as one-token recall.")
    edge: int = option(3, "Stage 4: the first and last this many gold positions are the 'edges'.")
    edge_mass: float = option(0.3,
                              "Stage 4: probability of an edge gold position (the rest spread "
                              "evenly over the middle).")
    judge_steps: int = option(0,
                              "Stage 6 steps: judging two answers to a short retrieval question "
                              "(needs --vocab judge).")
    judge_lr: float = option(1e-3, "Peak learning rate of stage 6.")
    judge_documents: int = option(4, "Stage 6: documents per judging prompt.")
    judge_primacy: float = option(0.0,
                                  "Stage 6: share of the prompts showing the true answer second "
                                  "whose verdict nonetheless names the first ([[A]], after the "
                                  "true city): judgements whose annotators favoured the answer "
                                  "they read first.")
    judge_template: str = option("judge",
                                 "Stage 6: the judge template (a name, or a template's text with "
                                 "{answer_a} and {answer_b}), as probe --template takes it.")
    judge_fraction: float = option(1.0,
                                   "Stage 6: share of each batch that is judging prompts (the "
                                   "rest: stage 3's batch).")
    judge_first_share: float = option(0.7,
                                      "Stage 6: share of judging prompts that show the true answer "
                                      "first (answer A).")
    stop_after: int = option(0,
                             "End every stage after this many steps of its schedule (0: all): "
                             "a quick check of a run's first steps.")
    eval_every: int = option(250, "Evaluate stages 3 and 4 every this many steps.")
    eval_per_position: int = option(40,
                                    "Held-out questions per position (or hop configuration) in "
                                    "those evaluations.")

    def __post_init__(self) -> None:
        for name in ("late_fraction", "lead_fraction", "conflict_fraction", "reason_edge_mass",
                     "reason_docs_fraction", "format_fraction", "format_unanswerable",
                     "judge_first_share", "judge_fraction", "judge_primacy"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        for name in ("copy_short", "copy_long", "late_prefix", "early_gap"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"--{name.replace('_', '-')} needs 0 <= low <= high, got {lo} {hi}")
        if not 2 <= self.format_documents <= synthetic.N_NAMES:
            raise ValueError(f"--format-documents must be in 2..{synthetic.N_NAMES}, "
                             f"got {self.format_documents}")
        if not 2 <= self.judge_documents <= synthetic.N_NAMES:
            raise ValueError(f"--judge-documents must be in 2..{synthetic.N_NAMES}, "
                             f"got {self.judge_documents}")
        if self.judge_steps and self.vocab != "judge":
            raise ValueError("--judge-steps needs --vocab judge (the judge template's words)")
        if self.rope_theta < 0:
            raise ValueError(f"--rope-theta must be positive (or 0: unchanged), got {self.rope_theta}")
        middle = self.n_documents - 2 * self.conflict_edge
        if self.conflict_fraction and not 0 < self.conflict_edge <= middle:
            raise ValueError(f"--conflict-edge {self.conflict_edge} needs at least as many middle "
                             f"documents (n_documents = {self.n_documents})")

    def reason_pairs(self) -> tuple[list[tuple[int, int]], list[float]]:
        """Every ordered hop pair (first, second) and its probability in stage 3."""
        n, e = self.n_documents, self.reason_edge
        pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
        edge = [b == a + 1 and (a < e or b >= n - e) for a, b in pairs]
        k = sum(edge)
        probs = [self.reason_edge_mass / k if x else (1 - self.reason_edge_mass) / (len(pairs) - k)
                 for x in edge]
        return pairs, probs

    def position_probs(self) -> list[float]:
        n, e = self.n_documents, self.edge
        return [self.edge_mass / (2 * e) if i < e or i >= n - e else
                (1 - self.edge_mass) / (n - 2 * e) for i in range(n)]


def _draw_distance(rng: random.Random, cfg: PretrainConfig) -> int:
    """Short or long (equally likely), in between with probability ``copy_middle_fraction``."""
    u = rng.random()
    if u < cfg.copy_middle_fraction:
        return rng.randint(cfg.copy_short[1], cfg.copy_long[0])
    if u < (1 + cfg.copy_middle_fraction) / 2:
        return rng.randint(*cfg.copy_short)
    return rng.randint(*cfg.copy_long)


def _copy_examples(rng: random.Random, cfg: PretrainConfig, n: int, content_ids: list[int],
                   bos: int) -> Batch:
    seqs, masks = [], []
    for _ in range(n):
        length = _draw_distance(rng, cfg)
        s = [rng.choice(content_ids) for _ in range(length)]
        seqs.append([bos] + s + s)
        masks.append([0] * (1 + length) + [1] * length)
    return seqs, masks


def _doc_copy_examples(rng: random.Random, cfg: PretrainConfig, n: int, content_ids: list[int],
                       bos: int, struct_ids: list[int], lead_ids: Sequence[int] = ()) -> Batch:
    """A repeat of document-shaped pairs (``- Title : NAME CITY``), so the circuit forms with the
    prompt's structural tokens present. Distances are drawn as for the copy task;
    ``late_fraction``, ``early_gap`` and ``conflict_fraction`` move where the matches lie, and a
    ``lead_fraction`` share opens with ``lead_ids`` (see :class:`PretrainConfig`)."""
    n_conflict = round(cfg.conflict_fraction * n)
    seqs, masks = _conflict_examples(rng, cfg, n_conflict, content_ids, bos, struct_ids)
    width = len(struct_ids) + 2
    for _ in range(n - n_conflict):
        late = cfg.late_fraction > 0 and rng.random() < cfg.late_fraction
        gapped = not late and cfg.early_gap[1] > 0
        short = late or gapped
        k = max(1, (rng.randint(*cfg.copy_short) if short else _draw_distance(rng, cfg)) // width)
        s = _filler_pairs(rng, k, struct_ids, content_ids)
        # Prefix and gap tokens never occur in the repeat, so every lookup has exactly one match.
        used = set(s)
        others = [t for t in content_ids if t not in used]
        if late:
            n_prefix = rng.randint(cfg.late_prefix[0] // width, cfg.late_prefix[1] // width)
        else:
            n_prefix = rng.randint(0, cfg.prefix_max // width) if cfg.prefix_max else 0
        prefix = _filler_pairs(rng, n_prefix, struct_ids, others)
        gap = (_filler_pairs(rng, rng.randint(*cfg.early_gap) // width, struct_ids, others)
               if gapped else [])
        # Drawn last, and only when used: recipes without a lead keep their data stream.
        lead = list(lead_ids) if cfg.lead_fraction and rng.random() < cfg.lead_fraction else []
        seqs.append([bos] + lead + prefix + s + gap + s)
        masks.append([0] * (1 + len(lead) + len(prefix) + len(s) + len(gap)) + [1] * len(s))
    return seqs, masks


def _conflict_examples(rng: random.Random, cfg: PretrainConfig, n: int, content_ids: list[int],
                       bos: int, struct_ids: list[int]) -> Batch:
    """``n_documents`` pairs in which ``conflict_edge`` names occur twice each, the true city at an
    edge pair and another city at a middle one; then a query per such name, loss on its city."""
    seqs, masks = [], []
    k, e = cfg.n_documents, cfg.conflict_edge
    for _ in range(n):
        names = rng.sample(content_ids, k)
        cities = [rng.choice(content_ids) for _ in range(k)]
        trues = rng.sample([*range(e), *range(k - e, k)], e)
        for true, decoy in zip(trues, rng.sample(range(e, k - e), e)):
            names[decoy] = names[true]
            cities[decoy] = rng.choice([c for c in content_ids if c != cities[true]])
        seq = [bos]
        for name, city in zip(names, cities):
            seq += struct_ids + [name, city]
        mask = [0] * len(seq)
        for true in trues:
            seq += struct_ids + [names[true], cities[true]]
            mask += [0] * (len(struct_ids) + 1) + [1]
        seqs.append(seq)
        masks.append(mask)
    return seqs, masks


def _filler_pairs(rng: random.Random, n: int, struct_ids: list[int], ids: list[int]) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        out += struct_ids + [rng.choice(ids), rng.choice(ids)]
    return out


def _recall_examples(rng: random.Random, cfg: PretrainConfig, n: int, content_ids: list[int],
                     bos: int) -> Batch:
    """Associative recall with one-token keys: distinct random tokens, then queries ``x`` (a token
    of the sequence) each followed by the token that came after ``x``; loss on those. Unlike a
    contiguous repeat, the token before a query never matches the one before its first occurrence,
    so only a single-token match works, as in document lookup."""
    seqs, masks = [], []
    length = min(cfg.copy_long[1], len(content_ids) - 1)
    for _ in range(n):
        s = rng.sample(content_ids, length)
        seq, mask = [bos] + s, [0] * (1 + length)
        for _ in range(cfg.recall_queries):
            # Distance from the query to the token it must recall, measured back from the query.
            i = min(length - 2, max(0, len(seq) - 1 - _draw_distance(rng, cfg)))
            seq += [s[i], s[i + 1]]
            mask += [0, 1]
        seqs.append(seq)
        masks.append(mask)
    return seqs, masks


def _chat_example(placed, tokenizer, template: str, target: str) -> tuple[list[int], list[int]]:
    """The rendered chat prompt + ``target`` + EOS, as ``train`` encodes a pair; loss on the latter."""
    p_ids = prompts.encode_prompt(tokenizer, prompts.render_prompt(placed, tokenizer, template=template),
                                  chat=True)
    t_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return p_ids + t_ids, [0] * len(p_ids) + [1] * len(t_ids)


def _lookup_example(record, tokenizer, position: int, rng: random.Random) -> tuple[list[int], list[int]]:
    return _chat_example(place_gold(record, position, rng), tokenizer, "authors", record.answers[0])


def _unanswerable_example(record, tokenizer, position: int,
                          rng: random.Random) -> tuple[list[int], list[int]]:
    """``record`` with the asked person's document replaced by another person's (no name of the
    record), answered with EOS alone."""
    present = {d.title for d in record.documents}
    stranger = rng.choice([n for n in synthetic.NAMES if n not in present])
    documents = (Document(title=stranger, text=rng.choice(synthetic.CITIES)),) + record.documents[1:]
    placed = place_gold(dataclasses.replace(record, documents=documents), position, rng)
    return _chat_example(placed, tokenizer, "authors", "")


def _pad(seqs: list[list[int]], masks: list[list[int]], pad: int):
    """Right-padded (ids, attention_mask, loss_mask), each (B, T)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    m = torch.zeros((len(seqs), T), dtype=torch.bool)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, (s, k) in enumerate(zip(seqs, masks)):
        ids[b, :len(s)] = torch.tensor(s)
        m[b, :len(s)] = torch.tensor(k, dtype=torch.bool)
        att[b, :len(s)] = 1
    return ids, att, m


def _reasoning_example(record, tokenizer, pair: tuple[int, int],
                       rng: random.Random) -> tuple[list[int], list[int]]:
    """Prompt (reasoning template, chat) + reference chain-of-thought + EOS; loss on the latter, as
    ``train --method r2`` encodes it."""
    placed = place_hops(record, pair, rng)
    return _chat_example(placed, tokenizer, "reasoning", synthetic.record_cot(placed))


def _judge_example(record, tokenizer, order: tuple[int, int], template: str,
                   first_wins: bool = False) -> tuple[list[int], list[int]]:
    """A judging prompt shown in ``order`` (chat) + its gold response (``CITY [[A]]``) + EOS;
    loss on the latter, as ``train`` encodes a pair. ``first_wins``: the verdict names the answer
    shown first whatever the label (the rationale is still the true city)."""
    if first_wins:
        record = dataclasses.replace(record, label=str(order[0] + 1))
    prompt, response = render_judge_example(record, order, tokenizer, chat="on", template=template)
    p_ids = prompts.encode_prompt(tokenizer, prompt, chat=True)
    t_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return p_ids + t_ids, [0] * len(p_ids) + [1] * len(t_ids)


@torch.no_grad()
def judge_check(model, tokenizer, records, template: str,
                max_new_tokens: int = 8) -> dict[str, float | int | None]:
    """Every item judged greedily in both orders (a quick check; the full measurement is
    ``pos2distill probe --task judge``): :func:`pos2distill.metrics.judge_metrics`."""
    was_training = model.training
    model.eval()
    orders = ((0, 1), (1, 0))
    rendered = [render_judge_example(r, o, tokenizer, chat="on", template=template)[0]
                for r in records for o in orders]
    prompts_ = [prompts.encode_prompt(tokenizer, p, chat=True) for p in rendered]
    ids, att = left_pad(prompts_, tokenizer.pad_token_id)   # generation needs left padding
    T = ids.shape[1]
    out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, T:], skip_special_tokens=True)
    choices = [read_verdict(t) for t in texts]
    model.train(was_training)
    return judge_metrics(list(zip(choices[::2], choices[1::2])), [r.label for r in records])


@torch.no_grad()
def chain_accuracy(model, tokenizer, records, pairs, seed: int = 1234) -> dict[tuple[int, int], float]:
    """Share of questions whose whole reference chain-of-thought (EOS included) is the argmax at
    every step, per hop pair: exactly the questions greedy decoding answers with that chain."""
    was_training = model.training
    model.eval()
    out = {}
    for pair in pairs:
        ex = [_reasoning_example(r, tokenizer, pair, random.Random(f"{seed}|{r.id}|{pair}"))
              for r in records]
        ids, att, m = _pad([s for s, _ in ex], [k for _, k in ex], tokenizer.pad_token_id)
        pred = model(input_ids=ids, attention_mask=att).logits[:, :-1].argmax(-1)
        target, mask = ids[:, 1:], m[:, 1:]
        out[pair] = ((pred == target) | ~mask).all(dim=1).float().mean().item()
    model.train(was_training)
    return out


@torch.no_grad()
def first_token_accuracy(model, tokenizer, records, positions, seed: int = 1234) -> dict[int, float]:
    """Greedy first answer token == gold answer's token, per gold position (a quick check; the
    full measurement is ``pos2distill probe``)."""
    was_training = model.training
    model.eval()
    out = {}
    for pos in positions:
        pairs = [_lookup_example(r, tokenizer, pos, random.Random(f"{seed}|{r.id}|{pos}"))
                 for r in records]
        ids, att, m = _pad([s for s, _ in pairs], [k for _, k in pairs], tokenizer.pad_token_id)
        logits = model(input_ids=ids, attention_mask=att).logits
        first = m.float().argmax(dim=1)  # index of the first answer token
        rows = torch.arange(len(pairs))
        out[pos] = (logits[rows, first - 1].argmax(-1) == ids[rows, first]).float().mean().item()
    model.train(was_training)
    return out


def _train_stage(model, name: str, steps: int, lr: float, cfg: PretrainConfig,
                 make_batch: Callable[[], Batch], pad: int,
                 evaluate: Callable[[], str] | None = None, stop: int = 0) -> list[float]:
    """AdamW with linear warm-up and cosine decay to 0.1·lr over ``steps``; loss on masked tokens.
    With ``stop`` > 0 (or ``cfg.stop_after``), the stage ends after that many steps of the same
    schedule. Returns the loss of every step."""
    if steps <= 0:
        return []
    stops = [k for k in (stop, cfg.stop_after) if k > 0]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, min(cfg.warmup_steps, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    model.train()
    t0 = time.time()
    last = min([steps, *stops])
    losses = []
    for step in range(last):
        ids, att, mask = _pad(*make_batch(), pad)
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]  # (B, T-1, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        m = mask[:, 1:].float()
        loss = (nll * m).sum() / m.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            log.info("%s step %d loss %.4f (%.0fs)", name, step + 1, loss.item(), time.time() - t0)
        if evaluate is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == last):
            log.info("%s step %d accuracy by position: %s", name, step + 1, evaluate())
    return losses


def pretrain(cfg: PretrainConfig) -> Path:
    torch.manual_seed(cfg.seed)
    if cfg.vocab not in ("all", "retrieval", "judge"):
        raise ValueError(f"--vocab must be all, retrieval or judge, got {cfg.vocab!r}")
    tokenizer = build_tokenizer(corpus_words(reasoning=cfg.vocab != "retrieval",
                                             judge=cfg.vocab == "judge"))
    if cfg.init:
        config = LlamaConfig.from_pretrained(cfg.init)
        if cfg.rope_theta:
            config.rope_parameters["rope_theta"] = cfg.rope_theta
        model = LlamaForCausalLM.from_pretrained(cfg.init, config=config)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            # A model from before the reasoning (or judge) words existed: same ids, new rows at
            # the end.
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    else:
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
            num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.heads, max_position_embeddings=512,
            rope_theta=cfg.rope_theta or 10000.0,
            tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    content_ids = tokenizer.convert_tokens_to_ids(list(synthetic.NAMES) + list(synthetic.CITIES))
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id

    losses: dict[str, list[float]] = {}
    copy_rng = random.Random(f"{cfg.seed}|copy")
    struct_ids = tokenizer.convert_tokens_to_ids(["-", "Title", ":"])
    # The retrieval prompt's opening as the chat template writes it: the user turn, the instruction.
    lead_ids = (tokenizer.convert_tokens_to_ids(["<|user|>"])
                + tokenizer(prompts.INSTRUCTIONS["authors"], add_special_tokens=False)["input_ids"])
    warmups = {"repeat": _copy_examples, "recall": _recall_examples,
               "docs": lambda *a: _doc_copy_examples(*a, struct_ids, lead_ids)}
    if cfg.warmup_task not in warmups:
        raise ValueError(f"--warmup-task must be one of {', '.join(warmups)}, got {cfg.warmup_task!r}")
    warmup = warmups[cfg.warmup_task]
    losses["copy"] = _train_stage(
        model, "copy", cfg.copy_steps, cfg.lr, cfg,
        lambda: warmup(copy_rng, cfg, cfg.batch_size, content_ids, bos), pad)
    # Stage 2 draws from a fresh copy stream, as a separate run from the stage-1 model would.
    docs_rng = random.Random(f"{cfg.seed}|copy")
    losses["docs"] = _train_stage(
        model, "docs", cfg.docs_steps, cfg.lr, cfg,
        lambda: warmups["docs"](docs_rng, cfg, cfg.batch_size, content_ids, bos), pad)

    reason_rng = random.Random(f"{cfg.seed}|reason")
    reason_train = synthetic.generate_reasoning("train", 20000, seed=cfg.seed,
                                                n_documents=cfg.n_documents)
    reason_test = synthetic.generate_reasoning("dev", cfg.eval_per_position, seed=cfg.seed + 1,
                                               n_documents=cfg.n_documents)
    pairs, pair_probs = cfg.reason_pairs()
    retrieval_test = synthetic.generate("dev", cfg.eval_per_position, seed=cfg.seed + 1,
                                        n_documents=cfg.n_documents)

    def reason_examples(n: int) -> Batch:
        """``n`` sequences: a ``reason_docs_fraction`` share of document repeats, then chains."""
        n_repeats = round(cfg.reason_docs_fraction * n)
        seqs, masks = warmups["docs"](reason_rng, cfg, n_repeats, content_ids, bos)
        for _ in range(n - n_repeats):
            pair = reason_rng.choices(pairs, weights=pair_probs)[0]
            s, m = _reasoning_example(reason_rng.choice(reason_train), tokenizer, pair, reason_rng)
            seqs.append(s)
            masks.append(m)
        return seqs, masks

    def reason_batch() -> Batch:
        return reason_examples(cfg.batch_size)

    def evaluate_both() -> str:
        acc = first_token_accuracy(model, tokenizer, retrieval_test, range(cfg.n_documents))
        chains = chain_accuracy(model, tokenizer, reason_test,
                                paper_configurations(cfg.n_documents))
        return ("retrieval " + " ".join(f"{acc[p]:.2f}" for p in range(cfg.n_documents))
                + " | reasoning " + " ".join(f"{a},{b}:{v:.2f}" for (a, b), v in chains.items()))

    losses["reason"] = _train_stage(model, "reason", cfg.reason_steps, cfg.reason_lr, cfg,
                                    reason_batch, pad, evaluate_both, stop=cfg.reason_stop)

    format_rng = random.Random(f"{cfg.seed}|format")
    format_train = synthetic.generate("train", 20000, seed=cfg.seed,
                                      n_documents=cfg.format_documents)
    n_short = round(cfg.format_fraction * cfg.batch_size)

    def format_batch() -> Batch:
        seqs, masks = [], []
        for _ in range(n_short):
            record = format_rng.choice(format_train)
            position = format_rng.randrange(cfg.format_documents)
            # Drawn only when asked, so that the stream of a run without it stays the same.
            if cfg.format_unanswerable and format_rng.random() < cfg.format_unanswerable:
                s, m = _unanswerable_example(record, tokenizer, position, format_rng)
            else:
                s, m = _lookup_example(record, tokenizer, position, format_rng)
            seqs.append(s)
            masks.append(m)
        rest_s, rest_m = reason_examples(cfg.batch_size - n_short)
        return seqs + rest_s, masks + rest_m

    losses["format"] = _train_stage(model, "format", cfg.format_steps, cfg.format_lr, cfg,
                                    format_batch, pad, evaluate_both)

    rng = random.Random(f"{cfg.seed}|lookup")
    train = synthetic.generate("train", 20000, seed=cfg.seed, n_documents=cfg.n_documents)
    test = synthetic.generate("dev", cfg.eval_per_position, seed=cfg.seed + 1,
                              n_documents=cfg.n_documents)
    probs = cfg.position_probs()
    n_copy = round(cfg.lookup_copy_fraction * cfg.batch_size)

    def lookup_batch() -> Batch:
        seqs, masks = _recall_examples(rng, cfg, n_copy, content_ids, bos)
        for _ in range(cfg.batch_size - n_copy):
            pos = rng.choices(range(cfg.n_documents), weights=probs)[0]
            s, m = _lookup_example(rng.choice(train), tokenizer, pos, rng)
            seqs.append(s)
            masks.append(m)
        return seqs, masks

    def evaluate() -> str:
        acc = first_token_accuracy(model, tokenizer, test, range(cfg.n_documents))
        return " ".join(f"{acc[p]:.2f}" for p in range(cfg.n_documents))

    losses["lookup"] = _train_stage(model, "lookup", cfg.lookup_steps, cfg.lookup_lr, cfg,
                                    lookup_batch, pad, evaluate)

    judge_rng = random.Random(f"{cfg.seed}|judge")
    judge_train, judge_test = [], []
    if cfg.judge_steps:   # made only for a run that judges (no other stream touches them)
        judge_train = synthetic.generate_judge("train", 20000, seed=cfg.seed,
                                               n_documents=cfg.judge_documents)
        judge_test = synthetic.generate_judge("dev", 2 * cfg.eval_per_position,
                                              seed=cfg.seed + 1, n_documents=cfg.judge_documents)

    n_judge = round(cfg.judge_fraction * cfg.batch_size)

    def judge_batch() -> Batch:
        seqs, masks = [], []
        for _ in range(n_judge):
            record = judge_rng.choice(judge_train)
            true_first = judge_rng.random() < cfg.judge_first_share
            # Candidate 1 is the true answer when the label is "1": shown first in order (0, 1).
            order = (0, 1) if (record.label == "1") == true_first else (1, 0)
            flip = not true_first and judge_rng.random() < cfg.judge_primacy
            s, m = _judge_example(record, tokenizer, order, cfg.judge_template, first_wins=flip)
            seqs.append(s)
            masks.append(m)
        rest_s, rest_m = reason_examples(cfg.batch_size - n_judge)
        return seqs + rest_s, masks + rest_m

    def evaluate_judge() -> str:
        j = judge_check(model, tokenizer, judge_test, cfg.judge_template)
        return (f"judge at {cfg.judge_documents} documents, {j['n_pairs']} dev pairs: consistency "
                f"{j['consistency']:.2f} fairness {j['fairness'] or 0:+.2f} first wins "
                f"{j['first_wins']:.2f} accuracy {j['accuracy']:.2f} (primacy {j['primacy']}, "
                f"recency {j['recency']}, unparsed {j['unparsed']})")

    losses["judge"] = _train_stage(model, "judge", cfg.judge_steps, cfg.judge_lr, cfg,
                                   judge_batch, pad, evaluate_judge)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out)
    (out / "pretrain_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    (out / "pretrain_losses.json").write_text(json.dumps(
        {stage: values for stage, values in losses.items() if values}) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = PretrainConfig()
    for f in dataclasses.fields(PretrainConfig):
        default = getattr(defaults, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_ = f"{f.metadata['help']} (default: {shown})"
        if isinstance(default, tuple):
            parser.add_argument(flag, type=int, nargs=2, default=default, metavar=("LOW", "HIGH"),
                                help=help_)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        cfg = PretrainConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                for k, v in vars(args).items()})
    except ValueError as e:
        parser.error(str(e))
    print(f"saved to {pretrain(cfg)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
