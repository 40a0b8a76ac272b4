"""Resolve a ``--data`` option to records: a file in any supported format (JSONL, JSON, Parquet, a
``datasets`` folder), or the synthetic set. Nothing is downloaded."""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from pos2distill.data import synthetic
from pos2distill.data.loaders import build_from_oracle, load_records
from pos2distill.data.records import Record
from pos2distill.data.tables import refuse_remote
from pos2distill.errors import ConfigError

log = logging.getLogger(__name__)

SYNTHETIC_DEFAULT_SIZE = 1000

#: The synthetic sets: ``--data NAME:SPLIT`` → (generator, whether a number of documents fits it,
#: what the set has, for the error).
_SYNTHETIC: dict[str, tuple[Callable[..., list[Record]], Callable[[int], bool], str]] = {
    "synthetic": (synthetic.generate, lambda n: 2 <= n <= synthetic.N_NAMES,
                  f"the synthetic set has 2 to {synthetic.N_NAMES} documents per question"),
    "synthetic-reasoning": (synthetic.generate_reasoning,
                            lambda n: 2 <= n <= synthetic.N_NAMES and n % 2 == 0,
                            "the synthetic reasoning set has an even number of documents from 2 "
                            f"to {synthetic.N_NAMES}"),
    "synthetic-judge": (synthetic.generate_judge, lambda n: 2 <= n <= synthetic.N_NAMES,
                        f"the synthetic judging set has 2 to {synthetic.N_NAMES} documents per "
                        "item"),
}


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
    if opts.data.startswith("synthetic"):
        return _synthetic(opts)
    refuse_remote(opts.data)
    records = load_records(opts.data, opts.data_format, split=split)
    if not records:
        raise ConfigError(f"--data: {opts.data} holds no records")
    if all(len(r.documents) == 1 and r.kind == "qa" for r in records) and opts.n_documents > 1:
        log.info("%s has one document per question: building %d-document sets", opts.data,
                 opts.n_documents)
        records = build_from_oracle(records, n_documents=opts.n_documents, seed=opts.seed)
    return records[:opts.limit] if opts.limit else records


def _synthetic(opts: DataOptions) -> list[Record]:
    """A synthetic set (``synthetic``, ``synthetic-reasoning``, ``synthetic-judge``; split
    ``test`` unless named), ``opts.limit`` records (default :data:`SYNTHETIC_DEFAULT_SIZE`)."""
    name, _, split = opts.data.partition(":")
    split = split or "test"
    family = max((k for k in _SYNTHETIC if opts.data.startswith(k)), key=len)
    if name != family or split not in synthetic.SPLITS:
        raise ConfigError(f"--data: {opts.data!r}: use one of "
                          + ", ".join(f"{family}:{s}" for s in synthetic.SPLITS))
    generate, fits, what = _SYNTHETIC[family]
    if not fits(opts.n_documents):
        raise ConfigError(f"--n-documents: {what}, got {opts.n_documents}")
    return generate(split, opts.limit or SYNTHETIC_DEFAULT_SIZE, seed=opts.seed,
                    n_documents=opts.n_documents)
