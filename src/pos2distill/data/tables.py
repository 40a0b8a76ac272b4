"""Parquet files and ``datasets`` folders as rows for the loaders, read through the ``datasets``
library (an optional dependency: ``pip install 'pos2distill[data]'``, imported only here and only
when such a source is read): folders with ``load_from_disk``, Parquet files with the Arrow reader
it installs (``pyarrow.parquet``, batch by batch, decoded ahead in a reader thread).

A *table source* is a ``.parquet`` file, a folder written by ``Dataset.save_to_disk`` (one split;
also each split's subfolder of a ``DatasetDict``), or a ``DatasetDict.save_to_disk`` folder, whose
split ``--split`` names. Rows come out as plain dicts in file order, numbered from 1 like the lines
of a JSONL file, so every loader and every error message works the same on them. Nothing is ever
downloaded: a name that is not a local path is refused (:func:`refuse_remote`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pos2distill.errors import ConfigError, DataError


PathLike = str | os.PathLike

#: Rows converted from Arrow to Python objects at a time: large enough that the per-batch cost
#: vanishes, small enough that a huge file is never held twice in memory.
BATCH_ROWS = 1000

#: Parquet batches decoded ahead of the one being turned into records.
READ_AHEAD = 2

#: Files that mark a ``save_to_disk`` folder: of one split, and of a DatasetDict.
DATASET_MARK, DATASET_DICT_MARK = "state.json", "dataset_dict.json"

#: Suffixes of the files ``--data`` reads; a missing path with one of them is a missing file, not a
#: hub name.
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".gz", ".parquet")

# A hub repository id: ``name`` or ``org/name`` of letters, digits, ``-``, ``_`` and ``.``.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_table(path: PathLike) -> bool:
    """Whether ``path`` is a Parquet file or a ``datasets`` folder (read by :func:`iter_table`)."""
    p = Path(path)
    if p.is_dir():
        return (p / DATASET_MARK).is_file() or (p / DATASET_DICT_MARK).is_file()
    return p.name.endswith(".parquet")


def refuse_remote(spec: str) -> None:
    """Refuse a ``--data`` that is no local path but reads like a hub dataset id or a URL: nothing
    is downloaded, so the user must fetch it elsewhere and pass the folder."""
    if Path(spec).expanduser().exists() or spec.endswith(FILE_SUFFIXES):
        return
    if "://" in spec or _HUB_ID.match(spec):
        raise ConfigError(f"--data: {spec!r} is not a local file or folder, and datasets are never "
                          "downloaded: pass a local path (save a hub dataset with "
                          "datasets.load_dataset(NAME).save_to_disk(DIR) where there is network, "
                          "then --data DIR)")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError("--data: reading Parquet files and datasets folders needs the datasets "
                          "library: pip install 'pos2distill[data]'") from None
    return datasets


def _has_nulls(array: Any) -> bool:
    """Whether an Arrow array holds a null anywhere, struct fields and list items included."""
    import pyarrow as pa   # installed with datasets

    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    for chunk in chunks:
        if chunk.null_count:
            return True
        kind = chunk.type
        if pa.types.is_struct(kind):
            if any(_has_nulls(chunk.field(i)) for i in range(kind.num_fields)):
                return True
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            if _has_nulls(chunk.flatten()):
                return True
    return False


def _without_nulls(value: Any) -> Any:
    """``value`` with every null-valued key of every dict removed, at any depth.

    Arrow has no missing key: a struct field absent from one row (a passage without ``isgold``,
    say) is stored as null in that row. Dropping the nulls gives the loaders the row a JSON line
    would have been, so "missing" keeps the meaning it has there (``title`` missing is "", a
    missing ``isgold`` is not gold). Nulls inside lists are kept, and refused by the loaders."""
    if type(value) is dict:
        return {k: _without_nulls(v) if type(v) in (dict, list) else v
                for k, v in value.items() if v is not None}
    return [_without_nulls(v) if type(v) in (dict, list) else v for v in value]


def resolve_split(path: PathLike, split: str = "") -> str:
    """The split to read: ``split`` for a DatasetDict folder (its only split when ``split`` is
    empty), ``""`` for a single-split source. Refuses a split the folder does not have, and
    ``--split`` with a source that has no splits to choose from."""
    p = Path(path)
    if not (p.is_dir() and (p / DATASET_DICT_MARK).is_file()):
        if split:
            raise ConfigError(f"--split {split}: {path} has no splits to choose from; --split "
                              "names a split of a DatasetDict folder (saved with save_to_disk)")
        return ""
    try:
        splits = [str(s) for s in json.loads((p / DATASET_DICT_MARK).read_text())["splits"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"not a readable DatasetDict folder ({e})", path=str(p / DATASET_DICT_MARK))
    if not split:
        if len(splits) != 1:
            raise ConfigError(f"--split: {path} is a DatasetDict with the splits "
                              f"{', '.join(splits)}; name one with --split")
        return splits[0]
    if split not in splits:
        raise ConfigError(f"--split: {path} has no split {split!r}; its splits are "
                          f"{', '.join(splits)}")
    return split


def source_name(path: PathLike, split: str = "") -> str:
    """The name record ids and errors use for a source: ``DIR/SPLIT`` for a split of a
    DatasetDict folder, else the path."""
    split = resolve_split(path, split)
    return f"{path}/{split}" if split else str(path)


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """Silence the datasets library's own log lines: a file it cannot read also comes back as an
    exception, which becomes our one-line error."""
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def _open(path: PathLike, split: str) -> Any:
    """The ``datasets`` object of a folder (memory-mapped), or a Parquet file's
    ``pyarrow.parquet.ParquetFile`` (read batch by batch from the file itself, never copied into
    the datasets cache: the Arrow reader datasets itself uses, without the streaming layer on top,
    which made a Parquet file 1.2x slower to read than the same records in JSONL)."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", path=str(path))
    split = resolve_split(path, split)
    datasets = _datasets()
    try:
        if p.is_dir():
            with _quiet(datasets):
                return datasets.load_from_disk(str(p / split) if split else str(p))
        import pyarrow.parquet as pq   # installed with datasets

        return pq.ParquetFile(p)
    except (OSError, ValueError) as e:   # pyarrow's and datasets' errors on damaged files
        raise DataError(f"cannot read ({e})", path=source_name(path, split)) from None


def columns(path: PathLike, split: str = "") -> list[str]:
    """The column names of a table source (what format detection reads, as a JSONL line's keys).
    A Parquet file's come from its footer, without starting a stream (which would import torch,
    through datasets, only to refuse a file of unknown columns)."""
    p = Path(path)
    if p.is_file():
        _datasets()
        import pyarrow.parquet as pq   # installed with datasets

        try:
            return list(pq.read_schema(p).names)
        except (OSError, ValueError) as e:   # not a Parquet file, or a damaged one
            raise DataError(f"cannot read ({e})", path=str(path)) from None
    return list(_open(path, split).column_names or [])


def _batches(source: Any) -> Iterator[Any]:
    """Arrow batches of :data:`BATCH_ROWS` rows of an opened source (a ``ParquetFile`` or a
    ``datasets.Dataset``)."""
    if hasattr(source, "iter_batches"):
        # Decoding Parquet pages releases the GIL: a reader thread decodes the next batches while
        # this one turns the current batch into records (about a third of a Parquet read).
        return _read_ahead(source.iter_batches(batch_size=BATCH_ROWS))
    return source.with_format("arrow").iter(batch_size=BATCH_ROWS)


def _read_ahead(items: Iterator[Any], depth: int = READ_AHEAD) -> Iterator[Any]:
    """``items`` in order, produced by a background thread up to ``depth`` ahead. An exception in
    the thread is raised here, in its place; closing this generator early stops the thread."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("end", None)
        except BaseException as e:   # handed to the consumer, which raises it
            put("error", e)

    thread = threading.Thread(target=produce, name="parquet-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def iter_table(path: PathLike, split: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row, object)`` for each row of a table source, ``row`` counting from 1."""
    source = _open(path, split)
    row = 0
    try:
        for batch in _batches(source):   # a pyarrow RecordBatch or Table
            objs = batch.to_pylist()
            # Only a batch with nulls needs the walk through every row (most files have none).
            if any(_has_nulls(column) for column in batch.columns):
                objs = [_without_nulls(obj) for obj in objs]
            for obj in objs:
                row += 1
                yield row, obj
    except (OSError, ValueError) as e:   # a file damaged past its first batch
        raise DataError(f"cannot read ({e})", path=source_name(path, split), line=row + 1) from None
