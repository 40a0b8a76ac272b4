"""``pos2distill experiment CONFIG.yaml``: a grid of training runs, their evaluation by gold position,
a results table (mean ± std over seeds) and the paper's plots (Tables 1-3, Figures 5 and 6).

Every grid of the config is the product methods × seeds × K × training questions; each run is
evaluated at every document count of its grid. Runs named by several grids are trained once.
Stages are shared wherever their inputs are:

* one ``teach`` over the largest number of training questions (a run with N questions uses the
  kept rows of the first N, since every data source yields the same first N questions whatever
  the limit);
* one base-model probe per document count (a K = 0 run *is* the base model: nothing is trained and
  its evaluation is that probe);
* one pairs file per (questions, K, seed), shared by every method (methods without anchors drop
  the anchor rows when they train).

Layout of ``--out``::

    experiment.json                      the resolved config and the planned runs
    shared/teach-nN.jsonl, teach-nN-firstM.jsonl   teacher responses (N = the largest
                                         number of training questions), those of the first M
    shared/pairs/nN-KK-seedS.jsonl
    shared/probe-base-dD/                base model probes
    runs/METHOD-KK-nN-seedS/             train/ (model/ with its card, log.jsonl), probe-dD/,
                                         report-dD/ (against the base model; also in the card),
                                         metrics.jsonl, result.json (written last: the run is
                                         done)
    results.md, results.csv, results.json
    plots/*.png

``task: reasoning`` runs the same grid for R2: teach writes chains of thought at the advantageous
hop pair, the pairs put the hops at K other configurations (no anchors), every run trains ``r2``
and the probes measure EM by hop configuration; results keep the same keys, with configurations
``"A,B"`` (0-based hop positions) in place of positions.

Resuming: a run with a ``result.json`` of the same configuration is not touched again; an
interrupted one continues inside its stages (teach and probes keep their finished rows, training
its last checkpoint). Every stage keeps its own ``run.json`` guard, so a changed config is refused
rather than mixed with old outputs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from pos2distill.config import (DataOptions, ExperimentConfig, GridConfig, PairsConfig, ProbeConfig,
                                TeachConfig, TrainConfig)
from pos2distill.data.records import read_append_log, write_jsonl
from pos2distill.data.resolve import load_data
from pos2distill.errors import ConfigError
from pos2distill import progress
from pos2distill.modeling import load_config
from pos2distill.plots import plot_curves, plot_slots
from pos2distill.runinfo import fingerprint, one_writer, write_json_atomic, write_text_atomic
from pos2distill.stages import pairs, probe, report, teach, train
from pos2distill.stages.teach import read_teacher_rows
from pos2distill.stages.train import RESUME_IGNORES
from pos2distill.tasks import get_task
from pos2distill.tasks.positions import parse_slot_key, slot_key, slot_label
from pos2distill.tracking import Tracker, check_backends
from pos2distill.training.methods import METHOD_NAMES

log = logging.getLogger(__name__)

SHARED, RUNS, PLOTS, RESULT = "shared", "runs", "plots", "result.json"
BASE = "base"
#: Fields of the stages' configs that do not change results (as in their own resume guards).
_PROBE_IGNORES = ("out", "batch_size", "device")


# ---------------------------------------------------------------------------------------------
# Planning: runs and stage configs (pure)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One training run of the grid (K = 0: no training, the base model)."""

    method: str
    K: int
    n_train: int
    seed: int
    eval_documents: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.method.replace('+', '-')}-K{self.K}-n{self.n_train}-seed{self.seed}"

    @property
    def trains(self) -> bool:
        return self.K > 0


def plan_runs(grids: Sequence[GridConfig]) -> list[Run]:
    """Every distinct (method, K, n_train, seed) of the grids, with the union of their evaluation
    document counts. Seeds vary slowest, so an interrupted grid has whole seeds done first."""
    docs: dict[tuple[str, int, int, int], set[int]] = {}
    for g in grids:
        for s, n, k, m in itertools.product(g.seeds, g.n_train, g.K, g.methods):
            docs.setdefault((m, k, n, s), set()).update(g.eval_documents)
    return [Run(m, k, n, s, tuple(sorted(d))) for (m, k, n, s), d in docs.items()]


def _model_kw(cfg: ExperimentConfig) -> dict[str, Any]:
    return {"task": cfg.task, "template": cfg.template, "instruction": cfg.instruction,
            "chat": cfg.chat, "dtype": cfg.dtype, "device": cfg.device,
            "trust_remote_code": cfg.trust_remote_code}


def teach_config(cfg: ExperimentConfig, n_questions: int) -> TeachConfig:
    return TeachConfig(model=cfg.model, **_model_kw(cfg), data=cfg.train_data,
                       data_format=cfg.data_format, n_documents=cfg.n_documents,
                       limit=n_questions, seed=cfg.data_seed, advantageous=cfg.advantageous,
                       out=str(Path(cfg.out) / SHARED / f"teach-n{n_questions}.jsonl"),
                       **cfg.generation_options())


def probe_config(cfg: ExperimentConfig, model: str, out: Path, n_documents: int) -> ProbeConfig:
    task = get_task(cfg.task)
    where = {task.slot_option: task.expand_slots(cfg.slot_spec(task.slot_option, n_documents),
                                                  n_documents)}
    return ProbeConfig(model=model, **_model_kw(cfg), data=cfg.test_data,
                       data_format=cfg.data_format, n_documents=n_documents, limit=cfg.n_test,
                       seed=cfg.data_seed, **where, out=str(out), **cfg.generation_options())


def pairs_config(cfg: ExperimentConfig, run: Run, teach_path: Path) -> PairsConfig:
    out = Path(cfg.out) / SHARED / "pairs" / f"n{run.n_train}-K{run.K}-seed{run.seed}.jsonl"
    anchors = cfg.anchors if get_task(cfg.task).has_anchors else 0
    return PairsConfig(teach=str(teach_path), out=str(out), model=cfg.model, K=run.K,
                       anchors=anchors, seed=run.seed)


def train_config(cfg: ExperimentConfig, run: Run, pairs_path: str) -> TrainConfig:
    return cfg.train_config(pairs=pairs_path, out=str(run_dir(cfg, run) / "train"),
                            method=run.method, seed=run.seed)


def adv_slot(cfg: ExperimentConfig, n_documents: int) -> str:
    """The key of the advantageous slot with ``n_documents``: ``"0"`` (a position) or ``"18,19"``
    (a hop configuration)."""
    return slot_key(get_task(cfg.task).advantageous(cfg.advantageous, n_documents))


def key_label(key: str, sep: str = ",") -> str:
    """A slot key 1-based, for people: ``"4"`` → ``5``, ``"0,8"`` → ``1,9``."""
    return slot_label(parse_slot_key(key), sep)


def run_dir(cfg: ExperimentConfig, run: Run) -> Path:
    return Path(cfg.out) / RUNS / run.key


def base_probe_dir(cfg: ExperimentConfig, n_documents: int) -> Path:
    return Path(cfg.out) / SHARED / f"probe-base-d{n_documents}"


def run_fingerprint(cfg: ExperimentConfig, run: Run) -> str:
    """What a finished run's results depend on: the configs of its stages (minus output paths and
    settings that do not change results)."""
    parts = [fingerprint(teach_config(cfg, run.n_train), ignore=("out", "limit", "batch_size",
                                                                   "device")), str(run.n_train)]
    if run.trains:
        parts.append(fingerprint(pairs_config(cfg, run, Path("teach")), ignore=("out", "teach")))
        tc = train_config(cfg, run, "pairs")
        parts.append(fingerprint(tc, ignore=RESUME_IGNORES + ("pairs",)))
    for d in run.eval_documents:
        parts.append(fingerprint(probe_config(cfg, "model", Path("."), d),
                                 ignore=_PROBE_IGNORES + ("model",)))
    return hashlib.sha256("|".join([run.key, *parts]).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Results: per-run evaluation, aggregation over seeds, tables (pure)
# ---------------------------------------------------------------------------------------------

def eval_summary(probe_summary: dict[str, Any], adv: str) -> dict[str, Any]:
    """The numbers a run reports for one document count, from a probe's summary, keyed by slot
    (``"4"``, or ``"A,B"`` for a hop configuration; 0-based)."""
    acc = get_task(probe_summary["task"]).accuracy_by_slot(probe_summary)
    return {"accuracy_by_position": acc, "mean": probe_summary["mean"],
            "gap": probe_summary["gap"], "n_per_position": probe_summary["n_per_slot"],
            "adv_position": adv, "adv_accuracy": acc.get(adv)}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(results: Sequence[dict[str, Any]],
              base: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, K, n_train, documents): mean and std over seeds of the mean accuracy,
    the GAP, the accuracy at the advantageous position and each position's accuracy. ``base``
    maps a document count to the base model's :func:`eval_summary` (method ``base``)."""
    groups: dict[tuple[str, int, int, int], list[dict[str, Any]]] = {}
    for res in results:
        r = res["run"]
        for docs, ev in res["eval"].items():
            groups.setdefault((r["method"], r["K"], r["n_train"], int(docs)), []).append(
                {**ev, "seed": r["seed"]})
    rows = [_row(BASE, None, None, d, [ev]) for d, ev in sorted(base.items())]
    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    for (m, k, n, d), evs in sorted(groups.items(), key=lambda kv: (kv[0][3], order.get(
            kv[0][0], 99), kv[0][1], kv[0][2])):
        rows.append(_row(m, k, n, d, sorted(evs, key=lambda e: e["seed"])))
    return rows


def _row(method: str, K: int | None, n_train: int | None, docs: int,
         evs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "K": K, "n_train": n_train, "documents": docs,
                           "seeds": [e.get("seed") for e in evs if e.get("seed") is not None]}
    for key in ("mean", "gap", "adv_accuracy"):
        values = [e[key] for e in evs if e[key] is not None]
        row[key], row[f"{key}_std"] = _mean_std(values) if values else (None, None)
    row["adv_position"] = evs[0]["adv_position"]
    positions = sorted({p for e in evs for p in e["accuracy_by_position"]}, key=parse_slot_key)
    row["accuracy_by_position"] = {p: _mean_std([e["accuracy_by_position"][p]
                                                 for e in evs])[0] for p in positions}
    row["accuracy_by_position_std"] = {p: _mean_std([e["accuracy_by_position"][p]
                                                     for e in evs])[1] for p in positions}
    return row


def _pm(value: float | None, std: float | None, n_seeds: int) -> str:
    if value is None:
        return "–"
    return f"{value:.3f} ± {std:.3f}" if n_seeds > 1 else f"{value:.3f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results table: one line per (method, K, questions, documents)."""
    lines = ["| method | K | train questions | documents | seeds | mean accuracy | GAP | "
             "accuracy at the advantageous position |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = len(r["seeds"])
        adv = "" if r["adv_position"] is None else f" ({key_label(r['adv_position'])})"
        lines.append(f"| {r['method']} | {'' if r['K'] is None else r['K']} | "
                     f"{'' if r['n_train'] is None else r['n_train']} | {r['documents']} | "
                     f"{n or ''} | {_pm(r['mean'], r['mean_std'], n)} | "
                     f"{_pm(r['gap'], r['gap_std'], n)} | "
                     f"{_pm(r['adv_accuracy'], r['adv_accuracy_std'], n)}{adv} |")
    return "\n".join(lines) + "\n"


def position_table(rows: Sequence[dict[str, Any]], n_documents: int) -> str:
    """Accuracy by gold position (or EM by hop configuration; 1-based columns), mean over seeds,
    for one document count."""
    rows = [r for r in rows if r["documents"] == n_documents]
    if not rows:
        return ""
    positions = sorted({p for r in rows for p in r["accuracy_by_position"]}, key=parse_slot_key)
    lines = ["| method | K | questions | " + " | ".join(map(key_label, positions)) + " |",
             "|---|---:|---:|" + "---:|" * len(positions)]
    for r in rows:
        cells = [f"{r['accuracy_by_position'][p]:.2f}" if p in r["accuracy_by_position"]
                 else "" for p in positions]
        lines.append(f"| {r['method']} | {'' if r['K'] is None else r['K']} | "
                     f"{'' if r['n_train'] is None else r['n_train']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    positions = sorted({p for r in rows for p in r["accuracy_by_position"]}, key=parse_slot_key)
    fields = ["method", "K", "n_train", "documents", "n_seeds", "mean", "mean_std", "gap",
              "gap_std", "adv_position", "adv_accuracy", "adv_accuracy_std"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields + [f"acc_pos{key_label(p, '-')}" for p in positions])
    for r in rows:
        flat = {**r, "n_seeds": len(r["seeds"])}
        w.writerow(["" if flat[f] is None else flat[f] for f in fields]
                   + [r["accuracy_by_position"].get(p, "") for p in positions])
    return buf.getvalue()


def main_point(runs: Sequence[Run]) -> tuple[int | None, int | None]:
    """The (K, n_train) of the headline comparison: the most frequent K > 0 (ties: the larger)
    and the largest number of training questions."""
    ks = [r.K for r in runs if r.trains]
    K = max(set(ks), key=lambda k: (ks.count(k), k)) if ks else None
    n = max((r.n_train for r in runs), default=None)
    return K, n


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

def make_plots(rows: Sequence[dict[str, Any]], runs: Sequence[Run], cfg: ExperimentConfig,
               out: Path) -> list[str]:
    """Accuracy by position per method (one plot per document count), mean accuracy and GAP against
    K, against the number of training questions and against the number of documents. A curve
    plot is drawn when some method has at least two points on its axis."""
    K, n = main_point(runs)
    task = get_task(cfg.task)
    written = []

    def at(r: dict[str, Any], **want: Any) -> bool:
        return all(r[k] == v for k, v in want.items())

    for docs in sorted({r["documents"] for r in rows}):
        series = {}
        for r in rows:
            if r["documents"] == docs and (r["method"] == BASE or at(r, K=K, n_train=n)):
                series[r["method"]] = [(p, a, r["accuracy_by_position_std"][p])
                                       for p, a in r["accuracy_by_position"].items()]
        path = out / f"{task.plot_file.removesuffix('.png')}-d{docs}.png"
        plot_slots({m: [(parse_slot_key(p), a, e) for p, a, e in pts]
                    for m, pts in series.items()}, path, kind=task.plot_kind,
                   title=f"{docs} documents; trained with K={K}, {n} questions\n(mean over "
                         "seeds, ±1 std)")
        written.append(str(path))

    def curves(axis: str, fixed: dict[str, Any], base_x: Any = None) -> dict[str, dict]:
        mean: dict[str, list] = {}
        gap: dict[str, list] = {}
        for r in rows:
            if r["method"] == BASE:
                if base_x == "documents":
                    mean.setdefault(BASE, []).append((r["documents"], r["mean"], 0.0))
                    gap.setdefault(BASE, []).append((r["documents"], r["gap"], 0.0))
                continue
            if at(r, **fixed):
                mean.setdefault(r["method"], []).append((r[axis], r["mean"], r["mean_std"]))
                gap.setdefault(r["method"], []).append((r[axis], r["gap"], r["gap_std"]))
        keep = {m for m, pts in mean.items() if len(pts) >= 2}
        return {"mean": {m: mean[m] for m in mean if m in keep},
                "gap": {m: gap[m] for m in gap if m in keep}}

    for axis, fixed, xlabel, name, base_x in [
            ("K", {"n_train": n, "documents": cfg.n_documents}, "K (trivial positions per question)",
             "accuracy_vs_K.png", None),
            ("n_train", {"K": K, "documents": cfg.n_documents}, "training questions",
             "accuracy_vs_n_train.png", None),
            ("documents", {"K": K, "n_train": n}, f"documents at evaluation (trained with "
             f"{cfg.n_documents})", "accuracy_vs_documents.png", "documents")]:
        c = curves(axis, fixed, base_x)
        if not any(m != BASE for m in c["mean"]):
            continue
        path = out / name
        plot_curves([("mean accuracy over positions", c["mean"]), ("GAP (max − min)", c["gap"])],
                    path, xlabel=xlabel, title="mean ± std over seeds")
        written.append(str(path))
    return written


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def check_data(cfg: ExperimentConfig, runs: Sequence[Run]) -> None:
    """Refuse, before any work, data that cannot serve the grid."""
    n_max = max(r.n_train for r in runs)
    if any(r.trains for r in runs):
        train = task_records(cfg, cfg.train_data, cfg.n_documents, n_max)
        if len(train) < n_max:
            raise ConfigError(f"n_train {n_max}: the first {n_max} questions of {cfg.train_data} "
                              f"hold only {len(train)} questions that --task {cfg.task} can ask")
    for docs in sorted({d for r in runs for d in r.eval_documents}):
        test = task_records(cfg, cfg.test_data, docs, cfg.n_test)
        if len(test[0].documents) != docs:
            raise ConfigError(f"eval_documents {docs}: {cfg.test_data} has "
                              f"{len(test[0].documents)} documents per question (only one-document "
                              "oracle files and the synthetic set can be built with any count)")
        task = get_task(cfg.task)
        task.slots(getattr(probe_config(cfg, cfg.model, Path("."), docs), task.slot_option), docs)
        adv_slot(cfg, docs)


def task_records(cfg: ExperimentConfig, data: str, n_documents: int, limit: int) -> list:
    """The first ``limit`` questions of ``data`` that the experiment's task can ask."""
    opts = DataOptions(data=data, data_format=cfg.data_format, n_documents=n_documents,
                       limit=limit, seed=cfg.data_seed)
    return get_task(cfg.task).keep(load_data(opts), data)


def teach_subset(cfg: ExperimentConfig, teach_path: Path, n_train: int, n_max: int) -> Path:
    """The kept teacher rows of the first ``n_train`` training questions."""
    if n_train == n_max:
        return teach_path
    ids = {r.id for r in task_records(cfg, cfg.train_data, cfg.n_documents, n_train)}
    path = teach_path.with_name(f"{teach_path.name.removesuffix('.jsonl')}-first{n_train}.jsonl")
    write_jsonl(path, [row for row in read_teacher_rows(teach_path) if row["id"] in ids])
    return path


def _stage_count(runs: Sequence[Run], docs: Sequence[int]) -> int:
    """Stages the grid's bar counts: teach, base probes, and per run: pairs + train, probes."""
    trains = [r for r in runs if r.trains]
    return (1 if trains else 0) + len(docs) + sum(2 + len(r.eval_documents) for r in trains)


def _log_run(cfg: ExperimentConfig, run: Run, result: dict[str, Any]) -> None:
    """metrics.jsonl of the run (always), and TensorBoard / W&B when asked for: the training curve
    from the training log, then the evaluation numbers at the last step."""
    folder = run_dir(cfg, run)
    train_log = read_append_log(folder / "train" / "log.jsonl") if run.trains else []
    with Tracker(folder / "metrics.jsonl", report_to=cfg.report_to,
                 name=f"{Path(cfg.out).name}/{run.key}", group=Path(cfg.out).name,
                 config=result["run"], tensorboard_dir=Path(cfg.out) / "tensorboard" / run.key) as tr:
        last = 0
        for row in train_log:
            tr.log({"train": {k: v for k, v in row.items() if k != "step"}}, step=row["step"])
            last = row["step"]
        tr.log({f"eval_d{d}": {k: v for k, v in ev.items() if k != "accuracy_by_position"}
                for d, ev in result["eval"].items()}, step=last)


@contextlib.contextmanager
def shared_lock(out: Path, sharded: bool) -> Iterator[None]:
    """Held while a shared stage runs, so that shards (one process per GPU) never write the same
    teach, pairs or base-probe output at once: the first computes it, the others then find it done
    (each stage resumes). An advisory ``flock`` on ``out/shared/.lock`` (POSIX)."""
    if not sharded:
        yield
        return
    import fcntl   # POSIX only, and only needed when shards share the folder

    path = out / SHARED / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_result(cfg: ExperimentConfig, run: Run) -> dict[str, Any] | None:
    """The run's ``result.json`` when it is finished with the current configuration."""
    path = run_dir(cfg, run) / RESULT
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.get("fingerprint") == run_fingerprint(cfg, run) else None


def main(cfg: ExperimentConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    runs = plan_runs(cfg.grid_configs())
    shard, n_shards = cfg.shard_index()
    refuse_early(cfg, runs, sharded=n_shards > 1)
    # One process per shard (the whole grid without --shard); the shards share the folder.
    with one_writer(out, part=cfg.lock_part()):
        return run_grid(cfg, runs, shard, n_shards)


def run_grid(cfg: ExperimentConfig, runs: Sequence[Run], shard: int,
             n_shards: int) -> dict[str, Any]:
    """This shard's runs (every run without sharding), then the results of the whole grid."""
    out = Path(cfg.out)
    lock = functools.partial(shared_lock, out, n_shards > 1)
    with lock():
        write_json_atomic(out / "experiment.json", {"config": dataclasses.asdict(cfg),
                                                    "runs": [dataclasses.asdict(r) for r in runs]})
    todo = [r for k, r in enumerate(runs) if k % n_shards == shard and load_result(cfg, r) is None]
    docs_all = sorted({d for r in runs for d in r.eval_documents})
    with progress.bar(total=_stage_count(todo, docs_all), desc="experiment", unit="stage",
                      position=0) as bar, progress.nested():
        def stage(what: str) -> None:
            bar.set_postfix_str(what)

        def done() -> None:
            bar.update(1)

        teach_kept = None
        if any(r.trains for r in runs):
            stage("teach")
            with lock():
                teach_kept = teach.main(teach_config(cfg, n_questions(runs)))["kept"]
            done()
        base: dict[int, dict[str, Any]] = {}
        for d in docs_all:
            stage(f"probe base, {d} documents")
            with lock():
                s = probe.main(probe_config(cfg, cfg.model, base_probe_dir(cfg, d), d))
            base[d] = eval_summary(s, adv_slot(cfg, d))
            done()
        for run in todo:
            result = (run_result(cfg, run, base) if not run.trains else
                      train_and_probe(cfg, run, runs, lock, stage, done))
            _log_run(cfg, run, result)
            write_json_atomic(run_dir(cfg, run) / RESULT, result)
    return write_results(cfg, runs, base, teach_kept, lock)


def n_questions(runs: Sequence[Run]) -> int:
    """Training questions the shared teach answers: the most any run uses."""
    return max(r.n_train for r in runs)


def refuse_early(cfg: ExperimentConfig, runs: Sequence[Run], *, sharded: bool) -> None:
    """Everything that can refuse the experiment does so before any work."""
    check_backends(cfg.report_to)
    if sharded:
        import fcntl  # noqa: F401  (sharding locks the shared stages; POSIX only)
    load_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
    check_data(cfg, runs)
    for run in runs:
        if run.trains:
            train_config(cfg, run, "pairs")


def run_result(cfg: ExperimentConfig, run: Run, base: dict[int, dict[str, Any]],
               **more: Any) -> dict[str, Any]:
    """``result.json`` of a run; without ``more`` the base model's (K = 0: nothing trained, its
    evaluation is the base probe)."""
    result: dict[str, Any] = {"run": {"method": run.method, "K": run.K, "n_train": run.n_train,
                                      "seed": run.seed},
                              "fingerprint": run_fingerprint(cfg, run), "key": run.key}
    return {**result, **(more or {"model": cfg.model, "train": None,
                                  "eval": {str(d): base[d] for d in run.eval_documents}})}


def train_and_probe(cfg: ExperimentConfig, run: Run, runs: Sequence[Run], lock: Any,
                    stage: Any, done: Any) -> dict[str, Any]:
    """Pairs (shared by the runs of the same questions, K and seed), training, and the probes of
    the trained model at every evaluated document count."""
    stage(f"{run.key}: pairs")
    with lock():
        teach_path = Path(teach_config(cfg, n_questions(runs)).out)
        subset = teach_subset(cfg, teach_path, run.n_train, n_questions(runs))
        pcfg = pairs_config(cfg, run, subset)
        made = pairs.main(pcfg)
    done()
    stage(f"{run.key}: train")
    summary = train.main(train_config(cfg, run, pcfg.out))
    done()
    evals = {}
    for d in run.eval_documents:
        stage(f"{run.key}: probe, {d} documents")
        s = probe.main(probe_config(cfg, summary["model"], run_dir(cfg, run) / f"probe-d{d}", d))
        evals[str(d)] = eval_summary(s, adv_slot(cfg, d))
        # Against the base model at the same count: report-dD/, and a block of the model's card.
        report.compare(base_probe_dir(cfg, d), run_dir(cfg, run) / f"probe-d{d}",
                       run_dir(cfg, run) / f"report-d{d}", title=f"{run.key}, {d} documents")
        done()
    return run_result(cfg, run, {}, model=summary["model"], train=summary,
                      teacher_kept=made["questions"], pairs=made["pairs"], eval=evals)


def write_results(cfg: ExperimentConfig, runs: Sequence[Run], base: dict[int, dict[str, Any]],
                  teach_kept: int | None, lock: Any) -> dict[str, Any]:
    """The table, CSV, JSON and plots of every finished run of the grid (other shards' too)."""
    out = Path(cfg.out)
    results = [res for res in (load_result(cfg, r) for r in runs) if res is not None]
    if len(results) < len(runs):
        log.warning("%d of %d runs are finished; the table covers those (re-run without --shard "
                    "once every shard is done for the whole table)", len(results), len(runs))
    rows = aggregate(results, base)
    kept = (f" Teacher kept {teach_kept} of {n_questions(runs)} training questions."
            if teach_kept is not None else "")
    task = get_task(cfg.task)
    md = ["# Results", "", f"Model `{cfg.model}`, trained with {cfg.n_documents} documents, "
          f"advantageous {task.slot_noun} {key_label(adv_slot(cfg, cfg.n_documents))} (1-based); "
          f"mean ± std over seeds ({len(results)} of {len(runs)} runs finished).{kept}", "",
          markdown_table(rows)]
    for d in sorted({d for r in runs for d in r.eval_documents}):
        md += ["", f"## {task.metric[0].upper()}{task.metric[1:]} by {task.slot_noun}, {d} "
                   "documents (mean over seeds)", "",
               position_table(rows, d)]
    with lock():  # shards finishing together must not write the same files at once
        write_text_atomic(out / "results.md", "\n".join(md))
        write_text_atomic(out / "results.csv", csv_text(rows))
        write_json_atomic(out / "results.json", {"rows": rows, "runs": results,
                                                 "base": {str(d): v for d, v in base.items()}})
        plots = make_plots(rows, runs, cfg, out / PLOTS)
    return {"results": str(out / "results.md"), "csv": str(out / "results.csv"),
            "json": str(out / "results.json"), "plots": plots, "runs": len(runs),
            "finished": len(results)}


def describe(result: dict[str, Any]) -> str:
    return "\n".join([f"results: {result['results']} (also {result['csv']}, {result['json']})",
                      *(f"plot:    {plot}" for plot in result["plots"])])
