"""Probe throughput: batched generation (HFGenerator: KV cache, left padding, batches sorted by
length, per-row EOS) against one question at a time with ``model.generate``.

    python bench/probe_throughput.py [--n 160] [--batch-size 64] [--threads 1]

Model: the embedded default (``--model tiny``). Prompts: `synthetic:test` questions with the gold
document at every one of the 20 positions in turn (what ``pos2distill probe`` generates), 32 new
tokens, greedy. Both paths decode the same prompts; the script checks that they give the same
answers and prints prompts per second for each and their ratio (measured in this one run).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from pos2distill.data import synthetic
from pos2distill.generation import HFGenerator
from pos2distill.modeling import load_causal_lm, load_tokenizer
from pos2distill.tasks.positions import place_gold, rng_for
from pos2distill.tasks.prompts import encode_prompt, render_prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=160, help="prompts")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok, model = load_tokenizer("tiny"), load_causal_lm("tiny")
    records = synthetic.generate("test", args.n // 20 + 1)
    prompts = [render_prompt(place_gold(r, p, rng_for(0, r.id, p)), tok)
               for r in records for p in range(20)][:args.n]

    t0 = time.perf_counter()
    batched = HFGenerator(model, tok, chat=True, batch_size=args.batch_size).generate(
        prompts, max_new_tokens=args.max_new_tokens)
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    single = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([encode_prompt(tok, p, chat=True)])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            single.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    t_single = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(batched, single))
    print(json.dumps({
        "prompts": len(prompts), "batch_size": args.batch_size,
        "batched_prompts_per_s": round(len(prompts) / t_batched, 2),
        "one_at_a_time_prompts_per_s": round(len(prompts) / t_single, 2),
        "speed_up": round(t_single / t_batched, 2), "same_answers": f"{same}/{len(prompts)}",
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads"}))


if __name__ == "__main__":
    main()
