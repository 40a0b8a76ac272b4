"""Placing gold documents at prompt positions: pure functions with an explicit RNG.

Positions are 0-based here and 1-based in prompts and reports. The distractor order comes from the
``random.Random`` passed in; :func:`rng_for` derives one from (seed, record id, position, copy) so the
same question at the same position with the same seed always gives the same prompt, for every model
compared.
"""

from __future__ import annotations

import random

from pos2distill.errors import ConfigError, DataError
from pos2distill.records import Record


def rng_for(seed: int, record_id: str, position: int | tuple[int, ...], copy: int = 0) -> random.Random:
    """A deterministic RNG for one (seed, question, position, copy); independent of call order."""
    return random.Random(f"{seed}|{record_id}|{position}|{copy}")


def place_gold(record: Record, position: int, rng: random.Random) -> Record:
    """Return ``record`` with its single gold document at ``position`` and the distractors, in an
    order drawn from ``rng``, around it. The result's ``gold`` is ``(position,)``."""
    gold = record.gold_document
    n = len(record.documents)
    if not 0 <= position < n:
        raise DataError(f"record {record.id!r}: gold position {position} is outside its {n} "
                        f"documents (valid: 0 to {n - 1})", field="position")
    distractors = list(record.distractors)
    rng.shuffle(distractors)
    documents = distractors[:position] + [gold] + distractors[position:]
    return Record(id=record.id, question=record.question, answers=record.answers,
                  documents=tuple(documents), gold=(position,), task=record.task)


def parse_positions(spec: str | list[int] | tuple[int, ...], n_documents: int) -> list[int]:
    """``"all"`` → 0..n-1; ``"0,4,9"`` → [0, 4, 9]; ``"first"``/``"last"`` → 0 / n-1.

    Validated against ``n_documents``; sorted, without duplicates.
    """
    if isinstance(spec, (list, tuple)):
        values = [int(p) for p in spec]
    else:
        spec = spec.strip().lower()
        if spec == "all":
            return list(range(n_documents))
        values = []
        for part in spec.split(","):
            part = part.strip()
            if part == "first":
                values.append(0)
            elif part == "last":
                values.append(n_documents - 1)
            else:
                try:
                    values.append(int(part))
                except ValueError:
                    raise ConfigError(f"--positions: {part!r} is not an integer; use 'all' or a "
                                      "comma-separated list of 0-based positions like 0,4,9") from None
    bad = [p for p in values if not 0 <= p < n_documents]
    if bad:
        raise ConfigError(f"--positions: {bad} outside 0..{n_documents - 1} "
                          f"(the data has {n_documents} documents)")
    if not values:
        raise ConfigError("--positions: empty list")
    return sorted(set(values))


def resolve_position(spec: str | int, n_documents: int) -> int:
    """An advantageous position given as ``first``, ``last`` or an integer (negative counts from
    the end). (``auto`` is resolved by the caller from a probe.)"""
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "first":
            return 0
        if s == "last":
            return n_documents - 1
        try:
            spec = int(s)
        except ValueError:
            raise ConfigError(f"advantageous position {spec!r}: use first, last, auto or an "
                              "integer") from None
    p = spec + n_documents if spec < 0 else spec
    if not 0 <= p < n_documents:
        raise ConfigError(f"advantageous position {spec} outside 0..{n_documents - 1}")
    return p
