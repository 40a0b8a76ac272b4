"""Several processes through accelerate (data parallel; FSDP or DeepSpeed from an accelerate config
file, no sharding code of our own), and the one thing R1 needs from them: the position-aware weights
of the *global* batch.

Each optimizer step reads ``--batch-size`` examples; rank r of W takes the r-th contiguous block of
them (:func:`shard`), split into ``--grad-accum`` micro-batches. The per-example losses of every
micro-batch are computed first without gradients, then gathered with their positions from every rank
(:meth:`Dist.gather`), so :func:`pos2distill.training.losses.position_weights` sees the whole optimizer batch
exactly as one process would; each rank then backpropagates ``W * sum_e w_e L_e`` over its own
examples, and DDP's gradient average makes the update that of one process on the whole batch.

Sharded parameters (FSDP from an accelerate config file): every rank takes part in reading the full
weights (:meth:`Dist.full_state_dict`, accelerate's ``get_state_dict``) and the main process writes
them; resumable checkpoints go through ``accelerator.save_state``/``load_state``, which handle
sharded model and optimizer state. The same calls run under DDP. DeepSpeed is refused: its engine
owns the backward pass and the optimizer step, which this loop does itself.

Without a launcher (no ``WORLD_SIZE`` > 1 in the environment) nothing here imports accelerate:
:class:`Dist` is a single process and the model is used as it is.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager, Sequence, TypeVar

import torch
from torch import Tensor

from pos2distill.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger(__name__)


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The ``rank``-th of ``world`` contiguous, equal blocks of ``items`` (concatenating the blocks
    in rank order gives ``items`` back, so a gather returns the single-process order)."""
    if len(items) % world:
        raise ValueError(f"{len(items)} items do not split into {world} equal blocks")
    n = len(items) // world
    return list(items[rank * n:(rank + 1) * n])


class Dist:
    """The process group of this run: ``rank``, ``world``, ``device``, ``is_main``, and the few
    collective operations training uses."""

    def __init__(self, *, device: str = "cpu", mixed_precision: str = "no"):
        self.world = world_size_from_env()
        self.accelerator: Any = None
        if self.world > 1:
            try:
                from accelerate import Accelerator
            except ImportError:
                raise ConfigError("several processes need accelerate: pip install "
                                  "'pos2distill[accelerate]'") from None
            self.accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)
            kind = str(self.accelerator.distributed_type)
            if "DEEPSPEED" in kind:
                raise ConfigError("DeepSpeed is not supported: its engine owns the backward pass "
                                  "and the optimizer step; shard with FSDP instead "
                                  "(configs/accelerate/fsdp.yaml)")
            if self.accelerator.num_processes != self.world:
                raise ConfigError(f"WORLD_SIZE is {self.world} but accelerate formed a group of "
                                  f"{self.accelerator.num_processes} process(es) (no GPU for "
                                  "--device cuda? on CPU use --device cpu)")
            self.rank = self.accelerator.process_index
            self.device = str(self.accelerator.device)
            if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not self.sharded:
                if self.rank == 0:
                    log.warning("the accelerate config asks for FSDP, but accelerate shards only "
                                "on GPUs (or other accelerators); %s runs plain data parallel "
                                "(%s)", self.device, kind)
        else:
            self.rank, self.device = 0, device
        self.is_main = self.rank == 0

    @property
    def sharded(self) -> bool:
        """Parameters are sharded over the ranks (FSDP): no rank holds the full weights."""
        return self.accelerator is not None and "FSDP" in str(self.accelerator.distributed_type)

    def prepare(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer
                ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The module wrapped for data parallelism (DDP or FSDP, from accelerate's config) and its
        optimizer, prepared together (FSDP2 swaps the optimizer's parameters for the sharded
        ones)."""
        if self.accelerator is None:
            return module, optimizer
        return self.accelerator.prepare(module, optimizer)

    def clip_grad_norm(self, module: torch.nn.Module, params: Sequence[torch.nn.Parameter],
                       max_norm: float) -> Tensor:
        """Clip the gradients to ``max_norm``; returns the total norm before clipping. Sharded
        gradients go through accelerate, which reduces the norm over the ranks."""
        if not self.sharded:
            return torch.nn.utils.clip_grad_norm_(list(params), max_norm)
        norm = self.accelerator.clip_grad_norm_(module.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def full_state_dict(self, module: torch.nn.Module,
                        prefix: str = "") -> dict[str, Tensor] | None:
        """The full (gathered) state dict of the unwrapped ``module``, keys starting with ``prefix``
        given without it; ``None`` in a single process (use the model itself). Every rank must call
        it (FSDP gathers the shards); only the main process's copy is complete."""
        if self.accelerator is None:
            return None
        sd = self.accelerator.get_state_dict(module)
        if sd is None:
            return None
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module if self.accelerator is None else self.accelerator.unwrap_model(module)

    def register_for_checkpointing(self, *objects: Any) -> None:
        """Objects besides the prepared model and optimizer that :meth:`save_state` keeps."""
        self.accelerator.register_for_checkpointing(*objects)

    def save_state(self, folder: Path, *, trainable_only: bool = False) -> None:
        """accelerate's checkpoint of the prepared model and optimizer (sharded or not), the
        registered objects and every rank's RNG states; every rank must call it.
        ``trainable_only`` (LoRA under DDP): the model file keeps the trainable tensors only, not
        the frozen base (FSDP writes its own model files)."""
        handle = None
        if trainable_only:
            def keep_trainable(models: list[Any], weights: list[dict[str, Any]], _: str) -> None:
                for model, sd in zip(models, weights):
                    train = {n for n, p in model.named_parameters() if p.requires_grad}
                    for k in [k for k in sd if k not in train]:
                        del sd[k]

            handle = self.accelerator.register_save_state_pre_hook(keep_trainable)
        try:
            self.accelerator.save_state(str(folder))
        finally:
            if handle is not None:
                handle.remove()

    def load_state(self, folder: Path, *, trainable_only: bool = False) -> None:
        """Restore :meth:`save_state`; with ``trainable_only`` the frozen tensors are not in the
        file and keep their values."""
        self.accelerator.load_state(str(folder), **({"strict": False} if trainable_only else {}))

    def gather(self, t: Tensor) -> Tensor:
        """(W * n, ...) concatenation of every rank's (n, ...) tensor, in rank order."""
        if self.accelerator is None:
            return t
        return self.accelerator.gather(t.contiguous())

    def sum(self, t: Tensor) -> Tensor:
        """The sum of every rank's ``t``."""
        if self.accelerator is None:
            return t
        return self.accelerator.reduce(t.clone(), reduction="sum")

    def no_sync(self, module: torch.nn.Module) -> ContextManager[Any]:
        """Skip the gradient all-reduce (every micro-batch of an optimizer step but the last)."""
        if self.accelerator is None:
            return nullcontext()
        return self.accelerator.no_sync(module)

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def end(self) -> None:
        if self.accelerator is not None:
            self.accelerator.end_training()
