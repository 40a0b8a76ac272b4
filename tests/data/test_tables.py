"""Parquet files and datasets folders: every format the loaders know, written from the JSONL
fixtures of test_loaders and test_loaders_multihop, reads back to the same records; bad sources
(unknown columns, a missing split, a hub name, no datasets library) are one-line errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

datasets = pytest.importorskip("datasets")

from pos2distill.config import ProbeConfig  # noqa: E402
from pos2distill.data import tables  # noqa: E402
from pos2distill.data.loaders import detect_format, load_records  # noqa: E402
from pos2distill.data.records import write_records  # noqa: E402
from pos2distill.data.resolve import load_data  # noqa: E402
from pos2distill.errors import ConfigError, DataError  # noqa: E402

from test_loaders import authors_line, kv_line, litm_line  # noqa: E402
from test_loaders_multihop import HOTPOT, MUSIQUE, WIKI2  # noqa: E402


def by_columns(row: dict[str, Any]) -> dict[str, Any]:
    """A HotpotQA / 2Wiki row as the hub stores it: context, supporting facts and evidences by
    columns (Arrow cannot hold the original's lists of mixed types)."""
    row = copy.deepcopy(row)
    titles, sentences = zip(*row["context"])
    row["context"] = {"title": list(titles), "sentences": [list(s) for s in sentences]}
    facts, ids = zip(*row["supporting_facts"])
    row["supporting_facts"] = {"title": list(facts), "sent_id": list(ids)}
    if "evidences" in row:
        fact, relation, entity = zip(*row["evidences"])
        row["evidences"] = {"fact": list(fact), "relation": list(relation),
                            "entity": list(entity)}
    return row


def own_rows() -> list[dict[str, Any]]:
    return [{"id": f"r{k}", "question": "q?", "answers": ["a", "b"],
             "documents": [{"title": f"T{i}", "text": f"t{i}"} for i in range(3)],
             "gold": [k % 3], "kind": "qa"} for k in range(3)]


# format name -> (rows of the JSONL fixture, the same rows as Arrow can store them)
FIXTURES: dict[str, tuple[list[dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "litm": ([litm_line(gold_at=1), litm_line(gold_at=2, n=4)], dict),
    "authors": ([authors_line(), authors_line(distractors=[])], dict),
    "kv": ([kv_line(), kv_line(key="k2", value="v2")], dict),
    "records": (own_rows(), dict),
    "musique": ([MUSIQUE, dict(copy.deepcopy(MUSIQUE), id="2hop__x", answerable=False)], dict),
    "hotpotqa": (HOTPOT, by_columns),
    "2wiki": ([WIKI2], by_columns),
}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dataset(rows: list[dict[str, Any]]) -> Any:
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_parquet_and_folders_read_like_jsonl(fmt: str, tmp_path: Path) -> None:
    rows, arrow = FIXTURES[fmt]
    expected = load_records(write_jsonl(tmp_path / "fx.jsonl", rows))
    assert expected and detect_format(tmp_path / "fx.jsonl") == fmt
    arrow_rows = [arrow(r) for r in rows]
    dataset(arrow_rows).to_parquet(str(tmp_path / "fx.parquet"))
    dataset(arrow_rows).save_to_disk(str(tmp_path / "one" / "fx"))
    datasets.DatasetDict({"train": dataset(arrow_rows[:1]), "test": dataset(arrow_rows)}) \
        .save_to_disk(str(tmp_path / "dd"))
    for source, split in [(tmp_path / "fx.parquet", ""), (tmp_path / "one" / "fx", ""),
                          (tmp_path / "dd", "test"), (tmp_path / "dd" / "test", "")]:
        assert detect_format(source, split=split) == fmt, source
        for got in (load_records(source, split=split), load_records(source, fmt, split=split)):
            if fmt in ("litm", "authors", "kv"):
                # Their ids come from the source's name: "fx-0" like fx.jsonl's, "dd-test-0" for
                # the test split of the folder dd (two splits never share ids).
                stem = {"dd": "dd-test", "test": "test"}.get(source.name, "fx")
                assert [r.id for r in got] == [r.id.replace("fx", stem, 1) for r in expected]
                got = [dataclasses.replace(r, id=e.id) for r, e in zip(got, expected)]
            assert got == expected, source


def test_null_struct_fields_read_as_missing(tmp_path: Path) -> None:
    """Arrow stores a key one row lacks as null in that row: it must read as missing, as in JSON
    (a passage without isgold is not gold, a missing title is empty)."""
    row = litm_line(gold_at=0)
    del row["ctxs"][1]["isgold"]
    del row["ctxs"][2]["title"]
    dataset([row, litm_line(gold_at=2)]).to_parquet(str(tmp_path / "x.parquet"))
    first, _ = load_records(tmp_path / "x.parquet")
    assert first.gold == (0,) and first.documents[2].title == ""


def test_errors_name_the_row(tmp_path: Path) -> None:
    rows = [litm_line(), litm_line(answers=[])]
    dataset(rows).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError) as info:
        load_records(tmp_path / "bad.parquet")
    assert str(info.value).startswith(f"{tmp_path / 'bad.parquet'}:2, field 'answers'")
    datasets.DatasetDict({"dev": dataset(rows)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError) as info:
        load_records(tmp_path / "dd")
    assert str(info.value).startswith(f"{tmp_path / 'dd'}/dev:2, field 'answers'")


def test_unknown_columns(tmp_path: Path) -> None:
    dataset([{"query": "q", "passages": ["p"]}]).to_parquet(str(tmp_path / "odd.parquet"))
    with pytest.raises(DataError) as info:
        load_records(tmp_path / "odd.parquet")
    message = str(info.value)
    assert "cannot detect the format from columns ['passages', 'query']" in message
    assert "\n" not in message


def test_splits(tmp_path: Path) -> None:
    dd = datasets.DatasetDict({"train": dataset([kv_line()]), "test": dataset([kv_line()])})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ConfigError, match=r"^--split: .*dd is a DatasetDict with the splits "
                                          r"train, test; name one with --split$"):
        load_records(tmp_path / "dd")
    with pytest.raises(ConfigError, match=r"^--split: .*dd has no split 'dev'; its splits are "
                                          r"train, test$"):
        load_records(tmp_path / "dd", split="dev")
    # A file without splits refuses --split rather than ignore it.
    path = write_jsonl(tmp_path / "kv.jsonl", [kv_line()])
    for source in (path, tmp_path / "dd" / "train"):
        with pytest.raises(ConfigError, match="has no splits to choose from"):
            load_records(source, split="train")
    with pytest.raises(ConfigError, match="synthetic sets name their split"):
        load_data(ProbeConfig(data="synthetic:test", split="test"))


@pytest.mark.parametrize("name", ["org/name", "squad", "hf://datasets/org/name"])
def test_hub_names_are_refused(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"is not a local file or folder, and datasets are "
                                          r"never downloaded: pass a local path"):
        load_data(ProbeConfig(data=name))


def test_missing_local_file_is_not_a_hub_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_data(ProbeConfig(data=str(tmp_path / "missing.parquet")))


def test_load_data_from_a_folder(tmp_path: Path) -> None:
    """load_data reads a datasets folder like a file: oracle QA is built into n-document sets."""
    oracle = [litm_line(gold_at=0, n=1, question=f"q{k}", answers=[f"a{k}"],
                        ctxs=[{"title": f"T{k}", "text": f"text {k}", "isgold": True}])
              for k in range(6)]
    write_jsonl(tmp_path / "o.jsonl", oracle)
    dataset(oracle).save_to_disk(str(tmp_path / "o"))
    from_folder = load_data(ProbeConfig(data=str(tmp_path / "o"), n_documents=4))
    assert from_folder == load_data(ProbeConfig(data=str(tmp_path / "o.jsonl"), n_documents=4))
    assert len(from_folder[0].documents) == 4


def test_without_the_datasets_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset([kv_line()]).to_parquet(str(tmp_path / "kv.parquet"))
    monkeypatch.setitem(sys.modules, "datasets", None)   # import datasets raises ImportError
    with pytest.raises(ConfigError, match=r"needs the datasets library: pip install "
                                          r"'pos2distill\[data\]'"):
        load_records(tmp_path / "kv.parquet")


def test_our_own_writer_round_trips_through_parquet(tmp_path: Path) -> None:
    records = load_records(write_jsonl(tmp_path / "kv.jsonl", [kv_line(), kv_line(key="k0",
                                                                                  value="v0")]))
    write_records(tmp_path / "ours.jsonl", records)
    rows = [json.loads(line) for line in (tmp_path / "ours.jsonl").read_text().splitlines()]
    dataset(rows).to_parquet(str(tmp_path / "ours.parquet"))
    assert load_records(tmp_path / "ours.parquet") == records
    assert tables.columns(tmp_path / "ours.parquet") == list(rows[0])


def test_a_damaged_parquet_file(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"bad.parquet: cannot read \("):
        load_records(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: cannot read \("):
        load_records(tmp_path / "bad.parquet", "kv")


def test_parquet_read_in_many_batches_keeps_the_order(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"key": f"k{i}", "value": f"v{i}", "ordered_kv_records": [[f"k{i}", f"v{i}"],
                                                                      ["x", "y"]]}
            for i in range(23)]
    expected = load_records(write_jsonl(tmp_path / "kv.jsonl", rows))
    dataset(rows).to_parquet(str(tmp_path / "kv.parquet"))
    monkeypatch.setattr(tables, "BATCH_ROWS", 5)   # 5 batches, read two ahead
    got = load_records(tmp_path / "kv.parquet")
    assert [r.question for r in got] == [f"k{i}" for i in range(23)]
    assert [dataclasses.replace(r, id=e.id) for r, e in zip(got, expected)] == expected


def test_read_ahead_raises_in_place_and_stops_when_closed() -> None:
    def items() -> Any:
        yield from range(3)
        raise OSError("page 4 is damaged")

    got = []
    with pytest.raises(OSError, match="page 4"):
        for item in tables._read_ahead(items(), depth=1):
            got.append(item)
    assert got == [0, 1, 2]

    reader = tables._read_ahead(iter(range(1000)), depth=2)
    assert next(reader) == 0
    before = {t.name for t in threading.enumerate()}
    assert "parquet-read-ahead" in before
    reader.close()   # the thread is told to stop and joined
    assert "parquet-read-ahead" not in {t.name for t in threading.enumerate()}
