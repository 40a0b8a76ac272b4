"""The one record type for multi-document QA, and JSONL reading/writing.

A :class:`Record` holds a question, its gold answers and its documents in *dataset order*; ``gold``
lists the indices of the gold documents (one for retrieval; several, in hop order, for multi-hop).
Placing documents at prompt positions is the job of :mod:`pos2distill.tasks.positions`.

A judging item (``kind="judge"``) is the same record with two ``candidates`` (the answers to
compare, in the file's order) and an optional ``label`` (``"1"``, ``"2"`` or ``"tie"``); its
documents (the question's context) and its ``answers`` and ``gold`` may be empty. One type keeps
every stage, file and placement helper working on judging items unchanged.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from pos2distill.errors import DataError
from pos2distill.runinfo import atomic_path

#: What a record is: retrieval QA, key-value retrieval, a multi-hop question, or a judging item.
KINDS = ("qa", "kv", "multihop", "judge")
#: The labels of a judging item: candidate 1 wins, candidate 2 wins, or a tie.
JUDGE_LABELS = ("1", "2", "tie")


@dataclass(frozen=True)
class Document:
    title: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"title": self.title, "text": self.text}

    @classmethod
    def from_dict(cls, d: Any, *, path: str | None = None, line: int | None = None,
                  field: str = "document") -> "Document":
        if not isinstance(d, dict):
            raise DataError(f"expected an object with 'title' and 'text', got {type(d).__name__}",
                            path=path, line=line, field=field)
        title = d.get("title", "")
        text = d.get("text")
        if title is None:
            title = ""
        if not isinstance(title, str):
            raise DataError("must be a string", path=path, line=line, field=f"{field}.title")
        if not isinstance(text, str):
            raise DataError("missing or not a string", path=path, line=line, field=f"{field}.text")
        return cls(title=title, text=text)


@dataclass(frozen=True)
class Record:
    """One multi-document question.

    Attributes:
        id: stable identifier (used to key outputs and seed distractor orders).
        question: the question (for key-value retrieval: the key).
        answers: gold answers; any of them counts as correct.
        documents: all documents, gold and distractors, in dataset order.
        gold: indices into ``documents`` of the gold documents, in hop order.
        kind: ``"qa"`` (retrieval QA), ``"kv"`` (key-value retrieval), ``"multihop"``
            (multi-hop reasoning; aliases of the answer are simply more ``answers``) or
            ``"judge"`` (a judging item). Not the ``--task`` (a :mod:`pos2distill.tasks` Task),
            which says how the record is asked.
        candidates: a judging item's two answers, in the order the item lists them; ``()`` for
            the other kinds.
        label: a judging item's better candidate, ``"1"``, ``"2"`` or ``"tie"`` (None: unknown).
    """

    id: str
    question: str
    answers: tuple[str, ...]
    documents: tuple[Document, ...]
    gold: tuple[int, ...]
    kind: str = "qa"
    candidates: tuple[str, ...] = ()
    label: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "judge":
            self._check_judge()
        else:
            if self.candidates or self.label is not None:
                raise DataError(f"record {self.id!r}: only judging items (kind judge) have "
                                "candidates and a label", field="candidates")
            if not self.answers:
                raise DataError(f"record {self.id!r} has no answers", field="answers")
            if not self.gold:
                raise DataError(f"record {self.id!r} has no gold document", field="gold")
        for g in self.gold:
            if not 0 <= g < len(self.documents):
                raise DataError(f"record {self.id!r}: gold index {g} outside its "
                                f"{len(self.documents)} documents", field="gold")
        if len(set(self.gold)) != len(self.gold):
            raise DataError(f"record {self.id!r}: repeated gold index", field="gold")

    def _check_judge(self) -> None:
        if len(self.candidates) != 2:
            raise DataError(f"judging item {self.id!r} has {len(self.candidates)} candidate "
                            "answers; a pair needs exactly 2", field="candidates")
        for k, c in enumerate(self.candidates, start=1):
            if not isinstance(c, str) or not c.strip():
                raise DataError(f"judging item {self.id!r}: answer {k} of the pair is missing "
                                "or empty", field="candidates")
        if self.label is not None and self.label not in JUDGE_LABELS:
            raise DataError(f"judging item {self.id!r}: label {self.label!r} is not one of the "
                            f"candidates ({', '.join(JUDGE_LABELS)})", field="label")

    @property
    def gold_document(self) -> Document:
        """The gold document of a single-gold (retrieval) record."""
        if len(self.gold) != 1:
            raise DataError(f"record {self.id!r} has {len(self.gold)} gold documents; "
                            "retrieval needs exactly one", field="gold")
        return self.documents[self.gold[0]]

    @property
    def distractors(self) -> tuple[Document, ...]:
        gold = set(self.gold)
        return tuple(d for i, d in enumerate(self.documents) if i not in gold)

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "question": self.question, "answers": list(self.answers),
               "documents": [d.to_dict() for d in self.documents], "gold": list(self.gold),
               "kind": self.kind}
        if self.kind == "judge":
            out.update(candidates=list(self.candidates), label=self.label)
        return out

    @classmethod
    def from_dict(cls, d: Any, *, path: str | None = None, line: int | None = None) -> "Record":
        """Parse our own format (what :meth:`to_dict` writes)."""
        if not isinstance(d, dict):
            raise DataError(f"expected a JSON object, got {type(d).__name__}", path=path, line=line)
        for key, typ in (("id", str), ("question", str), ("answers", list), ("documents", list),
                         ("gold", list)):
            if key not in d:
                raise DataError("missing", path=path, line=line, field=key)
            if not isinstance(d[key], typ):
                raise DataError(f"must be a {typ.__name__}", path=path, line=line, field=key)
        # "task" is the key files written before the Task redesign used for the kind.
        key = "kind" if "kind" in d else "task"
        kind = d.get(key, "qa")
        if kind not in KINDS:
            raise DataError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})",
                            path=path, line=line, field=key)
        judge = kind == "judge"   # a judging item may have no answers, documents or gold
        answers = d["answers"]
        if (not answers and not judge) or not all(isinstance(a, str) and a.strip()
                                                  for a in answers):
            raise DataError("must be a non-empty list of non-empty strings", path=path, line=line,
                            field="answers")
        docs = tuple(Document.from_dict(x, path=path, line=line, field=f"documents[{i}]")
                     for i, x in enumerate(d["documents"]))
        gold = d["gold"]
        if (not gold and not judge) or not all(isinstance(g, int) and not isinstance(g, bool)
                                               for g in gold):
            raise DataError("must be a non-empty list of integers", path=path, line=line,
                            field="gold")
        extra: dict[str, Any] = {}
        if judge:
            candidates = d.get("candidates")
            if not isinstance(candidates, list):
                raise DataError("missing or not a list (a judging item has two candidate "
                                "answers)", path=path, line=line, field="candidates")
            extra = {"candidates": tuple(candidates), "label": judge_label(d.get("label"))}
        try:
            return cls(id=d["id"], question=d["question"], answers=tuple(answers),
                       documents=docs, gold=tuple(gold), kind=kind, **extra)
        except DataError as e:
            raise DataError(str(e), path=path, line=line, field=e.field) from None


def judge_label(value: Any) -> str | None:
    """A judging label as stored: ``"1"``, ``"2"``, ``"tie"`` or None; the integers 1 and 2 are
    read as ``"1"`` and ``"2"``. Anything else is returned as text for the record to refuse."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) else repr(value)


def open_text(path: str | os.PathLike, mode: str = "rt") -> io.TextIOBase:
    """Open ``.jsonl`` or ``.jsonl.gz`` as UTF-8 text."""
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, mode, encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def _has_unpaired_surrogate(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_object)`` for each non-blank line; 1-based line numbers."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", path=str(path))
    try:
        with open_text(p) as f:
            for n, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise DataError(f"malformed JSON ({e.msg} at column {e.colno})",
                                    path=str(path), line=n) from None
                except RecursionError:
                    raise DataError("JSON nested too deeply", path=str(path), line=n) from None
                if "\\ud" in raw.lower() and _has_unpaired_surrogate(obj):
                    # Valid JSON but not valid Unicode: it would fail later, when written out.
                    raise DataError("unpaired surrogate escape (\\ud800 to \\udfff): the text is not "
                                    "valid Unicode", path=str(path), line=n)
                yield n, obj
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read ({e})", path=str(path)) from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows atomically: to a temporary name, then renamed over ``path``
    (:func:`pos2distill.runinfo.atomic_path`; .gz files are compressed like the target)."""
    with atomic_path(path) as tmp, open_text(tmp, "wt") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_records(path: str | os.PathLike) -> list[Record]:
    """Read a file in our own record format."""
    return [Record.from_dict(obj, path=str(path), line=n) for n, obj in iter_jsonl(path)]


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> None:
    write_jsonl(path, (r.to_dict() for r in records))


def read_append_log(path: str | os.PathLike) -> list[Any]:
    """Rows of an append-only JSONL output that a killed run may have left mid-line.

    Every complete row ends with a newline, so a last line without one is a torn write: it is cut
    off the file (so later appends start on a clean line) and the rows before it are returned.
    A missing file holds no rows.
    """
    path = Path(path)
    if not path.exists():
        return []
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
    return [obj for _, obj in iter_jsonl(path)]
