"""What every output folder records, and how outputs are written.

- ``run.json``: the resolved config, the package version, input checksums. A stage that resumes
  compares the stored fingerprint with its own and refuses to mix outputs of different configs.
- One writer: :func:`one_writer` holds an exclusive lock on an output for the whole run (a lock file
  beside it, with the owner's pid and host; the operating system releases it when the owner exits,
  so a lock never outlives its run). A second run on the same output stops at once.
- Atomic files: every final file is written under a temporary name and renamed
  (:func:`atomic_path`), so a full disk or a kill never leaves a zero-byte or half file under its
  final name; an ``OSError`` while writing becomes an :class:`~pos2distill.errors.OutputError`
  that names the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from filelock import FileLock, Timeout

from pos2distill import __version__
from pos2distill.errors import BusyError, ConfigError, OutputError


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
            # A model folder's weights and configs; a datasets folder's Arrow files (a
            # DatasetDict keeps them in one subfolder per split).
            for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.json")) + \
                    sorted(path.rglob("*.arrow")):
                out[str(f)] = file_sha256(f)
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends
    without an error. The temporary name keeps the suffix (``.tmp-NAME``), so writers that go by
    the suffix (gzip, image formats) write what the final name says. An ``OSError`` (no space, no
    permission) removes the temporary file and is raised as an :class:`OutputError` naming
    ``path``."""
    path = Path(path)
    tmp = path.with_name(".tmp-" + path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


#: Locks this process holds: taking one again (the CLI, then the stage it runs) is a no-op.
_held: set[Path] = set()


def lock_path(out: str | os.PathLike, part: str = "") -> Path:
    """``.OUT.lock`` beside the output (a folder or a file), ``.OUT.PART.lock`` for one part of
    it (an experiment's shard): outside the output, which may be replaced as a whole, and hidden.
    The file stays after the run (deleting a lock file others may have opened would let two
    runs hold it); only the lock on it is released."""
    out = Path(out).resolve()
    return out.with_name("." + out.name + (f".{part}" if part else "") + ".lock")


@contextlib.contextmanager
def one_writer(out: str | os.PathLike, *, part: str = "", enabled: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of the output ``out`` (or of one ``part`` of it) inside the block;
    a second run on the same output raises :class:`BusyError` naming the owner (pid, host,
    start). ``enabled=False`` (the other ranks of a multi-process run, whose main process holds
    it) takes no lock; a lock this process holds already is not taken twice."""
    path = lock_path(out, part)
    if not enabled or path in _held:   # another rank, or this process holds it already
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), timeout=0)
        lock.acquire()
    except Timeout:
        raise BusyError(f"{out} is being written by another run ({_owner(path)}); wait for it to "
                        "end, or choose another --out") from None
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    _held.add(path)
    try:
        path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield
    finally:
        _held.discard(path)
        lock.release()


def _owner(path: Path) -> str:
    try:
        who = json.loads(path.read_text())
        return f"pid {who['pid']} on {who['host']}, since {who['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner not yet recorded"


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
    declared with ``count_when_set=True`` in its metadata counts only when set (empty, or at its
    default): unset, it leaves the fingerprint of runs made before it existed unchanged, so older
    run folders still resume and experiment grids still find their finished runs."""
    skip = set(ignore) | {f.name for f in dataclasses.fields(cfg)
                          if f.metadata.get("count_when_set")
                          and (not getattr(cfg, f.name) or getattr(cfg, f.name) == _default(f))}
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


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
