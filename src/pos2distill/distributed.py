"""Several processes through accelerate (data parallel; FSDP or DeepSpeed from an accelerate config
file, no sharding code of our own), and the one thing R1 needs from them: the position-aware weights
of the *global* batch.

Each optimizer step reads ``--batch-size`` examples; rank r of W takes the r-th contiguous block of
them (:func:`shard`), split into ``--grad-accum`` micro-batches. The per-example losses of every
micro-batch are computed first without gradients, then gathered with their positions from every rank
(:meth:`Dist.gather`), so :func:`pos2distill.losses.position_weights` sees the whole optimizer batch
exactly as one process would; each rank then backpropagates ``W * sum_e w_e L_e`` over its own
examples, and DDP's gradient average makes the update that of one process on the whole batch.

Without a launcher (no ``WORLD_SIZE`` > 1 in the environment) nothing here imports accelerate:
:class:`Dist` is a single process and the model is used as it is.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any, ContextManager, Sequence, TypeVar

import torch
from torch import Tensor

from pos2distill.errors import ConfigError

T = TypeVar("T")


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
            self.rank = self.accelerator.process_index
            self.device = str(self.accelerator.device)
        else:
            self.rank, self.device = 0, device
        self.is_main = self.rank == 0

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module wrapped for data parallelism (DDP, FSDP, DeepSpeed: accelerate's config)."""
        if self.accelerator is None:
            return module
        return self.accelerator.prepare_model(module)

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
