"""What every stage does with its output: one writer, whole files, clean errors (issue 22).

- A run whose output another run holds stops at once: one line naming the owner, exit 2.
- Rows written twice by an older version (which let two runs share a folder) count once.
- A filesystem that fills up: one line naming the file, exit 2, no zero-byte or half file under a
  final name; a re-run after freeing space finishes.
- Under several processes only the main one prints; option errors come before any progress bar.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from pos2distill import cli
from pos2distill.stages.probe import load_summary
from test_runinfo import hold_lock

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}


def probe_args(model: Path, out: Path) -> list[str]:
    return ["probe", "--model", str(model), "--data", "synthetic:test", "--limit", "2",
            "--n-documents", "4", "--positions", "0,3", "--max-new-tokens", "2", "--out", str(out)]


def commands(model: Path, pairs_file: Path, tmp: Path) -> dict[str, tuple[list[str], Path]]:
    """Each stage's command line and the output it writes."""
    config = tmp / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp / "exp"), "model": str(model), "n_documents": 4, "n_test": 2,
        "train": {"epochs": 1, "batch_size": 4}, "generation": {"max_new_tokens": 2},
        "grids": [{"methods": ["r1"], "K": [1], "n_train": [2], "eval_documents": [4]}]}))
    return {
        "probe": (probe_args(model, tmp / "probe"), tmp / "probe"),
        "teach": (["teach", "--model", str(model), "--data", "synthetic:train", "--limit", "2",
                   "--n-documents", "4", "--max-new-tokens", "2", "--out", str(tmp / "t.jsonl")],
                  tmp / "t.jsonl"),
        "train": (["train", "--model", str(model), "--pairs", str(pairs_file), "--epochs", "1",
                   "--batch-size", "4", "--out", str(tmp / "train")], tmp / "train"),
        "experiment": (["experiment", str(config)], tmp / "exp"),
    }


@pytest.mark.parametrize("stage", ["probe", "teach", "train", "experiment"])
def test_a_second_run_on_the_same_output_stops_at_once(
        stage: str, tiny_model_dir: Path, pairs_file: Path, tmp_path: Path, oracle_hf: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    args, out = commands(tiny_model_dir, pairs_file, tmp_path)[stage]
    holder = hold_lock(out, tmp_path / "ready")
    try:
        assert cli.main(["-q", *args]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"pos2distill {stage}: error: {out} is being written by another run "
                          f"(pid {holder.pid} on ")
    # Nothing was written by the refused run; once the owner is gone the same command runs.
    assert not out.exists()
    assert cli.main(["-q", *args]) == 0


def test_rows_written_twice_by_an_older_version_count_once(
        tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "probe"
    assert cli.main(["-q", *probe_args(tiny_model_dir, out)]) == 0
    once = json.loads((out / "summary.json").read_text())
    rows = (out / "rows.jsonl").read_text()
    (out / "rows.jsonl").write_text(rows + rows)           # two runs appended the same rows
    assert cli.main(["-q", *probe_args(tiny_model_dir, out)]) == 0
    twice = json.loads((out / "summary.json").read_text())
    assert twice == once and twice["n_per_slot"] == 2
    assert "4 duplicated rows" in caplog.text and "are counted once" in caplog.text
    # A summary an older version wrote from the duplicated rows is summarised again on reading.
    inflated = {**once, "n_per_slot": 4}
    (out / "summary.json").write_text(json.dumps(inflated))
    assert load_summary(out) == once


@contextlib.contextmanager
def small_filesystem(path: Path, free: int) -> Iterator[Any]:
    """A folder on a 200 kB tmpfs with ``free`` bytes left, when this process may mount one
    (root in a sandbox that allows it); otherwise None, and the caller limits the file size."""
    path.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(path)],
        capture_output=True).returncode == 0
    try:
        if mounted:
            filler = path / "filler"
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, shutil.disk_usage(path).free - free))
            yield filler
        else:
            yield None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_filesystem_is_one_line_and_leaves_no_empty_file(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    out_root = tmp_path / "small"
    with small_filesystem(out_root, free=24_000) as filler:
        out = out_root / "probe"
        cmd = [sys.executable, "-m", "pos2distill", "-q", *probe_args(tiny_model_dir, out)]

        def limit_file_size() -> None:   # no tmpfs: files may not grow past 8 kB instead
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000))

        proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300,
                              preexec_fn=None if filler is not None else limit_file_size)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pos2distill probe: error: ")
        assert "cannot write" in lines[0] and str(out) in lines[0]
        # What is there under a final name is whole; the temporary files are gone.
        for f in out.iterdir():
            assert not f.name.startswith(".tmp-")
            assert f.stat().st_size > 0, f"{f} is empty"
        # Space again: the same command finishes the run.
        if filler is not None:
            filler.unlink()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert (out / "accuracy_by_position.png").stat().st_size > 0


def test_only_the_main_process_prints(tiny_model_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["-q", *probe_args(tiny_model_dir, tmp_path / "p")]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["-q", *probe_args(tiny_model_dir, tmp_path / "p")]) == 0
    assert capsys.readouterr().out.startswith("mean ")


def test_a_missing_backend_refuses_before_any_progress_bar(tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    if shutil.which("vllm") or _importable("vllm"):
        pytest.skip("vllm is installed here")
    proc = subprocess.run([sys.executable, "-m", "pos2distill", "-q",
                           *probe_args(tiny_model_dir, tmp_path / "p"), "--backend", "vllm"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "pos2distill probe: error: --backend vllm: vllm is not installed (pip install vllm), or "
        "use --backend hf"]


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
