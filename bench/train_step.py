"""Cost of one R1 step: cached teacher, online teacher and a reference-style step, against a bare
student forward + backward, on a tiny-but-wide Llama.

    python bench/train_step.py [--steps 3] [--prompt 2048] [--answer 16] [--batch 4]

Model: Llama, 4 layers, 256 wide, vocabulary 32000, random weights (seeded). Batch: 4 examples,
2048-token prompts (student and teacher prompts differ) and the same 16-token answer on both sides.
Every variant runs in its own child process (so its peak RSS is its own, read from
``getrusage``), warms up once, then times ``--steps`` steps and reports the median. A step is
everything a training step does before ``optimizer.step()``: forward passes, teacher, loss,
weights, backward.

* ``bare``: the student alone, response-only cross-entropy (the cheapest training step there is).
* ``cached``: R1 with the teacher read from a top-k cache (``pos2distill cache`` format, k = 256).
* ``online``: R1 with the frozen teacher run on the fly (a second copy of the weights).
* ``reference``: the authors' style: full [B, T, V] logits of both models, log-softmax over every
  position, per-example Python loops for the KL and the weights.

Prints one JSON line per variant and the ratios (all measured in this one run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VOCAB, WIDE, LAYERS, K = 32000, 256, 4, 256


def build_model(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=WIDE, intermediate_size=688,
                      num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def make_batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    from pos2distill.training.batches import Example, batch_tensors

    g = torch.Generator().manual_seed(1)
    examples = []
    for b in range(args.batch):
        n = args.prompt - 37 * b          # different prompt lengths: real left padding
        answer = torch.randint(3, VOCAB, (args.answer - 1,), generator=g).tolist() + [2]
        s = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        t = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        examples.append(Example(tuple(s + answer), tuple(t + answer), args.answer, (b % 3,), (0,)))
    batch = batch_tensors(examples, 0, "cpu")
    batch["index"] = torch.arange(args.batch)
    batch["slots"] = torch.tensor([b % 3 for b in range(args.batch)])   # slot ids; 0 is the anchor
    return batch


def prepare(work: Path, args: argparse.Namespace) -> None:
    """Save the model and write the teacher cache of the batch (its own child: not measured)."""
    from pos2distill.stages import cache
    from pos2distill.training.cache import model_checksums
    from pos2distill.training.heads import head, response_hidden

    model = build_model().eval()
    model.save_pretrained(work / "model")
    b = make_batch(args)
    (work / "pairs.jsonl").write_text(json.dumps({"bench": vars(args)}) + "\n")
    with torch.no_grad():
        R = b["mask"].shape[1]
        hidden = response_hidden(model, b["t_ids"], b["t_att"], R)[b["mask"]]
        lp, ids, tail = cache.topk_rows(head(model, hidden), K)
    lens = b["mask"].sum(1)
    offsets = torch.zeros(args.batch + 1, dtype=torch.long)
    offsets[1:] = lens.cumsum(0)
    from pos2distill.runinfo import file_sha256

    cache.write_cache(work / "cache", logprobs=lp, ids=ids, log_tail=tail,
                      targets=b["t_ids"][:, -R:][b["mask"]].int(), offsets=offsets,
                      entry_of_pair=torch.arange(args.batch),
                      meta={"top_k": K, "temperature": 1.0, "vocab_size": VOCAB,
                            "pairs_sha256": file_sha256(work / "pairs.jsonl"),
                            "model_sha256": model_checksums(str(work / "model")),
                            "n_pairs": args.batch})


def reference_step(student: torch.nn.Module, teacher: torch.nn.Module,
                   b: dict[str, torch.Tensor]) -> torch.Tensor:
    """The authors' style: full logits and log-softmax over every position of both models, then
    per-example loops (KL over the response tokens, position-aware weights)."""
    pos_s = (b["s_att"].cumsum(-1) - 1).clamp(min=0)
    pos_t = (b["t_att"].cumsum(-1) - 1).clamp(min=0)
    s_logp = torch.log_softmax(student(input_ids=b["s_ids"], attention_mask=b["s_att"],
                                       position_ids=pos_s).logits.float(), -1)       # (B, T, V)
    with torch.no_grad():
        t_logp = torch.log_softmax(teacher(input_ids=b["t_ids"], attention_mask=b["t_att"],
                                           position_ids=pos_t).logits.float(), -1)   # (B, T, V)
    R = b["mask"].shape[1]
    losses = []
    for e in range(s_logp.shape[0]):
        n = int(b["mask"][e].sum())
        ts, ss = t_logp[e, -n - 1:-1], s_logp[e, -n - 1:-1]
        losses.append((ts.exp() * (ts - ss)).sum(-1).mean())
    kl = torch.stack(losses)
    positions = b["slots"].tolist()
    by_pos: dict[int, list[int]] = {}
    for e, p in enumerate(positions):
        by_pos.setdefault(p, []).append(e)
    trivial = [p for p in by_pos if p != 0]
    means = torch.stack([kl[by_pos[p]].mean() for p in trivial]).detach()
    share = torch.softmax(means, 0)
    w = torch.ones(len(positions))
    for i, p in enumerate(trivial):
        mx = kl[by_pos[p]].max().detach()
        for e in by_pos[p]:
            w[e] = len(trivial) * share[i] / len(by_pos[p]) * kl[e].detach() / mx
    del R
    return (w * kl).sum()


def child(variant: str, work: Path, args: argparse.Namespace) -> dict:
    import copy

    from pos2distill.config import TrainConfig
    from pos2distill.training.cache import CacheReader
    from pos2distill.training.losses import position_weights, weighted_loss
    from pos2distill.training.teacher import (CachedTeacher, CrossEntropyTargets, OnlineTeacher,
                                              ResponseLoss)
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    student = AutoModelForCausalLM.from_pretrained(work / "model").train()
    b = make_batch(args)
    module = ResponseLoss(student, chunk=TrainConfig.head_chunk)   # train's default
    teacher = None
    if variant in ("online", "reference"):
        teacher = copy.deepcopy(student).eval().requires_grad_(False)
    if variant == "cached":
        reader = CacheReader(work / "cache", pairs=str(work / "pairs.jsonl"),
                             model_path=str(work / "model"), temperature=1.0, vocab_size=VOCAB,
                             n_pairs=args.batch)
        cached = CachedTeacher(reader)

    def step() -> None:
        if variant == "bare":
            loss = module(b["s_ids"], b["s_att"], b["mask"], CrossEntropyTargets(b, b["mask"])).sum()
        elif variant == "reference":
            loss = reference_step(student, teacher, b)
        else:
            targets = (cached if variant == "cached" else OnlineTeacher(teacher)).targets(b, b["mask"])
            kl = module(b["s_ids"], b["s_att"], b["mask"], targets)
            w = position_weights(kl.detach(), b["slots"], anchor_position=0, anchor_weight=1.0)
            loss = weighted_loss(kl, w)
        loss.backward()
        student.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "step_s": statistics.median(times), "steps_s": times,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--answer", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="bare,cached,online,reference")
    ap.add_argument("--_child", default="")
    ap.add_argument("--_work", default="")
    args = ap.parse_args()
    if args._child:
        work = Path(args._work)
        if args._child == "prepare":
            prepare(work, args)
        else:
            print(json.dumps(child(args._child, work, args)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, __file__, "--steps", str(args.steps), "--prompt", str(args.prompt),
                "--answer", str(args.answer), "--batch", str(args.batch),
                "--threads", str(args.threads), "--_work", tmp]
        subprocess.run(base + ["--_child", "prepare"], check=True)
        for v in args.variants.split(","):
            out = subprocess.run(base + ["--_child", v], check=True, capture_output=True, text=True)
            results[v] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(results[v]), flush=True)
    r = {k: v["step_s"] for k, v in results.items()}
    m = {k: v["peak_rss_mb"] for k, v in results.items()}
    ratios = {}
    if "bare" in r:
        for v in ("cached", "online"):
            if v in r:
                ratios[f"{v}_step / bare_step"] = round(r[v] / r["bare"], 3)
    if "reference" in r and "online" in r:
        ratios["reference_step / online_step (speed-up)"] = round(r["reference"] / r["online"], 2)
        ratios["online_rss / reference_rss"] = round(m["online"] / m["reference"], 3)
    if "reference" in r and "cached" in r:
        ratios["reference_step / cached_step (speed-up)"] = round(r["reference"] / r["cached"], 2)
        ratios["cached_rss / reference_rss"] = round(m["cached"] / m["reference"], 3)
    print(json.dumps({"ratios": ratios, "machine": f"{os.cpu_count()} CPU cores, torch "
                      f"{torch.__version__}, {args.threads} threads",
                      "shape": f"batch {args.batch}, prompt {args.prompt}, answer {args.answer}, "
                      f"vocab {VOCAB}, {LAYERS}x{WIDE} Llama"}))


if __name__ == "__main__":
    main()
