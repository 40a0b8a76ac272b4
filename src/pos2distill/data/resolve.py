"""Resolve a ``--data`` option to records: a file in any supported format, or the synthetic set."""

from __future__ import annotations

import logging

from pos2distill.data import synthetic
from pos2distill.config import DataOptions
from pos2distill.errors import ConfigError, DataError
from pos2distill.data.loaders import build_from_oracle, load_records
from pos2distill.data.records import Record

log = logging.getLogger(__name__)

SYNTHETIC_DEFAULT_SIZE = 1000


def load_data(opts: DataOptions) -> list[Record]:
    """Records for ``opts.data``; single-document (oracle) QA files are turned into
    ``opts.n_documents``-document sets with other questions' gold passages as distractors. With
    ``--task reasoning`` only questions with exactly two hop documents are kept."""
    records = _load(opts)
    if getattr(opts, "task", "retrieval") == "reasoning":
        from pos2distill.tasks.reasoning import two_hop_records

        return two_hop_records(records)
    multi = next((r for r in records if len(r.gold) > 1), None)
    if multi is not None:
        raise DataError(f"question {multi.id!r} has {len(multi.gold)} gold (hop) documents: "
                        "multi-hop data needs --task reasoning", path=opts.data)
    return records


def _load(opts: DataOptions) -> list[Record]:
    if opts.data.startswith("synthetic-reasoning"):
        _, _, split = opts.data.partition(":")
        split = split or "test"
        if opts.data.partition(":")[0] != "synthetic-reasoning" or split not in synthetic.SPLITS:
            raise ConfigError(f"--data: {opts.data!r}: use synthetic-reasoning:train or "
                              "synthetic-reasoning:test")
        if not 2 <= opts.n_documents <= synthetic.N_NAMES or opts.n_documents % 2:
            raise ConfigError(f"--n-documents: the synthetic reasoning set has an even number of "
                              f"documents from 2 to {synthetic.N_NAMES}, got {opts.n_documents}")
        return synthetic.generate_reasoning(split, opts.limit or SYNTHETIC_DEFAULT_SIZE,
                                            seed=opts.seed, n_documents=opts.n_documents)
    if opts.data.startswith("synthetic"):
        _, _, split = opts.data.partition(":")
        split = split or "test"
        if opts.data.partition(":")[0] != "synthetic" or split not in synthetic.SPLITS:
            raise ConfigError(f"--data: {opts.data!r}: use synthetic:train or synthetic:test")
        if not 2 <= opts.n_documents <= synthetic.N_NAMES:
            raise ConfigError(f"--n-documents: the synthetic set has 2 to {synthetic.N_NAMES} "
                              f"documents per question, got {opts.n_documents}")
        return synthetic.generate(split, opts.limit or SYNTHETIC_DEFAULT_SIZE, seed=opts.seed,
                                  n_documents=opts.n_documents)
    records = load_records(opts.data, opts.data_format)
    if not records:
        raise ConfigError(f"--data: {opts.data} holds no records")
    if all(len(r.documents) == 1 and r.task == "qa" for r in records) and opts.n_documents > 1:
        log.info("%s has one document per question: building %d-document sets", opts.data,
                 opts.n_documents)
        records = build_from_oracle(records, n_documents=opts.n_documents, seed=opts.seed)
    return records[:opts.limit] if opts.limit else records
