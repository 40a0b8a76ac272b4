"""``pos2distill teach``: teacher responses at the advantageous slot (METHOD.md §2, step 1; §3).

For each training question the gold documents go to the task's advantageous slot (retrieval: the
first position, the attention sink; reasoning: the last two documents), the model answers greedily,
and the answer is kept only when the task scores it correct. Each kept row stores the exact teacher
prompt with its response and the advantageous slot, so later stages never re-render it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from pos2distill.config import TeachConfig
from pos2distill.data.records import Record, iter_jsonl, open_text, read_append_log, write_jsonl
from pos2distill.data.resolve import load_data
from pos2distill.errors import ConfigError, DataError
from pos2distill.generation import Generator, make_generator
from pos2distill import progress
from pos2distill.modeling import load_config, load_tokenizer, resolve_model_path
from pos2distill.runinfo import one_writer, start_run
from pos2distill.stages.probe import load_summary
from pos2distill.tasks import Task, get_task
from pos2distill.tasks.fitting import Fitted, fit_prompt, prompt_budget
from pos2distill.tasks.positions import Slot, slot_key, stored_slot
from pos2distill.tasks.prompts import use_chat

log = logging.getLogger(__name__)


#: The teacher prompts of one question: (slot, fitted prompt) for each of the task's teacher slots.
Group = list[tuple[Slot, Fitted]]


def teacher_prompts(records: Sequence[Record], tokenizer: Any, *, task: Task, adv: Slot,
                    template: str, chat: str, seed: int, max_tokens: int | None = None,
                    too_long: str = "fail", instruction: str = "") -> list[Group]:
    """The teacher prompts of every record, one per teacher slot of the task
    (:meth:`~pos2distill.tasks.base.Task.teacher_slots`: the advantageous slot; a judge: both
    answer orders), fitted to ``max_tokens`` under the ``too_long`` policy
    (:func:`pos2distill.tasks.fitting.fit_prompt`); a record with a skipped prompt is left out."""
    groups = []
    for r in records:
        group = [(slot, fit_prompt(r, slot, tokenizer, place=task.place, template=template,
                                   chat=chat, seed=seed, max_tokens=max_tokens,
                                   too_long=too_long, instruction=instruction))
                 for slot in task.teacher_slots(adv)]
        if all(f is not None for _, f in group):
            groups.append(group)
    return groups  # type: ignore[return-value]


def answer_prompts(prompts: Sequence[Group], generator: Generator, *, task: Task, adv: Slot,
                   template: str, chat: str, max_new_tokens: int,
                   instruction: str = "") -> list[dict[str, Any]]:
    """One row per question (kept or not): the record it shows (fewer distractors when truncated),
    and the task's teacher fields (:meth:`~pos2distill.tasks.base.Task.teacher_fields`: teacher
    prompt, response, whether it is kept as ``correct``). Rows keep ``template``,
    ``instruction`` and ``chat``: the pairs render the student prompts with them."""
    flat = [(f.record, slot, f.prompt) for group in prompts for slot, f in group]
    responses = generator.generate([p for _, _, p in flat], max_new_tokens=max_new_tokens)
    reads = task.model_reads(flat, responses, generator, max_new_tokens=max_new_tokens)
    answered = iter(zip(flat, responses, reads))
    rows = []
    for group in prompts:
        first = group[0][1]
        rows.append({"id": first.record.id, "task": task.name, "record": first.record.to_dict(),
                     "adv_slot": list(adv), "template": template, "instruction": instruction,
                     "chat": chat, "dropped_distractors": first.dropped,
                     **task.teacher_fields([next(answered) for _ in group])})
    return rows


def resolve_advantageous(cfg: TeachConfig, task: Task, n_documents: int) -> Slot:
    """The advantageous slot of ``--advantageous``; ``auto``: the best slot of ``--probe``."""
    if cfg.advantageous != "auto":
        return task.advantageous(cfg.advantageous, n_documents)
    summary = load_summary(cfg.probe)
    if summary["task"] != task.name:
        raise ConfigError(f"--probe {cfg.probe}: a --task {summary['task']} probe; "
                          f"--advantageous auto needs a --task {task.name} one")
    best = slot_key(summary["best_slot"])
    log.info("advantageous slot from %s: %s (0-based)", cfg.probe, best)
    return task.advantageous(best, n_documents)


def upgrade_teacher_row(row: dict[str, Any]) -> dict[str, Any]:
    """A teacher row with ``task`` and ``adv_slot`` (rows written before slots existed have
    ``adv_position``, and reasoning rows ``adv_configuration``)."""
    if "adv_slot" in row:
        return row
    adv = stored_slot(row, ("adv_configuration", "adv_position"))
    return {**row, "task": row.get("task", "retrieval"), "adv_slot": list(adv or ())}


def read_teacher_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    rows = []
    for n, row in iter_jsonl(path):
        for key in ("id", "record", "teacher_prompt", "response", "template"):
            if key not in row:
                raise DataError("missing (is this a `pos2distill teach` output?)", path=str(path),
                                line=n, field=key)
        if "adv_slot" not in row and "adv_position" not in row:
            raise DataError("missing (is this a `pos2distill teach` output?)", path=str(path),
                            line=n, field="adv_slot")
        rows.append(upgrade_teacher_row(row))
    return rows


def main(cfg: TeachConfig) -> dict[str, Any]:
    """Write the kept teacher rows to ``cfg.out``; returns counts."""
    task = get_task(cfg.task).configure(cfg)
    out = Path(cfg.out)
    records = task.keep(load_data(cfg), cfg.data)
    adv = resolve_advantageous(cfg, task, len(records[0].documents))
    # Everything that can refuse the run (--too-long fail included) does so before anything is
    # written, so a corrected command is not refused as a different config.
    config = load_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    chat = use_chat(tokenizer, cfg.chat)  # type: ignore[arg-type]
    budget = prompt_budget(config, tokenizer, cfg.max_new_tokens)
    prompts = teacher_prompts(records, tokenizer, task=task, adv=adv, template=cfg.template,
                              chat=cfg.chat, seed=cfg.seed, max_tokens=budget,
                              too_long=cfg.too_long, instruction=cfg.instruction)
    if not prompts:
        raise ConfigError(f"--too-long {cfg.too_long}: no teacher prompt fits the model's context "
                          f"({budget} prompt tokens with --max-new-tokens {cfg.max_new_tokens})")
    with one_writer(out):
        return answer_all(cfg, out, task, adv, records, prompts, tokenizer, chat=chat,
                          budget=budget)


def answer_all(cfg: TeachConfig, out: Path, task: Task, adv: Slot, records: Sequence[Record],
               prompts: Sequence[Group], tokenizer: Any, *, chat: bool,
               budget: int | None) -> dict[str, Any]:
    """Answer the teacher prompts not yet in ``OUT.partial`` (appended chunk by chunk, so a killed
    run resumes), then write the kept rows to ``out`` in the data's order."""
    partial = out.with_name(out.name + ".partial")
    inputs = [p for p in (cfg.data, resolve_model_path(cfg.model), cfg.probe) if p and Path(p).exists()]
    resumed = start_run(out, cfg, inputs=inputs, stage="teach",
                        ignore=("out", "batch_size", "device"))
    if resumed and out.exists() and not partial.exists():
        rows = read_teacher_rows(out)
        log.info("%s is complete (%d rows); nothing to do", out, len(rows))
        return {"kept": len(rows), "total": len(records), "adv_slot": slot_key(adv),
                "out": str(out)}
    done = {row["id"] for row in read_append_log(partial)}
    todo = [g for g in prompts if g[0][1].record.id not in done]
    if todo:
        # The generator first: a backend that cannot load refuses before any bar is drawn.
        generator = make_generator(cfg, tokenizer, chat=chat, progress=lambda n: bar.update(n))
        bar = progress.bar(total=sum(map(len, prompts)),
                           initial=sum(map(len, prompts)) - sum(map(len, todo)), desc="teach",
                           unit="prompt")
        out.parent.mkdir(parents=True, exist_ok=True)
        chunk = cfg.batch_size * 4
        with open_text(partial, "at") as f:
            for start in range(0, len(todo), chunk):
                rows = answer_prompts(todo[start:start + chunk], generator, task=task, adv=adv,
                                      template=cfg.template, chat=cfg.chat,
                                      max_new_tokens=cfg.max_new_tokens,
                                      instruction=cfg.instruction)
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
        bar.close()
    # Each question once: older versions let two runs append to one partial file.
    order = {r.id: k for k, r in enumerate(records)}
    by_id = {}
    for row in read_append_log(partial):
        by_id.setdefault(row["id"], row)
    all_rows = sorted(by_id.values(), key=lambda row: order[row["id"]])
    kept = [row for row in all_rows if row["correct"]]
    write_jsonl(out, kept)
    partial.unlink(missing_ok=True)
    log.info("teacher correct on %d of %d questions at slot %s", len(kept), len(all_rows),
             slot_key(adv))
    result = {"kept": len(kept), "total": len(all_rows), "adv_slot": slot_key(adv),
              "out": str(out)}
    skipped = len(records) - len(all_rows)
    if skipped:
        log.warning("%d questions whose prompt does not fit %d tokens were skipped (--too-long %s)",
                    skipped, budget, cfg.too_long)
        result["skipped"] = skipped
    truncated = sum(1 for row in all_rows if row.get("dropped_distractors"))
    if truncated:
        result["truncated"] = truncated
    if not kept:
        log.warning("the teacher answered no question correctly: nothing to distil")
    return result
