"""Read the data formats met in the wild (METHOD.md section 7) into :class:`Record` lists.

Every loader reads ``.jsonl`` or ``.jsonl.gz`` and returns ``list[Record]`` with documents in file
order. A malformed line raises :class:`DataError` naming the file, the 1-based line and the field,
so a user can open the file at the right place. :func:`build_from_oracle` turns single-passage
(oracle) records into n-document records using other questions' passages as distractors.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pos2distill.errors import ConfigError, DataError
from pos2distill.metrics import normalize_answer
from pos2distill.records import Document, Record, iter_jsonl, read_records

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: The names accepted by :func:`load_records` (besides ``"auto"``).
FORMATS = ("records", "litm", "authors", "kv")


# --------------------------------------------------------------------------------------------
# Field helpers: each checks one field of one parsed line and raises a DataError that names it.
# --------------------------------------------------------------------------------------------

def _stem(path: PathLike) -> str:
    """File name without ``.jsonl`` / ``.jsonl.gz`` (and ``.json`` variants), used in record ids."""
    name = Path(path).name
    for suffix in (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".gz"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _object(obj: Any, path: str, line: int) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
    return obj


def _get(obj: dict[str, Any], field: str, typ: type, path: str, line: int) -> Any:
    if field not in obj:
        raise DataError("missing", path=path, line=line, field=field)
    value = obj[field]
    if not isinstance(value, typ):
        raise DataError(f"must be a {typ.__name__}, got {type(value).__name__}", path=path,
                        line=line, field=field)
    return value


def _nonempty_string(obj: dict[str, Any], field: str, path: str, line: int) -> str:
    value = _get(obj, field, str, path, line)
    if not value.strip():
        raise DataError("must not be empty", path=path, line=line, field=field)
    return value


def _nonempty_list(obj: dict[str, Any], field: str, path: str, line: int) -> list[Any]:
    value = _get(obj, field, list, path, line)
    if not value:
        raise DataError("must not be empty", path=path, line=line, field=field)
    return value


def _answers(obj: dict[str, Any], path: str, line: int) -> tuple[str, ...]:
    answers = _nonempty_list(obj, "answers", path, line)
    # An empty gold answer would be a substring of every prediction, so it is refused here.
    if not all(isinstance(a, str) and a.strip() for a in answers):
        raise DataError("must be a non-empty list of non-empty strings", path=path, line=line,
                        field="answers")
    return tuple(answers)


def _record(path: str, line: int, **fields: Any) -> Record:
    """Build a Record, adding the file and line to any error its own validation raises."""
    try:
        return Record(**fields)
    except DataError as e:
        raise DataError(str(e), path=path, line=line, field=e.field) from None


# --------------------------------------------------------------------------------------------
# Loaders, one per format.
# --------------------------------------------------------------------------------------------

def load_litm_qa(path: PathLike) -> list[Record]:
    """Load lost-in-the-middle ``qa_data`` lines (oracle or n-document files).

    Fields used: ``question``, ``answers`` (non-empty list of strings) and ``ctxs`` (non-empty list
    of ``{title, text, isgold, ...}``); other fields are ignored. Exactly one ctx must have
    ``isgold: true``. Record ids are ``f"{stem}-{k}"`` with ``k`` the 0-based record index.
    """
    p, stem = str(path), _stem(path)
    records: list[Record] = []
    for k, (line, raw) in enumerate(iter_jsonl(path)):
        obj = _object(raw, p, line)
        question = _nonempty_string(obj, "question", p, line)
        answers = _answers(obj, p, line)
        ctxs = _nonempty_list(obj, "ctxs", p, line)
        documents: list[Document] = []
        gold: list[int] = []
        for i, ctx in enumerate(ctxs):
            documents.append(Document.from_dict(ctx, path=p, line=line, field=f"ctxs[{i}]"))
            # A missing flag means "not gold"; a string "true" is refused rather than guessed at.
            is_gold = ctx.get("isgold", False)
            if not isinstance(is_gold, bool):
                raise DataError(f"must be true or false, got {is_gold!r}", path=p, line=line,
                                field=f"ctxs[{i}].isgold")
            if is_gold:
                gold.append(i)
        if len(gold) != 1:
            where = f" (at indices {gold})" if gold else ""
            raise DataError(f"expected exactly one passage with isgold true, found {len(gold)}"
                            f"{where}", path=p, line=line, field="ctxs")
        records.append(_record(p, line, id=f"{stem}-{k}", question=question, answers=answers,
                               documents=tuple(documents), gold=(gold[0],), task="qa"))
    logger.info("loaded %d lost-in-the-middle QA records from %s", len(records), p)
    return records


def load_authors(path: PathLike) -> list[Record]:
    """Load the Pos2Distill authors' format.

    Fields used: ``question``, ``answers``, ``gold_document`` (``{title, text}``) and
    ``distractors`` (list of ``{title, text}``, may be empty). Documents are the gold document
    followed by the distractors, so ``gold == (0,)``.
    """
    p, stem = str(path), _stem(path)
    records: list[Record] = []
    for k, (line, raw) in enumerate(iter_jsonl(path)):
        obj = _object(raw, p, line)
        question = _nonempty_string(obj, "question", p, line)
        answers = _answers(obj, p, line)
        if "gold_document" not in obj:
            raise DataError("missing", path=p, line=line, field="gold_document")
        gold_doc = Document.from_dict(obj["gold_document"], path=p, line=line,
                                      field="gold_document")
        distractors = _get(obj, "distractors", list, p, line)
        documents = [gold_doc] + [
            Document.from_dict(d, path=p, line=line, field=f"distractors[{i}]")
            for i, d in enumerate(distractors)]
        records.append(_record(p, line, id=f"{stem}-{k}", question=question, answers=answers,
                               documents=tuple(documents), gold=(0,), task="qa"))
    logger.info("loaded %d authors'-format records from %s", len(records), p)
    return records


def load_kv(path: PathLike) -> list[Record]:
    """Load lost-in-the-middle key-value retrieval lines.

    Fields used: ``ordered_kv_records`` (list of ``[key, value]`` string pairs), ``key`` and
    ``value``. Each pair becomes one document with text ``"key": "value"`` and an empty title; the
    question is the key, the answer its value, and the gold document the pair holding the key
    (which must occur exactly once and carry ``value``).
    """
    p, stem = str(path), _stem(path)
    records: list[Record] = []
    for k, (line, raw) in enumerate(iter_jsonl(path)):
        obj = _object(raw, p, line)
        pairs = _nonempty_list(obj, "ordered_kv_records", p, line)
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(x, str) for x in pair)):
                raise DataError("must be a [key, value] pair of strings", path=p, line=line,
                                field=f"ordered_kv_records[{i}]")
        key = _nonempty_string(obj, "key", p, line)
        value = _nonempty_string(obj, "value", p, line)
        matches = [i for i, (pair_key, _) in enumerate(pairs) if pair_key == key]
        if len(matches) != 1:
            raise DataError(f"key {key!r} occurs {len(matches)} times in ordered_kv_records, "
                            "expected exactly once", path=p, line=line, field="key")
        gold = matches[0]
        if pairs[gold][1] != value:
            raise DataError(f"{value!r} differs from the value {pairs[gold][1]!r} stored for the "
                            f"key in ordered_kv_records[{gold}]", path=p, line=line,
                            field="value")
        documents = tuple(Document(title="", text=f'"{pk}": "{pv}"') for pk, pv in pairs)
        records.append(_record(p, line, id=f"{stem}-{k}", question=key, answers=(value,),
                               documents=documents, gold=(gold,), task="kv"))
    logger.info("loaded %d key-value records from %s", len(records), p)
    return records


_LOADERS: dict[str, Callable[[PathLike], list[Record]]] = {
    "records": read_records, "litm": load_litm_qa, "authors": load_authors, "kv": load_kv}


def detect_format(path: PathLike) -> str:
    """Guess the format of a file from the keys of its first non-blank line.

    ``documents`` + ``gold`` → ``"records"``; ``ctxs`` → ``"litm"``; ``gold_document`` →
    ``"authors"``; ``ordered_kv_records`` → ``"kv"``. Raises :class:`DataError` otherwise.
    """
    p = str(path)
    rows = iter_jsonl(path)
    try:
        first = next(rows, None)
    finally:
        rows.close()  # closes the file now instead of whenever the generator is collected
    if first is None:
        raise DataError("empty file: no JSON line to detect the format from", path=p)
    line, obj = first
    obj = _object(obj, p, line)
    keys = set(obj)
    if {"documents", "gold"} <= keys:
        return "records"
    if "ctxs" in keys:
        return "litm"
    if "gold_document" in keys:
        return "authors"
    if "ordered_kv_records" in keys:
        return "kv"
    raise DataError(
        f"cannot detect the format from keys {sorted(keys)}; expected one of: "
        "records (documents + gold), litm (ctxs), authors (gold_document), "
        "kv (ordered_kv_records). Pass the format explicitly if the keys are right.",
        path=p, line=line)


def load_records(path: PathLike, format: str = "auto") -> list[Record]:
    """Load any supported format; ``format`` is ``"auto"`` or one of :data:`FORMATS`."""
    if format == "auto":
        format = detect_format(path)
    elif format not in _LOADERS:
        raise ConfigError(f"format: unknown format {format!r}; expected 'auto' or one of "
                          f"{', '.join(FORMATS)}")
    return _LOADERS[format](path)


# --------------------------------------------------------------------------------------------
# Building n-document records from oracle records.
# --------------------------------------------------------------------------------------------

# Normalised answers shorter than this ("s", "ed", "us") occur inside unrelated words of almost
# every passage (NQ has a question whose answer is "S"), so they must occur as whole words to rule
# a passage out. Longer answers match as plain substrings, like the metric, which also catches
# "1945" in "1939–1945" or "obama" in "Obama's" (normalised "19391945", "obamas").
_MIN_SUBSTRING_ANSWER = 4


def _passage_key(doc: Document) -> str:
    """Normalised title + text: identifies a passage and is what answers are searched in."""
    return normalize_answer(f"{doc.title} {doc.text}")


def _contains_answer(passage_key: str, answers: Sequence[str]) -> bool:
    """Whether a normalised passage contains one of the (non-empty) normalised answers."""
    padded = f" {passage_key} "
    return any(a in passage_key if len(a) >= _MIN_SUBSTRING_ANSWER else f" {a} " in padded
               for a in answers)


def _sample_distractors(pool_size: int, need: int, ok: Callable[[int], bool],
                        rng: random.Random) -> list[int]:
    """Up to ``need`` distinct pool indices accepted by ``ok``, in random order.

    Rejection sampling first: almost every passage qualifies, so a few draws per distractor
    suffice, which is far cheaper than shuffling the whole pool for each record. Questions whose
    answer is very common (a number, say) may reject many draws; for those an exhaustive scan in
    random order guarantees that a shortfall really means too few candidates.
    """
    chosen: list[int] = []
    seen: set[int] = set()
    for _ in range(10 * need + 50):
        if len(chosen) == need:
            return chosen
        j = rng.randrange(pool_size)
        if j not in seen:
            seen.add(j)
            if ok(j):
                chosen.append(j)
    if len(chosen) < need:
        rest = [j for j in range(pool_size) if j not in seen]
        rng.shuffle(rest)
        for j in rest:
            if ok(j):
                chosen.append(j)
                if len(chosen) == need:
                    break
    return chosen


def build_from_oracle(records: Sequence[Record], *, n_documents: int,
                      seed: int) -> list[Record]:
    """Turn single-passage (oracle) records into ``n_documents``-document records.

    The distractors of a record are other records' gold passages, drawn with
    ``random.Random(seed)`` (the same input and seed always give the same output). A passage is
    never used as a distractor of a record if it is the record's own passage, or if its normalised
    title + text contains one of the record's normalised answers (it could then answer the
    question; answers under four characters must match whole words, see
    ``_MIN_SUBSTRING_ANSWER``). Passages are deduplicated on their normalised title + text, so no
    record gets the same passage twice. The gold passage comes first (``gold == (0,)``); placing it at a prompt
    position is left to :mod:`pos2distill.positions`.

    Raises:
        ValueError: ``n_documents`` is not a positive integer, or a record has more than one
            document.
        DataError: too few candidate passages for some record.
    """
    if isinstance(n_documents, bool) or not isinstance(n_documents, int) or n_documents < 1:
        raise ValueError(f"n_documents must be a positive integer, got {n_documents!r}")
    need = n_documents - 1

    # Pool of distinct passages; own[i] is the pool index of records[i]'s own passage.
    pool: list[Document] = []
    pool_keys: list[str] = []
    index_of: dict[str, int] = {}
    own: list[int] = []
    for r in records:
        if len(r.documents) != 1:
            raise ValueError(f"record {r.id!r} has {len(r.documents)} documents; "
                             "build_from_oracle expects single-passage (oracle) records")
        key = _passage_key(r.documents[0])
        if key not in index_of:
            index_of[key] = len(pool)
            pool.append(r.documents[0])
            pool_keys.append(key)
        own.append(index_of[key])
    if need and len(pool) - 1 < need:
        raise DataError(f"too few passages to build {n_documents}-document records: "
                        f"{len(pool)} distinct passages among {len(records)} records, "
                        f"each record needs {need} distractors besides its own")

    rng = random.Random(seed)
    built: list[Record] = []
    for r, own_index in zip(records, own):
        answers = [a for a in (normalize_answer(x) for x in r.answers) if a]

        def ok(j: int, own_index: int = own_index, answers: list[str] = answers) -> bool:
            return j != own_index and not _contains_answer(pool_keys[j], answers)

        chosen = _sample_distractors(len(pool), need, ok, rng) if need else []
        if len(chosen) < need:
            raise DataError(f"too few candidate passages for record {r.id!r}: only "
                            f"{len(chosen)} of {len(pool)} passages are neither its own nor "
                            f"contain one of its answers, {need} needed for "
                            f"n_documents={n_documents}")
        documents = (r.documents[0],) + tuple(pool[j] for j in chosen)
        built.append(Record(id=r.id, question=r.question, answers=r.answers,
                            documents=documents, gold=(0,), task=r.task))
    return built
