"""Pairs rows to token tensors: the encoding that ``train`` and ``cache`` share.

A pairs row (``pos2distill pairs``) holds the student prompt (gold document at a trivial slot), the
teacher prompt (at the advantageous slot), the response and whether the row is an anchor. A *slot*
is a tuple of 0-based document positions: ``(p,)`` for retrieval, ``(first_hop, second_hop)`` for
reasoning. :func:`read_pairs` gives every row ``slot`` and ``adv_slot`` whatever its format:

=======================  ======================  ==========================
row format               slot from               adv_slot from
=======================  ======================  ==========================
current                  ``slot``                ``adv_slot``
old reasoning (R2)       ``configuration``       ``adv_configuration``
old retrieval (R1)       ``[position]``          ``[adv_position]``
=======================  ======================  ==========================

Alignment: sequences are left-padded so every response ends at the last position. With R the
longest response in the batch (EOS included), the logits at the last R+1 positions minus the very
last one are exactly the distributions that predict the R final tokens (see
:mod:`pos2distill.training.heads`); :func:`response_mask` marks, per row, which of those R
columns are its own response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from pos2distill.data.records import iter_jsonl
from pos2distill.errors import DataError
from pos2distill.tasks.positions import Slot, stored_slot
from pos2distill.tasks.prompts import encode_prompt
from pos2distill.training.methods import Method


#: Where each normalised field is read from, first match wins (current name, then older ones).
SLOT_SOURCES = {"slot": ("slot", "configuration", "position"),
                "adv_slot": ("adv_slot", "adv_configuration", "adv_position")}


@dataclass(frozen=True)
class Example:
    student_ids: tuple[int, ...]   # student prompt + response (EOS included)
    teacher_ids: tuple[int, ...]   # teacher prompt + the same response; () without a teacher
    response_len: int
    slot: Slot                     # where the student's gold document(s) sit
    adv_slot: Slot                 # the teacher prompt's slot; () if the row has none
    # Response tokens whose teacher distribution the pair fixes (a judge's balanced verdict):
    # (index in the response, token ids, their probabilities).
    fixed: tuple[tuple[int, tuple[int, ...], tuple[float, ...]], ...] = ()


def row_slot(row: dict[str, Any], field: str) -> Slot | None:
    """``slot`` or ``adv_slot`` of a pairs row of any format (module table), None if it has
    neither."""
    return stored_slot(row, SLOT_SOURCES[field])


def read_pairs(path: str, fields: Sequence[str] = ("student_prompt", "teacher_prompt", "response",
                                                   "chat")
               ) -> list[dict[str, Any]]:
    """The rows of a pairs file, each given ``slot`` and ``adv_slot`` tuples when its format has
    them (module table); a row missing one of ``fields`` (after that) is refused with its line.
    The default fields are those :func:`encode_pair` reads with a teacher."""
    rows = []
    for n, row in iter_jsonl(path):
        for field in SLOT_SOURCES:
            slot = row_slot(row, field)
            if slot is not None:
                row[field] = slot
        for key in fields:
            if key not in row:
                raise DataError("missing (is this a `pos2distill pairs` output?)", path=path,
                                line=n, field=key)
        rows.append(row)
    if not rows:
        raise DataError("no training pairs", path=path)
    return rows


def encode_pair(row: dict[str, Any], tokenizer: Any, *, target: str = "response",
                teacher: bool = True) -> Example:
    """Token ids of one pair. ``target``: ``"response"`` (the pair's response) or ``"gold"`` (its
    first gold answer, for SFT); ``teacher=False`` skips the teacher side (cross-entropy methods)."""
    text = row["response"] if target == "response" else row["answers"][0]
    response = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    chat = bool(row["chat"])
    student = encode_prompt(tokenizer, row["student_prompt"], chat=chat) + response
    teacher_ids = encode_prompt(tokenizer, row["teacher_prompt"], chat=chat) + response if teacher else []
    return Example(tuple(student), tuple(teacher_ids), len(response),
                   row_slot(row, "slot") or (), row_slot(row, "adv_slot") or (),
                   fixed_tokens(row, response) if teacher else ())


def fixed_tokens(row: dict[str, Any], response: Sequence[int]
                 ) -> tuple[tuple[int, tuple[int, ...], tuple[float, ...]], ...]:
    """The row's ``fixed_tokens`` (``[{"index", "ids", "probs"}]``, written by ``pairs`` for a
    judge's verdict token), checked against its encoded ``response``: the token at ``index``
    must be one of ``ids`` (else the pairs were made with another tokenizer)."""
    out = []
    for f in row.get("fixed_tokens") or ():
        index, ids, probs = f["index"], tuple(f["ids"]), tuple(float(p) for p in f["probs"])
        if not (0 <= index < len(response) and response[index] in ids and len(ids) == len(probs)):
            raise DataError("fixed_tokens do not match the response's tokens (were the pairs made "
                            "with this model's tokenizer?)", field="fixed_tokens")
        out.append((index, ids, probs))
    return tuple(out)


def is_anchor(row: dict[str, Any]) -> bool:
    """An anchor row: the student also at the advantageous slot."""
    if "anchor" in row:
        return bool(row["anchor"])
    slot = row_slot(row, "slot")
    return slot is not None and slot == row_slot(row, "adv_slot")


def select_rows(rows: list[dict[str, Any]], method: Method, path: str) -> list[dict[str, Any]]:
    """The rows ``method`` trains on: anchors are dropped for methods without them, and rows
    without a gold answer (unlabelled judging items) for methods that train on it."""
    kept = rows if method.anchors else [r for r in rows if not is_anchor(r)]
    if not kept:
        raise DataError(f"only anchor rows, and --method {method.name} trains without anchors",
                        path=path)
    if method.target == "gold":
        kept = [r for r in kept if r.get("answers")]
        if not kept:
            raise DataError(f"no row has a gold answer (unlabelled items), and --method "
                            f"{method.name} trains on it", path=path)
    return kept


def slot_ids(slots: Iterable[Slot]) -> dict[Slot, int]:
    """An integer id per distinct slot, in sorted (tuple) order: the group ids
    :func:`pos2distill.training.losses.position_weights` wants. For retrieval slots ``(p,)`` the
    ids keep the order of the positions, so the weights are those of the positions themselves."""
    return {slot: i for i, slot in enumerate(sorted(set(slots)))}


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (B, T), sequences right-aligned."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):] = torch.tensor(s, dtype=torch.long)
        att[b, T - len(s):] = 1
    return ids, att


def response_mask(response_lens: Sequence[int]) -> torch.Tensor:
    """(B, R) bool: True on the last ``response_lens[b]`` of R columns."""
    R = max(response_lens)
    cols = torch.arange(R)
    return cols.unsqueeze(0) >= (R - torch.tensor(response_lens)).unsqueeze(1)


def batch_tensors(examples: Sequence[Example], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """``s_ids``, ``s_att`` (B, T) of the student rows, ``mask`` (B, R) of their response tokens,
    and ``t_ids``, ``t_att`` of the teacher rows when the examples have them."""
    s_ids, s_att = left_pad([e.student_ids for e in examples], pad_id)
    lens = [e.response_len for e in examples]
    b = {"s_ids": s_ids.to(device), "s_att": s_att.to(device),
         "mask": response_mask(lens).to(device)}
    if examples[0].teacher_ids:
        t_ids, t_att = left_pad([e.teacher_ids for e in examples], pad_id)
        b.update(t_ids=t_ids.to(device), t_att=t_att.to(device))
    if any(e.fixed for e in examples):
        b.update({k: v.to(device) for k, v in fixed_tensors(examples).items()})
    return b


def fixed_tensors(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """The fixed teacher tokens of a batch: ``fixed_index`` (M,), each one's index among the
    batch's response tokens flattened row by row (the order ``mask.nonzero`` gives);
    ``fixed_ids`` (M, K) and ``fixed_probs`` (M, K), padded with id 0 and probability 0."""
    index, ids, probs, offset = [], [], [], 0
    for e in examples:
        for i, t, p in e.fixed:
            index.append(offset + i)
            ids.append(list(t))
            probs.append(list(p))
        offset += e.response_len
    K = max(len(t) for t in ids)
    return {"fixed_index": torch.tensor(index, dtype=torch.long),
            "fixed_ids": torch.tensor([t + [0] * (K - len(t)) for t in ids], dtype=torch.long),
            "fixed_probs": torch.tensor([p + [0.0] * (K - len(p)) for p in probs],
                                        dtype=torch.float32)}
