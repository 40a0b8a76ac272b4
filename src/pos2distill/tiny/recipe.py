"""Rebuild the embedded model from nothing: ``python -m pos2distill.tiny.recipe [--out DIR]``;
with ``--judge``, also the embedded judge (``--judge-only``: the judge alone, from the shipped
model).

The shipped model (``pos2distill/assets/tiny-llama``) is the output of the runs in :data:`RUNS`, in
order, each a :class:`~pos2distill.tiny.pretrain.PretrainConfig` that starts from the one before.
Every run is seeded and the recipe runs on one thread (``--threads``), so the same code and
libraries give the same weights bit for bit: the assets README records the sha256 of
``model.safetensors``, and this command prints the rebuilt file's next to it.

Each finished run is kept in ``--work`` (one folder per run, written under a temporary name and
renamed when complete), so an interrupted rebuild starts again at the first unfinished run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from pos2distill.tiny import TINY_JUDGE_DIR, TINY_MODEL_DIR
from pos2distill.tiny.pretrain import PretrainConfig, pretrain

# Repeats as the late runs draw them: 4-40 or 100-140 tokens long, never in between; half behind
# 110-130 tokens of other pairs (where a prompt's last documents sit), half of the others opening
# with the retrieval instruction.
_LATE_MIX: dict[str, Any] = {"late_fraction": 0.5, "late_prefix": (110, 130),
                             "copy_short": (4, 40), "copy_long": (100, 140),
                             "copy_middle_fraction": 0.0, "lead_fraction": 0.5}

RUNS: tuple[tuple[str, dict[str, Any]], ...] = (
    # 1. Repeats of random name/city sequences: the induction circuit.
    ("copy", {"vocab": "retrieval", "copy_steps": 600, "lookup_steps": 0}),
    # 2. Repeats of document-shaped pairs ("- Title : NAME CITY").
    ("docs", {"vocab": "retrieval", "warmup_task": "docs", "copy_steps": 300, "lookup_steps": 0}),
    # 3. The same behind a prefix of up to 120 tokens; the two-hop words are added here.
    ("late", {"copy_steps": 0, "docs_steps": 300, "prefix_max": 120, "lookup_steps": 0}),
    # 4. Two-hop chains of thought, mixed with document repeats (75 % of each batch).
    ("chains", {"copy_steps": 0, "lookup_steps": 0, "reason_steps": 250,
                "reason_docs_fraction": 0.75}),
    # 5. RoPE re-based to 300 (a match far back scores lower), then chains and repeats again.
    ("rope300", {"rope_theta": 300.0, "copy_steps": 0, "lookup_steps": 0, "reason_steps": 300,
                 "reason_lr": 1e-3, "reason_docs_fraction": 0.5, "eval_every": 50,
                 "eval_per_position": 20, **_LATE_MIX}),
    # 6. More chains (a quarter repeats), stopped at step 200 of a 300-step schedule. In this run
    #    a chain's hops are adjacent, in order, and touch the first or last three documents: chains
    #    over every pair taught the middle distances, and the retrieval U filled in
    #    (docs/tiny-model-notes.md, 2026-12-06).
    ("more-chains", {"copy_steps": 0, "lookup_steps": 0, "reason_steps": 300, "reason_stop": 200,
                     "reason_lr": 1e-3, "reason_docs_fraction": 0.25, "reason_edge_mass": 1.0,
                     "eval_every": 100, "eval_per_position": 20, **_LATE_MIX}),
    # 7. Instruction tuning, 60 steps: half of each batch 3-document questions about training
    #    people answered with the city and EOS, 15 % of them about a person with no document,
    #    answered with EOS alone; the other half the same chains and repeats as run 6.
    ("format", {"copy_steps": 0, "lookup_steps": 0, "reason_docs_fraction": 0.25,
                "reason_edge_mass": 1.0, "format_steps": 60, "format_lr": 1e-3,
                "format_fraction": 0.5, "format_documents": 3, "format_unanswerable": 0.15,
                "eval_every": 50, "eval_per_position": 20, **_LATE_MIX}),
)

#: The embedded judge (``pos2distill/assets/tiny-judge``): the last of :data:`RUNS` taught to judge
#: two answers to a retrieval question with 6 documents (the true city and another city of the
#: context), answering with the city it looks up and the verdict. Each order is shown equally
#: often, but when the true answer is shown second, 45 % of the training verdicts still name the
#: first: judgements whose annotators favoured the answer they read first. Chosen on
#: synthetic-judge:dev (docs/tiny-model-notes.md, 2026-12-06).
JUDGE_RUN: tuple[str, dict[str, Any]] = (
    "judge", {"vocab": "judge", "copy_steps": 0, "lookup_steps": 0, "judge_steps": 400,
              "judge_lr": 1e-3, "judge_documents": 6, "judge_first_share": 0.5,
              "judge_primacy": 0.45, "batch_size": 32, "eval_every": 100,
              "eval_per_position": 50})

log = logging.getLogger(__name__)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_config(name: str, overrides: dict[str, Any], init: str, work: Path) -> PretrainConfig:
    """Run ``name`` of the recipe, starting from ``init``, written under a temporary name in
    ``work``."""
    return PretrainConfig(**{**overrides, "init": init, "out": str(work / f".{name}.partial")})


def _finished(folder: Path, cfg: PretrainConfig) -> bool:
    """A run folder that holds weights made with this run's settings (paths aside)."""
    saved = folder / "pretrain_config.json"
    if not (folder / "model.safetensors").is_file() or not saved.is_file():
        return False
    want = json.loads(json.dumps(dataclasses.asdict(cfg)))    # tuples as lists, as saved
    have = {**want, **json.loads(saved.read_text())}           # options added since: defaults
    return all(have[k] == want[k] for k in want if k not in ("out", "init"))


def pretrain_run(cfg: PretrainConfig) -> Path:
    """One run (a seam for tests)."""
    return pretrain(cfg)


def _run(name: str, overrides: dict[str, Any], init: str, work: Path) -> Path:
    """Run ``name`` in ``work`` unless a finished folder with its settings is there already."""
    folder = work / name
    cfg = run_config(name, overrides, init, work)
    if _finished(folder, cfg):
        log.info("run %s: already in %s", name, folder)
        return folder
    log.info("run %s: %s", name, overrides)
    partial = Path(cfg.out)
    shutil.rmtree(partial, ignore_errors=True)
    pretrain_run(cfg)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def _copy(folder: Path, out: Path) -> Path:
    if out.resolve() != folder.resolve():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(folder, out)
    return out


def rebuild(work: Path, out: Path, *, threads: int = 1, last: str = "") -> Path:
    """Run :data:`RUNS` (up to and including ``last``, default all) in ``work``; copy the final
    model folder to ``out``."""
    torch.set_num_threads(threads)
    names = [name for name, _ in RUNS]
    if last and last not in names:
        raise ValueError(f"--last must be one of {', '.join(names)}, got {last!r}")
    work.mkdir(parents=True, exist_ok=True)
    init = ""
    for name, overrides in RUNS:
        init = str(_run(name, overrides, init, work))
        if name == last:
            break
    return _copy(Path(init), out)


def build_judge(init: Path, work: Path, out: Path, *, threads: int = 1) -> Path:
    """:data:`JUDGE_RUN` from the model in ``init``, in ``work``; copied to ``out``."""
    torch.set_num_threads(threads)
    work.mkdir(parents=True, exist_ok=True)
    name, overrides = JUDGE_RUN
    return _copy(_run(name, overrides, str(init), work), out)


def _compare(label: str, built: Path, shipped: Path) -> str:
    a = sha256(built / "model.safetensors")
    if not (shipped / "model.safetensors").is_file():
        return f"{label} saved to {built}\nsha256 of model.safetensors: {a} (none shipped)"
    b = sha256(shipped / "model.safetensors")
    return (f"{label} saved to {built}\nsha256 of model.safetensors: {a}\n"
            f"shipped model's:             {b} ({'same' if a == b else 'different'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/tiny-recipe",
                        help="Folder of the runs' models (kept: a rerun resumes). "
                             "(default: runs/tiny-recipe)")
    parser.add_argument("--out", default="runs/tiny-llama",
                        help="Where the final model folder is copied (never the shipped one: "
                             "copy the files there by hand). (default: runs/tiny-llama)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; the shipped weights were made with 1 (other counts "
                             "round differently). (default: 1)")
    parser.add_argument("--last", default="",
                        help="Stop after this run (one of: " + ", ".join(n for n, _ in RUNS)
                             + "). (default: all)")
    parser.add_argument("--judge", action="store_true",
                        help="Then build the embedded judge from the final run into --judge-out.")
    parser.add_argument("--judge-only", action="store_true",
                        help="Build only the judge, from the shipped model (which the runs "
                             "rebuild bit for bit): about 2 minutes on one thread.")
    parser.add_argument("--judge-out", default="runs/tiny-judge",
                        help="Where the judge's folder is copied. (default: runs/tiny-judge)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out, judge_out = Path(args.out), Path(args.judge_out)
    if out.resolve() == TINY_MODEL_DIR.resolve() or judge_out.resolve() == TINY_JUDGE_DIR.resolve():
        parser.error("--out / --judge-out: not the shipped folders; copy the files there by hand")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.last and (args.judge or args.judge_only):
        parser.error("--last stops before the final run; the judge starts from the final run")
    lines = []
    try:
        if not args.judge_only:
            rebuild(Path(args.work), out, threads=args.threads, last=args.last)
            lines.append(_compare("model", out, TINY_MODEL_DIR))
        if args.judge or args.judge_only:
            init = TINY_MODEL_DIR if args.judge_only else out
            build_judge(init, Path(args.work), judge_out, threads=args.threads)
            lines.append(_compare("judge", judge_out, TINY_JUDGE_DIR))
    except ValueError as e:
        parser.error(str(e))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
