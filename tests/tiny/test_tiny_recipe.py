"""The recipe that rebuilds the shipped model: its first steps are pinned, and it resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pos2distill.tiny import recipe
from pos2distill.tiny.pretrain import pretrain

# The first 3 losses of the recipe's first run (stage 1, copy warm-up, seed 0, one thread), as
# measured when the shipped model was built. A change here means the recipe no longer rebuilds the
# shipped weights: find out why before changing these numbers.
FIRST_LOSSES = [5.980302810668945, 5.978212356567383, 5.966745853424072]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_first_steps_of_the_first_run_are_pinned(tmp_path: Path, one_thread) -> None:
    name, overrides = recipe.RUNS[0]
    cfg = recipe.run_config(name, {**overrides, "stop_after": 3}, "", tmp_path)
    out = pretrain(cfg)
    losses = json.loads((out / "pretrain_losses.json").read_text())
    assert list(losses) == ["copy"]
    assert losses["copy"] == pytest.approx(FIRST_LOSSES, abs=1e-6)


def test_runs_chain_and_resume(tmp_path: Path, one_thread, monkeypatch) -> None:
    made: list[str] = []
    real = recipe.pretrain_run

    def counted(cfg):
        made.append(Path(cfg.out).name)
        return real(cfg)

    monkeypatch.setattr(recipe, "pretrain_run", counted)
    tiny = (("a", {"vocab": "retrieval", "copy_steps": 2, "lookup_steps": 0, "layers": 1,
                   "hidden": 16, "heads": 2, "intermediate": 32}),
            ("b", {"copy_steps": 0, "docs_steps": 1, "lookup_steps": 0}))
    monkeypatch.setattr(recipe, "RUNS", tiny)
    out = recipe.rebuild(tmp_path / "work", tmp_path / "out")
    assert made == [".a.partial", ".b.partial"]
    assert (out / "model.safetensors").is_file()
    b = json.loads((tmp_path / "work" / "b" / "pretrain_config.json").read_text())
    assert b["init"] == str(tmp_path / "work" / "a")            # each run starts from the last
    assert b["vocab"] == "all"                                  # and grows the reasoning words
    # A second call finds both runs done; a changed run is made again, and the ones after it.
    recipe.rebuild(tmp_path / "work", tmp_path / "out")
    assert made == [".a.partial", ".b.partial"]
    monkeypatch.setattr(recipe, "RUNS", (tiny[0], ("b", {**tiny[1][1], "docs_steps": 2})))
    recipe.rebuild(tmp_path / "work", tmp_path / "out")
    assert made == [".a.partial", ".b.partial", ".b.partial"]
    assert not list((tmp_path / "work").glob(".*.partial"))


def test_recipe_refuses_the_shipped_folder_and_unknown_runs(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        recipe.main(["--out", str(recipe.TINY_MODEL_DIR)])
    assert e.value.code == 2 and "shipped" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        recipe.main(["--work", str(tmp_path), "--out", str(tmp_path / "o"), "--last", "nope"])
    assert e.value.code == 2 and "--last must be one of" in capsys.readouterr().err


def test_judge_is_built_from_the_final_run_and_resumes(tmp_path: Path, one_thread,
                                                       monkeypatch, capsys) -> None:
    made: list[str] = []
    real = recipe.pretrain_run

    def counted(cfg):
        made.append(Path(cfg.out).name)
        return real(cfg)

    monkeypatch.setattr(recipe, "pretrain_run", counted)
    small = {"layers": 1, "hidden": 16, "heads": 2, "intermediate": 32, "lookup_steps": 0}
    monkeypatch.setattr(recipe, "RUNS", (("a", {**small, "copy_steps": 1}),))
    monkeypatch.setattr(recipe, "JUDGE_RUN", ("judge", {
        "vocab": "judge", "copy_steps": 0, "lookup_steps": 0, "judge_steps": 1, "batch_size": 2,
        "eval_per_position": 1, "n_documents": 4, "judge_documents": 3}))
    work, out, judge = tmp_path / "work", tmp_path / "out", tmp_path / "judge"
    assert recipe.main(["--work", str(work), "--out", str(out), "--judge",
                        "--judge-out", str(judge)]) == 0
    assert made == [".a.partial", ".judge.partial"]
    cfg = json.loads((judge / "pretrain_config.json").read_text())
    assert cfg["init"] == str(out) and cfg["judge_steps"] == 1
    printed = capsys.readouterr().out
    assert printed.count("sha256 of model.safetensors") == 2 and "judge saved to" in printed
    recipe.main(["--work", str(work), "--out", str(out), "--judge", "--judge-out", str(judge)])
    assert made == [".a.partial", ".judge.partial"]          # both found done
    with pytest.raises(SystemExit) as e:
        recipe.main(["--judge-out", str(recipe.TINY_JUDGE_DIR), "--judge-only"])
    assert e.value.code == 2
