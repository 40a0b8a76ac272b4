"""``pos2distill teach``: teacher responses at the advantageous position (METHOD.md §2, step 1).

For each training question the gold document is put at the advantageous position (default the
first: the attention sink), the model answers greedily, and the answer is kept only when it is correct
(best-subspan EM). Each kept row stores the exact teacher prompt with its response, so later stages
never re-render it. With ``--task reasoning`` the hop documents go to the advantageous
configuration (default the last two documents) and the chain-of-thought is kept when its final answer
is right (reasoning EM); see :mod:`pos2distill.tasks.reasoning`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from pos2distill.config import TeachConfig
from pos2distill.tasks.fitting import Fitted, fit_prompt
from pos2distill.generation import Generator
from pos2distill.metrics import best_subspan_em
from pos2distill.tasks.positions import resolve_position
from pos2distill.data.records import Record, iter_jsonl, read_append_log

log = logging.getLogger(__name__)


def teacher_prompts(records: Sequence[Record], tokenizer: Any, *, adv_position: int | tuple[int, ...],
                    template: str, chat: str, seed: int, max_tokens: int | None = None,
                    too_long: str = "fail", instruction: str = "") -> list[Fitted]:
    """The teacher prompt of every record that fits ``max_tokens`` under the ``too_long`` policy
    (:func:`pos2distill.tasks.fitting.fit_prompt`); skipped records are left out."""
    fitted = (fit_prompt(r, adv_position, tokenizer, template=template, chat=chat, seed=seed,
                         max_tokens=max_tokens, too_long=too_long, instruction=instruction)
              for r in records)
    return [f for f in fitted if f is not None]


def answer_prompts(prompts: Sequence[Fitted], generator: Generator, *,
                   adv_position: int | tuple[int, ...], template: str, chat: str,
                   max_new_tokens: int, instruction: str = "") -> list[dict[str, Any]]:
    """One row per prompt (kept or not): the record it shows (fewer distractors when truncated),
    teacher prompt, response, correctness. A tuple ``adv_position`` is a reasoning teacher (hop
    configuration, chain-of-thought scored by reasoning EM): its rows also hold ``task`` and
    ``adv_configuration``, and ``adv_position`` is the first hop's position. Rows keep
    ``template``, ``instruction`` and ``chat``: the pairs render the student prompts with them."""
    from pos2distill.metrics import reasoning_em

    responses = generator.generate([f.prompt for f in prompts], max_new_tokens=max_new_tokens)
    score = best_subspan_em
    adv: dict[str, Any] = {"adv_position": adv_position}
    if isinstance(adv_position, tuple):
        score = reasoning_em
        adv = {"adv_position": adv_position[0], "task": "reasoning",
               "adv_configuration": list(adv_position)}
    return [{"id": f.record.id, "record": f.record.to_dict(), **adv,
             "template": template, "instruction": instruction, "chat": chat,
             "teacher_prompt": f.prompt, "dropped_distractors": f.dropped, "response": resp,
             "correct": score(resp, f.record.answers) == 1.0}
            for f, resp in zip(prompts, responses)]


def teacher_rows(records: Sequence[Record], generator: Generator, tokenizer: Any, *,
                 adv_position: int | tuple[int, ...], template: str, chat: str, seed: int, max_new_tokens: int,
                 max_tokens: int | None = None, too_long: str = "fail",
                 instruction: str = "") -> list[dict[str, Any]]:
    """One row per record that fits (kept or not): record, teacher prompt, response, correctness."""
    prompts = teacher_prompts(records, tokenizer, adv_position=adv_position, template=template,
                              chat=chat, seed=seed, max_tokens=max_tokens, too_long=too_long,
                              instruction=instruction)
    return answer_prompts(prompts, generator, adv_position=adv_position, template=template,
                          chat=chat, max_new_tokens=max_new_tokens, instruction=instruction)


def resolve_advantageous(cfg: TeachConfig, n_documents: int) -> int | tuple[int, ...]:
    if cfg.task == "reasoning":
        from pos2distill.tasks.reasoning import resolve_advantageous as resolve_pair

        return resolve_pair(cfg.advantageous, cfg.probe, n_documents)
    if cfg.advantageous == "auto":
        from pos2distill.stages.probe import load_summary

        best = int(load_summary(cfg.probe)["best_position"])
        log.info("advantageous position from %s: %d (0-based)", cfg.probe, best)
        return resolve_position(best, n_documents)
    return resolve_position(cfg.advantageous, n_documents)


def read_teacher_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    from pos2distill.errors import DataError

    rows = []
    for n, row in iter_jsonl(path):
        for key in ("id", "record", "adv_position", "teacher_prompt", "response", "template"):
            if key not in row:
                raise DataError("missing (is this a `pos2distill teach` output?)", path=str(path),
                                line=n, field=key)
        rows.append(row)
    return rows


def main(cfg: TeachConfig) -> dict[str, Any]:
    """Write the kept teacher rows to ``cfg.out``; returns counts."""
    from tqdm.auto import tqdm

    from pos2distill.tasks.fitting import prompt_budget
    from pos2distill.data.resolve import load_data
    from pos2distill.errors import ConfigError
    from pos2distill.generation import make_generator
    from pos2distill.modeling import load_config, load_tokenizer, resolve_model_path
    from pos2distill.tasks.prompts import use_chat
    from pos2distill.data.records import open_text, write_jsonl
    from pos2distill.runinfo import start_run

    out = Path(cfg.out)
    partial = out.with_name(out.name + ".partial")
    records = load_data(cfg)
    adv = resolve_advantageous(cfg, len(records[0].documents))
    # Everything that can refuse the run (--too-long fail included) does so before anything is
    # written, so a corrected command is not refused as a different config.
    config = load_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    chat = use_chat(tokenizer, cfg.chat)  # type: ignore[arg-type]
    budget = prompt_budget(config, tokenizer, cfg.max_new_tokens)
    prompts = teacher_prompts(records, tokenizer, adv_position=adv, template=cfg.template,
                              chat=cfg.chat, seed=cfg.seed, max_tokens=budget,
                              too_long=cfg.too_long, instruction=cfg.instruction)
    if not prompts:
        raise ConfigError(f"--too-long {cfg.too_long}: no teacher prompt fits the model's context "
                          f"({budget} prompt tokens with --max-new-tokens {cfg.max_new_tokens})")
    inputs = [p for p in (cfg.data, resolve_model_path(cfg.model), cfg.probe) if p and Path(p).exists()]
    resumed = start_run(out, cfg, inputs=inputs, stage="teach",
                        ignore=("out", "batch_size", "device"))
    if resumed and out.exists() and not partial.exists():
        rows = read_teacher_rows(out)
        log.info("%s is complete (%d rows); nothing to do", out, len(rows))
        return {"kept": len(rows), "total": len(records), "adv_position": adv, "out": str(out)}
    done = {row["id"] for row in read_append_log(partial)}
    todo = [f for f in prompts if f.record.id not in done]
    if todo:
        bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="teach",
                   unit="question")
        generator = make_generator(cfg, tokenizer, chat=chat, progress=bar.update)
        out.parent.mkdir(parents=True, exist_ok=True)
        chunk = cfg.batch_size * 4
        with open_text(partial, "at") as f:
            for start in range(0, len(todo), chunk):
                rows = answer_prompts(todo[start:start + chunk], generator, adv_position=adv,
                                      template=cfg.template, chat=cfg.chat,
                                      max_new_tokens=cfg.max_new_tokens,
                                      instruction=cfg.instruction)
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
        bar.close()
    order = {r.id: k for k, r in enumerate(records)}
    all_rows = sorted(read_append_log(partial), key=lambda row: order[row["id"]])
    kept = [row for row in all_rows if row["correct"]]
    write_jsonl(out, kept)
    partial.unlink(missing_ok=True)
    log.info("teacher correct on %d of %d questions at position %s", len(kept), len(all_rows), adv)
    result = {"kept": len(kept), "total": len(all_rows), "adv_position": adv, "out": str(out)}
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
