"""checkpoints: a multi-process checkpoint is resumed from safetensors, JSON and
``torch.load(weights_only=True)`` only. A pickle planted in the folder (accelerate's
``custom_checkpoint_0.pkl`` and ``random_states_*.pkl``, ``torch.distributed.checkpoint`` metadata)
is never unpickled, and a checkpoint of the earlier, pickled format is refused unread.

One process stands in for rank 0 of two: the real :class:`Dist` on a fake accelerator (no process
group; its barrier does nothing), so ``save_state``/``load_state`` and ``train.resume`` run as they
do under DDP, in milliseconds. ``tests/training/test_distributed.py`` plants the same pickles in
real 2-process DDP and FSDP checkpoints before resuming them.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from pos2distill.errors import ConfigError
from pos2distill.stages import train
from pos2distill.training.checkpoints import CHECKPOINT, DISTRIBUTED_FORMAT, PICKLED_FORMAT
from pos2distill.training.distributed import Dist
from pos2distill.training.optim import build_optimizer, build_schedule

STATE = {"fingerprint": "f" * 16, "seed": 0, "total": 6, "order": list(range(12))}


class Evil:
    """Unpickling this creates ``marker``: the code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (str(self.marker), "w"))


def plant_pickles(folder: Path, marker: Path) -> None:
    """The pickles accelerate's ``load_state`` would read from ``folder``, each creating
    ``marker`` when unpickled: the registered schedule (``weights_only=False``), every rank's RNG
    states, and the ``torch.distributed.checkpoint`` metadata of FSDP's model and optimizer
    (``pickle.load``)."""
    torch.save(Evil(marker), folder / "custom_checkpoint_0.pkl")
    for rank in (0, 1):
        torch.save(Evil(marker), folder / f"random_states_{rank}.pkl")
    for name in ("pytorch_model_fsdp_0", "optimizer_0"):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / ".metadata").write_bytes(pickle.dumps(Evil(marker)))


class FakeAccelerator:
    """Rank 0 of 2 under DDP on CPU, without a process group."""

    distributed_type, num_processes, process_index = "DistributedType.MULTI_CPU", 2, 0
    device = torch.device("cpu", 0)       # as accelerate has it there (not what safetensors takes)

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        return objects

    def unwrap_model(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def wait_for_everyone(self) -> None:
        pass


class Run:
    """A model, its optimizer and schedule, prepared and registered as ``train`` does."""

    def __init__(self, dist: Dist, seed: int):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
        opt = build_optimizer(list(model.parameters()), lr=0.1, weight_decay=0.1,
                              betas=(0.9, 0.95))
        self.model, self.opt = dist.prepare(model, opt)
        self.sched = build_schedule(self.opt, total=STATE["total"], warmup_ratio=0.5,
                                    min_ratio=0.1)
        dist.register_for_checkpointing(self.sched)

    def step(self) -> None:
        self.model(torch.randn(2, 3)).square().sum().backward()
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()

    def snapshot(self) -> dict[str, Any]:
        return {"weights": {k: v.clone() for k, v in self.model.state_dict().items()},
                "adam": {k: v.clone() for k, v in self.opt.state_dict()["state"][0].items()},
                "sched": self.sched.state_dict(), "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate()}

    def resume(self, dist: Dist, out: Path) -> int | None:
        return train.resume(out, dist, student=self.model, opt=self.opt, sched=self.sched,
                            state=STATE, lora_rank=0, device="cpu")


@pytest.fixture
def dist(monkeypatch: pytest.MonkeyPatch) -> Dist:
    accelerate = pytest.importorskip("accelerate", reason="several processes need accelerate")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "Accelerator", lambda **kwargs: FakeAccelerator())
    return Dist(device="cpu")


@pytest.fixture
def saved(dist: Dist, tmp_path: Path) -> tuple[Run, dict[str, Any]]:
    """A run checkpointed after 2 steps, then moved on (2 more steps, RNGs drawn from), and the
    snapshot of the checkpointed state."""
    run = Run(dist, seed=0)
    run.step()
    run.step()
    train.checkpoint(tmp_path, dist, step=2, student=run.model, opt=run.opt, sched=run.sched,
                     state=STATE, lora_rank=0)
    snapshot = run.snapshot()
    run.step()
    run.step()
    random.random()
    return run, snapshot


def test_the_planted_pickles_run_code_when_unpickled(tmp_path: Path) -> None:
    """The attack is real: accelerate's loads (weights_only=False for the schedule, pickle.load
    for the FSDP metadata) would create the marker."""
    plant_pickles(tmp_path, tmp_path / "pwned")
    torch.load(tmp_path / "custom_checkpoint_0.pkl", weights_only=False).close()
    assert (tmp_path / "pwned").exists()
    (tmp_path / "pwned").unlink()
    pickle.loads((tmp_path / "optimizer_0" / ".metadata").read_bytes()).close()
    assert (tmp_path / "pwned").exists()


def test_resume_of_two_processes_never_unpickles_a_planted_pickle(
        dist: Dist, saved: tuple[Run, dict[str, Any]], tmp_path: Path) -> None:
    run, expected = saved
    ckpt = tmp_path / CHECKPOINT
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["format"], state["processes"]) == (DISTRIBUTED_FORMAT, 2)
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "optimizer.bin",
                                                 "custom_state_0.json", "rng_state_0.json",
                                                 "trainer_state.json"}
    marker = tmp_path / "pwned"
    plant_pickles(ckpt, marker)
    try:
        step = run.resume(dist, tmp_path)
    finally:        # checked first, whatever an unpickled payload made resume do next
        assert not marker.exists(), "resuming unpickled a planted pickle"
    assert step == 2
    # ... and the state of step 2 is back: weights, Adam moments, schedule, both RNGs.
    got = run.snapshot()
    for part in ("weights", "adam"):
        assert got[part].keys() == expected[part].keys()
        for k in expected[part]:
            torch.testing.assert_close(got[part][k], expected[part][k], rtol=0, atol=0)
    assert got["sched"] == expected["sched"] and got["sched"]["last_epoch"] == 2
    assert torch.equal(got["torch_rng"], expected["torch_rng"])
    assert got["python_rng"] == expected["python_rng"]


def test_a_pickle_in_place_of_a_file_that_is_read_is_refused(
        dist: Dist, saved: tuple[Run, dict[str, Any]], tmp_path: Path) -> None:
    run, _ = saved
    marker = tmp_path / "pwned"
    torch.save({"state": Evil(marker)}, tmp_path / CHECKPOINT / "optimizer.bin")
    with pytest.raises(ConfigError, match=r"unreadable checkpoint \(UnpicklingError: .*delete "
                                          "it to start over"):
        run.resume(dist, tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("file,content", [
    ("model.safetensors", "not safetensors"),
    ("rng_state_0.json", '{"python": [3, [1, 2], null], "torch": [1, 2]}'),
    ("rng_state_0.json", "[]"),
    ("custom_state_0.json", '{"last_epoch": 2}'),
    ("custom_state_0.json", "{not json"),
])
def test_a_damaged_file_is_an_unreadable_checkpoint(
        dist: Dist, saved: tuple[Run, dict[str, Any]], tmp_path: Path, file: str,
        content: str) -> None:
    run, _ = saved
    (tmp_path / CHECKPOINT / file).write_text(content)
    with pytest.raises(ConfigError, match="unreadable checkpoint"):
        run.resume(dist, tmp_path)


def test_a_missing_rank_file_is_an_unreadable_checkpoint(
        dist: Dist, saved: tuple[Run, dict[str, Any]], tmp_path: Path) -> None:
    run, _ = saved
    (tmp_path / CHECKPOINT / "rng_state_0.json").unlink()
    with pytest.raises(ConfigError, match=r"unreadable checkpoint \(FileNotFoundError"):
        run.resume(dist, tmp_path)


def test_a_pickled_checkpoint_of_an_earlier_version_is_refused_unread(
        dist: Dist, tmp_path: Path) -> None:
    """The layout accelerate's save_state wrote for 2 DDP processes up to this version: the
    schedule in custom_checkpoint_0.pkl, every rank's RNG states in random_states_*.pkl. Refused
    before any file but trainer_state.json is opened (the pickles here would create the marker),
    whatever the launch."""
    run = Run(dist, seed=0)
    ckpt = tmp_path / CHECKPOINT
    ckpt.mkdir()
    torch.save(run.opt.state_dict(), ckpt / "optimizer.bin")
    marker = tmp_path / "pwned"
    plant_pickles(ckpt, marker)
    (ckpt / "trainer_state.json").write_text(json.dumps(
        {**STATE, "step": 2, "format": PICKLED_FORMAT, "processes": 2}))
    with pytest.raises(ConfigError, match="multi-process checkpoint of an earlier pos2distill, "
                                          r"which only unpickling .* delete it to start over"):
        run.resume(dist, tmp_path)
    assert not marker.exists()


def test_other_launches_and_formats_are_refused(dist: Dist, tmp_path: Path) -> None:
    run = Run(dist, seed=0)
    ckpt = tmp_path / CHECKPOINT
    ckpt.mkdir()
    for fields, message in [({"processes": 3, "format": DISTRIBUTED_FORMAT},
                             r"written by 3 process\(es\); resume it with the same launch "
                             r"\(this one has 2\)"),
                            ({}, r"written by 1 process\(es\)"),       # a single-process one
                            ({"processes": 2, "format": "dist-v9"},
                             "unknown checkpoint format 'dist-v9'")]:
        (ckpt / "trainer_state.json").write_text(json.dumps({**STATE, "step": 2, **fields}))
        with pytest.raises(ConfigError, match=message):
            run.resume(dist, tmp_path)
