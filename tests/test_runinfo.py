"""One writer per output, and atomic files (runinfo.one_writer, runinfo.atomic_path)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pos2distill.errors import BusyError, OutputError
from pos2distill.runinfo import atomic_path, lock_path, one_writer, write_text_atomic

SRC = str(Path(__file__).resolve().parents[1] / "src")


def hold_lock(out: Path, ready: Path) -> subprocess.Popen:
    """Another process that takes the lock of ``out``, says so in ``ready``, then waits."""
    code = textwrap.dedent(f"""
        import pathlib, time
        from pos2distill.runinfo import one_writer
        with one_writer({str(out)!r}):
            pathlib.Path({str(ready)!r}).write_text("held")
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code],
                            env={**os.environ, "PYTHONPATH": SRC})
    for _ in range(600):
        if ready.exists():
            return proc
        if proc.poll() is not None:
            raise AssertionError("the lock holder exited early")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the lock holder never took the lock")


def test_a_second_writer_is_refused_with_the_owner(tmp_path: Path) -> None:
    out = tmp_path / "probe"
    holder = hold_lock(out, tmp_path / "ready")
    try:
        with pytest.raises(BusyError) as info:
            with one_writer(out):
                pytest.fail("two writers held one output")
        message = str(info.value)
        assert message.startswith(f"{out} is being written by another run (pid {holder.pid} on ")
        assert "choose another --out" in message
    finally:
        holder.kill()
        holder.wait()
    # The owner is gone: the operating system released its lock, so it is not stale.
    with one_writer(out):
        owner = json.loads(lock_path(out).read_text())
        assert owner["pid"] == os.getpid()


def test_locks_are_per_output_and_per_part(tmp_path: Path) -> None:
    with one_writer(tmp_path / "a"), one_writer(tmp_path / "b"), \
            one_writer(tmp_path / "a", part="shard-0-of-2"), \
            one_writer(tmp_path / "a", part="shard-1-of-2"):
        pass
    assert lock_path(tmp_path / "a") == tmp_path / ".a.lock"            # beside, not inside
    assert lock_path(tmp_path / "t.jsonl") == tmp_path / ".t.jsonl.lock"
    assert lock_path(tmp_path / "a", "shard-1-of-2") == tmp_path / ".a.shard-1-of-2.lock"
    with one_writer(tmp_path / "a", enabled=False):   # another rank: no lock at all
        with one_writer(tmp_path / "a"):
            pass


def test_atomic_path_leaves_nothing_under_the_final_name_on_error(tmp_path: Path) -> None:
    final = tmp_path / "table.md"
    with pytest.raises(OutputError, match=r"table\.md: cannot write \(No space left on device\)"):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []
    write_text_atomic(final, "whole\n")
    assert final.read_text() == "whole\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]
