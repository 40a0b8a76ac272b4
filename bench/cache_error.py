"""Teacher-cache KL error and size against k, on the embedded default (`--model tiny`).

    python bench/cache_error.py [--n-train 200] [--ks 1,2,4,8,16,32,64,384] [--work runs/bench_cache]

Runs teach (the tiny model's own greedy answers, gold first) and pairs (K = 4 + 1 anchor) on
`synthetic:train`, then for every k builds the cache with `pos2distill cache` and compares, over
every response token of every pair, the estimator of the cached teacher with the exact KL of the
online teacher, for the starting student (the base model at the trivial positions: the KL that R1
starts from). Prints one JSON line per k and the smallest k whose mean error is below 1e-3 nats/token.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from pos2distill.stages import cache, pairs, teach
from pos2distill.config import CacheConfig, PairsConfig, TeachConfig
from pos2distill.training.batches import batch_tensors, encode_pair, read_pairs
from pos2distill.training.cache import TENSOR_FILE, CacheReader
from pos2distill.training.heads import head, response_hidden
from pos2distill.training.losses import topk_token_kl
from pos2distill.modeling import load_causal_lm, load_tokenizer, resolve_model_path
from pos2distill.training.teacher import OnlineTeacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--ks", default="8,32,64,128,160,192,256,384")
    ap.add_argument("--work", default="runs/bench_cache")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # The demo's settings: the tiny model's own greedy answers (first line), 32 new tokens.
    teach.main(TeachConfig(model="tiny", data="synthetic:train", limit=args.n_train,
                           out=str(work / "teach.jsonl")))
    pairs.main(PairsConfig(teach=str(work / "teach.jsonl"), out=str(work / "pairs.jsonl"), K=4,
                           anchors=1))
    pairs_path = str(work / "pairs.jsonl")
    tok = load_tokenizer("tiny")
    model = load_causal_lm("tiny")
    rows = read_pairs(pairs_path)
    examples = [encode_pair(r, tok) for r in rows]
    vocab = model.get_output_embeddings().weight.shape[0]
    # Exact per-token KL of the starting student, and the student's logits, once.
    exact, s_logits = [], []
    with torch.no_grad():
        for s in range(0, len(examples), args.batch_size):
            b = batch_tensors(examples[s:s + args.batch_size], tok.pad_token_id, "cpu")
            R = b["mask"].shape[1]
            logits = head(model, response_hidden(model, b["s_ids"], b["s_att"], R)[b["mask"]])
            t = OnlineTeacher(model).targets(b, b["mask"])
            exact.append(t.token_loss(logits, 0, len(logits)))
            s_logits.append(logits)
    exact_t = torch.cat(exact).double()
    print(json.dumps({"pairs": len(rows), "response_tokens": int(exact_t.numel()),
                      "vocab": vocab, "exact_kl_mean": exact_t.mean().item()}))
    chosen = None
    for k in [int(x) for x in args.ks.split(",")]:
        out = work / f"cache_k{k}"
        summary = cache.main(CacheConfig(pairs=pairs_path, model="tiny", out=str(out), top_k=k))
        reader = CacheReader(out, pairs=pairs_path, model_path=resolve_model_path("tiny"),
                                   temperature=1.0, vocab_size=vocab, n_pairs=len(rows))
        est = []
        for n, s in enumerate(range(0, len(examples), args.batch_size)):
            chunk = examples[s:s + args.batch_size]
            r = reader.rows(list(range(s, s + len(chunk))), [e.response_len for e in chunk])
            est.append(topk_token_kl(r["logprobs"], r["ids"], r["log_tail"], s_logits[n]))
        err = exact_t - torch.cat(est).double()
        size = (out / TENSOR_FILE).stat().st_size
        # A question's K trivial pairs and its anchor share one cached teacher response.
        row = {"k": summary["top_k"], "kl_error_mean": err.mean().item(),
               "kl_error_p99": err.quantile(0.99).item(), "kl_error_max": err.max().item(),
               "kl_error_min": err.min().item(),
               "bytes_per_cached_token": round(size / summary["tokens"], 1),
               "bytes_per_training_token": round(size / exact_t.numel(), 1)}
        print(json.dumps(row))
        if chosen is None and row["kl_error_mean"] < 1e-3:
            chosen = row["k"]
    print(json.dumps({"smallest_k_below_1e-3_nats_per_token": chosen,
                      "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}"}))


if __name__ == "__main__":
    main()
