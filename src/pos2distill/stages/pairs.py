"""``pos2distill pairs``: training pairs (METHOD.md §2 step 2; §3).

For each kept teacher row: K distinct slots other than the advantageous one, drawn by the row's task
(retrieval: trivial positions; reasoning: other hop configurations), plus ``anchors`` copies at the
advantageous slot for tasks that have anchors (retrieval; R2 has none). Every copy gets its own
distractor order (different from the teacher's); the teacher side stays the stored teacher prompt,
and the target is the task's part of the teacher's response (retrieval: its first line by default;
reasoning: the chain-of-thought through its answer). Every row also carries the record's gold
``answers`` (in the record's order): ``train --method sft`` trains on the first of them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from pos2distill.config import PairsConfig
from pos2distill.data.records import Record, write_jsonl
from pos2distill.errors import ConfigError
from pos2distill.modeling import load_tokenizer
from pos2distill.runinfo import one_writer, start_run
from pos2distill.stages.teach import read_teacher_rows
from pos2distill.tasks import get_task
from pos2distill.tasks.positions import slot_rng
from pos2distill.tasks.prompts import render_prompt, use_chat

log = logging.getLogger(__name__)


def make_pairs(teacher_rows: Sequence[dict[str, Any]], tokenizer: Any, *, K: int, anchors: int,
               seed: int, use_first_line: bool = True,
               configurations: str = "any") -> list[dict[str, Any]]:
    """One row per (question, student slot); ``anchor`` marks the advantageous copies."""
    pairs = []
    for row in teacher_rows:
        task = get_task(row["task"])
        record = Record.from_dict(row["record"])
        adv = tuple(row["adv_slot"])
        slots = task.training_slots(record.id, len(record.documents), adv, K=K, seed=seed,
                                    pool=configurations)
        slots += [adv] * (anchors if task.has_anchors else 0)
        chat = use_chat(tokenizer, row.get("chat", "auto"))
        for copy, slot in enumerate(slots, start=1):
            # copy >= 1: never the teacher's own distractor order (copy 0).
            placed = task.place(record, slot, slot_rng(seed, record.id, slot, copy))
            student = render_prompt(placed, tokenizer, template=row["template"],
                                    instruction=row.get("instruction", ""),
                                    chat="on" if chat else "off")
            pairs.append({"id": f"{record.id}#{copy}", "question_id": record.id,
                          "task": task.name, "slot": list(slot), "adv_slot": list(adv),
                          "anchor": slot == adv, "student_prompt": student, "chat": chat,
                          "answers": list(record.answers),
                          **task.pair_fields(row, placed, slot, student, tokenizer,
                                             first_line_only=use_first_line)})
    return pairs


def main(cfg: PairsConfig) -> dict[str, Any]:
    rows = read_teacher_rows(cfg.teach)
    if not rows:
        raise ConfigError(f"--teach: {cfg.teach} has no kept teacher responses")
    tokenizer = load_tokenizer(cfg.model)
    # Pairs are made before anything is written, so a refused config leaves no run behind.
    pairs = make_pairs(rows, tokenizer, K=cfg.K, anchors=cfg.anchors, seed=cfg.seed,
                       use_first_line=cfg.first_line, configurations=cfg.configurations)
    if not pairs:
        raise ConfigError("no training pairs: --K is 0 and this task has no anchors (R2); "
                          "give --K > 0")
    with one_writer(cfg.out):
        start_run(cfg.out, cfg, inputs=[cfg.teach], stage="pairs", ignore=("out",))
        write_jsonl(cfg.out, pairs)
    log.info("%d pairs from %d questions -> %s", len(pairs), len(rows), cfg.out)
    return {"pairs": len(pairs), "questions": len(rows), "out": str(Path(cfg.out))}


def describe(result: dict[str, Any]) -> str:
    return f"pairs={result['pairs']}  questions={result['questions']}  out={result['out']}"
