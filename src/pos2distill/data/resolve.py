"""Resolve a ``--data`` option to records: a file in any supported format (JSONL, JSON, Parquet, a
``datasets`` folder), or the synthetic set. Nothing is downloaded."""

from __future__ import annotations

import logging
from typing import Protocol

from pos2distill.data import synthetic
from pos2distill.data.loaders import build_from_oracle, load_records
from pos2distill.data.records import Record
from pos2distill.data.tables import refuse_remote
from pos2distill.errors import ConfigError

log = logging.getLogger(__name__)

SYNTHETIC_DEFAULT_SIZE = 1000


class DataOptions(Protocol):
    """What ``--data`` and its companions say (:class:`pos2distill.config.DataOptions`)."""

    data: str
    data_format: str
    split: str
    n_documents: int
    limit: int
    seed: int


def load_data(opts: DataOptions) -> list[Record]:
    """Records for ``opts.data``; single-document (oracle) QA files are turned into
    ``opts.n_documents``-document sets with other questions' gold passages as distractors. Which
    of them a task can ask is the task's to say (:meth:`pos2distill.tasks.base.Task.keep`)."""
    split = opts.split
    if opts.data.startswith("synthetic") and split:
        raise ConfigError(f"--split {split}: the synthetic sets name their split in --data "
                          "(synthetic:SPLIT); --split chooses a split of a datasets folder")
    if opts.data.startswith("synthetic-judge"):
        _, _, split = opts.data.partition(":")
        split = split or "test"
        if opts.data.partition(":")[0] != "synthetic-judge" or split not in synthetic.SPLITS:
            raise ConfigError(f"--data: {opts.data!r}: use one of "
                              + ", ".join(f"synthetic-judge:{s}" for s in synthetic.SPLITS))
        if not 2 <= opts.n_documents <= synthetic.N_NAMES:
            raise ConfigError(f"--n-documents: the synthetic judging set has 2 to "
                              f"{synthetic.N_NAMES} documents per item, got {opts.n_documents}")
        return synthetic.generate_judge(split, opts.limit or SYNTHETIC_DEFAULT_SIZE,
                                        seed=opts.seed, n_documents=opts.n_documents)
    if opts.data.startswith("synthetic-reasoning"):
        _, _, split = opts.data.partition(":")
        split = split or "test"
        if opts.data.partition(":")[0] != "synthetic-reasoning" or split not in synthetic.SPLITS:
            raise ConfigError(f"--data: {opts.data!r}: use one of "
                              + ", ".join(f"synthetic-reasoning:{s}" for s in synthetic.SPLITS))
        if not 2 <= opts.n_documents <= synthetic.N_NAMES or opts.n_documents % 2:
            raise ConfigError(f"--n-documents: the synthetic reasoning set has an even number of "
                              f"documents from 2 to {synthetic.N_NAMES}, got {opts.n_documents}")
        return synthetic.generate_reasoning(split, opts.limit or SYNTHETIC_DEFAULT_SIZE,
                                            seed=opts.seed, n_documents=opts.n_documents)
    if opts.data.startswith("synthetic"):
        _, _, split = opts.data.partition(":")
        split = split or "test"
        if opts.data.partition(":")[0] != "synthetic" or split not in synthetic.SPLITS:
            raise ConfigError(f"--data: {opts.data!r}: use one of "
                              + ", ".join(f"synthetic:{s}" for s in synthetic.SPLITS))
        if not 2 <= opts.n_documents <= synthetic.N_NAMES:
            raise ConfigError(f"--n-documents: the synthetic set has 2 to {synthetic.N_NAMES} "
                              f"documents per question, got {opts.n_documents}")
        return synthetic.generate(split, opts.limit or SYNTHETIC_DEFAULT_SIZE, seed=opts.seed,
                                  n_documents=opts.n_documents)
    refuse_remote(opts.data)
    records = load_records(opts.data, opts.data_format, split=split)
    if not records:
        raise ConfigError(f"--data: {opts.data} holds no records")
    if all(len(r.documents) == 1 and r.kind == "qa" for r in records) and opts.n_documents > 1:
        log.info("%s has one document per question: building %d-document sets", opts.data,
                 opts.n_documents)
        records = build_from_oracle(records, n_documents=opts.n_documents, seed=opts.seed)
    return records[:opts.limit] if opts.limit else records
