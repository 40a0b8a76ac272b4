"""The ``pos2distill`` command: parses flags into a stage's config and calls that stage's ``main``.

Errors a user can fix (bad flags, bad data, missing files) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from pos2distill import __version__
from pos2distill.config import (CacheConfig, CrossTaskConfig, DemoConfig, ExperimentConfig,
                                PairsConfig, ProbeConfig, ReportConfig, TeachConfig, TrainConfig,
                                add_arguments, from_args)
from pos2distill.errors import Pos2DistillError


def _commands() -> dict[str, tuple[type, Callable[[Any], Any], str]]:
    from pos2distill.stages import cache, crosstask, pairs, probe, report, teach, train
    from pos2distill.recipes import demo, experiment

    return {
        "probe": (ProbeConfig, probe.main, "Accuracy by gold position (or by hop configuration)."),
        "teach": (TeachConfig, teach.main, "Teacher responses at the advantageous position."),
        "pairs": (PairsConfig, pairs.main, "Training pairs: K trivial positions + anchors."),
        "cache": (CacheConfig, cache.main, "Teacher cache: top-k log-probs of every response token."),
        "train": (TrainConfig, train.main, "Train with Pos2Distill-R1/R2, its ablations or a "
                  "baseline (--method)."),
        "report": (ReportConfig, report.main, "Before/after tables and plots from two probes."),
        "crosstask": (CrossTaskConfig, crosstask.main,
                      "Cross-task table: each trained model on retrieval and reasoning."),
        "demo": (DemoConfig, demo.main, "The whole R1 (and/or R2) pipeline on the embedded model."),
        "experiment": (ExperimentConfig, experiment.main, "A grid of methods x seeds x K x "
                       "training questions x documents: results table and plots."),
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
    for name, (cls, _, help_) in _commands().items():
        p = sub.add_parser(name, help=help_, description=(cls.__doc__ or help_).strip(),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == "experiment":
            p.add_argument("_config", nargs="?", default=argparse.SUPPRESS, metavar="CONFIG.yaml",
                           help="The experiment's YAML config (same as --config).")
        add_arguments(p, cls)
    return parser


def _print_result(command: str, result: Any) -> None:
    if command == "demo":
        print(f"\nreport: {result['report']}\nplot:   {result['plot']}\nsummary: {result['summary']}")
        if "cross_task" in result:
            print(f"cross-task: {result['cross_task']}")
    elif command == "probe" and result.get("task") == "reasoning":
        groups = "  ".join(f"{g} {v['mean']:.3f}" for g, v in result["by_group"].items())
        print(f"mean {result['mean']:.3f}  GAP {result['gap']:.3f}  {groups}  best hop positions "
              f"{result['best_configuration']} (0-based)")
    elif command == "probe":
        print(f"mean {result['mean']:.3f}  GAP {result['gap']:.3f}  "
              f"best position {result['best_position'] + 1} (1-based)")
    elif command == "crosstask":
        print(Path(result["table"]).read_text() + f"\ntable: {result['table']}")
    elif command == "report":
        print(f"report: {result['report']}\nplot:   {result['plot']}")
    elif command == "experiment":
        print(f"results: {result['results']} (also {result['csv']}, {result['json']})")
        for plot in result["plots"]:
            print(f"plot:    {plot}")
    elif isinstance(result, dict):
        print("  ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (dict, list))))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    # Our own progress bars say what is happening; transformers' per-load bars only add noise.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cls, fn, _ = _commands()[args.command]
    del args.quiet
    try:
        cfg = from_args(cls, args)
        result = fn(cfg)
    except Pos2DistillError as e:
        print(f"pos2distill {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pos2distill {args.command}: interrupted; re-run the same command to resume",
              file=sys.stderr)
        return 130
    _print_result(args.command, result)
    return 0
