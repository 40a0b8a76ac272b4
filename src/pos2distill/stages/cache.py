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

Format: a folder with ``teacher.safetensors`` (never pickle) and ``cache.json``.

=================  ==========  =========  ============================================
tensor             shape       dtype      meaning
=================  ==========  =========  ============================================
``logprobs``       (N, k)      float32    top-k teacher log-probabilities per token
``ids``            (N, k)      int32      their vocabulary ids
``log_tail``       (N,)        float32    log of the remaining mass (-inf when none)
``targets``        (N,)        int32      the response token each row predicts
``offsets``        (E + 1,)    int64      rows of entry e are ``offsets[e]:offsets[e+1]``
``entry_of_pair``  (P,)        int64      the entry of each line of the pairs file
=================  ==========  =========  ============================================

``cache.json`` records the format version, k, the temperature, the vocabulary size, the sha256 of
the pairs file and of the model's weights and config, the counts, and the sha256 of
``teacher.safetensors``. :class:`CacheReader` checks all of it before training starts and refuses a
corrupted file or one made from other pairs, another model or another temperature, with one line
that says what differs. Rows are read lazily (memory-mapped), a micro-batch at a time.
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from pos2distill.config import CacheConfig
from pos2distill.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "pos2distill-teacher-cache"
VERSION = 1
TENSOR_FILE = "teacher.safetensors"
META_FILE = "cache.json"


def bytes_per_token(k: int) -> int:
    """Tensor bytes stored per response token at top-k ``k`` (float32 + int32 per kept entry, then
    the tail and the target)."""
    return 8 * k + 8


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


def model_checksums(model_path: str) -> dict[str, str]:
    """sha256 of the model's weights and config files, by file name."""
    from pos2distill.runinfo import input_checksums

    return {Path(p).name: h for p, h in input_checksums([model_path]).items()}


class CacheReader:
    """A validated, memory-mapped teacher cache; :meth:`rows` reads a micro-batch."""

    def __init__(self, path: str | Path, *, pairs: str, model_path: str, temperature: float,
                 vocab_size: int, n_pairs: int, verify: bool = True):
        from safetensors import SafetensorError, safe_open

        from pos2distill.runinfo import file_sha256

        self.path = Path(path)
        tensors, meta_path = self.path / TENSOR_FILE, self.path / META_FILE
        where = f"--teacher-cache: {self.path}"
        if not tensors.is_file() or not meta_path.is_file():
            raise ConfigError(f"{where} is not a teacher cache (no {TENSOR_FILE} and {META_FILE}); "
                              "make one with `pos2distill cache`")
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError("not a teacher cache description")
        except ValueError as e:
            raise ConfigError(f"{where}: unreadable {META_FILE} ({e})") from None
        if meta.get("version") != VERSION:
            raise ConfigError(f"{where}: cache format version {meta.get('version')}, this "
                              f"pos2distill reads {VERSION}; re-run `pos2distill cache`")
        if verify and file_sha256(tensors) != meta.get("file_sha256"):
            raise ConfigError(f"{where}: {TENSOR_FILE} is corrupted (checksum differs from "
                              f"{META_FILE}); re-run `pos2distill cache`")
        checks = [("pairs file", meta.get("pairs_sha256"), file_sha256(pairs), pairs),
                  ("model", meta.get("model_sha256"), model_checksums(model_path), model_path),
                  ("temperature", meta.get("temperature"), temperature, None),
                  ("vocabulary size", meta.get("vocab_size"), vocab_size, None),
                  ("number of pairs", meta.get("n_pairs"), n_pairs, None)]
        for what, stored, ours, name in checks:
            if stored != ours:
                detail = f"another {what} ({name})" if name else \
                    f"{what} {stored}, this run uses {ours}"
                raise ConfigError(f"{where} was made for {detail}; re-run `pos2distill cache` "
                                  "with the same --pairs, --model and --temperature")
        self.meta = meta
        self.k = int(meta["top_k"])
        try:
            self._file = safe_open(str(tensors), framework="pt")
            self.offsets = self._file.get_tensor("offsets")
            self.entry_of_pair = self._file.get_tensor("entry_of_pair")
            shapes = {n: tuple(self._file.get_slice(n).get_shape()) for n in self._file.keys()}
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ConfigError(f"{where}: unreadable {TENSOR_FILE} ({e})") from None
        n_tokens = int(self.offsets[-1]) if self.offsets.numel() else -1
        expected = {"logprobs": (n_tokens, self.k), "ids": (n_tokens, self.k),
                    "log_tail": (n_tokens,), "targets": (n_tokens,),
                    "offsets": (int(meta["n_entries"]) + 1,), "entry_of_pair": (n_pairs,)}
        if shapes != expected or n_tokens != meta.get("n_tokens"):
            raise ConfigError(f"{where}: tensors {shapes} do not match {META_FILE}; re-run "
                              "`pos2distill cache`")

    def rows(self, pair_indices: Sequence[int], response_lens: Sequence[int],
             targets: Sequence[Sequence[int]] | None = None) -> dict[str, Tensor]:
        """The cached rows of these pairs, concatenated in order (each pair's tokens in order).

        ``response_lens`` (and, when given, the response token ids) are checked against the cache:
        a cache built from another tokenizer or pair encoding is refused.
        """
        parts: dict[str, list[Tensor]] = {"logprobs": [], "ids": [], "log_tail": []}
        for n, (p, length) in enumerate(zip(pair_indices, response_lens)):
            e = int(self.entry_of_pair[p])
            a, b = int(self.offsets[e]), int(self.offsets[e + 1])
            if b - a != length:
                raise ConfigError(f"--teacher-cache: {self.path}: pair {p} has {b - a} cached "
                                  f"tokens but {length} response tokens; the cache was made with "
                                  "another tokenizer; re-run `pos2distill cache`")
            if targets is not None and \
                    self._file.get_slice("targets")[a:b].tolist() != list(targets[n]):
                raise ConfigError(f"--teacher-cache: {self.path}: pair {p}'s response tokens "
                                  "differ from the cache; re-run `pos2distill cache`")
            for name in parts:
                parts[name].append(self._file.get_slice(name)[a:b])
        return {name: torch.cat(v) for name, v in parts.items()}


def write_cache(out: Path, *, logprobs: Tensor, ids: Tensor, log_tail: Tensor, targets: Tensor,
                offsets: Tensor, entry_of_pair: Tensor, meta: dict[str, Any]) -> None:
    """Write ``out`` (a folder) atomically: tensors, then ``cache.json`` with their checksum."""
    from safetensors.torch import save_file

    from pos2distill.runinfo import file_sha256, replace_dir, write_json_atomic

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
    from tqdm.auto import tqdm

    from pos2distill.training.heads import response_hidden, response_logits_full, head, plain_head
    from pos2distill.modeling import (load_causal_lm, load_config, load_tokenizer,
                                      resolve_model_path)
    from pos2distill.runinfo import file_sha256
    from pos2distill.stages.train import encode_pair, left_pad, read_pairs, response_mask

    rows = read_pairs(cfg.pairs)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    # The output head's size; the config's vocab_size until the weights are loaded.
    vocab = int(load_config(cfg.model, trust_remote_code=cfg.trust_remote_code).vocab_size)
    k = min(cfg.top_k, vocab) if cfg.top_k else vocab
    out = Path(cfg.out)
    if (out / META_FILE).exists():
        # A complete cache of the same pairs, model, temperature and k is reused as it is.
        try:
            done = CacheReader(out, pairs=cfg.pairs, model_path=resolve_model_path(cfg.model),
                               temperature=cfg.temperature, vocab_size=vocab, n_pairs=len(rows))
        except ConfigError as e:
            raise ConfigError(f"--out {out} holds another cache ({e}); choose another --out or "
                              "delete it") from None
        if done.k == k:
            log.info("%s is complete; nothing to do", out)
            meta = done.meta
            return {"entries": meta["n_entries"], "tokens": meta["n_tokens"], "top_k": k,
                    "bytes_per_token": round(meta["bytes"] / max(1, meta["n_tokens"]), 1),
                    "out": str(out)}
        raise ConfigError(f"--out {out} holds a top-{done.k} cache; choose another --out or "
                          "delete it")
    model = load_causal_lm(cfg.model, dtype=cfg.dtype, device=cfg.device,
                           trust_remote_code=cfg.trust_remote_code)
    vocab = model.get_output_embeddings().weight.shape[0]
    k = min(cfg.top_k, vocab) if cfg.top_k else vocab
    examples = [encode_pair(r, tokenizer) for r in rows]
    entry_index: dict[tuple[int, ...], int] = {}
    entry_of_pair = []
    for ex in examples:
        entry_of_pair.append(entry_index.setdefault(ex.teacher_ids, len(entry_index)))
    entries = [ids for ids, _ in sorted(entry_index.items(), key=lambda kv: kv[1])]
    resp_len = {}
    for ex in examples:
        resp_len[ex.teacher_ids] = ex.response_len
    lens = [resp_len[e] for e in entries]
    # Longest first keeps the padding of each batch small and shows the memory peak at once.
    order = sorted(range(len(entries)), key=lambda i: -len(entries[i]))
    chunks: dict[str, list[Tensor]] = {"logprobs": [], "ids": [], "log_tail": [], "targets": []}
    per_entry: list[dict[str, Tensor]] = [dict() for _ in entries]
    autocast = (torch.autocast(torch.device(cfg.device).type, dtype=getattr(torch, cfg.autocast))
                if cfg.autocast != "off" else nullcontext())
    with torch.no_grad(), autocast, tqdm(total=len(entries), desc="cache", unit="prompt") as bar:
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            ids, att = left_pad([entries[i] for i in idx], tokenizer.pad_token_id)
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
            for b, i in enumerate(idx):
                n = lens[i]
                sl = slice(n_done, n_done + n)
                logits = head(model, hidden[sl]) if hidden is not None else full[sl]
                lp, top, tail = topk_rows(logits.float(), k, temperature=cfg.temperature)
                per_entry[i] = {"logprobs": lp.cpu(), "ids": top.cpu(), "log_tail": tail.cpu(),
                                "targets": tgt[sl].int().cpu()}
                n_done += n
            bar.update(len(idx))
    for d in per_entry:
        for name in chunks:
            chunks[name].append(d[name])
    offsets = torch.zeros(len(entries) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(lens, dtype=torch.long).cumsum(0)
    meta = {"top_k": k, "temperature": cfg.temperature, "vocab_size": vocab,
            "pairs": str(cfg.pairs), "pairs_sha256": file_sha256(cfg.pairs),
            "model": resolve_model_path(cfg.model),
            "model_sha256": model_checksums(resolve_model_path(cfg.model)),
            "n_pairs": len(rows), "dtype": cfg.dtype, "autocast": cfg.autocast}
    write_cache(out, **{n: torch.cat(v) for n, v in chunks.items()}, offsets=offsets,
                entry_of_pair=torch.tensor(entry_of_pair, dtype=torch.long), meta=meta)
    n_tokens = int(offsets[-1])
    size = (out / TENSOR_FILE).stat().st_size
    log.info("teacher cache: %d prompts, %d tokens, top-%d, %.1f bytes/token -> %s",
             len(entries), n_tokens, k, size / max(1, n_tokens), out)
    return {"entries": len(entries), "tokens": n_tokens, "top_k": k,
            "bytes_per_token": round(size / max(1, n_tokens), 1), "out": str(out)}
