"""Reading records from Parquet (the Arrow reader datasets installs) against the same records in JSONL.

    python bench/bench_parquet.py [--n 10000] [--documents 20] [--words 100] [--repeats 5]
    python bench/bench_parquet.py --write DIR     # only write DIR/data.jsonl and DIR/data.parquet
    python bench/bench_parquet.py --read FILE     # only read FILE (to time whole processes)

Builds ``--n`` lost-in-the-middle QA records (``question``, ``answers``, ``ctxs`` of ``--documents``
passages of ``--words`` words, one gold), writes them as JSONL and as Parquet in a temporary
folder (and as a ``save_to_disk`` folder), then times :func:`pos2distill.data.loaders.load_records`
on each, in turn ``--repeats`` times after a warm-up, and prints the medians and their ratios
(Parquet ÷ JSONL, folder ÷ JSONL, measured in this one run; below 1 is faster). All must give the same records. The one-time import
of the datasets library is timed on its own (a fresh process pays it once, the first time a Parquet
file or datasets folder is read).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def rows(n: int, documents: int, words: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    return [{"question": f"question {k}?", "answers": [f"answer {k}"],
             "ctxs": [{"title": f"Title {k}-{i}", "isgold": i == k % documents,
                       "text": " ".join(rng.choice(vocab) for _ in range(words))}
                      for i in range(documents)]}
            for k in range(n)]


def write(folder: Path, data: list[dict[str, Any]]) -> tuple[Path, Path, Path]:
    import datasets

    jsonl, parquet, saved = folder / "data.jsonl", folder / "data.parquet", folder / "data"
    with open(jsonl, "w", encoding="utf-8") as f:
        for row in data:
            f.write(json.dumps(row) + "\n")
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(data)
    ds.to_parquet(str(parquet))
    ds.save_to_disk(str(saved))
    return jsonl, parquet, saved


def timed_load(path: Path) -> tuple[float, Any]:
    from pos2distill.data.loaders import load_records

    t0 = time.perf_counter()
    records = load_records(path)
    return time.perf_counter() - t0, records


def import_seconds() -> float:
    """Seconds to import datasets in a fresh interpreter (minus the bare interpreter's start)."""
    def run(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0
    return statistics.median(run("import datasets") - run("pass") for _ in range(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="records")
    ap.add_argument("--documents", type=int, default=20, help="passages per record")
    ap.add_argument("--words", type=int, default=100, help="words per passage")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", metavar="DIR", help="only write the two files into DIR")
    ap.add_argument("--read", metavar="FILE", help="only read FILE and print the record count")
    args = ap.parse_args()
    if args.read:
        print(len(timed_load(Path(args.read))[1]))
        return
    data = rows(args.n, args.documents, args.words)
    if args.write:
        Path(args.write).mkdir(parents=True, exist_ok=True)
        print(*write(Path(args.write), data))
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = dict(zip(("jsonl", "parquet", "folder"), write(Path(tmp), data)))
        first = {k: timed_load(p)[1] for k, p in paths.items()}   # warm-up: imports, page cache
        # A folder's ids come from its name ("data-0"), as a file's do from the file's ("data-0").
        assert first["jsonl"] == first["parquet"] == first["folder"], "different records"
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.repeats):
            for k, p in paths.items():
                times[k].append(timed_load(p)[0])
        sizes = {f"{k}_mb": round(p.stat().st_size / 2**20, 1)
                 for k, p in paths.items() if p.is_file()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"records": args.n, "documents": args.documents, "words": args.words, **sizes,
                      **{f"{k}_s": round(v, 3) for k, v in med.items()},
                      "parquet_over_jsonl": round(med["parquet"] / med["jsonl"], 3),
                      "folder_over_jsonl": round(med["folder"] / med["jsonl"], 3),
                      **{f"{k}_runs_s": [round(t, 3) for t in v] for k, v in times.items()},
                      "import_datasets_s": round(import_seconds(), 3)}))


if __name__ == "__main__":
    main()
