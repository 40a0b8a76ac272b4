"""What every output folder records: the resolved config, the package version, input checksums.

A stage that resumes compares the stored fingerprint with its own and refuses to mix outputs of
different configurations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from pos2distill import __version__
from pos2distill.errors import ConfigError


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_checksums(paths: Iterable[str]) -> dict[str, str]:
    out = {}
    for p in paths:
        path = Path(p)
        if path.is_file():
            out[str(p)] = file_sha256(path)
        elif path.is_dir():
            for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.json")):
                out[str(f)] = file_sha256(f)
    return out


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move the complete folder ``src`` to ``dst``, replacing what is there, by renames only.

    A folder cannot be renamed over a non-empty one, so the old ``dst`` first moves aside to
    ``.old-NAME``; a kill between the two renames leaves the old folder there, which
    :func:`recover_dir` puts back. Either way ``dst`` is never half-written.
    """
    src, dst = Path(src), Path(dst)
    old = dst.with_name(".old-" + dst.name)
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(dst: str | os.PathLike) -> Path | None:
    """``dst`` after an interrupted :func:`replace_dir` (None when there is none)."""
    dst = Path(dst)
    old = dst.with_name(".old-" + dst.name)
    if not dst.exists() and old.exists():
        os.replace(old, dst)
    return dst if dst.exists() else None


def fingerprint(cfg: Any, *, ignore: Iterable[str] = ()) -> str:
    """A hash of the config fields that change results (``ignore`` lists those that don't). A field
    declared with ``count_when_set=True`` in its metadata counts only when set: unset, it leaves the
    fingerprint of runs made before it existed unchanged, so older run folders still resume and
    experiment grids still find their finished runs."""
    skip = set(ignore) | {f.name for f in dataclasses.fields(cfg)
                          if f.metadata.get("count_when_set") and not getattr(cfg, f.name)}
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def run_info_path(out: str | os.PathLike) -> Path:
    """``DIR/run.json`` for a folder output, ``FILE.run.json`` beside a file output."""
    out = Path(out)
    return out.with_name(out.name + ".run.json") if out.suffix in (".jsonl", ".gz") else out / "run.json"


def start_run(out: str | os.PathLike, cfg: Any, *, inputs: Iterable[str], stage: str,
              ignore: Iterable[str] = ()) -> bool:
    """Record the run's config beside ``out``, or check that a recorded one is the same config.

    Returns True when ``out`` already holds (part of) a run of this config, to resume or reuse.
    """
    info_path = run_info_path(out)
    fp = fingerprint(cfg, ignore=ignore)
    if info_path.exists():
        old = json.loads(info_path.read_text())
        if old.get("fingerprint") != fp:
            raise ConfigError(f"{out} holds a {old.get('stage', '?')} run with a different "
                              f"config (see {info_path}); choose another --out or delete it")
        changed = [p for p, h in input_checksums(inputs).items() if old.get("inputs", {}).get(p) != h]
        if changed:
            raise ConfigError(f"{out} was made from other versions of {', '.join(changed)}; "
                              "choose another --out or delete it")
        return True
    write_json_atomic(info_path, {"stage": stage, "version": __version__, "fingerprint": fp,
                                  "config": dataclasses.asdict(cfg),
                                  "inputs": input_checksums(inputs)})
    return False
