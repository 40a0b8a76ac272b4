"""``pos2distill probe``: the score at every slot (gold position; hop configuration with ``--task
reasoning``).

Every question is asked with its gold documents at every requested slot (distractors in a seeded
order that is the same for every model compared), answered greedily, and scored by the task
(best-subspan EM for retrieval, reasoning EM for chains of thought). Outputs in ``--out``:
``rows.jsonl`` (one row per question × slot, appended as batches finish, so an interrupted probe
resumes where it stopped), ``summary.json``, ``table.md`` and the task's plot.

Several ``--n-documents`` (retrieval): the same probe at each count, into ``OUT/n10``,
``OUT/n20``, ... (each folder exactly what ``--n-documents 10 --out OUT/n10`` writes, and resumes
like it), with one model load for all of them; then the accuracy by gold *depth* × number of
documents in ``OUT/heatmap.json``, ``heatmap.md`` and ``heatmap.png``. The depth of the gold
document at 0-based position ``p`` of ``n`` is where its middle sits, ``(p + 0.5) / n`` of the
documents (as a percentage; documents are counted, not tokens); depths are grouped into
``min(10, smallest count)`` equal bins, so every bin holds at least one position of every count,
and each cell pools the rows of its positions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pos2distill.config import ProbeConfig, document_counts
from pos2distill.data.records import Record, open_text, read_append_log
from pos2distill.data.resolve import load_data
from pos2distill.errors import ConfigError
from pos2distill.generation import Generator, make_generator
from pos2distill import progress
from pos2distill.modeling import load_config, load_tokenizer, resolve_model_path
from pos2distill.plots import plot_heatmaps
from pos2distill.runinfo import one_writer, start_run, write_json_atomic, write_text_atomic
from pos2distill.tasks import Task, get_task
from pos2distill.tasks.fitting import fit_prompt, prompt_budget
from pos2distill.tasks.positions import Slot
from pos2distill.tasks.prompts import use_chat

log = logging.getLogger(__name__)

ROWS, SUMMARY, TABLE = "rows.jsonl", "summary.json", "table.md"
HEATMAP, HEATMAP_TABLE, HEATMAP_PLOT = "heatmap.json", "heatmap.md", "heatmap.png"
#: Most depth bins of a heatmap (fewer when a count has fewer documents).
MAX_DEPTH_BINS = 10

Item = tuple[Record, Slot, str]   # a question, the slot of its gold documents, the prompt


def probe_prompts(records: Sequence[Record], slots: Sequence[Slot], tokenizer: Any, *, task: Task,
                  template: str, chat: str, seed: int, max_tokens: int | None = None,
                  too_long: str = "fail", instruction: str = "",
                  counts: dict[str, int] | None = None) -> list[Item]:
    """(record, slot, prompt) for every question at every slot, made to fit ``max_tokens`` by the
    ``too_long`` policy (:func:`pos2distill.tasks.fitting.fit_prompt`); ``counts``, when given,
    receives how many prompts were skipped and truncated."""
    items, skipped, truncated = [], 0, 0
    for r in records:
        for slot in slots:
            fitted = fit_prompt(r, slot, tokenizer, place=task.place, template=template, chat=chat,
                                seed=seed, max_tokens=max_tokens, too_long=too_long,
                                instruction=instruction)
            if fitted is None:
                skipped += 1
                continue
            truncated += fitted.dropped > 0
            items.append((r, slot, fitted.prompt))
    if counts is not None:
        counts.update(skipped=skipped, truncated=truncated)
    return items


def score_rows(task: Task, items: Sequence[Item], predictions: Sequence[str]) -> list[dict]:
    """One row per answered prompt: the task's score and its own extra fields."""
    return [task.row(r, slot, pred) for (r, slot, _), pred in zip(items, predictions)]


def run_probe(items: Sequence[Item], generator: Generator, task: Task, *, max_new_tokens: int,
              chunk: int, on_rows: Any) -> None:
    """Generate and score in chunks, handing each chunk's rows to ``on_rows`` (for appending);
    fields the task reads from the model beyond the answer (:meth:`Task.model_reads`) join
    each row."""
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        preds = generator.generate([prompt for _, _, prompt in part], max_new_tokens=max_new_tokens)
        reads = task.model_reads(part, preds, generator, max_new_tokens=max_new_tokens)
        on_rows([{**row, **extra} for row, extra in zip(score_rows(task, part, preds), reads)])


def read_rows(path: str | Path, task: Task) -> list[dict]:
    """The rows of a probe's ``rows.jsonl`` in today's form, each (question, slot) once: older
    versions let two runs append to one folder, which left duplicates (the first one counts)."""
    rows, duplicates = unique_rows(read_append_log(path), task)
    if duplicates:
        log.warning("%s: %d duplicated rows (two runs wrote this folder at once, which older "
                    "versions allowed) are counted once", path, duplicates)
    return rows


def unique_rows(rows: Iterable[dict], task: Task) -> tuple[list[dict], int]:
    """``rows`` upgraded to today's form with each (question, slot) once, and how many were
    dropped."""
    kept, seen, duplicates = [], set(), 0
    for row in map(task.upgrade_row, rows):
        key = (row["id"], tuple(row["slot"]))
        duplicates += key in seen
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, duplicates


def load_summary(path: str | Path) -> dict[str, Any]:
    """A probe's ``summary.json`` (``path`` may be the probe folder), in today's form whichever
    version wrote it (:meth:`~pos2distill.tasks.base.Task.upgrade_summary`)."""
    p = Path(path)
    if p.is_dir():
        p = p / SUMMARY
    if not p.exists():
        raise ConfigError(f"{path}: no probe summary found (run `pos2distill probe --out {path}`)")
    summary = json.loads(p.read_text())
    task = get_task(summary.get("task", "retrieval"))
    summary = task.upgrade_summary(summary)
    # A folder two runs of an older version wrote at once holds duplicated rows, and its summary
    # counted them: summarise again, each (question, slot) once.
    rows_path = p.with_name(ROWS)
    if rows_path.exists():
        rows, duplicates = unique_rows(read_append_log(rows_path), task)
        if duplicates:
            log.warning("%s: %d duplicated rows (two runs wrote this folder at once, which older "
                        "versions allowed): the summary is made again, counting each once",
                        rows_path, duplicates)
            order = [tuple(e["slot"]) for e in summary["by_slot"]]
            summary = {**summary, **task.summarize(rows, order)}
    return summary


def pending_prompts(cfg: ProbeConfig, out: Path, task: Task, records: Sequence[Record],
                    slots: Sequence[Slot], tokenizer: Any, config: Any
                    ) -> tuple[list[Item], dict[str, Any] | None]:
    """The probe's prompts (every record at every slot, fitted to the model's context by
    ``--too-long``), minus those whose rows are already in ``out``; writes ``run.json`` (a run of
    another config refuses here). Also returns the ``too_long`` block of the summary (None when
    every prompt fitted)."""
    budget = prompt_budget(config, tokenizer, cfg.max_new_tokens)
    counts: dict[str, int] = {}
    all_items = probe_prompts(records, slots, tokenizer, task=task, template=cfg.template,
                              chat=cfg.chat, seed=cfg.seed, max_tokens=budget,
                              too_long=cfg.too_long, instruction=cfg.instruction, counts=counts)
    if not all_items:
        raise ConfigError(f"--too-long {cfg.too_long}: no prompt fits the model's context "
                          f"({budget} prompt tokens with --max-new-tokens {cfg.max_new_tokens})")
    if counts["skipped"] or counts["truncated"]:
        log.warning("%d prompts longer than %d tokens were skipped, %d truncated (--too-long %s)",
                    counts["skipped"], budget, counts["truncated"], cfg.too_long)
    inputs = [cfg.data, resolve_model_path(cfg.model)]
    start_run(out, cfg, inputs=[p for p in inputs if Path(p).exists()], stage="probe",
              ignore=("out", "batch_size", "device"))
    done = {(r["id"], tuple(r["slot"])) for r in read_rows(out / ROWS, task)}
    items = [it for it in all_items if (it[0].id, it[1]) not in done]
    if done:
        log.info("resuming: %d of %d rows already in %s", len(done), len(done) + len(items), out)
    too_long = ({"policy": cfg.too_long, "max_prompt_tokens": budget, **counts}
                if counts["skipped"] or counts["truncated"] else None)
    return items, too_long


@dataclass
class Part:
    """The probe of one number of documents: its config (``n_documents`` one number, ``out`` its
    folder), records, slots, and the prompts still to answer."""

    cfg: ProbeConfig
    records: list[Record]
    slots: list[Slot]
    items: list[Item] = dataclasses.field(default_factory=list)
    too_long: dict[str, Any] | None = None

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


def part_configs(cfg: ProbeConfig) -> list[ProbeConfig]:
    """One config per number of documents: ``cfg`` itself for one, else ``cfg`` with that
    number and ``out`` ``OUT/nD``, the config a single-count probe of that folder would have."""
    counts = document_counts(cfg.n_documents)
    if len(counts) == 1:
        return [cfg]
    return [dataclasses.replace(cfg, n_documents=n, out=str(Path(cfg.out) / f"n{n}"))
            for n in counts]


def generate_rows(cfg: ProbeConfig, parts: Sequence[Part], task: Task, tokenizer: Any, *,
                  chat: bool) -> None:
    """Answer the pending prompts of every part with one generator of ``cfg.backend`` (one model
    load) and append their scored rows to each part's ``rows.jsonl`` chunk by chunk (a killed
    probe keeps what it wrote), with one progress bar."""
    # The generator first: a backend that cannot load refuses before any progress bar is drawn.
    generator = make_generator(cfg, tokenizer, chat=chat, progress=lambda n: bar.update(n))
    bar = progress.bar(total=sum(len(p.items) for p in parts),
                       desc=f"probe {task.name} {Path(cfg.model).name}", unit="prompt")
    for part in parts:
        with open_text(part.out / ROWS, "at") as f:
            def append(rows: list[dict]) -> None:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()

            run_probe(part.items, generator, task, max_new_tokens=cfg.max_new_tokens,
                      chunk=cfg.batch_size * 4, on_rows=append)
    bar.close()


def main(cfg: ProbeConfig) -> dict[str, Any]:
    """Run the probe described by ``cfg``; returns the summary (with several ``--n-documents``:
    the heatmap, and each count's summary under ``by_documents``)."""
    task = get_task(cfg.task).configure(cfg)
    out = Path(cfg.out)
    # Everything that can refuse the run does so before anything is written.
    parts = []
    for c in part_configs(cfg):
        records = task.keep(load_data(c), c.data)
        slots = task.slots(getattr(c, task.slot_option), len(records[0].documents))
        parts.append(Part(c, records, slots))
    config = load_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    chat = use_chat(tokenizer, cfg.chat)  # type: ignore[arg-type]
    several = len(parts) > 1
    with one_writer(out):
        if several:   # the folder's own guard: a probe of other counts or options is refused
            start_run(out, cfg, inputs=[p for p in (cfg.data, resolve_model_path(cfg.model))
                                        if Path(p).exists()], stage="probe",
                      ignore=("out", "batch_size", "device"))
        for part in parts:
            part.items, part.too_long = pending_prompts(part.cfg, part.out, task, part.records,
                                                        part.slots, tokenizer, config)
        if any(part.items for part in parts):
            generate_rows(cfg, [p for p in parts if p.items], task, tokenizer, chat=chat)
        summaries = [finish(part, task) for part in parts]
        if not several:
            return summaries[0]
        heatmap = depth_heatmap({p.cfg.n_documents: read_rows(p.out / ROWS, task) for p in parts})
        heatmap = {"task": task.name, "model": cfg.model, "data": cfg.data, **heatmap,
                   "folders": {str(p.cfg.n_documents): p.out.name for p in parts}}
        write_heatmap(out, heatmap, title=f"{task.metric} by gold depth: {Path(cfg.model).name}")
    return {**heatmap, "heatmap": str(out / HEATMAP_PLOT),
            "by_documents": {str(p.cfg.n_documents): s for p, s in zip(parts, summaries)}}


def finish(part: Part, task: Task) -> dict[str, Any]:
    """The summary, table and plot of one part, from every row in its folder."""
    cfg, out, n_docs = part.cfg, part.out, len(part.records[0].documents)
    summary = {"model": cfg.model, "data": cfg.data, "n_documents": n_docs,
               **task.summarize(read_rows(out / ROWS, task), part.slots)}
    if part.too_long:
        summary["too_long"] = part.too_long
    write_json_atomic(out / SUMMARY, summary)
    write_text_atomic(out / TABLE, task.table(summary))
    task.plot(summary, out / task.plot_file, name=Path(cfg.model).name,
              title=f"{task.metric} by {task.slot_noun} ({n_docs} documents)")
    return summary


# ---------------------------------------------------------------------------------------------
# Depth × documents heatmap
# ---------------------------------------------------------------------------------------------

def depth_bin(position: int, n_documents: int, n_bins: int) -> int:
    """The depth bin of the gold document at 0-based ``position`` of ``n_documents``: its middle,
    ``(position + 0.5) / n_documents`` of the context, in ``n_bins`` equal bins (exact integer
    arithmetic, so a middle on a bin edge always goes to the upper bin)."""
    return (2 * position + 1) * n_bins // (2 * n_documents)


def depth_heatmap(rows_by_count: Mapping[int, Iterable[dict[str, Any]]]) -> dict[str, Any]:
    """Accuracy by depth bin × number of documents from probe rows (one-position slots).

    Returns ``n_documents`` (sorted), ``depth_bins`` (``[low, high]`` percentages),
    ``accuracy`` and ``count`` (lists by bin, then by count; accuracy None for an empty cell,
    which only happens when a count's probe skipped positions)."""
    counts = sorted(rows_by_count)
    n_bins = min(MAX_DEPTH_BINS, min(counts))
    total = [[0.0] * len(counts) for _ in range(n_bins)]
    seen = [[0] * len(counts) for _ in range(n_bins)]
    for j, n in enumerate(counts):
        for row in rows_by_count[n]:
            b = depth_bin(row["slot"][0], n, n_bins)
            total[b][j] += row["correct"]
            seen[b][j] += 1
    return {"n_documents": counts,
            "depth_bins": [[round(100 * b / n_bins, 2), round(100 * (b + 1) / n_bins, 2)]
                           for b in range(n_bins)],
            "accuracy": [[t / c if c else None for t, c in zip(ts, cs)]
                         for ts, cs in zip(total, seen)],
            "count": seen}


def heatmap_table(heatmap: Mapping[str, Any]) -> str:
    """Markdown: one row per depth bin, one column per number of documents."""
    counts = heatmap["n_documents"]
    lines = ["| gold depth (% of the documents) | " + " | ".join(f"{n} documents" for n in counts)
             + " |", "|---|" + "---:|" * len(counts)]
    for (low, high), accs in zip(heatmap["depth_bins"], heatmap["accuracy"]):
        cells = ["" if a is None else f"{a:.3f}" for a in accs]
        lines.append(f"| {low:g}–{high:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_heatmap(out: Path, heatmap: dict[str, Any], *, title: str) -> None:
    write_json_atomic(out / HEATMAP, heatmap)
    write_text_atomic(out / HEATMAP_TABLE, heatmap_table(heatmap))
    plot_heatmaps([("", heatmap)], out / HEATMAP_PLOT, title=title)


def load_heatmap(folder: str | Path) -> dict[str, Any] | None:
    """The heatmap of a probe folder made with several ``--n-documents`` (None for others)."""
    path = Path(folder) / HEATMAP
    return json.loads(path.read_text()) if path.exists() else None


def points(summary: dict[str, Any], value: str = "accuracy",
           err: str = "stderr") -> list[tuple[Slot, float, float]]:
    """``(slot, value, error)`` of every slot entry of a summary or comparison (for plots)."""
    return [(tuple(e["slot"]), e[value], e[err]) for e in summary["by_slot"]]


def describe(summary: dict[str, Any]) -> str:
    if "by_documents" in summary:
        task = get_task(summary["task"])
        return "\n".join([*(f"{n} documents: {task.describe(s)}"
                             for n, s in summary["by_documents"].items()),
                           f"heatmap: {summary['heatmap']}"])
    return get_task(summary["task"]).describe(summary)
