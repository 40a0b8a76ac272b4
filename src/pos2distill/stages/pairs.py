"""``pos2distill pairs``: training pairs for R1 (METHOD.md §2, step 2).

For each kept teacher row: K distinct trivial positions (any position but the advantageous one)
plus ``anchors`` copies at the advantageous position. Every copy gets its own distractor order
(different from the teacher's); the teacher side stays the stored teacher prompt, and the target is
the teacher's response (its first line by default). Every row also carries the record's gold
``answers`` (in the record's order): ``train --method sft`` trains on the first of them.
Reasoning teacher rows (``teach --task reasoning``) get R2 pairs: K other hop configurations, the
chain-of-thought as target, no anchors (:func:`pos2distill.tasks.reasoning.make_pairs`).
"""

from __future__ import annotations

import logging
import random
from typing import Any, Sequence

from pos2distill.config import PairsConfig
from pos2distill.errors import ConfigError
from pos2distill.metrics import first_line
from pos2distill.tasks.positions import place_gold, rng_for
from pos2distill.tasks.prompts import render_prompt, use_chat
from pos2distill.data.records import Record

log = logging.getLogger(__name__)


def draw_positions(rng: random.Random, n_documents: int, adv_position: int, K: int) -> list[int]:
    """K distinct trivial positions from {0..n-1} \\ {adv}, sorted."""
    trivial = [p for p in range(n_documents) if p != adv_position]
    if K > len(trivial):
        raise ConfigError(f"--K {K} is larger than the {len(trivial)} trivial positions of "
                          f"{n_documents}-document questions")
    return sorted(rng.sample(trivial, K))


def make_pairs(teacher_rows: Sequence[dict[str, Any]], tokenizer: Any, *, K: int, anchors: int,
               seed: int, use_first_line: bool = True,
               configurations: str = "any") -> list[dict[str, Any]]:
    """One row per (question, student position); ``anchor`` marks the advantageous copies.
    Reasoning teacher rows get R2 pairs instead (:func:`pos2distill.tasks.reasoning.make_pairs`)."""
    from pos2distill.tasks import reasoning

    pairs = []
    for row in teacher_rows:
        if row.get("task") == "reasoning":
            pairs += reasoning.make_pairs(row, tokenizer, K=K, seed=seed,
                                          configurations=configurations)
            continue
        record = Record.from_dict(row["record"])
        adv = int(row["adv_position"])
        n = len(record.documents)
        positions = draw_positions(random.Random(f"{seed}|{record.id}|positions"), n, adv, K)
        positions += [adv] * anchors
        chat = use_chat(tokenizer, row.get("chat", "auto"))
        response = first_line(row["response"]) if use_first_line else row["response"].strip()
        for copy, pos in enumerate(positions, start=1):
            # copy >= 1: never the teacher's own distractor order (copy 0).
            placed = place_gold(record, pos, rng_for(seed, record.id, pos, copy))
            pairs.append({"id": f"{record.id}#{copy}", "question_id": record.id, "position": pos,
                          "anchor": pos == adv, "adv_position": adv,
                          "student_prompt": render_prompt(placed, tokenizer, template=row["template"],
                                                          instruction=row.get("instruction", ""),
                                                          chat="on" if chat else "off"),
                          "chat": chat, "teacher_prompt": row["teacher_prompt"], "response": response,
                          "answers": list(record.answers)})
    return pairs


def main(cfg: PairsConfig) -> dict[str, Any]:
    from pathlib import Path

    from pos2distill.modeling import load_tokenizer
    from pos2distill.data.records import write_jsonl
    from pos2distill.runinfo import start_run
    from pos2distill.stages.teach import read_teacher_rows

    rows = read_teacher_rows(cfg.teach)
    if not rows:
        raise ConfigError(f"--teach: {cfg.teach} has no kept teacher responses")
    tokenizer = load_tokenizer(cfg.model)
    # Pairs are made before anything is written, so a refused config leaves no run behind.
    pairs = make_pairs(rows, tokenizer, K=cfg.K, anchors=cfg.anchors, seed=cfg.seed,
                       use_first_line=cfg.first_line, configurations=cfg.configurations)
    if not pairs:
        raise ConfigError("no training pairs: reasoning rows need --K > 0 (R2 has no anchors)")
    start_run(cfg.out, cfg, inputs=[cfg.teach], stage="pairs", ignore=("out",))
    write_jsonl(cfg.out, pairs)
    log.info("%d pairs from %d questions -> %s", len(pairs), len(rows), cfg.out)
    return {"pairs": len(pairs), "questions": len(rows), "out": str(Path(cfg.out))}
