"""``pos2distill analyze WHAT``: where the positional bias lives (METHOD.md section 6).

Every analysis asks each question with its gold document(s) at the advantageous slot and at the
other requested slots, all with the same distractor order (the advantageous slot's), so only the
gold moves. The *advantageous response* is the model's greedy answer at the advantageous slot (the
part the task distils: retrieval's first line), kept when correct, or the rows of a ``teach`` file
of the same model.

- :func:`run_tokens` (token shifting, Table 9 and Fig. 8): the advantageous response teacher-forced
  under every other position; per-token KL, spike, first divergence, rank of the response's token
  there, and token recovery (that token forced, greedy decoding after it).
- :func:`run_thoughts` (thought shifting, Fig. 3b and Fig. 9): with ``--task reasoning`` each
  chain at each hop configuration classified as correct, retrieval failed or reasoning failed
  (:mod:`pos2distill.analysis.thoughts`); for both tasks, the perplexity of the advantageous
  response and of the gold label under each slot's prompt.
- :func:`run_attention` (Fig. 7): the attention mass on each document's tokens from the last
  prompt token and from the first answer token, per layer and averaged over layers, by slot;
  ``--compare`` adds a second model.

Each writes ``rows.jsonl``, ``summary.json`` (returned), ``table.md`` and PNG figures to ``--out``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from pos2distill import progress
from pos2distill.analysis import figures
from pos2distill.analysis import thoughts as thought_stats
from pos2distill.analysis import tokens as token_stats
from pos2distill.analysis.attention import AttentionRows, document_mass, span_matrix
from pos2distill.analysis.forcing import Forced
from pos2distill.analysis.spans import document_token_spans
from pos2distill.config import AnalyzeConfig
from pos2distill.data import synthetic
from pos2distill.data.records import Record, write_jsonl
from pos2distill.data.resolve import load_data
from pos2distill.errors import ConfigError
from pos2distill.generation import HFGenerator
from pos2distill.modeling import load_causal_lm, load_config, load_tokenizer, resolve_model_path
from pos2distill.runinfo import (one_writer, run_info_path, start_run, write_json_atomic,
                                 write_text_atomic)
from pos2distill.stages.teach import read_teacher_rows
from pos2distill.tasks import Task, get_task
from pos2distill.tasks.fitting import prompt_budget
from pos2distill.tasks.positions import Slot, hop_group, slot_label, slot_rng
from pos2distill.tasks.prompts import encode_prompt, render_prompt, use_chat
from pos2distill.training.batches import left_pad

log = logging.getLogger(__name__)

ROWS, SUMMARY, TABLE = "rows.jsonl", "summary.json", "table.md"
#: Attention query rows: the last prompt token and the first answer token.
QUERIES = ("last_prompt", "first_answer")


# --------------------------------------------------------------------------------------------
# What every analysis shares: questions, prompts, the advantageous responses


@dataclass
class Setup:
    """The questions and how they are asked (from --data and the prompt flags, or from a teach
    file), checked before anything is written."""

    cfg: AnalyzeConfig
    task: Task
    tokenizer: Any
    records: list[Record]
    template: str
    instruction: str
    chat_mode: str
    seed: int
    adv: Slot
    slots: list[Slot]
    budget: int | None
    responses: dict[str, str] = field(default_factory=dict)   # teach file: id -> response
    source: str = "greedy"

    @property
    def chat(self) -> bool:
        return use_chat(self.tokenizer, self.chat_mode)  # type: ignore[arg-type]

    @property
    def n_documents(self) -> int:
        return len(self.records[0].documents)

    def placed(self, record: Record, slot: Slot) -> Record:
        """``record`` with its gold at ``slot`` and the advantageous slot's distractor order."""
        return self.task.place(record, slot, slot_rng(self.seed, record.id, self.adv))

    def prompt(self, record: Record, slot: Slot, tokenizer: Any = None) -> str:
        return render_prompt(self.placed(record, slot), tokenizer or self.tokenizer,
                             template=self.template, chat=self.chat_mode,  # type: ignore[arg-type]
                             instruction=self.instruction)

    def prompt_ids(self, record: Record, slot: Slot) -> list[int]:
        ids = encode_prompt(self.tokenizer, self.prompt(record, slot), chat=self.chat)
        if self.budget is not None and len(ids) > self.budget:
            raise ConfigError(f"question {record.id!r} with its gold document(s) at "
                              f"{slot_label(slot)}: the prompt has {len(ids)} tokens, more than "
                              f"the {self.budget} that fit the model's context with "
                              "--max-new-tokens; use fewer --n-documents or --max-new-tokens")
        return ids

    def response_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def setup(cfg: AnalyzeConfig) -> Setup:
    """Everything that can refuse the run, before anything is written: the model's config and
    tokenizer, the questions (``--data`` or ``--teach``), the slots, every prompt's length."""
    task = get_task(cfg.task)
    config = load_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    budget = prompt_budget(config, tokenizer, cfg.max_new_tokens)
    if cfg.teach:
        s = _from_teach(cfg, task, tokenizer, budget)
    else:
        records = task.keep(load_data(cfg), cfg.data)
        n = len(records[0].documents)
        s = Setup(cfg, task, tokenizer, records, cfg.template, cfg.instruction, cfg.chat, cfg.seed,
                  task.advantageous(cfg.advantageous, n), [], budget)
    s.slots = task.slots(getattr(cfg, task.slot_option), s.n_documents)
    for r in s.records:
        for slot in {s.adv, *s.slots}:
            s.prompt_ids(r, slot)
    return s


def _from_teach(cfg: AnalyzeConfig, task: Task, tokenizer: Any, budget: int | None) -> Setup:
    """The questions and responses of a ``teach`` file, refused when another task or another
    model wrote it (its run.json, or prompts this tokenizer does not render the same way)."""
    if not Path(cfg.teach).exists():
        raise ConfigError(f"--teach: {cfg.teach} not found")
    rows = read_teacher_rows(cfg.teach)
    if not rows:
        raise ConfigError(f"--teach: {cfg.teach} has no kept teacher responses")
    other = next((r for r in rows if r.get("task", "retrieval") != task.name), None)
    if other is not None:
        raise ConfigError(f"--teach: {cfg.teach} holds --task {other['task']} responses; this "
                          f"is --task {task.name}")
    seed = cfg.seed
    info = run_info_path(cfg.teach)
    if info.exists():
        made = json.loads(info.read_text()).get("config", {})
        seed = made.get("seed", seed)
        theirs = made.get("model")
        if theirs and _model_path(theirs) != _model_path(cfg.model):
            raise ConfigError(f"--teach: {cfg.teach} holds responses of --model {theirs} (see "
                              f"{info}); analyze --model {cfg.model} needs its own (run "
                              "`pos2distill teach` with it, or leave --teach out)")
    n_docs = max(len(r["record"]["documents"]) for r in rows)
    rows = [r for r in rows if len(r["record"]["documents"]) == n_docs]
    rows = rows[:cfg.limit] if cfg.limit else rows
    first = rows[0]
    s = Setup(cfg, task, tokenizer, [Record.from_dict(r["record"], path=cfg.teach) for r in rows],
              first["template"], first.get("instruction", ""), first.get("chat", "auto"), seed,
              tuple(first["adv_slot"]), [], budget, source=f"teach:{cfg.teach}")
    for row, record in zip(rows, s.records):
        if s.prompt(record, s.adv) != row["teacher_prompt"]:
            raise ConfigError(f"--teach: {cfg.teach}: the teacher prompt of question "
                              f"{record.id!r} is not what --model {cfg.model}'s tokenizer renders "
                              "(a teach file of another model, or of another --seed?)")
        s.responses[record.id] = row["response"]
    return s


def _model_path(spec: str) -> Path:
    try:
        return Path(resolve_model_path(spec)).resolve()
    except ConfigError:
        return Path(spec).expanduser().resolve()


@dataclass
class Answer:
    """A question's advantageous response: its text (the task's target), token ids and whether
    it is right."""

    record: Record
    text: str
    ids: list[int]
    correct: bool


def advantageous_answers(s: Setup, model: Any, *, keep_wrong: bool = False) -> list[Answer]:
    """The advantageous response of every question: the teach file's, or greedy here (with a
    progress bar); wrong or empty ones are left out unless ``keep_wrong``, and a ConfigError
    when none is left."""
    if s.responses:
        texts = [s.responses[r.id] for r in s.records]
    else:
        bar = progress.bar(total=len(s.records), desc="answers at the advantageous slot",
                           unit="question")
        gen = HFGenerator(model, s.tokenizer, chat=s.chat, batch_size=s.cfg.batch_size,
                          progress=bar.update)
        new = gen.generate_ids([s.prompt_ids(r, s.adv) for r in s.records],
                               max_new_tokens=s.cfg.max_new_tokens)
        bar.close()
        texts = [s.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new]
    answers = []
    for r, text in zip(s.records, texts):
        target = s.task.target(text, first_line_only=True)
        ids = s.response_ids(target)
        correct = s.task.score(target, r.answers) == 1.0
        if keep_wrong or (ids and correct):
            answers.append(Answer(r, target, ids, correct))
    log.info("%d of %d questions answered correctly at the advantageous slot %s",
             sum(a.correct for a in answers), len(s.records), slot_label(s.adv))
    if not answers:
        raise ConfigError("the model answered no question correctly at the advantageous "
                          "slot: there is no response to analyse")
    return answers


def iter_forced(model: Any, items: Sequence[tuple[list[int], list[int]]], *, pad_id: int,
                batch_size: int, bar: Any = None) -> Iterator[torch.Tensor]:
    """The (r, V) float64 logits of each ``(prompt ids, response ids)`` item's response, in
    order, ``batch_size`` rows per forward pass."""
    for start in range(0, len(items), batch_size):
        part = items[start:start + batch_size]
        forced = Forced(model, [p + r for p, r in part], [len(r) for _, r in part], pad_id=pad_id)
        if bar is not None:
            bar.update(len(part))
        for b in range(len(part)):
            yield forced.logits(b)


def _start(cfg: AnalyzeConfig, what: str) -> Path:
    out = Path(cfg.out)
    inputs = [p for p in (cfg.data, resolve_model_path(cfg.model), cfg.teach,
                          resolve_model_path(cfg.compare) if cfg.compare else "")
              if p and Path(p).exists()]
    start_run(out, cfg, inputs=inputs, stage=f"analyze-{what}",
              ignore=("out", "batch_size", "device"))
    return out


def _header(what: str, cfg: AnalyzeConfig, s: Setup, answers: Sequence[Answer] | None
            ) -> dict[str, Any]:
    head = {"analysis": what, "model": cfg.model, "data": cfg.teach or cfg.data,
            "task": s.task.name, "n_documents": s.n_documents, "advantageous_slot": list(s.adv),
            "responses": s.source, "questions": len(s.records)}
    if answers is not None:
        head["analysed"] = len(answers)
    return head


def _load(cfg: AnalyzeConfig, spec: str) -> Any:
    return load_causal_lm(spec, dtype=cfg.dtype, device=cfg.device,
                          trust_remote_code=cfg.trust_remote_code)


def _write_outputs(out: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any],
                   table: Any, draw: Any) -> None:
    """An analysis folder's files: rows, summary, Markdown table (``table(summary)``) and figures
    (``draw(summary, out)``)."""
    write_jsonl(out / ROWS, rows)
    write_json_atomic(out / SUMMARY, summary)
    write_text_atomic(out / TABLE, table(summary))
    draw(summary, out)


def _labels(slots: Sequence[Slot]) -> list[str]:
    return [slot_label(sl) for sl in slots]


def _geo(values: Sequence[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


# --------------------------------------------------------------------------------------------
# tokens


def run_tokens(cfg: AnalyzeConfig) -> dict[str, Any]:
    """Token shifting (module docstring); returns the summary."""
    s = setup(cfg)
    slots = [sl for sl in s.slots if sl != s.adv]
    if not slots:
        raise ConfigError(f"--{s.task.slot_option}: only the advantageous slot "
                          f"{slot_label(s.adv)}; tokens compares it with other slots")
    model = _load(cfg, cfg.model)
    with one_writer(cfg.out):
        out = _start(cfg, "tokens")
        answers = advantageous_answers(s, model)
        rows, prompts = _token_rows(s, model, answers, slots)
        _recover(s, model, rows, prompts)
        for row in rows:
            row.pop("nll")
        summary = {**_header("tokens", cfg, s, answers),
                   "by_slot": token_stats.summarize(rows, slots),
                   "overall": token_stats.summarize_slot(rows)}
        _write_outputs(out, rows, summary, tokens_table, _token_figures)
    return summary


def _token_rows(s: Setup, model: Any, answers: Sequence[Answer], slots: Sequence[Slot]
                ) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """Per (question, slot) the :func:`~pos2distill.analysis.tokens.token_stats` row, and the
    prompt ids of each row (for recovery). Items go question by question, the advantageous
    prompt first: its logits decide whether EOS is part of the response (the model stops
    there) and are the reference of the question's other rows."""
    eos = s.tokenizer.eos_token_id
    items, keys = [], []
    for a in answers:
        for slot in (s.adv, *slots):
            items.append((s.prompt_ids(a.record, slot), a.ids + [eos]))
            keys.append((a, slot))
    bar = progress.bar(total=len(items), desc="tokens: teacher forcing", unit="prompt")
    rows, prompts = [], []
    adv_logits: torch.Tensor | None = None
    tokens: list[int] = []
    for (a, slot), (prompt, _), logits in zip(keys, items, iter_forced(
            model, items, pad_id=s.tokenizer.pad_token_id, batch_size=s.cfg.batch_size, bar=bar)):
        if slot == s.adv:
            stops = int(logits[-1].argmax()) == eos
            tokens = a.ids + [eos] if stops else a.ids
            adv_logits = logits[:len(tokens)]
            continue
        stats = token_stats.token_stats(adv_logits, logits[:len(tokens)], tokens)
        rows.append({"id": a.record.id, "slot": list(slot), "adv_slot": list(s.adv),
                     "response": a.text, "tokens": s.tokenizer.convert_ids_to_tokens(tokens),
                     "token_ids": tokens, "answers": list(a.record.answers), **stats})
        prompts.append(prompt)
    bar.close()
    return rows, prompts


def _recover(s: Setup, model: Any, rows: list[dict[str, Any]], prompts: Sequence[list[int]]
             ) -> None:
    """Each row's own answer (``answer``, ``correct``) and, where it diverges, the answer with
    the advantageous token forced at the first divergence (``forced_answer``, ``recovered``).
    A row that reproduces the whole response answers with it (continued greedily when the
    response ends before EOS and the token budget)."""
    eos, budget = s.tokenizer.eos_token_id, s.cfg.max_new_tokens
    requests: list[tuple[int, str, list[int], int]] = []   # (row, field, response prefix, budget)
    for i, row in enumerate(rows):
        y, t = row["token_ids"], row["first_divergence"]
        if t is None:
            finished = bool(y) and y[-1] == eos
            requests.append((i, "answer", y, 0 if finished else budget - len(y)))
            row["forced_answer"], row["recovered"] = None, None
        else:
            requests.append((i, "answer", y[:t], budget - t))
            requests.append((i, "forced_answer", y[:t + 1], budget - t - 1))
    todo = []
    for i, name, prefix, b in requests:
        if b > 0:
            todo.append((i, name, prefix, b))
        else:                                   # the token budget is spent: that is the answer
            _set_answer(s, rows[i], name, prefix)
    if todo:
        bar = progress.bar(total=len(todo), desc="tokens: recovery", unit="answer")
        gen = HFGenerator(model, s.tokenizer, chat=s.chat, batch_size=s.cfg.batch_size,
                          progress=bar.update)
        new = gen.generate_ids([list(prompts[i]) + prefix for i, _, prefix, _ in todo],
                               max_new_tokens=max(b for *_, b in todo))
        bar.close()
        for (i, name, prefix, b), ids in zip(todo, new):
            _set_answer(s, rows[i], name, prefix + ids[:b])
    for row in rows:
        if row["first_divergence"] is not None:
            row["recovered"] = row.pop("forced_correct")


def _set_answer(s: Setup, row: dict[str, Any], name: str, ids: Sequence[int]) -> None:
    text = s.tokenizer.decode(list(ids), skip_special_tokens=True).strip()
    row[name] = text
    correct = s.task.score(text, row["answers"]) == 1.0
    row["correct" if name == "answer" else "forced_correct"] = correct


def tokens_table(summary: dict[str, Any]) -> str:
    """Markdown: one line per slot (KL, spike, ranks, recovery), then the KL by token index
    (the paper's Table 9 shape)."""
    head = ("| gold position (1-based) | KL mean | spike KL | spike token | mean max KL | "
            "diverged | top-1 | top-5 | top-10 | accuracy | top-10 of wrong | recovery | n |")
    lines = [f"Advantageous slot {slot_label(summary['advantageous_slot'])} (1-based); "
             f"{summary['analysed']} of {summary['questions']} questions answered correctly "
             "there. KL is KL(p(·|P^adv, r<t) ‖ p(·|P^i, r<t)) in nats; the spike token is "
             "1-based. Top-k: the advantageous token's rank at the first divergence is within k "
             "(top-1: no divergence). Accuracy: the model's own answers; top-10 of wrong: top-10 "
             "among its wrong answers; recovery: the share of its wrong answers made right by "
             "forcing that one token.", "", head, "|---|" + "---:|" * 12]
    for e in [*summary["by_slot"], {"slot": None, **summary["overall"]}]:
        label = "all" if e["slot"] is None else slot_label(e["slot"])
        lines.append(f"| {label} | {e['kl_mean']:.2e} | {e['spike_kl']:.2e} | "
                     f"{e['spike_index'] + 1} | {e['mean_max_kl']:.2e} | {e['diverged']:.2f} | "
                     f"{e['top1_share']:.2f} | {e['top5_share']:.2f} | {e['top10_share']:.2f} | "
                     f"{e['accuracy']:.2f} | {_fmt(e['top10_share_failures'], '.2f')} | "
                     f"{_fmt(e['recovery'], '.2f')} | {e['count']} |")
    width = min(12, max(len(e["kl_by_token"]) for e in summary["by_slot"]))
    lines += ["", "Mean KL by response token (1-based), the paper's Table 9 shape:", "",
              "| gold position | " + " | ".join(str(t + 1) for t in range(width)) + " |",
              "|---|" + "---:|" * width]
    for e in summary["by_slot"]:
        values = e["kl_by_token"][:width] + [None] * (width - len(e["kl_by_token"][:width]))
        lines.append(f"| {slot_label(e['slot'])} | "
                     + " | ".join(_fmt(v, ".1e") for v in values) + " |")
    return "\n".join(lines) + "\n"


def _token_figures(summary: dict[str, Any], out: Path) -> None:
    by_slot = summary["by_slot"]
    labels = _labels([tuple(e["slot"]) for e in by_slot])
    width = max(len(e["kl_by_token"]) for e in by_slot)
    matrix = [e["kl_by_token"] + [None] * (width - len(e["kl_by_token"])) for e in by_slot]
    figures.heatmaps([("mean KL(adv ‖ position) per response token", matrix)],
                     out / "kl_by_token.png", rows=labels,
                     columns=[str(t + 1) for t in range(width)], xlabel="response token (1-based)",
                     ylabel="gold position (1-based)", colorbar="KL (nats)", log=True,
                     title="Token shifting: where the answer diverges")
    buckets = [label for label, _, _ in token_stats.RANK_BUCKETS]
    figures.stacked_bars(
        {f"rank {b}": [e["rank_histogram"][b] / e["count"] for e in by_slot] for b in buckets},
        out / "rank_histogram.png", labels=labels, xlabel="gold position (1-based)",
        ylabel="share of questions",
        title="Rank of the advantageous token at the first divergence (1 = no divergence)")


# --------------------------------------------------------------------------------------------
# thoughts


def gold_label(record: Record, task: Task) -> str:
    """The gold label whose perplexity is measured: the reference chain of thought of synthetic
    two-hop records, otherwise the first gold answer."""
    if task.name == "reasoning" and thought_stats.hop_facts(record) is not None:
        return synthetic.record_cot(record)
    return record.answers[0]


def run_thoughts(cfg: AnalyzeConfig) -> dict[str, Any]:
    """Thought shifting (module docstring); returns the summary."""
    s = setup(cfg)
    slots = list(dict.fromkeys([s.adv, *s.slots]))
    model = _load(cfg, cfg.model)
    with one_writer(cfg.out):
        out = _start(cfg, "thoughts")
        answers = advantageous_answers(s, model)
        rows = _perplexity_rows(s, model, answers, slots)
        checks: dict[str, int] = {}
        if s.task.name == "reasoning":
            _classify_chains(s, model, rows, checks)
        by_slot = thought_stats.summarize(rows, slots)
        for e in by_slot:
            if s.task.name == "reasoning":
                e["group"] = hop_group(tuple(e["slot"]))
        summary = {**_header("thoughts", cfg, s, answers), "by_slot": by_slot,
                   "gold_label": ("the reference chain of thought (synthetic two-hop records), "
                                  "else the first gold answer"),
                   "eos": "the advantageous response and the gold label end with EOS when the "
                          "model stops after its response at the advantageous slot"}
        if checks:
            summary["hop_checks"] = checks
            summary["hop_check_method"] = {
                k: thought_stats.FACT_CHECK if k == "facts" else thought_stats.TITLE_HEURISTIC
                for k in checks}
            summary["by_group"] = _by_group(by_slot)
        _write_outputs(out, rows, summary, thoughts_table, _thought_figures)
    return summary


def _perplexity_rows(s: Setup, model: Any, answers: Sequence[Answer], slots: Sequence[Slot]
                     ) -> list[dict[str, Any]]:
    """Per (question, slot): the perplexity of the advantageous response and of the gold label
    under that slot's prompt. Both end with EOS when the model stops after its response at the
    advantageous slot (read from that slot's logits), neither otherwise: a model that never
    stops would make EOS alone dominate the gold label's perplexity."""
    eos = s.tokenizer.eos_token_id
    items, keys = [], []
    for a in answers:
        gold = s.response_ids(gold_label(a.record, s.task)) + [eos]
        for slot in slots:
            prompt = s.prompt_ids(a.record, slot)
            items += [(prompt, a.ids + [eos]), (prompt, gold)]
            keys += [(a, slot, "adv"), (a, slot, "gold")]
    bar = progress.bar(total=len(items), desc="thoughts: perplexity", unit="prompt")
    rows: dict[tuple[str, Slot], dict[str, Any]] = {}
    stops: dict[str, bool] = {}
    for (a, slot, kind), (_, target), logits in zip(keys, items, iter_forced(
            model, items, pad_id=s.tokenizer.pad_token_id, batch_size=s.cfg.batch_size, bar=bar)):
        nll = (-torch.log_softmax(logits, -1).gather(
            -1, torch.as_tensor(target, device=logits.device)[:, None]).squeeze(-1)).tolist()
        row = rows.setdefault((a.record.id, slot), {
            "id": a.record.id, "slot": list(slot), "response": a.text,
            "gold_label": gold_label(a.record, s.task)})
        row[f"_nll_{kind}"] = nll
        if slot == s.adv and kind == "adv":
            stops[a.record.id] = int(logits[-1].argmax()) == eos
    bar.close()
    for (qid, _), row in rows.items():
        cut = None if stops[qid] else -1                  # drop EOS when the model never stops
        row["ppl_adv"] = thought_stats.perplexity(row.pop("_nll_adv")[:cut])
        row["ppl_gold"] = thought_stats.perplexity(row.pop("_nll_gold")[:cut])
        row["eos"] = stops[qid]
    return list(rows.values())


def _classify_chains(s: Setup, model: Any, rows: list[dict[str, Any]],
                     counts: dict[str, int]) -> None:
    """Each row's own greedy chain at its slot, classified (``chain``, ``class``, ``checks``);
    ``counts`` receives how many questions had exact hop facts and how many the heuristic."""
    records = {r.id: r for r in s.records}
    bar = progress.bar(total=len(rows), desc="thoughts: chains", unit="chain")
    gen = HFGenerator(model, s.tokenizer, chat=s.chat, batch_size=s.cfg.batch_size,
                      progress=bar.update)
    new = gen.generate_ids([s.prompt_ids(records[row["id"]], tuple(row["slot"])) for row in rows],
                           max_new_tokens=s.cfg.max_new_tokens)
    bar.close()
    seen = set()
    for row, ids in zip(rows, new):
        record = records[row["id"]]
        checks, method = thought_stats.hop_checks(record)
        chain = s.tokenizer.decode(ids, skip_special_tokens=True).strip()
        row.update(group=hop_group(tuple(row["slot"])), chain=chain, checks=method,
                   n_hops=len(checks), missing_hops=thought_stats.missing_hops(chain, checks),
                   **{"class": thought_stats.classify_chain(chain, record.answers, checks)})
        if record.id not in seen:
            seen.add(record.id)
            counts[method] = counts.get(method, 0) + 1


def _by_group(by_slot: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for group in dict.fromkeys(e["group"] for e in by_slot):
        members = [e for e in by_slot if e["group"] == group]
        out[group] = {c: sum(e[c] for e in members) / len(members)
                      for c in thought_stats.CLASSES if c in members[0]}
    return out


def thoughts_table(summary: dict[str, Any]) -> str:
    """Markdown: per slot the chain classes (reasoning) and the two perplexities."""
    chains = "hop_checks" in summary
    head = ["gold position (1-based)" if not chains else "hop positions (1-based)"]
    if chains:
        head += ["group", "correct", "retrieval failed", "reasoning failed", "hop 1 missing",
                 "hop 2 missing"]
    head += ["PPL advantageous response", "PPL gold label", "n"]
    lines = [f"Advantageous slot {slot_label(summary['advantageous_slot'])} (1-based); "
             f"{summary['analysed']} of {summary['questions']} questions answered correctly "
             f"there. Gold label: {summary['gold_label']}.", ""]
    if chains:
        for method, text in summary["hop_check_method"].items():
            lines.append(f"- {summary['hop_checks'][method]} questions: {text}.")
        lines.append("")
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for e in summary["by_slot"]:
        cells = [slot_label(e["slot"])]
        if chains:
            missing = (e.get("hop_missing") or []) + [None, None]
            cells += [e["group"], f"{e['correct']:.2f}", f"{e['retrieval_failed']:.2f}",
                      f"{e['reasoning_failed']:.2f}", _fmt(missing[0], ".2f"),
                      _fmt(missing[1], ".2f")]
        cells += [_fmt(e["ppl_adv"]), _fmt(e["ppl_gold"]), str(e["count"])]
        lines.append("| " + " | ".join(cells) + " |")
    if chains:
        lines += ["", "| group | correct | retrieval failed | reasoning failed |",
                  "|---|---:|---:|---:|"]
        for g, v in summary["by_group"].items():
            lines.append(f"| {g} | {v['correct']:.2f} | {v['retrieval_failed']:.2f} | "
                         f"{v['reasoning_failed']:.2f} |")
    return "\n".join(lines) + "\n"


def _thought_figures(summary: dict[str, Any], out: Path) -> None:
    by_slot = summary["by_slot"]
    labels = _labels([tuple(e["slot"]) for e in by_slot])
    xlabel = ("hop document positions (1-based)" if summary["task"] == "reasoning"
              else "gold position (1-based)")
    if "hop_checks" in summary:
        figures.stacked_bars({c.replace("_", " "): [e[c] for e in by_slot]
                              for c in ("correct", "retrieval_failed", "reasoning_failed")},
                             out / "chain_classes.png", labels=labels, xlabel=xlabel,
                             ylabel="share of chains", title="Why chains of thought fail")
    figures.grouped_bars({"advantageous response": [e["ppl_adv"] for e in by_slot],
                          "gold label": [e["ppl_gold"] for e in by_slot]},
                         out / "perplexity.png", labels=labels, xlabel=xlabel,
                         ylabel="perplexity (geometric mean over questions)", baseline=1.0,
                         log=True, title="Perplexity under each slot's prompt")


# --------------------------------------------------------------------------------------------
# attention


def run_attention(cfg: AnalyzeConfig) -> dict[str, Any]:
    """Attention by document (module docstring); returns the summary."""
    s = setup(cfg)
    specs = [cfg.model] + ([cfg.compare] if cfg.compare else [])
    if cfg.compare:
        load_config(cfg.compare, trust_remote_code=cfg.trust_remote_code)
    model = _load(cfg, cfg.model)
    with AttentionRows(model, name=cfg.model):   # a model it cannot read is refused here
        pass
    with one_writer(cfg.out):
        out = _start(cfg, "attention")
        answers = advantageous_answers(s, model, keep_wrong=True)
        rows: list[dict[str, Any]] = []
        results = []
        for k, spec in enumerate(specs):
            if k:
                model = _load(cfg, spec)
            tokenizer = s.tokenizer if k == 0 else load_tokenizer(
                spec, trust_remote_code=cfg.trust_remote_code)
            masses = _attention_masses(s, model, spec, tokenizer, answers, rows)
            results.append(_attention_summary(s, spec, masses))
        summary = {**_header("attention", cfg, s, answers), "queries": list(QUERIES),
                   "slots": [list(sl) for sl in s.slots], **results[0]}
        if len(results) > 1:
            summary["compare"] = results[1]
        _write_outputs(out, rows, summary, attention_table, _attention_figures)
    return summary


def _attention_masses(s: Setup, model: Any, spec: str, tokenizer: Any,
                      answers: Sequence[Answer], rows: list[dict[str, Any]]
                      ) -> dict[Slot, torch.Tensor]:
    """Per slot the (n, L, Q, D) attention mass of each question on each document, from the
    last prompt token and the first answer token (the advantageous response's first token);
    per-question rows (mean over layers, and the gold mass per layer) go to ``rows``."""
    chat = use_chat(tokenizer, s.chat_mode)  # type: ignore[arg-type]
    items = []
    for a in answers:
        first = list(tokenizer(a.text, add_special_tokens=False)["input_ids"])[:1] \
            or [tokenizer.eos_token_id]
        for slot in s.slots:
            prompt = s.prompt(a.record, slot, tokenizer)
            ids, spans = document_token_spans(s.placed(a.record, slot), prompt, tokenizer,
                                              template=s.template, chat=chat,
                                              instruction=s.instruction)
            items.append((a.record, slot, ids + first, spans))
    by_slot: dict[Slot, list[torch.Tensor]] = {}
    bar = progress.bar(total=len(items), desc=f"attention {Path(spec).name}", unit="prompt")
    with AttentionRows(model, name=spec) as rec:
        for start in range(0, len(items), s.cfg.batch_size):
            part = items[start:start + s.cfg.batch_size]
            ids, att = left_pad([seq for _, _, seq, _ in part], tokenizer.pad_token_id)
            T = ids.shape[1]
            shifted = [[(T - len(seq) + a, T - len(seq) + b) for a, b in spans]
                       for _, _, seq, spans in part]
            assign = span_matrix(shifted, T)
            queries = torch.tensor([[T - 2, T - 1]] * len(part))
            device = next(model.parameters()).device
            layers = rec.run(ids.to(device), att.to(device), queries,
                             lambda p: document_mass(p, assign).cpu())
            mass = torch.stack(layers, 1)                                        # (B, L, Q, D)
            for (record, slot, _, _), m in zip(part, mass):
                by_slot.setdefault(slot, []).append(m)
                gold = m[:, :, list(slot)].sum(-1)                                # (L, Q)
                rows.append({"model": spec, "id": record.id, "slot": list(slot),
                             **{q: [round(v, 6) for v in m[:, i].mean(0).tolist()]
                                for i, q in enumerate(QUERIES)},
                             "gold_mass_by_layer": {q: [round(v, 6) for v in gold[:, i].tolist()]
                                                    for i, q in enumerate(QUERIES)}})
            bar.update(len(part))
    bar.close()
    return {slot: torch.stack(ms) for slot, ms in by_slot.items()}


def _attention_summary(s: Setup, spec: str, masses: dict[Slot, torch.Tensor]) -> dict[str, Any]:
    """One model's matrices: per query, gold slot × document (mean over questions and layers;
    ``matrix`` is the last prompt token's), per layer, the share on documents and on the gold."""
    mean = {slot: m.double().mean(0) for slot, m in masses.items()}                # (L, Q, D)
    slots = [sl for sl in s.slots if sl in mean]

    def per_query(i: int) -> dict[str, Any]:
        matrix = [mean[sl][:, i].mean(0).tolist() for sl in slots]
        return {"matrix": matrix,
                "by_layer": [[mean[sl][layer, i].tolist() for sl in slots]
                             for layer in range(next(iter(mean.values())).shape[0])],
                "document_share": [sum(row) for row in matrix],
                "gold_mass": [sum(row[p] for p in sl) for row, sl in zip(matrix, slots)],
                "gold_mass_by_layer": [[float(mean[sl][layer, i, list(sl)].sum())
                                        for sl in slots]
                                       for layer in range(next(iter(mean.values())).shape[0])]}

    queries = {q: per_query(i) for i, q in enumerate(QUERIES)}
    return {"model": spec, "layers": next(iter(mean.values())).shape[0],
            "matrix": queries["last_prompt"]["matrix"],
            "document_share": queries["last_prompt"]["document_share"], "by_query": queries}


def attention_table(summary: dict[str, Any]) -> str:
    """Markdown: per slot and model the share of attention on documents, on the gold and the
    most attended document (last prompt token, mean over layers), then the full matrix."""
    models = [summary] + ([summary["compare"]] if "compare" in summary else [])
    slots = [tuple(sl) for sl in summary["slots"]]
    lines = ["Attention from the last prompt token (first answer token in summary.json), mean "
             "over heads and layers; documents and positions 1-based.", ""]
    head = ["gold position"]
    for m in models:
        name = Path(m["model"]).name
        head += [f"{name}: on documents", f"{name}: on gold", f"{name}: top document"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for i, sl in enumerate(slots):
        cells = [slot_label(sl)]
        for m in models:
            q = m["by_query"]["last_prompt"]
            row = q["matrix"][i]
            cells += [f"{q['document_share'][i]:.3f}", f"{q['gold_mass'][i]:.3f}",
                      str(max(range(len(row)), key=row.__getitem__) + 1)]
        lines.append("| " + " | ".join(cells) + " |")
    for m in models:
        matrix = m["by_query"]["last_prompt"]["matrix"]
        D = len(matrix[0])
        lines += ["", f"{Path(m['model']).name}: gold position (rows) × document (columns)", "",
                  "| | " + " | ".join(str(d + 1) for d in range(D)) + " |",
                  "|---|" + "---:|" * D]
        for sl, row in zip(slots, matrix):
            lines.append(f"| {slot_label(sl)} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def _attention_figures(summary: dict[str, Any], out: Path) -> None:
    models = [summary] + ([summary["compare"]] if "compare" in summary else [])
    rows = _labels([tuple(sl) for sl in summary["slots"]])
    D = len(summary["matrix"][0])
    ylabel = ("hop positions (1-based)" if summary["task"] == "reasoning"
              else "gold position (1-based)")
    for q, name in (("last_prompt", "attention.png"),
                    ("first_answer", "attention_first_answer.png")):
        figures.heatmaps([(Path(m["model"]).name, m["by_query"][q]["matrix"]) for m in models],
                         out / name, rows=rows, columns=[str(d + 1) for d in range(D)],
                         xlabel="document (1-based)", ylabel=ylabel, colorbar="attention mass",
                         title=f"Attention by document from the {q.replace('_', ' ')} token "
                               "(mean over heads and layers)")
    figures.heatmaps([(Path(m["model"]).name,
                       m["by_query"]["last_prompt"]["gold_mass_by_layer"]) for m in models],
                     out / "attention_gold_by_layer.png", rows=[str(layer + 1) for layer in
                                                                 range(models[0]["layers"])],
                     columns=rows, xlabel=ylabel, ylabel="layer (1-based)",
                     colorbar="mass on gold",
                     title="Attention on the gold document(s) by layer (last prompt token)")


# --------------------------------------------------------------------------------------------

RUNNERS = {"tokens": run_tokens, "thoughts": run_thoughts, "attention": run_attention}


def main(cfg: AnalyzeConfig) -> dict[str, Any]:
    return RUNNERS[cfg.what](cfg)


def describe(summary: dict[str, Any]) -> str:
    """One line of an analysis' headline numbers."""
    what = summary["analysis"]
    if what == "tokens":
        o = summary["overall"]
        return (f"tokens: {summary['analysed']} questions  KL mean {o['kl_mean']:.2e}  spike "
                f"{o['spike_kl']:.2e} at token {o['spike_index'] + 1}  accuracy "
                f"{o['accuracy']:.2f}  wrong answers: top-10 "
                f"{_fmt(o['top10_share_failures'], '.2f')}, recovered "
                f"{_fmt(o['recovery'], '.2f')}")
    if what == "thoughts":
        e = summary["by_slot"]
        adv = [x["ppl_adv"] for x in e if x["slot"] != summary["advantageous_slot"]]
        gold = [x["ppl_gold"] for x in e if x["slot"] != summary["advantageous_slot"]]
        words = (f"  PPL at other slots: advantageous response {_geo(adv):.3f}, gold label "
                 f"{_geo(gold):.3f}" if adv else "")
        if "by_group" in summary:
            words += "  " + "  ".join(f"{g}: correct {v['correct']:.2f} retrieval-failed "
                                      f"{v['retrieval_failed']:.2f}"
                                      for g, v in summary["by_group"].items())
        return f"thoughts: {summary['analysed']} questions{words}"
    words = []
    for m in [summary] + ([summary["compare"]] if "compare" in summary else []):
        q = m["by_query"]["last_prompt"]
        words.append(f"{Path(m['model']).name}: on documents "
                     f"{sum(q['document_share']) / len(q['document_share']):.3f}, on gold "
                     f"{sum(q['gold_mass']) / len(q['gold_mass']):.3f}")
    return f"attention: {summary['questions']} questions  " + "  ".join(words)
