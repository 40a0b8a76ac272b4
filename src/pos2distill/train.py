"""``pos2distill train --method r1``: Pos2Distill-R1 (METHOD.md §2).

Read top to bottom: encode the pairs, then the loop. The teacher is a frozen copy of the starting
model reading the stored advantageous prompt; the student reads the same response after the prompt
with the gold document elsewhere. Both sides see identical response tokens.

Alignment: sequences are left-padded so every response ends at the last position. With R the longest
response in the batch (EOS included), the logits at the last R+1 positions minus the very last one are
exactly the distributions that predict the R final tokens: the logit at the last prompt position
predicts the first response token (kept), the logit at EOS predicts what follows EOS (dropped).
Only those R positions go through the output head (``logits_to_keep``), never [B, T, V].

Weights with gradient accumulation: the position-aware weights group the whole optimizer batch
(the paper's "batch"), so with ``--grad-accum > 1`` a no-grad pass computes every micro-batch's
per-example KL first, then a second pass backpropagates with those weights.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from pos2distill.config import TrainConfig
from pos2distill.errors import ConfigError, DataError
from pos2distill.losses import per_example_kl, position_weights, weighted_loss
from pos2distill.prompts import encode_prompt
from pos2distill.records import iter_jsonl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    student_ids: tuple[int, ...]   # student prompt + response (EOS included)
    teacher_ids: tuple[int, ...]   # teacher prompt + the same response
    response_len: int
    position: int
    adv_position: int


def encode_pair(row: dict[str, Any], tokenizer: Any) -> Example:
    response = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
    response = list(response) + [tokenizer.eos_token_id]
    chat = bool(row["chat"])
    student = encode_prompt(tokenizer, row["student_prompt"], chat=chat) + response
    teacher = encode_prompt(tokenizer, row["teacher_prompt"], chat=chat) + response
    return Example(tuple(student), tuple(teacher), len(response), int(row["position"]),
                   int(row["adv_position"]))


def read_pairs(path: str) -> list[dict[str, Any]]:
    rows = []
    for n, row in iter_jsonl(path):
        for key in ("student_prompt", "teacher_prompt", "response", "position", "adv_position",
                    "chat"):
            if key not in row:
                raise DataError("missing (is this a `pos2distill pairs` output?)", path=path,
                                line=n, field=key)
        rows.append(row)
    if not rows:
        raise DataError("no training pairs", path=path)
    return rows


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (B, T), sequences right-aligned."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):] = torch.tensor(s, dtype=torch.long)
        att[b, T - len(s):] = 1
    return ids, att


def response_mask(response_lens: Sequence[int]) -> torch.Tensor:
    """(B, R) bool: True on the last ``response_lens[b]`` of R columns."""
    R = max(response_lens)
    cols = torch.arange(R)
    return cols.unsqueeze(0) >= (R - torch.tensor(response_lens)).unsqueeze(1)


def response_logits(model: Any, ids: torch.Tensor, att: torch.Tensor, R: int) -> torch.Tensor:
    """(B, R, V) logits predicting the last R tokens of each left-padded row."""
    # Position ids count real tokens only, so left padding does not shift rotary positions.
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=R + 1,
                use_cache=False)
    return out.logits[:, :-1]


def batch_tensors(examples: Sequence[Example], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    s_ids, s_att = left_pad([e.student_ids for e in examples], pad_id)
    t_ids, t_att = left_pad([e.teacher_ids for e in examples], pad_id)
    lens = [e.response_len for e in examples]
    return {"s_ids": s_ids.to(device), "s_att": s_att.to(device), "t_ids": t_ids.to(device),
            "t_att": t_att.to(device), "mask": response_mask(lens).to(device),
            "positions": torch.tensor([e.position for e in examples], device=device)}


def micro_kl(student: Any, teacher: Any, b: dict[str, torch.Tensor], *,
             temperature: float = 1.0) -> torch.Tensor:
    """(B,) per-example KL(teacher ‖ student) of one micro-batch; grad flows into the student."""
    R = b["mask"].shape[1]
    with torch.no_grad():
        t_logits = response_logits(teacher, b["t_ids"], b["t_att"], R)
    s_logits = response_logits(student, b["s_ids"], b["s_att"], R)
    return per_example_kl(t_logits, s_logits, b["mask"], temperature=temperature)


def lr_lambda(step: int, *, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _by_position(values: torch.Tensor, positions: torch.Tensor) -> dict[str, float]:
    return {str(int(p)): float(values[positions == p].mean()) for p in positions.unique()}


def main(cfg: TrainConfig) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from pos2distill.modeling import load_causal_lm, load_tokenizer, resolve_model_path
    from pos2distill.runinfo import start_run, write_json_atomic

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    rows = read_pairs(cfg.pairs)
    advs = {int(r["adv_position"]) for r in rows}
    if len(advs) != 1:
        raise DataError(f"pairs use several advantageous positions {sorted(advs)}; expected one",
                        path=cfg.pairs, field="adv_position")
    adv = advs.pop()
    start_run(out, cfg, inputs=[cfg.pairs, resolve_model_path(cfg.model)], stage="train",
              ignore=("out", "device", "log_every"))
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    examples = [encode_pair(r, tokenizer) for r in rows]
    student = load_causal_lm(cfg.model, dtype=cfg.dtype, device=cfg.device,
                             trust_remote_code=cfg.trust_remote_code)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    student.train()

    total = max(1, int(len(examples) * cfg.epochs) // cfg.batch_size)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    while len(order) < total * cfg.batch_size:
        perm = list(range(len(examples)))
        rng.shuffle(perm)
        order += perm
    decay = [p for n, p in student.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in student.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                            betas=(cfg.adam_beta1, cfg.adam_beta2))
    warmup = max(1, round(cfg.warmup_ratio * total)) if cfg.warmup_ratio > 0 else 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, total=total, warmup=warmup, min_ratio=cfg.min_lr_ratio)
        if warmup else lr_lambda(s + 1, total=total, warmup=1, min_ratio=cfg.min_lr_ratio))
    micro = cfg.batch_size // cfg.grad_accum
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"
    bar = tqdm(total=total, desc="train r1", unit="step")
    with open(log_path, "w", encoding="utf-8") as log_file:
        for step in range(total):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            batches = [batch_tensors([examples[i] for i in idx[k:k + micro]], tokenizer.pad_token_id,
                                     cfg.device) for k in range(0, len(idx), micro)]
            positions = torch.cat([b["positions"] for b in batches])
            if cfg.grad_accum == 1:
                kl = micro_kl(student, teacher, batches[0], temperature=cfg.temperature)
                weights = position_weights(kl.detach(), positions, anchor_position=adv,
                                           anchor_weight=cfg.anchor_weight, formula=cfg.formula)
                loss = weighted_loss(kl, weights)
                if not torch.isfinite(loss):
                    raise ConfigError(f"step {step + 1}: loss is {loss.item()}; lower --lr")
                loss.backward()
                kl_all = kl.detach()
            else:
                with torch.no_grad():
                    kl_all = torch.cat([micro_kl(student, teacher, b, temperature=cfg.temperature) for b in batches])
                weights = position_weights(kl_all, positions, anchor_position=adv,
                                           anchor_weight=cfg.anchor_weight, formula=cfg.formula)
                loss = weighted_loss(kl_all, weights)
                for k, b in enumerate(batches):
                    w = weights[k * micro:(k + 1) * micro]
                    weighted_loss(micro_kl(student, teacher, b, temperature=cfg.temperature), w).backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
            lr = sched.get_last_lr()[0]  # the lr this step used
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", kl=f"{kl_all.mean().item():.4f}")
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                log_file.write(json.dumps({
                    "step": step + 1, "lr": lr, "loss": loss.item(),
                    "kl_mean": kl_all.mean().item(),
                    "kl_by_position": _by_position(kl_all, positions),
                    "weight_by_position": _by_position(weights, positions)}) + "\n")
                log_file.flush()
    bar.close()
    model_dir = out / "model"
    student.eval()
    student.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    summary = {"steps": total, "examples": len(examples), "adv_position": adv,
               "model": str(model_dir), "log": str(log_path)}
    write_json_atomic(out / "train_summary.json", summary)
    return summary
