"""Kill and resume: ``pos2distill teach`` and ``pos2distill train`` run as real subprocesses on the
tiny random model, get a SIGKILL at a random point, are re-run with the same command, and must end
exactly like an uninterrupted run: the same teacher rows (none missing, none twice), the same
training log rows and the same final weights (within 1e-6).

The kill points are random; the seed is printed with each trial (run with ``-s`` to see the counts)
and can be fixed with ``POS2DISTILL_KILL_SEED`` to replay a failure.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import teacher_rows
from pos2distill.stages import teach
from pos2distill.data import synthetic
from pos2distill.generation import HFGenerator
from pos2distill.data.records import Record, write_records

pytestmark = pytest.mark.slow   # a dozen interpreter starts: about a minute on a loaded machine

SEED = int(os.environ.get("POS2DISTILL_KILL_SEED", random.SystemRandom().randrange(2**32)))
N_QUESTIONS = 80        # teach: 20 appended chunks of 4 rows (batch size 1)
TRAIN_STEPS = 60        # train: 24 pairs, batch 2, 5 epochs
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def pos2distill(*args: str) -> list[str]:
    return [sys.executable, "-m", "pos2distill", "-q", *args]


def lines(path: Path) -> int:
    """Complete lines of a file that may be growing (0 when it does not exist yet)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def run(cmd: list[str], log: Path) -> None:
    with open(log, "ab") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=f, env=ENV, timeout=600)
    assert proc.returncode == 0, log.read_text()[-3000:]


def run_and_kill(cmd: list[str], watch: Path, at_rows: int, delay: float, log: Path) -> int | None:
    """Start ``cmd``, SIGKILL it ``delay`` seconds after ``watch`` holds ``at_rows`` lines.

    Returns the lines ``watch`` had when the kill landed, or None when the command finished first.
    """
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=f, env=ENV)
        try:
            deadline = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < deadline:
                if lines(watch) >= at_rows:
                    time.sleep(delay)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    break
                time.sleep(0.002)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode == -signal.SIGKILL:
        return lines(watch)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return None


def kill_then_resume(cmd: list[str], watch: Path, rng: random.Random, max_rows: int,
                     log: Path) -> tuple[int, int | None]:
    """Kill ``cmd`` at a random point (retrying earlier if it finished first), then re-run it.

    Returns the lines of ``watch`` at the kill and, for train, the step of the checkpoint the
    killed run left (None: none yet)."""
    for _ in range(5):
        at_rows, delay = rng.randint(1, max_rows), rng.uniform(0, 0.05)
        killed_at = run_and_kill(cmd, watch, at_rows, delay, log)
        if killed_at is not None:
            state = watch.parent / "checkpoint" / "trainer_state.json"
            checkpoint = json.loads(state.read_text())["step"] if state.exists() else None
            run(cmd, log)
            return killed_at, checkpoint
        max_rows = max(1, max_rows // 2)
        for p in watch.parent.iterdir():      # start the trial again from nothing
            if p.is_file():
                p.unlink()
            else:
                shutil.rmtree(p)
    pytest.fail("the command always finished before the kill; make the data bigger")


# ---------------------------------------------------------------------------------------------
# Inputs and uninterrupted reference runs
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teach_data(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, tok: Any) -> Path:
    """Synthetic questions whose gold answer is, for every other one, the first word the random
    tiny model answers: so teach keeps some rows and drops others (not a vacuous comparison)."""
    records = synthetic.generate("train", N_QUESTIONS, n_documents=4)
    rows = teacher_rows(records, HFGenerator(tiny_model, tok, chat=True, batch_size=1), tok,
                        task="retrieval", adv=(0,), template="authors", chat="auto", seed=0,
                        max_new_tokens=4)
    mixed = []
    for k, (r, row) in enumerate(zip(records, rows)):
        words = row["response"].split()
        answers = (words[0],) if k % 2 == 0 and words else r.answers
        mixed.append(Record(id=r.id, question=r.question, answers=answers, documents=r.documents,
                            gold=r.gold))
    path = tmp_path_factory.mktemp("teach-data") / "questions.jsonl"
    write_records(path, mixed)
    return path


def teach_cmd(model_dir: Path, data: Path, out: Path) -> list[str]:
    return pos2distill("teach", "--model", str(model_dir), "--data", str(data), "--data-format",
                       "records", "--out", str(out), "--batch-size", "1", "--max-new-tokens", "4")


@pytest.fixture(scope="module")
def teach_reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
                    teach_data: Path) -> list[dict]:
    folder = tmp_path_factory.mktemp("teach-reference")
    run(teach_cmd(tiny_model_dir, teach_data, folder / "teach.jsonl"), folder / "stderr.txt")
    rows = teach.read_teacher_rows(folder / "teach.jsonl")
    assert 0 < len(rows) < N_QUESTIONS
    return rows


def train_cmd(model_dir: Path, pairs_path: Path, out: Path, save_every: int) -> list[str]:
    return pos2distill("train", "--model", str(model_dir), "--pairs", str(pairs_path), "--out",
                       str(out), "--lr", "1e-2", "--batch-size", "2", "--epochs", "5",
                       "--warmup-ratio", "0.1", "--save-every", str(save_every))


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
                    pairs_file: Path) -> Path:
    out = tmp_path_factory.mktemp("train-reference") / "run"
    run(train_cmd(tiny_model_dir, pairs_file, out, save_every=7), out.parent / "stderr.txt")
    return out


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("trial", [0, 1])
def test_teach_survives_sigkill(trial: int, tiny_model_dir: Path, teach_data: Path,
                                teach_reference: list[dict], tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}|teach|{trial}")
    out = tmp_path / "run" / "teach.jsonl"
    out.parent.mkdir()
    partial = out.with_name(out.name + ".partial")
    killed_at, _ = kill_then_resume(teach_cmd(tiny_model_dir, teach_data, out), partial, rng,
                                 N_QUESTIONS - 8, tmp_path / "stderr.txt")
    rows = teach.read_teacher_rows(out)
    ids = [row["id"] for row in rows]
    expected = [row["id"] for row in teach_reference]
    missing, duplicated = len(set(expected) - set(ids)), len(ids) - len(set(ids))
    print(f"\nteach trial {trial} (seed {SEED}): killed with {killed_at} of {N_QUESTIONS} rows in "
          f"the partial file; resumed: {len(rows)} kept rows, {missing} missing, "
          f"{duplicated} duplicated")
    assert not partial.exists()
    assert (missing, duplicated) == (0, 0)
    assert rows == teach_reference


@pytest.mark.parametrize("save_every", [7, 1, 0])
def test_train_survives_sigkill(save_every: int, tiny_model_dir: Path, pairs_file: Path,
                                train_reference: Path, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}|train|{save_every}")
    out = tmp_path / "run"
    out.mkdir()
    killed_at, checkpoint = kill_then_resume(train_cmd(tiny_model_dir, pairs_file, out, save_every),
                                 out / "log.jsonl", rng, TRAIN_STEPS - 5, tmp_path / "stderr.txt")
    got, expected = log_rows(out), log_rows(train_reference)
    steps = [row["step"] for row in got]
    assert len(expected) == TRAIN_STEPS
    missing = len(set(range(1, TRAIN_STEPS + 1)) - set(steps))
    duplicated = len(steps) - len(set(steps))
    a, b = weights(train_reference), weights(out)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\ntrain --save-every {save_every} (seed {SEED}): killed after {killed_at} of "
          f"{TRAIN_STEPS} log rows (checkpoint: step {checkpoint}); resumed: {missing} steps missing, {duplicated} duplicated, "
          f"max |weight difference| {diff:.2e}")
    assert (missing, duplicated) == (0, 0)
    assert steps == list(range(1, TRAIN_STEPS + 1))
    for g, e in zip(got, expected):
        assert g["step"] == e["step"]
        for key in ("lr", "loss", "kl_mean"):
            assert g[key] == pytest.approx(e[key], abs=1e-6), (g["step"], key)
        assert g["kl_by_position"] == pytest.approx(e["kl_by_position"], abs=1e-6)
        assert g["weight_by_position"] == pytest.approx(e["weight_by_position"], abs=1e-6)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == TRAIN_STEPS


@pytest.fixture(scope="module")
def pairs_file(make_pairs_file: Any) -> Path:
    return make_pairs_file(8, K=2)
