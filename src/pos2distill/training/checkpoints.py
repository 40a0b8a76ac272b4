"""Checkpoints: ``OUT/checkpoint`` holds everything a resumed run needs to continue bit for bit.

One process: :func:`save_checkpoint` writes the student weights (the adapter only, with LoRA),
optimizer, scheduler and RNG states and ``trainer_state.json`` (config fingerprint, data order,
step). Several processes: :func:`save_distributed_checkpoint` has every rank write its part
(:meth:`~pos2distill.training.distributed.Dist.save_state`: sharded FSDP state one file per rank,
each rank's RNG states) next to the same ``trainer_state.json``. Both go to a temporary folder that
then replaces the old checkpoint, so a kill never leaves a half-written one. A checkpoint of another
config, data order or number of processes is refused with a message that says what to do.

Resuming reads safetensors, JSON and ``torch.load(weights_only=True)`` only, so a checkpoint folder
from elsewhere cannot run code. Multi-process checkpoints of earlier versions (``"format":
"accelerate"``: accelerate's ``save_state``, whose ``load_state`` unpickles the schedule with
``weights_only=False``) are refused before any of their files is opened.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model

from pos2distill.errors import ConfigError
from pos2distill.runinfo import replace_dir, write_text_atomic
from pos2distill.training.distributed import Dist, load_trainable

CHECKPOINT = "checkpoint"
#: ``format`` in the ``trainer_state.json`` of a multi-process checkpoint (:meth:`Dist.save_state`).
DISTRIBUTED_FORMAT = "dist-v2"
#: The format of earlier versions, refused: resuming it meant unpickling arbitrary objects.
PICKLED_FORMAT = "accelerate"


def save_checkpoint(out: Path, *, step: int, student: Any, opt: torch.optim.Optimizer,
                    sched: Any, state: dict[str, Any], trainable_only: bool = False) -> Path:
    """Write ``out/checkpoint`` after optimizer step ``step``: student weights (safetensors),
    optimizer and scheduler state, torch and python RNG states, and ``state`` (fingerprint, data
    order). Everything goes to a temporary folder first, which then replaces the old checkpoint
    (:func:`~pos2distill.runinfo.replace_dir`), so a kill never leaves a half-written checkpoint."""
    final = out / CHECKPOINT
    tmp = out / (".tmp-" + CHECKPOINT)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if trainable_only:  # LoRA: the frozen base is the --model folder itself; keep the adapter
        save_file({n: p.detach().contiguous() for n, p in student.named_parameters()
                   if p.requires_grad}, str(tmp / "model.safetensors"))
    else:
        save_model(student, str(tmp / "model.safetensors"))  # handles tied weights
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    version, internal, gauss = random.getstate()
    (tmp / "trainer_state.json").write_text(json.dumps(
        {**state, "step": step, "python_rng": [version, list(internal), gauss]}))
    replace_dir(tmp, final)
    return final


def load_checkpoint(path: Path, *, student: Any, opt: torch.optim.Optimizer, sched: Any,
                    fingerprint: str, order: list[int], device: str,
                    trainable_only: bool = False) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its step.

    A checkpoint of another config or data order is refused. The optimizer file is read with
    ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles.
    """
    state = _checked_trainer_state(path, fingerprint=fingerprint, order=order, processes=1)
    try:
        if trainable_only:
            load_trainable(student, path / "model.safetensors")
        else:
            load_model(student, path / "model.safetensors", device=device)
        blob = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        return int(state["step"])
    except _UNREADABLE as e:
        raise _unreadable(path, e) from None


def save_distributed_checkpoint(out: Path, dist: Dist, *, step: int, state: dict[str, Any],
                                trainable_only: bool = False) -> Path:
    """:func:`save_checkpoint` under several processes: every rank writes its part
    (:meth:`~pos2distill.training.distributed.Dist.save_state`: model, optimizer, the registered
    schedule, its RNG states; FSDP shards one file per rank) into a temporary folder, then the
    main process adds ``trainer_state.json`` and swaps the folder in."""
    final, tmp = out / CHECKPOINT, out / (".tmp-" + CHECKPOINT)
    if dist.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    dist.save_state(tmp, trainable_only=trainable_only)
    dist.barrier()
    if dist.is_main:
        (tmp / "trainer_state.json").write_text(json.dumps(
            {**state, "step": step, "format": DISTRIBUTED_FORMAT, "processes": dist.world}))
        replace_dir(tmp, final)
    dist.barrier()
    return final


def load_distributed_checkpoint(path: Path, dist: Dist, *, fingerprint: str, order: list[int],
                                trainable_only: bool = False) -> int:
    """Restore a checkpoint written by :func:`save_distributed_checkpoint` (every rank calls it);
    returns its step. Refused like :func:`load_checkpoint`, and unless it was written by as many
    processes in this version's format. Only the files ``save_state`` writes are read (JSON,
    safetensors, ``torch.load(weights_only=True)``): a pickle planted in the folder is ignored."""
    state = _checked_trainer_state(path, fingerprint=fingerprint, order=order,
                                   processes=dist.world)
    try:
        step = int(state["step"])
        dist.load_state(path, trainable_only=trainable_only)
        return step
    except _UNREADABLE as e:
        raise _unreadable(path, e) from None


def _checked_trainer_state(path: Path, *, fingerprint: str, order: list[int],
                           processes: int) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint, refused unless it was written for this config, data
    order and number of processes (one process: the single-process format)."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if not isinstance(state, dict):
            raise ValueError("trainer_state.json is not a JSON object")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable checkpoint ({e}); delete it to start over") from None
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(f"{path} is a checkpoint of a different config; choose another --out "
                          "or delete it")
    if state.get("order") != order:
        raise ConfigError(f"{path} was trained on a different data order (other pairs?); choose "
                          "another --out or delete it")
    if state.get("format") == PICKLED_FORMAT:
        raise ConfigError(f"{path} is a multi-process checkpoint of an earlier pos2distill, which "
                          "only unpickling (able to run any code) could resume; delete it to start "
                          "over")
    written = state.get("processes", 1)
    if written != processes:
        raise ConfigError(f"{path} was written by {written} process(es); resume it with the same "
                          f"launch (this one has {processes}), or delete it")
    if processes > 1 and state.get("format") != DISTRIBUTED_FORMAT:
        raise ConfigError(f"{path}: unknown checkpoint format {state.get('format')!r}; delete it "
                          "to start over")
    return state


# What reading a damaged checkpoint raises (pickle: weights_only=True refusing a global).
_UNREADABLE = (OSError, RuntimeError, ValueError, KeyError, TypeError, pickle.UnpicklingError,
               SafetensorError)


def _unreadable(path: Path, e: Exception) -> ConfigError:
    first = str(e).splitlines()[0] if str(e) else ""
    return ConfigError(f"{path}: unreadable checkpoint ({type(e).__name__}: {first}); delete it "
                       "to start over")


def truncate_log(path: Path, step: int) -> None:
    """Keep the log rows of steps up to ``step`` (those the checkpoint has seen); a resumed run
    appends the rest, so no step is missing or logged twice. A torn last line is dropped."""
    keep = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                row = json.loads(line)
            except ValueError:
                break
            if not line.endswith("\n") or not isinstance(row, dict) or row.get("step", 0) > step:
                break
            keep.append(line)
    write_text_atomic(path, "".join(keep))
