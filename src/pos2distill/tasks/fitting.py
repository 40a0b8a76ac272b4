"""Prompts that fit the model's context: the ``--too-long`` policy shared by probe and teach.

A prompt fits when its tokens plus ``--max-new-tokens`` are within the context length (the smaller of
the model's ``max_position_embeddings`` and the tokenizer's ``model_max_length``, ignoring the huge
placeholder tokenizers use for "no limit"). A prompt that does not fit is, by ``too_long``:

- ``fail``: an error naming the question, its gold position and both lengths (the default);
- ``skip``: left out and counted;
- ``truncate``: distractors are dropped from the *end of the record's distractor list* (dataset order:
  for retrieval files the lowest-ranked passages go first) until the prompt fits; the remaining
  distractors are shuffled and placed exactly as for an untruncated record (same seed key). The gold
  always stays at the requested position, so at least that many distractors must remain; when even
  that does not fit, the prompt is skipped and counted like ``skip``.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Callable

from pos2distill.errors import ConfigError
from pos2distill.tasks.positions import Slot, slot_label, slot_rng
from pos2distill.tasks.prompts import encode_prompt, render_prompt, use_chat
from pos2distill.data.records import Record

TOO_LONG = ("fail", "skip", "truncate")
#: Lengths above this are "no limit" placeholders (transformers uses 1e30), not real contexts.
_SANE_LIMIT = 10_000_000


def context_length(config: Any, tokenizer: Any) -> int | None:
    """Tokens the model can attend to: the smaller of the sane limits of config and tokenizer."""
    get_text = getattr(config, "get_text_config", None)
    text_config = get_text() if callable(get_text) else config
    values = [getattr(text_config, name, None) for name in ("max_position_embeddings", "n_positions")]
    values.append(getattr(tokenizer, "model_max_length", None))
    sane = [v for v in values
            if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= _SANE_LIMIT]
    return min(sane) if sane else None


def prompt_budget(config: Any, tokenizer: Any, max_new_tokens: int) -> int | None:
    """The most prompt tokens that leave room for ``max_new_tokens`` (None: no known limit)."""
    context = context_length(config, tokenizer)
    if context is None:
        return None
    if max_new_tokens >= context:
        raise ConfigError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the "
                          f"model's context of {context} tokens")
    return context - max_new_tokens


def keep_distractors(record: Record, k: int) -> Record:
    """``record`` with only the first ``k`` of its distractors (dataset order), gold included."""
    gold = set(record.gold)
    keep, seen = [], 0
    for i, d in enumerate(record.documents):
        if i in gold:
            keep.append(i)
        elif seen < k:
            keep.append(i)
            seen += 1
    return dataclasses.replace(record, documents=tuple(record.documents[i] for i in keep),
                               gold=tuple(keep.index(g) for g in record.gold))


@dataclass(frozen=True)
class Fitted:
    """A prompt that fits, and the record it shows (``record`` itself, or with ``dropped``
    distractors fewer)."""

    record: Record
    prompt: str
    dropped: int = 0


def fit_prompt(record: Record, slot: Slot, tokenizer: Any, *,
               place: Callable[[Record, Slot, random.Random], Record], template: str, chat: str,
               seed: int, copy: int = 0, max_tokens: int | None, too_long: str,
               instruction: str = "") -> Fitted | None:
    """The prompt of ``record`` with its gold documents placed at ``slot`` by ``place`` (a Task's
    :meth:`~pos2distill.tasks.base.Task.place`; distractor order from
    ``slot_rng(seed, record.id, slot, copy)``), made to fit ``max_tokens`` by the ``too_long``
    policy. None means skipped. A non-empty ``instruction`` replaces the template's instruction
    line."""
    if too_long not in TOO_LONG:
        raise ConfigError(f"--too-long: {too_long!r} is not one of {', '.join(TOO_LONG)}")
    chat_on = use_chat(tokenizer, chat)  # type: ignore[arg-type]

    def render(r: Record) -> str:
        placed = place(r, slot, slot_rng(seed, r.id, slot, copy))
        return render_prompt(placed, tokenizer, template=template, chat=chat,  # type: ignore[arg-type]
                             instruction=instruction)

    def length(prompt: str) -> int:
        return len(encode_prompt(tokenizer, prompt, chat=chat_on))

    prompt = render(record)
    if max_tokens is None:
        return Fitted(record, prompt)
    n = length(prompt)
    if n <= max_tokens:
        return Fitted(record, prompt)
    if too_long == "fail":
        raise ConfigError(f"question {record.id!r} with its gold document(s) at position(s) "
                          f"{slot_label(slot)}: the "
                          f"prompt has {n} tokens, more than the {max_tokens} that fit the model's "
                          "context with --max-new-tokens; use --too-long skip or truncate, fewer "
                          "--n-documents, or a model with a longer context")
    if too_long == "skip":
        return None
    # truncate: the largest number of distractors (at least enough to fill the slots before the
    # last gold position, so every gold keeps its place) whose prompt fits; prompts grow with
    # every document, so a binary search finds it.
    n_gold = len(record.gold)
    n_distractors = len(record.documents) - n_gold
    last = max(slot)
    lo, hi, best = last + 1 - n_gold, n_distractors - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        shorter = keep_distractors(record, mid)
        prompt = render(shorter)
        if length(prompt) <= max_tokens:
            best, lo = Fitted(shorter, prompt, n_distractors - mid), mid + 1
        else:
            hi = mid - 1
    return best
