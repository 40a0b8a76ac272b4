"""The ``pos2distill`` command: parses flags into a stage's config and calls that stage's ``main``.

Errors a user can fix (bad flags, bad data, missing files) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from typing import Any

from pos2distill import __version__, progress
from pos2distill.config import (ANALYSES, AnalyzeConfig, CacheConfig, CrossTaskConfig, DemoConfig,
                                ExperimentConfig, PairsConfig, ProbeConfig, ReportConfig,
                                TeachConfig, TrainConfig)
from pos2distill.errors import Pos2DistillError
from pos2distill.options import add_arguments, from_args
from pos2distill.runinfo import one_writer

#: OSError numbers that mean "this output cannot be written": one line and exit code 2.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}

#: Subcommand -> (its config, the module whose ``main(cfg)`` runs it, one line of help). The module
#: is imported only when its command runs, so ``--help`` loads neither torch nor transformers.
COMMANDS: dict[str, tuple[type, str, str]] = {
    "probe": (ProbeConfig, "pos2distill.stages.probe",
              "Accuracy by gold position (or by hop configuration)."),
    "teach": (TeachConfig, "pos2distill.stages.teach",
              "Teacher responses at the advantageous position."),
    "pairs": (PairsConfig, "pos2distill.stages.pairs",
              "Training pairs: K trivial positions + anchors."),
    "cache": (CacheConfig, "pos2distill.stages.cache",
              "Teacher cache: top-k log-probs of every response token."),
    "train": (TrainConfig, "pos2distill.stages.train",
              "Train with Pos2Distill-R1/R2, its ablations or a baseline (--method)."),
    "report": (ReportConfig, "pos2distill.stages.report",
               "Before/after tables and plots from two probes."),
    "crosstask": (CrossTaskConfig, "pos2distill.stages.crosstask",
                  "Cross-task table: each trained model on retrieval and reasoning."),
    "demo": (DemoConfig, "pos2distill.recipes.demo",
             "The whole R1 (and/or R2) pipeline on the embedded model."),
    "experiment": (ExperimentConfig, "pos2distill.recipes.experiment",
                   "A grid of methods x seeds x K x training questions x documents: results "
                   "table and plots."),
    "analyze": (AnalyzeConfig, "pos2distill.stages.analyze",
                "Where the bias lives: token shifting, thought shifting, attention by document."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pos2distill",
        description="Measure and remove positional bias in LLMs (Pos2Distill, EMNLP 2025).",
        epilog="Run `pos2distill COMMAND --help` for a command's options. "
               "`pos2distill demo` shows the whole effect on the embedded tiny model.")
    parser.add_argument("--version", action="version", version=f"pos2distill {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="Only warnings and errors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (cls, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=(cls.__doc__ or help_).strip(),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == "experiment":
            p.add_argument("_config", nargs="?", default=argparse.SUPPRESS, metavar="CONFIG.yaml",
                           help="The experiment's YAML config (same as --config).")
        if name == "analyze":
            p.add_argument("what", nargs="?", default=argparse.SUPPRESS, metavar="WHAT", help=f"The analysis: {', '.join(ANALYSES)} (same as "
                           "--what).")
        add_arguments(p, cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun / accelerate launch every process runs this; only the first one speaks.
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.WARNING if args.quiet or not main_process else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    progress.quiet(args.quiet)
    # Our own progress bars say what is happening; transformers' per-load bars only add noise.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cls, module, _ = COMMANDS[args.command]
    del args.quiet
    try:
        cfg = from_args(cls, args)
        # The output's lock first, before the stage's heavy imports: a second run on the same
        # output stops at once. The stage takes it again when called from Python.
        with one_writer(cfg.out, part=getattr(cfg, "lock_part", str)(), enabled=main_process):
            stage = importlib.import_module(module)
            result: Any = stage.main(cfg)
    except Pos2DistillError as e:
        print(f"pos2distill {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        # Writes that go through runinfo.atomic_path are OutputErrors already; this catches the
        # appends (rows.jsonl, logs) and the writers of other libraries (save_pretrained).
        print(f"pos2distill {args.command}: error: {e.filename or 'an output'}: cannot write "
              f"({e.strerror}); free some space or fix the permissions, then re-run the same "
              "command to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pos2distill {args.command}: interrupted; re-run the same command to resume",
              file=sys.stderr)
        return 130
    if main_process:
        describe = getattr(stage, "describe", counts_line)
        print(describe(result))
    return 0


def counts_line(result: dict[str, Any]) -> str:
    """``key=value`` of a result's plain values: the line of a stage without its own ``describe``."""
    return "  ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (dict, list)))


if __name__ == "__main__":
    sys.exit(main())
