"""Placing gold documents at prompt positions: pure functions with an explicit RNG.

Positions are 0-based here and 1-based in prompts and reports. A *slot* is the tuple of positions a
question's gold documents take: ``(p,)`` for retrieval, ``(first_hop, second_hop)`` for reasoning;
:func:`slot_key` writes it ``"p"`` or ``"a,b"`` in tables and JSON keys. The distractor order comes from the
``random.Random`` passed in; :func:`rng_for` derives one from (seed, record id, position, copy) so the
same question at the same position with the same seed always gives the same prompt, for every model
compared.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Sequence

from pos2distill.errors import ConfigError, DataError
from pos2distill.data.records import Record


def rng_for(seed: int, record_id: str, position: int | tuple[int, ...], copy: int = 0) -> random.Random:
    """A deterministic RNG for one (seed, question, position, copy); independent of call order."""
    return random.Random(f"{seed}|{record_id}|{position}|{copy}")


Slot = tuple[int, ...]


def slot_key(slot: Slot) -> str:
    """``"4"`` or ``"0,8"``: a slot in JSON keys and tables (0-based)."""
    return ",".join(str(p) for p in slot)


def parse_slot_key(key: str) -> Slot:
    """The slot of a :func:`slot_key` string."""
    return tuple(int(x) for x in str(key).split(","))


def slot_label(slot: Slot, sep: str = ",") -> str:
    """A slot 1-based, for people: ``(4,)`` → ``5``, ``(0, 8)`` → ``1,9``."""
    return sep.join(str(p + 1) for p in slot)


def stored_slot(row: dict[str, Any], sources: Sequence[str]) -> Slot | None:
    """The slot a file row stores under the first of ``sources`` it has (today's name first, then
    the names files had before slots existed: ``positions``, ``configuration``, ``position``): a
    list is a slot, a single integer a one-position slot. None when the row has none of them."""
    for source in sources:
        if source in row:
            value = row[source]
            return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    return None


def slot_rng(seed: int, record_id: str, slot: Slot, copy: int = 0) -> random.Random:
    """:func:`rng_for` of a slot. A one-document slot is keyed by its position alone, as run
    folders written before slots were keyed, so the same prompts come out."""
    return rng_for(seed, record_id, slot[0] if len(slot) == 1 else slot, copy)


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
    return dataclasses.replace(record, documents=tuple(documents), gold=(position,))


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


# ---------------------------------------------------------------------------------------------
# Several gold ("hop") documents: position pairs and the named configurations (METHOD.md section 3)

HOP_GROUPS = ("connected", "disconnected", "reversed")

# The paper's 12 configurations for 20 documents, 0-based (first hop, second hop).
PAPER_CONFIGURATIONS: dict[str, tuple[tuple[int, int], ...]] = {
    "connected": ((0, 1), (5, 6), (12, 13), (17, 18)),
    "disconnected": ((0, 8), (5, 13), (6, 14), (8, 16)),
    "reversed": ((8, 0), (13, 5), (14, 6), (16, 8)),
}
PAPER_N_DOCUMENTS = 20


def place_hops(record: Record, positions: tuple[int, ...] | list[int], rng: random.Random) -> Record:
    """Return ``record`` with its k-th gold (hop) document at ``positions[k]`` and the distractors,
    in an order drawn from ``rng``, in the other slots. The result's ``gold`` is ``tuple(positions)``
    (hop order kept, so a reversed placement has ``gold[0] > gold[1]``)."""
    n = len(record.documents)
    positions = tuple(positions)
    if len(positions) != len(record.gold):
        raise DataError(f"record {record.id!r} has {len(record.gold)} hop documents but "
                        f"{len(positions)} positions were given", field="position")
    if len(set(positions)) != len(positions):
        raise DataError(f"record {record.id!r}: hop positions {positions} repeat a position",
                        field="position")
    bad = [p for p in positions if not 0 <= p < n]
    if bad:
        raise DataError(f"record {record.id!r}: hop positions {bad} are outside its {n} documents "
                        f"(valid: 0 to {n - 1})", field="position")
    distractors = list(record.distractors)
    rng.shuffle(distractors)
    slots: list[Any] = [None] * n
    for g, p in zip(record.gold, positions):
        slots[p] = record.documents[g]
    it = iter(distractors)
    documents = tuple(d if d is not None else next(it) for d in slots)
    return dataclasses.replace(record, documents=documents, gold=positions)


def hop_group(pair: tuple[int, ...]) -> str:
    """``connected`` (second hop right after the first), ``reversed`` (second hop before the
    first) or ``disconnected`` (in order, with documents between them)."""
    pre, post = pair[0], pair[-1]
    if post < pre:
        return "reversed"
    return "connected" if post == pre + 1 else "disconnected"


def paper_configurations(n_documents: int, groups: tuple[str, ...] = HOP_GROUPS
                         ) -> list[tuple[int, int]]:
    """The named configurations of METHOD.md section 3 for ``n_documents`` documents.

    Exactly the paper's pairs for 20 documents. For other counts each position is scaled by
    ``(n-1)/19`` (connected pairs: the first hop by ``(n-2)/18``, the second right after it), so
    the pairs keep their place in the context and their group; pairs that collide after scaling are
    kept once, in order."""
    if n_documents < 2:
        raise ConfigError(f"two hops need at least 2 documents, got {n_documents}")
    out: list[tuple[int, int]] = []
    for group in groups:
        for pre, post in PAPER_CONFIGURATIONS[group]:
            if n_documents == PAPER_N_DOCUMENTS:
                pair = (pre, post)
            elif group == "connected":
                a = round(pre * (n_documents - 2) / (PAPER_N_DOCUMENTS - 2))
                pair = (a, a + 1)
            else:
                scale = (n_documents - 1) / (PAPER_N_DOCUMENTS - 1)
                a, b = round(pre * scale), round(post * scale)
                if a == b:  # too few documents to keep them apart: keep the order
                    a, b = (a, a + 1) if a + 1 < n_documents else (a - 1, a)
                    if group == "reversed":
                        a, b = b, a
                pair = (a, b)
            if pair not in out:
                out.append(pair)
    return out


def parse_configurations(spec: str, n_documents: int) -> list[tuple[int, int]]:
    """Hop position pairs from a ``--configurations`` option.

    ``all`` (the 12 named configurations, scaled to ``n_documents``), a group name or several
    (``connected,reversed``), or an explicit list of 0-based pairs separated by ``;`` or spaces:
    ``0,1;5,6;8,0`` (the first number is the first hop's position)."""
    text = spec.strip().lower()
    if not text:
        raise ConfigError("--configurations: empty")
    names = [t.strip() for t in text.split(",")]
    if text == "all":
        return paper_configurations(n_documents)
    if all(name in HOP_GROUPS for name in names):
        return paper_configurations(n_documents, tuple(names))
    pairs: list[tuple[int, int]] = []
    for part in text.replace(";", " ").split():
        try:
            pre, post = (int(x) for x in part.split(","))
        except ValueError:
            raise ConfigError(f"--configurations: {part!r} is not a pair like 0,8; use all, "
                              f"{', '.join(HOP_GROUPS)}, or pairs like '0,1;5,6;8,0'") from None
        if pre == post:
            raise ConfigError(f"--configurations: {part!r} puts both hops at the same position")
        bad = [p for p in (pre, post) if not 0 <= p < n_documents]
        if bad:
            raise ConfigError(f"--configurations: {part!r}: {bad} outside 0..{n_documents - 1} "
                              f"(the data has {n_documents} documents)")
        if (pre, post) not in pairs:
            pairs.append((pre, post))
    return pairs
