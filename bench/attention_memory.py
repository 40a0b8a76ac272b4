"""Peak memory of reading attention by document (``pos2distill analyze attention``) against a plain
forward pass of the same batch, and against the naive way (eager attention, every layer's
weights returned).

    python bench/attention_memory.py [--batch 4] [--tokens 2048] [--repeats 3]

Model: Llama, 4 layers, 256 wide, 8 query heads over 4 key heads (grouped-query attention), random
weights (seeded); a small vocabulary, since no output head runs. Batch: ``--batch`` left-padded
rows of up to ``--tokens`` tokens, 20 documents of equal length each. Every variant runs in its own
child process: the model and batch are built, freed memory is handed back to the system
(``malloc_trim``), the resident set is read, one forward pass runs, and its cost is the peak
resident set (``getrusage``) minus that reading. Each variant is repeated in ``--repeats`` fresh
processes; the median is reported.

* ``plain``: the decoder's forward pass (sdpa), nothing recorded: what any analysis must pay.
* ``rows``: :class:`pos2distill.analysis.attention.AttentionRows`, the analysis itself: the last
  prompt token's and the first answer token's attention, per layer, reduced to document masses.
* ``eager``: eager attention with ``output_attentions=True`` (every layer's (B, H, T, T) weights
  held at once), then the same reduction.

Prints one JSON line per variant and the ratios to ``plain`` (all measured in this one run).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

LAYERS, WIDE, HEADS, KV_HEADS, VOCAB, DOCUMENTS = 4, 256, 8, 4, 1000, 20


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(variant: str, args: argparse.Namespace) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from pos2distill.analysis.attention import AttentionRows, document_mass, span_matrix
    from pos2distill.training.batches import left_pad
    from pos2distill.training.heads import position_ids

    torch.set_num_threads(args.threads)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=WIDE, intermediate_size=688,
                      num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=KV_HEADS, max_position_embeddings=8192)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, VOCAB, (args.tokens - 37 * b,), generator=g).tolist()
            for b in range(args.batch)]
    ids, att = left_pad(seqs, 0)
    T = ids.shape[1]
    spans = []
    for s in seqs:
        start, step = T - len(s) + 16, (len(s) - 64) // DOCUMENTS
        spans.append([(start + d * step, start + (d + 1) * step) for d in range(DOCUMENTS)])
    assign = span_matrix(spans, T)
    rows = torch.tensor([[T - 2, T - 1]] * args.batch)
    pos = position_ids(att)
    decoder = model.get_decoder()
    if variant == "eager":
        model.set_attn_implementation("eager")

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = rss_mb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with torch.no_grad():
        if variant == "plain":
            decoder(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False)
            masses = None
        elif variant == "rows":
            with AttentionRows(model) as rec:
                masses = rec.run(ids, att, rows, lambda p: document_mass(p, assign))
        else:
            out = decoder(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False,
                          output_attentions=True)
            masses = [document_mass(a.mean(1).gather(1, rows[:, :, None].expand(-1, -1, T)),
                                    assign) for a in out.attentions]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if peak_before > before + 1:
        print(f"warning: setup peaked {peak_before - before:.0f} MB above the baseline",
              file=sys.stderr)
    return {"variant": variant, "forward_mb": round(peak - before, 1),
            "seconds": round(seconds, 2), "layers": len(masses) if masses else 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="plain,rows,eager")
    ap.add_argument("--_child", default="")
    args = ap.parse_args()
    if args._child:
        print(json.dumps(child(args._child, args)))
        return
    base = [sys.executable, __file__, "--batch", str(args.batch), "--tokens", str(args.tokens),
            "--threads", str(args.threads)]
    results = {}
    for v in args.variants.split(","):
        runs = [json.loads(subprocess.run(base + ["--_child", v], check=True, capture_output=True,
                                          text=True).stdout) for _ in range(args.repeats)]
        results[v] = {"variant": v, "forward_mb": statistics.median(r["forward_mb"] for r in runs),
                      "seconds": statistics.median(r["seconds"] for r in runs),
                      "runs_mb": [r["forward_mb"] for r in runs]}
        print(json.dumps(results[v]))
    plain = results.get("plain")
    if plain:
        print(json.dumps({f"{v}_over_plain": round(r["forward_mb"] / plain["forward_mb"], 3)
                          for v, r in results.items() if v != "plain"}
                         | {"batch": args.batch, "tokens": args.tokens,
                            "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
                                       f"{args.threads} threads"}))


if __name__ == "__main__":
    main()
