"""``pos2distill cache``: the teacher's distribution over every response token, computed once.

The teacher of R1 is the frozen starting model reading the advantageous prompt, so its distribution
over each response token does not change during training. This stage computes it once per distinct
(teacher prompt, response) pair (a question's K trivial copies and anchors share one) and stores it,
so training holds only the student and its teacher costs nothing.

Estimator (see :func:`pos2distill.training.losses.topk_token_kl`): each token keeps the teacher's top-k
log-probabilities and ids plus ``log m``, the log of the mass outside them. The KL is computed
between the (k + 1)-bucket teacher and the student grouped the same way; it is never above the exact
KL and the gap is ``m * KL(teacher tail || student tail)`` (renormalised tails), zero when k equals
the vocabulary. ``bench/cache_error.py`` measures it on the embedded default; the default k keeps it
under 1e-3 nats per token there.

The format and its reader (what training uses) are :mod:`pos2distill.training.cache`: a folder with
``teacher.safetensors`` and ``cache.json``, checked against the pairs file, the model and the
temperature before a run starts.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from pos2distill import modeling, progress
from pos2distill.config import CacheConfig
from pos2distill.errors import ConfigError
from pos2distill.runinfo import file_sha256, replace_dir, write_json_atomic
from pos2distill.training.batches import encode_pair, left_pad, read_pairs, response_mask
from pos2distill.training.cache import (FORMAT, META_FILE, TENSOR_FILE, VERSION, CacheReader,
                                        model_checksums)
from pos2distill.training.heads import head, plain_head, response_hidden, response_logits_full

log = logging.getLogger(__name__)


def topk_rows(logits: Tensor, k: int, *, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k log-probabilities, their ids and the log tail mass of each row.

    Args:
        logits: (N, V) float.
        k: 1 <= k <= V.
        temperature: softmax temperature, > 0.

    Returns:
        ``(logprobs (N, k) float32, ids (N, k) int32, log_tail (N,) float32)``. The tail is a
        log-sum-exp over the entries outside the top k (never ``1 - sum``, which cancels).
    """
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)  # (N, V)
    top, ids = logp.topk(k, dim=-1)
    rest = logp.scatter(-1, ids, float("-inf"))
    log_tail = torch.logsumexp(rest, dim=-1) if k < logp.shape[-1] else \
        torch.full_like(logp[:, 0], float("-inf"))
    return top.float(), ids.int(), log_tail.float()


def write_cache(out: Path, *, logprobs: Tensor, ids: Tensor, log_tail: Tensor, targets: Tensor,
                offsets: Tensor, entry_of_pair: Tensor, meta: dict[str, Any]) -> None:
    """Write ``out`` (a folder) atomically: tensors, then ``cache.json`` with their checksum."""
    tmp = out.with_name(".tmp-" + out.name)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({"logprobs": logprobs.contiguous(), "ids": ids.contiguous(),
               "log_tail": log_tail.contiguous(), "targets": targets.contiguous(),
               "offsets": offsets.contiguous(), "entry_of_pair": entry_of_pair.contiguous()},
              str(tmp / TENSOR_FILE), metadata={"format": FORMAT, "version": str(VERSION)})
    write_json_atomic(tmp / META_FILE, {
        "format": FORMAT, "version": VERSION, **meta, "n_entries": int(offsets.numel() - 1),
        "n_tokens": int(offsets[-1]), "file_sha256": file_sha256(tmp / TENSOR_FILE),
        "bytes": (tmp / TENSOR_FILE).stat().st_size})
    replace_dir(tmp, out)


def main(cfg: CacheConfig) -> dict[str, Any]:
    """Compute the teacher cache of a pairs file (one forward pass per distinct teacher prompt)."""
    rows = read_pairs(cfg.pairs)
    tokenizer = modeling.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    out = Path(cfg.out)
    done = finished_cache(cfg, out, n_pairs=len(rows))
    if done is not None:
        return done
    model = modeling.load_causal_lm(cfg.model, dtype=cfg.dtype, device=cfg.device,
                                    trust_remote_code=cfg.trust_remote_code)
    vocab = model.get_output_embeddings().weight.shape[0]
    k = min(cfg.top_k, vocab) if cfg.top_k else vocab
    examples = [encode_pair(r, tokenizer) for r in rows]
    entry_index: dict[tuple[int, ...], int] = {}
    entry_of_pair = []
    for ex in examples:
        entry_of_pair.append(entry_index.setdefault(ex.teacher_ids, len(entry_index)))
    entries = [ids for ids, _ in sorted(entry_index.items(), key=lambda kv: kv[1])]
    resp_len = {ex.teacher_ids: ex.response_len for ex in examples}
    lens = [resp_len[e] for e in entries]
    per_entry = teacher_rows(cfg, model, entries, lens, k=k, pad_id=tokenizer.pad_token_id)
    offsets = torch.zeros(len(entries) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(lens, dtype=torch.long).cumsum(0)
    meta = {"top_k": k, "temperature": cfg.temperature, "vocab_size": vocab,
            "pairs": str(cfg.pairs), "pairs_sha256": file_sha256(cfg.pairs),
            "model": modeling.resolve_model_path(cfg.model),
            "model_sha256": model_checksums(modeling.resolve_model_path(cfg.model)),
            "n_pairs": len(rows), "dtype": cfg.dtype, "autocast": cfg.autocast}
    write_cache(out, **{n: torch.cat([d[n] for d in per_entry]) for n in per_entry[0]},
                offsets=offsets, entry_of_pair=torch.tensor(entry_of_pair, dtype=torch.long),
                meta=meta)
    n_tokens = int(offsets[-1])
    size = (out / TENSOR_FILE).stat().st_size
    log.info("teacher cache: %d prompts, %d tokens, top-%d, %.1f bytes/token -> %s",
             len(entries), n_tokens, k, size / max(1, n_tokens), out)
    return {"entries": len(entries), "tokens": n_tokens, "top_k": k,
            "bytes_per_token": round(size / max(1, n_tokens), 1), "out": str(out)}


def finished_cache(cfg: CacheConfig, out: Path, *, n_pairs: int) -> dict[str, Any] | None:
    """The counts of a complete cache of the same pairs, model, temperature and k in ``out``
    (reused as it is), None when ``out`` holds none; another cache there is refused."""
    if not (out / META_FILE).exists():
        return None
    # The output head's size; the config's vocab_size until the weights are loaded.
    vocab = int(modeling.load_config(cfg.model, trust_remote_code=cfg.trust_remote_code).vocab_size)
    k = min(cfg.top_k, vocab) if cfg.top_k else vocab
    try:
        done = CacheReader(out, pairs=cfg.pairs, model_path=modeling.resolve_model_path(cfg.model),
                           temperature=cfg.temperature, vocab_size=vocab, n_pairs=n_pairs)
    except ConfigError as e:
        raise ConfigError(f"--out {out} holds another cache ({e}); choose another --out or "
                          "delete it") from None
    if done.k != k:
        raise ConfigError(f"--out {out} holds a top-{done.k} cache; choose another --out or "
                          "delete it")
    log.info("%s is complete; nothing to do", out)
    meta = done.meta
    return {"entries": meta["n_entries"], "tokens": meta["n_tokens"], "top_k": k,
            "bytes_per_token": round(meta["bytes"] / max(1, meta["n_tokens"]), 1),
            "out": str(out)}


def teacher_rows(cfg: CacheConfig, model: Any, entries: list[tuple[int, ...]], lens: list[int],
                 *, k: int, pad_id: int) -> list[dict[str, Tensor]]:
    """The teacher's top-k rows of every entry (teacher prompt + response), batched longest
    first (little padding, and the memory peak shows at once)."""
    order = sorted(range(len(entries)), key=lambda i: -len(entries[i]))
    per_entry: list[dict[str, Tensor]] = [dict() for _ in entries]
    autocast = (torch.autocast(torch.device(cfg.device).type, dtype=getattr(torch, cfg.autocast))
                if cfg.autocast != "off" else nullcontext())
    with torch.no_grad(), autocast, progress.bar(total=len(entries), desc="cache",
                                                  unit="prompt") as bar:
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            ids, att = left_pad([entries[i] for i in idx], pad_id)
            ids, att = ids.to(cfg.device), att.to(cfg.device)
            mask = response_mask([lens[i] for i in idx]).to(cfg.device)
            R = mask.shape[1]
            if plain_head(model):
                hidden = response_hidden(model, ids, att, R)[mask]           # (N, H)
            else:
                hidden = None
                full = response_logits_full(model, ids, att, R)[mask]        # (N, V)
            tgt = ids[:, -R:][mask]
            n_done = 0
            for i in idx:
                sl = slice(n_done, n_done + lens[i])
                logits = head(model, hidden[sl]) if hidden is not None else full[sl]
                lp, top, tail = topk_rows(logits.float(), k, temperature=cfg.temperature)
                per_entry[i] = {"logprobs": lp.cpu(), "ids": top.cpu(), "log_tail": tail.cpu(),
                                "targets": tgt[sl].int().cpu()}
                n_done += lens[i]
            bar.update(len(idx))
    return per_entry
