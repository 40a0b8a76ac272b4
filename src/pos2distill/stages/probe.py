"""``pos2distill probe``: accuracy by gold position.

Every question is asked with its gold document at every requested position (distractors in a seeded
order that is the same for every model compared), answered greedily, and scored with best-subspan EM.
Outputs in ``--out``: ``rows.jsonl`` (one row per question × position, appended as batches finish,
so an interrupted probe resumes where it stopped), ``summary.json``, ``table.md`` and
``accuracy_by_position.png``. ``--task reasoning`` measures EM by hop configuration instead
(:func:`pos2distill.tasks.reasoning.probe_main`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from pos2distill.config import ProbeConfig
from pos2distill.tasks.fitting import fit_prompt
from pos2distill.errors import ConfigError
from pos2distill.generation import Generator
from pos2distill.metrics import aggregate_by_key, best_subspan_em, summarize
from pos2distill.tasks.positions import parse_positions
from pos2distill.data.records import Record, read_append_log

log = logging.getLogger(__name__)

ROWS, SUMMARY, TABLE, PLOT = "rows.jsonl", "summary.json", "table.md", "accuracy_by_position.png"


def probe_prompts(records: Sequence[Record], positions: Sequence[Any], tokenizer: Any, *,
                  template: str, chat: str, seed: int, max_tokens: int | None = None,
                  too_long: str = "fail", instruction: str = "",
                  counts: dict[str, int] | None = None) -> list[tuple[Record, int, str]]:
    """(record, position, prompt) for every question at every position (an int, or a tuple of
    hop positions for multi-hop records), made to fit
    ``max_tokens`` by the ``too_long`` policy (:func:`pos2distill.tasks.fitting.fit_prompt`); ``counts``,
    when given, receives how many prompts were skipped and truncated."""
    items, skipped, truncated = [], 0, 0
    for r in records:
        for p in positions:
            fitted = fit_prompt(r, p, tokenizer, template=template, chat=chat, seed=seed,
                                max_tokens=max_tokens, too_long=too_long, instruction=instruction)
            if fitted is None:
                skipped += 1
                continue
            truncated += fitted.dropped > 0
            items.append((r, p, fitted.prompt))
    if counts is not None:
        counts.update(skipped=skipped, truncated=truncated)
    return items


def score_rows(items: Sequence[tuple[Record, int, str]], predictions: Sequence[str]) -> list[dict]:
    return [{"id": r.id, "position": p, "prediction": pred, "answers": list(r.answers),
             "correct": best_subspan_em(pred, r.answers)}
            for (r, p, _), pred in zip(items, predictions)]


def run_probe(items: Sequence[tuple[Record, Any, str]], generator: Generator, *,
              max_new_tokens: int, chunk: int, on_rows: Callable[[list[dict]], None],
              score: Callable[[Sequence, Sequence[str]], list[dict]] = score_rows) -> None:
    """Generate and score in chunks, handing each chunk's rows to ``on_rows`` (for appending)."""
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        preds = generator.generate([prompt for _, _, prompt in part], max_new_tokens=max_new_tokens)
        on_rows(score(part, preds))


def summarize_rows(rows: Iterable[dict]) -> dict[str, Any]:
    stats = aggregate_by_key(rows, key="position", value="correct")
    return {"by_position": [{"position": s.position, "accuracy": s.accuracy, "stderr": s.stderr,
                             "count": s.count} for s in stats], **summarize(stats)}


def read_rows(path: str | Path) -> list[dict]:
    return read_append_log(path)


def load_summary(path: str | Path) -> dict[str, Any]:
    """A probe's ``summary.json`` (``path`` may be the probe folder)."""

    p = Path(path)
    if p.is_dir():
        p = p / SUMMARY
    if not p.exists():
        raise ConfigError(f"{path}: no probe summary found (run `pos2distill probe --out {path}`)")
    return json.loads(p.read_text())


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| gold position | accuracy | s.e. | n |", "|---:|---:|---:|---:|"]
    for row in summary["by_position"]:
        lines.append(f"| {row['position'] + 1} | {row['accuracy']:.3f} | {row['stderr']:.3f} | "
                     f"{row['count']} |")
    lines.append("")
    lines.append(f"mean {summary['mean']:.3f} · GAP {summary['gap']:.3f} · best position "
                 f"{summary['best_position'] + 1} (1-based)")
    return "\n".join(lines) + "\n"



def pending_prompts(cfg: Any, out: Path, records: Sequence[Record], where: Sequence[Any],
                    tokenizer: Any, config: Any, *, done_key: Any, item_key: Any
                    ) -> tuple[list, dict[str, Any] | None]:
    """The probe's prompts (every record at every position or hop configuration in ``where``, fitted
    to the model's context by ``--too-long``), minus those whose rows are already in ``out``; writes
    ``run.json`` (a run of another config refuses here). Also returns the ``too_long`` block of the
    summary (None when every prompt fitted). Shared by the retrieval and reasoning probes."""
    from pos2distill.tasks.fitting import prompt_budget
    from pos2distill.modeling import resolve_model_path
    from pos2distill.runinfo import start_run

    budget = prompt_budget(config, tokenizer, cfg.max_new_tokens)
    counts: dict[str, int] = {}
    all_items = probe_prompts(records, where, tokenizer, template=cfg.template, chat=cfg.chat,
                              seed=cfg.seed, max_tokens=budget, too_long=cfg.too_long,
                              instruction=cfg.instruction, counts=counts)
    if not all_items:
        raise ConfigError(f"--too-long {cfg.too_long}: no prompt fits the model's context "
                          f"({budget} prompt tokens with --max-new-tokens {cfg.max_new_tokens})")
    if counts["skipped"] or counts["truncated"]:
        log.warning("%d prompts longer than %d tokens were skipped, %d truncated (--too-long %s)",
                    counts["skipped"], budget, counts["truncated"], cfg.too_long)
    inputs = [cfg.data, resolve_model_path(cfg.model)]
    start_run(out, cfg, inputs=[p for p in inputs if Path(p).exists()], stage="probe",
              ignore=("out", "batch_size", "device"))
    done = {done_key(r) for r in read_rows(out / ROWS)}
    items = [it for it in all_items if item_key(it) not in done]
    if done:
        log.info("resuming: %d of %d rows already in %s", len(done), len(done) + len(items), out)
    too_long = ({"policy": cfg.too_long, "max_prompt_tokens": budget, **counts}
                if counts["skipped"] or counts["truncated"] else None)
    return items, too_long


def generate_rows(cfg: Any, out: Path, items: Sequence[tuple[Record, Any, str]], tokenizer: Any, *,
                  chat: bool, desc: str,
                  score: Callable[[Sequence, Sequence[str]], list[dict]] = score_rows) -> None:
    """Answer ``items`` with the generator of ``cfg.backend`` and append their scored rows to
    ``out/rows.jsonl`` chunk by chunk (a killed probe keeps what it wrote), with a progress bar."""
    from tqdm.auto import tqdm

    from pos2distill.generation import make_generator
    from pos2distill.data.records import open_text

    bar = tqdm(total=len(items), desc=desc, unit="prompt")
    generator = make_generator(cfg, tokenizer, chat=chat, progress=bar.update)
    with open_text(out / ROWS, "at") as f:
        def append(rows: list[dict]) -> None:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()

        run_probe(items, generator, max_new_tokens=cfg.max_new_tokens, chunk=cfg.batch_size * 4,
                  on_rows=append, score=score)
    bar.close()

def main(cfg: ProbeConfig) -> dict[str, Any]:
    """Run the probe described by ``cfg``; returns the summary."""
    if cfg.task == "reasoning":
        from pos2distill.tasks.reasoning import probe_main

        return probe_main(cfg)
    from pos2distill.data.resolve import load_data
    from pos2distill.modeling import load_config, load_tokenizer
    from pos2distill.plots import plot_accuracy_by_position
    from pos2distill.tasks.prompts import use_chat
    from pos2distill.runinfo import write_json_atomic

    out = Path(cfg.out)
    records = load_data(cfg)
    n_docs = len(records[0].documents)
    positions = parse_positions(cfg.positions, n_docs)
    # Everything that can refuse the run does so before anything is written.
    config = load_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    chat = use_chat(tokenizer, cfg.chat)  # type: ignore[arg-type]
    items, too_long = pending_prompts(cfg, out, records, positions, tokenizer, config,
                            done_key=lambda r: (r["id"], r["position"]),
                            item_key=lambda it: (it[0].id, it[1]))
    if items:
        generate_rows(cfg, out, items, tokenizer, chat=chat, desc=f"probe {Path(cfg.model).name}")
    rows = read_rows(out / ROWS)
    summary = {"model": cfg.model, "data": cfg.data, "n_documents": n_docs, **summarize_rows(rows)}
    if too_long:
        summary["too_long"] = too_long
    write_json_atomic(out / SUMMARY, summary)
    (out / TABLE).write_text(markdown_table(summary))
    plot_accuracy_by_position(
        {Path(cfg.model).name: [(r["position"], r["accuracy"], r["stderr"])
                                for r in summary["by_position"]]},
        out / PLOT, title=f"accuracy by gold position ({n_docs} documents)")
    return summary
