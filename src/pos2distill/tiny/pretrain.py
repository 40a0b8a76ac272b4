"""Pretrain the embedded tiny model: ``python -m pos2distill.tiny.pretrain [--out DIR]``.

Seeded and deterministic on CPU. The recipe has two stages, and the model's positional bias comes
only from what their data contains (no rule in code favours any position):

1. **Copy warm-up.** Random sequences of name/city tokens followed by the same sequence again, loss
   on the repeat. This forms the "find the earlier occurrence and copy what follows" circuit that
   in-context lookup needs. The repeat distances are drawn mostly short or long and rarely in
   between, so the circuit is reliable at the distances of the first and last documents of a prompt
   and weaker at those of the middle documents.
2. **Delayed recall.** A random sequence of distinct name/city tokens, then several queries, each a
   token of the sequence followed by the token that ends a question in the chat template
   (``<|assistant|>``); the target is the token that followed the queried one. This
   teaches the model to carry the asked name to the answer position. Queried tokens sit at short or
   long distances, rarely in between, as in the copy stage.
3. **Lookup.** Synthetic multi-document questions rendered with the package's own prompt template and
   chat template, loss on the answer and EOS. The gold position is drawn from a U-shaped
   distribution (documents at the start and end of a context are the ones pretraining corpora most
   often make relevant), so middle positions are rare, as in real pretraining data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pos2distill import prompts, synthetic
from pos2distill.positions import place_gold
from pos2distill.tiny import TINY_MODEL_DIR
from pos2distill.tiny.tokenizer import build_tokenizer

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    out: str = str(TINY_MODEL_DIR)
    seed: int = 0
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    intermediate: int = 512
    n_documents: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    copy_steps: int = 600
    recall_steps: int = 400
    lookup_steps: int = 1500
    warmup_steps: int = 100
    # Copy stage: repeat length (= distance) drawn from "short", "long" or, rarely, "middle".
    copy_short: tuple[int, int] = (4, 24)
    copy_long: tuple[int, int] = (120, 200)
    copy_middle_fraction: float = 0.05
    # Recall stage: queries per sequence.
    recall_queries: int = 8
    # Lookup stage: probability mass of the first / last `edge` positions; the rest is uniform over
    # the middle.
    edge: int = 3
    edge_mass: float = 0.9
    eval_every: int = 250
    eval_per_position: int = 40
    positions_probs: list[float] = field(default_factory=list)

    def position_probs(self) -> list[float]:
        n, e = self.n_documents, self.edge
        probs = []
        for i in range(n):
            if i < e or i >= n - e:
                probs.append(self.edge_mass / (2 * e))
            else:
                probs.append((1 - self.edge_mass) / (n - 2 * e))
        return probs


def _copy_batch(rng: random.Random, cfg: PretrainConfig, content_ids: list[int], bos: int
                ) -> tuple[list[list[int]], list[list[int]]]:
    seqs, masks = [], []
    for _ in range(cfg.batch_size):
        u = rng.random()
        if u < cfg.copy_middle_fraction:
            lo, hi = cfg.copy_short[1], cfg.copy_long[0]
        elif u < (1 + cfg.copy_middle_fraction) / 2:
            lo, hi = cfg.copy_short
        else:
            lo, hi = cfg.copy_long
        length = rng.randint(lo, hi)
        s = [rng.choice(content_ids) for _ in range(length)]
        seqs.append([bos] + s + s)
        masks.append([0] * (1 + length) + [1] * length)
    return seqs, masks


def _recall_batch(rng: random.Random, cfg: PretrainConfig, content_ids: list[int],
                  tail_ids: list[int], bos: int) -> tuple[list[list[int]], list[list[int]]]:
    seqs, masks = [], []
    length = min(cfg.copy_long[1], len(content_ids) - 1)
    for _ in range(cfg.batch_size):
        s = rng.sample(content_ids, length)
        seq, mask = [bos] + s, [0] * (1 + length)
        for _ in range(cfg.recall_queries):
            u = rng.random()
            if u < cfg.copy_middle_fraction:
                lo, hi = cfg.copy_short[1], cfg.copy_long[0]
            elif u < (1 + cfg.copy_middle_fraction) / 2:
                lo, hi = cfg.copy_short
            else:
                lo, hi = cfg.copy_long
            # The distance from the query's answer position back to the queried token.
            i = max(0, min(length - 2, length - rng.randint(lo, hi)))
            seq += [s[i]] + tail_ids + [s[i + 1]]
            mask += [0] * (1 + len(tail_ids)) + [1]
        seqs.append(seq)
        masks.append(mask)
    return seqs, masks


def _lookup_example(record, tokenizer, position: int, rng: random.Random) -> tuple[list[int], list[int]]:
    placed = place_gold(record, position, rng)
    prompt = prompts.render_prompt(placed, tokenizer)
    p_ids = prompts.encode_prompt(tokenizer, prompt, chat=True)
    a_ids = tokenizer(record.answers[0], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p_ids + a_ids, [0] * len(p_ids) + [1] * len(a_ids)


def _pad(seqs: list[list[int]], masks: list[list[int]], pad: int):
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    m = torch.zeros((len(seqs), T), dtype=torch.bool)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, (s, k) in enumerate(zip(seqs, masks)):
        ids[b, :len(s)] = torch.tensor(s)
        m[b, :len(s)] = torch.tensor(k, dtype=torch.bool)
        att[b, :len(s)] = 1
    return ids, att, m


def _step(model, opt, sched, ids, att, mask) -> float:
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]  # (B, T-1, V)
    target = ids[:, 1:]
    m = mask[:, 1:].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    loss = (nll * m).sum() / m.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()


@torch.no_grad()
def first_token_accuracy(model, tokenizer, records, positions, seed: int = 1234) -> dict[int, float]:
    """Greedy first answer token == gold answer's token, per gold position (a quick check; the
    full measurement is ``pos2distill probe``)."""
    model.eval()
    out = {}
    for pos in positions:
        seqs, masks = [], []
        for r in records:
            s, m = _lookup_example(r, tokenizer, pos, random.Random(f"{seed}|{r.id}|{pos}"))
            seqs.append(s)
            masks.append(m)
        ids, att, m = _pad(seqs, masks, tokenizer.pad_token_id)
        logits = model(input_ids=ids, attention_mask=att).logits
        first = m.float().argmax(dim=1)  # index of the first answer token
        rows = torch.arange(len(seqs))
        pred = logits[rows, first - 1].argmax(-1)
        out[pos] = (pred == ids[rows, first]).float().mean().item()
    model.train()
    return out


def pretrain(cfg: PretrainConfig) -> Path:
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tokenizer = build_tokenizer()
    mconf = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden,
                        intermediate_size=cfg.intermediate, num_hidden_layers=cfg.layers,
                        num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                        max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(mconf)
    content_ids = tokenizer.convert_tokens_to_ids(list(synthetic.NAMES) + list(synthetic.CITIES))
    total = cfg.copy_steps + cfg.recall_steps + cfg.lookup_steps
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, cfg.warmup_steps)
    tail_ids = tokenizer.convert_tokens_to_ids(["<|assistant|>"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))))
    train = synthetic.generate("train", 20000, seed=cfg.seed, n_documents=cfg.n_documents)
    test = synthetic.generate("test", cfg.eval_per_position, seed=cfg.seed + 1,
                              n_documents=cfg.n_documents)
    probs = cfg.position_probs()
    eval_positions = list(range(cfg.n_documents))
    model.train()
    t0 = time.time()
    for step in range(total):
        if step < cfg.copy_steps:
            seqs, masks = _copy_batch(rng, cfg, content_ids, tokenizer.bos_token_id)
        elif step < cfg.copy_steps + cfg.recall_steps:
            seqs, masks = _recall_batch(rng, cfg, content_ids, tail_ids, tokenizer.bos_token_id)
        else:
            seqs, masks = [], []
            for _ in range(cfg.batch_size):
                r = rng.choice(train)
                pos = rng.choices(range(cfg.n_documents), weights=probs)[0]
                s, m = _lookup_example(r, tokenizer, pos, rng)
                seqs.append(s)
                masks.append(m)
        loss = _step(model, opt, sched, *_pad(seqs, masks, tokenizer.pad_token_id))
        if (step + 1) % 50 == 0:
            log.info("step %d loss %.4f (%.0fs)", step + 1, loss, time.time() - t0)
        first_lookup = cfg.copy_steps + cfg.recall_steps
        if step >= first_lookup and ((step + 1 - first_lookup) % cfg.eval_every == 0 or step + 1 == total):
            acc = first_token_accuracy(model, tokenizer, test, eval_positions)
            log.info("step %d accuracy by position: %s", step + 1,
                     " ".join(f"{acc[p]:.2f}" for p in eval_positions))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out)
    (out / "pretrain_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(PretrainConfig):
        if f.name == "positions_probs":
            continue
        default = getattr(PretrainConfig(), f.name)
        if isinstance(default, tuple):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=int, nargs=2, default=default)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = PretrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()})
    out = pretrain(cfg)
    print(f"saved to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
