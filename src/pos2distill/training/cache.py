"""The teacher cache format (written by ``pos2distill cache``) and its reader.

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
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from pos2distill.errors import ConfigError
from pos2distill.runinfo import file_sha256, input_checksums

FORMAT = "pos2distill-teacher-cache"
VERSION = 1
TENSOR_FILE = "teacher.safetensors"
META_FILE = "cache.json"


def bytes_per_token(k: int) -> int:
    """Tensor bytes stored per response token at top-k ``k`` (float32 + int32 per kept entry, then
    the tail and the target)."""
    return 8 * k + 8


def model_checksums(model_path: str) -> dict[str, str]:
    """sha256 of the model's weights and config files, by file name."""
    return {Path(p).name: h for p, h in input_checksums([model_path]).items()}


class CacheReader:
    """A validated, memory-mapped teacher cache; :meth:`rows` reads a micro-batch."""

    def __init__(self, path: str | Path, *, pairs: str, model_path: str, temperature: float,
                 vocab_size: int, n_pairs: int, verify: bool = True):
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
