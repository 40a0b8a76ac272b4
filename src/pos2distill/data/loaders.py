"""Read the data formats met in the wild (METHOD.md section 7) into :class:`Record` lists.

Every loader reads ``.jsonl`` or ``.jsonl.gz`` (or a JSON array), a Parquet file or a ``datasets``
folder (:mod:`pos2distill.data.tables`; ``split`` picks a split of a DatasetDict folder) and returns
``list[Record]`` with documents in file order. A malformed line raises :class:`DataError` naming the
file, the 1-based line (a Parquet file's or dataset's row) and the field, so a user can open the
file at the right place. :func:`build_from_oracle` turns single-passage
(oracle) records into n-document records using other questions' passages as distractors.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pos2distill.data import tables
from pos2distill.data.records import (Document, Record, _has_unpaired_surrogate, iter_jsonl,
                                      open_text)
from pos2distill.errors import ConfigError, DataError
from pos2distill.metrics import normalize_answer

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: The names accepted by :func:`load_records` (besides ``"auto"``).
FORMATS = ("records", "litm", "authors", "kv", "musique", "hotpotqa", "2wiki", "mtbench",
           "llmbar", "rewardbench")


# --------------------------------------------------------------------------------------------
# Field helpers: each checks one field of one parsed line and raises a DataError that names it.
# --------------------------------------------------------------------------------------------

def _stem(path: PathLike) -> str:
    """File name without ``.jsonl`` / ``.jsonl.gz`` (and ``.json`` variants, ``.parquet``), used
    in record ids."""
    name = Path(path).name
    for suffix in (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".gz", ".parquet"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _names(path: PathLike, split: str) -> tuple[str, str]:
    """(the name errors give the source, the stem of its record ids): the path and its file name
    without suffix; ``DIR/SPLIT`` and ``DIR-SPLIT`` for a split of a DatasetDict folder, so two
    splits of one folder never share ids."""
    name = tables.source_name(path, split)
    if name == str(path):
        return name, _stem(path)
    return name, f"{_stem(path)}-{Path(name).name}"


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

def load_litm_qa(path: PathLike, *, split: str = "") -> list[Record]:
    """Load lost-in-the-middle ``qa_data`` lines (oracle or n-document files).

    Fields used: ``question``, ``answers`` (non-empty list of strings) and ``ctxs`` (non-empty list
    of ``{title, text, isgold, ...}``); other fields are ignored. Exactly one ctx must have
    ``isgold: true``. Record ids are ``f"{stem}-{k}"`` with ``k`` the 0-based record index.
    """
    p, stem = _names(path, split)
    records: list[Record] = []
    for k, (line, raw) in enumerate(iter_rows(path, split=split)):
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
                               documents=tuple(documents), gold=(gold[0],), kind="qa"))
    logger.info("loaded %d lost-in-the-middle QA records from %s", len(records), p)
    return records


def load_authors(path: PathLike, *, split: str = "") -> list[Record]:
    """Load the Pos2Distill authors' format.

    Fields used: ``question``, ``answers``, ``gold_document`` (``{title, text}``) and
    ``distractors`` (list of ``{title, text}``, may be empty). Documents are the gold document
    followed by the distractors, so ``gold == (0,)``.
    """
    p, stem = _names(path, split)
    records: list[Record] = []
    for k, (line, raw) in enumerate(iter_rows(path, split=split)):
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
                               documents=tuple(documents), gold=(0,), kind="qa"))
    logger.info("loaded %d authors'-format records from %s", len(records), p)
    return records


def load_kv(path: PathLike, *, split: str = "") -> list[Record]:
    """Load lost-in-the-middle key-value retrieval lines.

    Fields used: ``ordered_kv_records`` (list of ``[key, value]`` string pairs), ``key`` and
    ``value``. Each pair becomes one document with text ``"key": "value"`` and an empty title; the
    question is the key, the answer its value, and the gold document the pair holding the key
    (which must occur exactly once and carry ``value``).
    """
    p, stem = _names(path, split)
    records: list[Record] = []
    for k, (line, raw) in enumerate(iter_rows(path, split=split)):
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
                               documents=documents, gold=(gold,), kind="kv"))
    logger.info("loaded %d key-value records from %s", len(records), p)
    return records


# --------------------------------------------------------------------------------------------
# Multi-hop QA (MuSiQue, HotpotQA, 2WikiMultihopQA): several gold documents, in hop order.
# --------------------------------------------------------------------------------------------

def iter_rows(path: PathLike, *, split: str = "") -> Iterator[tuple[int, Any]]:
    """``(line, object)`` for a JSONL file, or for each item of a file holding one JSON array
    (HotpotQA and 2WikiMultihopQA ship ``.json`` arrays); ``line`` is the 1-based line where the
    item starts, so errors point into the file either way. For a Parquet file or a ``datasets``
    folder (``split``: of a DatasetDict), ``(row, object)`` with the 1-based row."""
    p = str(path)
    if tables.is_table(path):
        yield from tables.iter_table(path, split)
        return
    tables.resolve_split(path, split)   # refuses a --split for a file without splits
    if not Path(p).exists():
        raise DataError("file not found", path=p)
    try:
        with open_text(p) as f:
            head = f.read(4096).lstrip()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read ({e})", path=p) from None
    if not head.startswith("["):
        yield from iter_jsonl(p)
        return
    try:
        with open_text(p) as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:   # past the first 4096 characters
        raise DataError(f"cannot read ({e})", path=p) from None
    decoder = json.JSONDecoder()
    i, line = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    pos_line = text.index("[")  # `line` is the line of text[pos_line]

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    while True:
        i = skip(i)
        if i < len(text) and text[i] == "]":
            return
        line += text.count("\n", pos_line, i)
        pos_line = i
        start = i
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON ({e.msg})", path=p, line=e.lineno) from None
        except RecursionError:
            raise DataError("JSON nested too deeply", path=p, line=line) from None
        if "\\ud" in text[start:i].lower() and _has_unpaired_surrogate(obj):
            raise DataError("unpaired surrogate escape (\\ud800 to \\udfff): the text is not "
                            "valid Unicode", path=p, line=line)
        yield line, obj
        i = skip(i)
        if i < len(text) and text[i] == ",":
            i += 1
        elif i >= len(text) or text[i] != "]":
            bad = line + text.count("\n", pos_line, i)
            raise DataError("malformed JSON array (expected ',' or ']')", path=p, line=bad)


def _answer_and_aliases(obj: dict[str, Any], path: str, line: int, *,
                        aliases: str | None) -> tuple[str, ...]:
    answer = obj.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise DataError("missing or not a non-empty string", path=path, line=line, field="answer")
    out = [answer]
    if aliases is not None and aliases in obj:
        extra = obj[aliases]
        if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
            raise DataError("must be a list of strings", path=path, line=line, field=aliases)
        out += [a for a in extra if a.strip() and a not in out]
    return tuple(out)


def load_musique(path: PathLike, *, split: str = "") -> list[Record]:
    """Load MuSiQue lines (``musique_ans`` or ``musique_full``).

    Fields used: ``id``, ``question``, ``paragraphs`` (``idx``, ``title``, ``paragraph_text``,
    ``is_supporting``), ``question_decomposition`` (the hops in order, each with
    ``paragraph_support_idx``, the ``idx`` of its paragraph), ``answer``, ``answer_aliases`` and
    ``answerable``. Unanswerable questions (``answerable: false``) are skipped and counted. The gold
    documents are the hops' paragraphs in hop order (a paragraph supporting two hops counts once);
    they must be exactly the paragraphs marked ``is_supporting``."""
    p, _ = _names(path, split)
    records: list[Record] = []
    skipped = 0
    for line, raw in iter_rows(path, split=split):
        obj = _object(raw, p, line)
        answerable = obj.get("answerable", True)
        if not isinstance(answerable, bool):
            raise DataError("must be true or false", path=p, line=line, field="answerable")
        if not answerable:
            skipped += 1
            continue
        rid = _nonempty_string(obj, "id", p, line)
        question = _nonempty_string(obj, "question", p, line)
        answers = _answer_and_aliases(obj, p, line, aliases="answer_aliases")
        paragraphs = _nonempty_list(obj, "paragraphs", p, line)
        documents: list[Document] = []
        index_of: dict[int, int] = {}
        supporting: set[int] = set()
        for i, para in enumerate(paragraphs):
            field = f"paragraphs[{i}]"
            if not isinstance(para, dict):
                raise DataError("must be an object", path=p, line=line, field=field)
            idx = para.get("idx", i)
            if not isinstance(idx, int) or isinstance(idx, bool) or idx in index_of:
                raise DataError("must be an integer, unique in the question", path=p, line=line,
                                field=f"{field}.idx")
            text = para.get("paragraph_text")
            if not isinstance(text, str):
                raise DataError("missing or not a string", path=p, line=line,
                                field=f"{field}.paragraph_text")
            title = para.get("title") or ""
            if not isinstance(title, str):
                raise DataError("must be a string", path=p, line=line, field=f"{field}.title")
            is_supporting = para.get("is_supporting", False)
            if not isinstance(is_supporting, bool):
                raise DataError("must be true or false", path=p, line=line,
                                field=f"{field}.is_supporting")
            index_of[idx] = i
            if is_supporting:
                supporting.add(i)
            documents.append(Document(title=title, text=text))
        hops = _nonempty_list(obj, "question_decomposition", p, line)
        gold: list[int] = []
        for k, hop in enumerate(hops):
            field = f"question_decomposition[{k}].paragraph_support_idx"
            support = hop.get("paragraph_support_idx") if isinstance(hop, dict) else None
            if not isinstance(support, int) or isinstance(support, bool):
                raise DataError("missing or not an integer", path=p, line=line, field=field)
            if support not in index_of:
                raise DataError(f"{support} is not the idx of any paragraph", path=p, line=line,
                                field=field)
            if index_of[support] not in gold:
                gold.append(index_of[support])
        if set(gold) != supporting:
            raise DataError(f"the hops' paragraphs {sorted(gold)} differ from those marked "
                            f"is_supporting {sorted(supporting)}", path=p, line=line,
                            field="question_decomposition")
        records.append(_record(p, line, id=rid, question=question, answers=answers,
                               documents=tuple(documents), gold=tuple(gold), kind="multihop"))
    if skipped:
        logger.info("skipped %d unanswerable MuSiQue questions in %s", skipped, p)
    logger.info("loaded %d MuSiQue records from %s", len(records), p)
    return records


def _by_rows(obj: dict[str, Any], field: str, keys: Sequence[Sequence[str]], path: str,
             line: int) -> dict[str, Any]:
    """``obj`` with ``obj[field]`` as a list of rows when it is stored by columns, as on the
    Hugging Face hub (Arrow cannot hold the lists of mixed types of the original JSON):
    ``{"title": [t, ...], "sentences": [s, ...]}`` becomes ``[[t, s], ...]``. ``keys`` lists, per
    element of a row, the names its column may have. Any other ``obj`` is returned as it is."""
    value = obj.get(field)
    if not isinstance(value, dict):
        return obj
    cols = []
    for names in keys:
        name = next((n for n in names if n in value), None)
        if name is None or not isinstance(value[name], list):
            raise DataError(f"stored by columns but without a list '{names[0]}'", path=path,
                            line=line, field=field)
        cols.append(value[name])
    if len({len(c) for c in cols}) > 1:
        raise DataError(f"columns {', '.join(n[0] for n in keys)} of different lengths",
                        path=path, line=line, field=field)
    return {**obj, field: [list(row) for row in zip(*cols)]}


def _context(obj: dict[str, Any], path: str, line: int) -> list[Document]:
    """HotpotQA / 2Wiki ``context``: ``[[title, [sentence, ...]], ...]`` (or by columns,
    ``{title: [...], sentences: [[...], ...]}``, ``content`` for 2Wiki's); the text is the
    sentences joined by single spaces."""
    obj = _by_rows(obj, "context", [("title",), ("sentences", "content")], path, line)
    context = _nonempty_list(obj, "context", path, line)
    documents = []
    for i, item in enumerate(context):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], list) and all(isinstance(s, str) for s in item[1])):
            raise DataError("must be [title, [sentence, ...]]", path=path, line=line,
                            field=f"context[{i}]")
        documents.append(Document(title=item[0], text=" ".join(s.strip() for s in item[1]
                                                               if s.strip())))
    return documents


def _supporting_titles(obj: dict[str, Any], documents: Sequence[Document], path: str,
                       line: int) -> list[int]:
    """Indices of the documents named by ``supporting_facts`` (``[[title, sent_id], ...]``, or by
    columns ``{title: [...], sent_id: [...]}``), in order of first mention."""
    obj = _by_rows(obj, "supporting_facts", [("title",), ("sent_id",)], path, line)
    facts = _nonempty_list(obj, "supporting_facts", path, line)
    index_of: dict[str, int] = {}
    for i, d in enumerate(documents):
        index_of.setdefault(d.title, i)
    gold: list[int] = []
    for k, fact in enumerate(facts):
        if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str)
                and isinstance(fact[1], int)):
            raise DataError("must be [title, sentence index]", path=path, line=line,
                            field=f"supporting_facts[{k}]")
        if fact[0] not in index_of:
            raise DataError(f"title {fact[0]!r} is not in context", path=path, line=line,
                            field=f"supporting_facts[{k}]")
        if index_of[fact[0]] not in gold:
            gold.append(index_of[fact[0]])
    return gold


def _mentions(doc: Document, title: str) -> bool:
    return bool(title) and title.lower() in doc.text.lower()


def bridge_order(documents: Sequence[Document], gold: list[int]) -> list[int]:
    """Hop order of two gold documents of a bridge question: the first hop mentions the bridge
    entity, which is the second hop's title. Kept as given when that does not decide it."""
    if len(gold) != 2:
        return gold
    a, b = gold
    a_to_b = _mentions(documents[a], documents[b].title)
    b_to_a = _mentions(documents[b], documents[a].title)
    return [b, a] if b_to_a and not a_to_b else gold


def _wiki_multihop_fields(raw: Any, path: str, line: int) -> tuple[dict[str, Any], str, str,
                                                                     tuple[str, ...]]:
    """The row object and its ``_id``, ``question`` and ``answer`` (HotpotQA and 2Wiki share them)."""
    obj = _object(raw, path, line)
    return (obj, _nonempty_string(obj, "_id", path, line),
            _nonempty_string(obj, "question", path, line),
            _answer_and_aliases(obj, path, line, aliases=None))


def load_hotpotqa(path: PathLike, *, split: str = "") -> list[Record]:
    """Load HotpotQA (distractor setting; a ``.json`` array or JSONL).

    Fields used: ``_id``, ``question``, ``answer``, ``context``, ``supporting_facts`` and ``type``.
    HotpotQA does not give hop order: the gold documents are those named by ``supporting_facts``,
    in order of first mention, except that for ``bridge`` questions the document that mentions the
    other's title (the bridge entity) comes first. Comparison questions keep the given order."""
    p, _ = _names(path, split)
    records: list[Record] = []
    for line, raw in iter_rows(path, split=split):
        obj, rid, question, answers = _wiki_multihop_fields(raw, p, line)
        kind = obj.get("type", "bridge")
        if kind not in ("bridge", "comparison"):
            raise DataError(f"{kind!r} is not bridge or comparison", path=p, line=line,
                            field="type")
        documents = _context(obj, p, line)
        gold = _supporting_titles(obj, documents, p, line)
        if kind == "bridge":
            gold = bridge_order(documents, gold)
        records.append(_record(p, line, id=rid, question=question, answers=answers,
                               documents=tuple(documents), gold=tuple(gold), kind="multihop"))
    logger.info("loaded %d HotpotQA records from %s", len(records), p)
    return records


def load_2wiki(path: PathLike, *, split: str = "") -> list[Record]:
    """Load 2WikiMultihopQA (a ``.json`` array or JSONL).

    Fields used: ``_id``, ``question``, ``answer``, ``context``, ``supporting_facts``, ``type`` and
    ``evidences`` (``[[subject, relation, object], ...]`` in reasoning order). The gold documents
    are those named by ``supporting_facts``, ordered by the first evidence whose subject is their
    title (documents no evidence starts from keep their supporting-facts order, after the others)."""
    p, _ = _names(path, split)
    records: list[Record] = []
    for line, raw in iter_rows(path, split=split):
        obj, rid, question, answers = _wiki_multihop_fields(raw, p, line)
        documents = _context(obj, p, line)
        gold = _supporting_titles(obj, documents, p, line)
        # By columns on the hub: {fact: [subject, ...], relation: [...], entity: [object, ...]}.
        obj = _by_rows(obj, "evidences", [("fact",), ("relation",), ("entity",)], p, line)
        evidences = _get(obj, "evidences", list, p, line)
        subjects: list[str] = []
        for k, ev in enumerate(evidences):
            if not (isinstance(ev, list) and len(ev) == 3 and all(isinstance(x, str) for x in ev)):
                raise DataError("must be [subject, relation, object]", path=p, line=line,
                                field=f"evidences[{k}]")
            subjects.append(ev[0])

        def rank(g: int) -> tuple[int, int]:
            title = documents[g].title
            first = next((k for k, s in enumerate(subjects) if s == title), len(subjects))
            return first, gold.index(g)

        gold = sorted(gold, key=rank)
        records.append(_record(p, line, id=rid, question=question, answers=answers,
                               documents=tuple(documents), gold=tuple(gold), kind="multihop"))
    logger.info("loaded %d 2WikiMultihopQA records from %s", len(records), p)
    return records


def load_own(path: PathLike, *, split: str = "") -> list[Record]:
    """Load our own format (what :func:`pos2distill.data.records.write_records` writes)."""
    p, _ = _names(path, split)
    return [Record.from_dict(obj, path=p, line=n) for n, obj in iter_rows(path, split=split)]


# --------------------------------------------------------------------------------------------
# Pairwise judgements (LLM-as-a-judge): a question and two answers, an optional label.
# --------------------------------------------------------------------------------------------

def _candidate(obj: dict[str, Any], field: str, path: str, line: int) -> str:
    """One answer of a pair: a non-empty string, else "one answer missing"."""
    value = obj.get(field)
    if not isinstance(value, str) or not value.strip():
        raise DataError("one answer of the pair is missing or empty (a judging item needs both)",
                        path=path, line=line, field=field)
    return value


def _judge_record(path: str, line: int, *, id: str, question: str, candidates: tuple[str, str],
                  label: str | None) -> Record:
    return _record(path, line, id=id, question=question, answers=(), documents=(), gold=(),
                   kind="judge", candidates=candidates, label=label)


def _first_exchange(obj: dict[str, Any], field: str, path: str, line: int) -> tuple[str, str]:
    """(first user turn, the assistant turn right after it) of the conversation list ``field``."""
    turns = _get(obj, field, list, path, line)
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise DataError("must be an object with 'role' and a string 'content'", path=path,
                            line=line, field=f"{field}[{i}]")
    user = next((i for i, t in enumerate(turns) if t.get("role") == "user"), None)
    if user is None or not turns[user]["content"].strip():
        raise DataError("no user turn (the question)", path=path, line=line, field=field)
    reply = turns[user + 1] if user + 1 < len(turns) else None
    if reply is None or reply.get("role") != "assistant" or not reply["content"].strip():
        raise DataError("no assistant answer after the first user turn: one answer of the pair "
                        "is missing or empty", path=path, line=line, field=field)
    return turns[user]["content"], reply["content"]


#: MT-Bench ``winner`` values and the label each means.
MTBENCH_WINNERS = {"model_a": "1", "model_b": "2", "tie": "tie", "tie (bothbad)": "tie"}


def load_mtbench(path: PathLike, *, split: str = "") -> list[Record]:
    """Load MT-Bench human judgements (``question_id``, ``model_a``, ``model_b``, ``winner``,
    ``conversation_a``/``conversation_b`` lists of ``{role, content}``).

    The question is the first user turn of ``conversation_a``, the candidates the first assistant
    turn of each conversation (candidate 1 = model_a's). ``winner`` ``model_a`` → label 1,
    ``model_b`` → 2, ``tie`` and ``tie (bothbad)`` → tie; a missing or null winner leaves the
    item unlabelled. Ids are ``{stem}-{k}`` (one question has many judgements). Judgements of
    the second turn (``turn`` 2) are read on the first turns too: keep the lines you want.
    """
    p, stem = _names(path, split)
    records: list[Record] = []
    for k, (line, raw) in enumerate(iter_rows(path, split=split)):
        obj = _object(raw, p, line)
        question, answer_a = _first_exchange(obj, "conversation_a", p, line)
        _, answer_b = _first_exchange(obj, "conversation_b", p, line)
        candidates = (answer_a, answer_b)
        winner = obj.get("winner")
        if winner is not None and winner not in MTBENCH_WINNERS:
            raise DataError(f"{winner!r} is not one of the candidates "
                            f"({', '.join(MTBENCH_WINNERS)})", path=p, line=line, field="winner")
        records.append(_judge_record(p, line, id=f"{stem}-{k}", question=question,
                                     candidates=candidates,
                                     label=MTBENCH_WINNERS.get(winner) if winner else None))
    logger.info("loaded %d MT-Bench judgements from %s", len(records), p)
    return records


def load_llmbar(path: PathLike, *, split: str = "") -> list[Record]:
    """Load LLMBar-style pairs (``input``, ``output_1``, ``output_2``, ``label`` 1 or 2; the
    label may be absent or null)."""
    p, stem = _names(path, split)
    records: list[Record] = []
    for k, (line, raw) in enumerate(iter_rows(path, split=split)):
        obj = _object(raw, p, line)
        question = _nonempty_string(obj, "input", p, line)
        candidates = (_candidate(obj, "output_1", p, line), _candidate(obj, "output_2", p, line))
        label = obj.get("label")
        if isinstance(label, bool) or (label is not None and label not in (1, 2, "1", "2")):
            raise DataError(f"{label!r} is not one of the candidates (1, 2)", path=p, line=line,
                            field="label")
        records.append(_judge_record(p, line, id=f"{stem}-{k}", question=question,
                                     candidates=candidates,
                                     label=None if label is None else str(label)))
    logger.info("loaded %d LLMBar-style pairs from %s", len(records), p)
    return records


def load_rewardbench(path: PathLike, *, split: str = "") -> list[Record]:
    """Load RewardBench-style preference pairs (``prompt``, ``chosen``, ``rejected``).

    The label is the chosen answer. Files list it first in every line, so the candidates are
    shuffled: a coin seeded by the record's id (``random.Random("rewardbench|{id}")``: the same
    file always gives the same items) decides whether chosen is candidate 1 or 2.
    """
    p, stem = _names(path, split)
    records: list[Record] = []
    for k, (line, raw) in enumerate(iter_rows(path, split=split)):
        obj = _object(raw, p, line)
        question = _nonempty_string(obj, "prompt", p, line)
        chosen = _candidate(obj, "chosen", p, line)
        rejected = _candidate(obj, "rejected", p, line)
        rid = f"{stem}-{k}"
        chosen_first = random.Random(f"rewardbench|{rid}").random() < 0.5
        records.append(_judge_record(
            p, line, id=rid, question=question,
            candidates=(chosen, rejected) if chosen_first else (rejected, chosen),
            label="1" if chosen_first else "2"))
    logger.info("loaded %d RewardBench-style pairs from %s", len(records), p)
    return records


_LOADERS: dict[str, Callable[..., list[Record]]] = {
    "records": load_own, "litm": load_litm_qa, "authors": load_authors, "kv": load_kv,
    "musique": load_musique, "hotpotqa": load_hotpotqa, "2wiki": load_2wiki,
    "mtbench": load_mtbench, "llmbar": load_llmbar, "rewardbench": load_rewardbench}


def detect_format(path: PathLike, *, split: str = "") -> str:
    """Guess the format of a file from the keys of its first non-blank line (the columns of a
    Parquet file or ``datasets`` folder).

    ``documents`` + ``gold`` → ``"records"``; ``ctxs`` → ``"litm"``; ``gold_document`` →
    ``"authors"``; ``ordered_kv_records`` → ``"kv"``; MuSiQue, 2WikiMultihopQA and HotpotQA by
    their own fields; judgement files: ``conversation_a`` or ``conversation_b`` → ``"mtbench"``,
    ``output_1`` or ``output_2`` → ``"llmbar"``, ``chosen`` or ``rejected`` → ``"rewardbench"``.
    Raises :class:`DataError` otherwise.
    """
    p, _ = _names(path, split)
    if tables.is_table(path):
        keys, line = set(tables.columns(path, split)), None
    else:
        rows = iter_rows(path)
        try:
            first = next(rows, None)
        finally:
            rows.close()  # closes the file now instead of whenever the generator is collected
        if first is None:
            raise DataError("empty file: no JSON line to detect the format from", path=p)
        line, obj = first
        keys = set(_object(obj, p, line))
    if {"documents", "gold"} <= keys:
        return "records"
    if "ctxs" in keys:
        return "litm"
    if "gold_document" in keys:
        return "authors"
    if "ordered_kv_records" in keys:
        return "kv"
    if "question_decomposition" in keys or "paragraphs" in keys:
        return "musique"
    if "context" in keys and "evidences" in keys:
        return "2wiki"
    if "context" in keys and "supporting_facts" in keys:
        return "hotpotqa"
    # A judgement file is known by either answer's key, so that a pair missing the other answer
    # gets its loader's error ("output_2: missing"), not "cannot detect the format".
    if keys & {"conversation_a", "conversation_b"}:
        return "mtbench"
    if keys & {"output_1", "output_2"}:
        return "llmbar"
    if keys & {"chosen", "rejected"}:
        return "rewardbench"
    raise DataError(
        f"cannot detect the format from {'keys' if line else 'columns'} {sorted(keys)}; "
        "expected one of: "
        "records (documents + gold), litm (ctxs), authors (gold_document), "
        "kv (ordered_kv_records), musique (paragraphs + question_decomposition), "
        "2wiki (context + evidences), hotpotqa (context + supporting_facts), "
        "mtbench (conversation_a + conversation_b), llmbar (output_1 + output_2), "
        "rewardbench (chosen + rejected). "
        "Pass the format explicitly if the keys are right.",
        path=p, line=line)


def load_records(path: PathLike, format: str = "auto", *, split: str = "") -> list[Record]:
    """Load any supported format; ``format`` is ``"auto"`` or one of :data:`FORMATS`; ``split``
    names the split of a DatasetDict folder."""
    if format == "auto":
        format = detect_format(path, split=split)
    elif format not in _LOADERS:
        raise ConfigError(f"format: unknown format {format!r}; expected 'auto' or one of "
                          f"{', '.join(FORMATS)}")
    return _LOADERS[format](path, split=split)


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
    position is left to :mod:`pos2distill.tasks.positions`.

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
                            documents=documents, gold=(0,), kind=r.kind))
    return built
