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
them. Resumable checkpoints (:meth:`Dist.save_state`/:meth:`Dist.load_state`) keep the sharded model
and optimizer through accelerate's FSDP savers, one file per rank, and everything else as
safetensors or JSON, so that resuming never unpickles code: accelerate's own ``load_state`` reads
registered objects with ``torch.load(weights_only=False)``, and the ``torch.distributed.checkpoint``
folders its ``save_state`` writes under FSDP with ``pickle.load``. DeepSpeed is refused: its engine
owns the backward pass and the optimizer step, which this loop does itself.

Without a launcher (no ``WORLD_SIZE`` > 1 in the environment) nothing here imports accelerate:
:class:`Dist` is a single process and the model is used as it is.
"""

from __future__ import annotations

import json
import logging
import os
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager, Sequence, TypeVar

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor

from pos2distill.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger(__name__)

# The weights and optimizer of a DDP checkpoint (FSDP: accelerate's per-rank file names).
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.bin"


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
        self.prepared: tuple[torch.nn.Module, torch.optim.Optimizer] | None = None
        self.checkpointed: list[Any] = []
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
        self.prepared = self.accelerator.prepare(module, optimizer)   # what save_state keeps
        return self.prepared

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
        """Objects besides the prepared model and optimizer (the LR schedule) whose ``state_dict``
        :meth:`save_state` keeps, as JSON. Not accelerate's ``register_for_checkpointing``: its
        ``load_state`` reads them back with ``torch.load(weights_only=False)``."""
        self.checkpointed.extend(objects)

    def save_state(self, folder: Path, *, trainable_only: bool = False) -> None:
        """Write the prepared model and optimizer, the registered objects and this rank's RNG
        states to ``folder``; every rank must call it.

        FSDP: accelerate's savers with ``use_dcp=False`` write one model and one optimizer file
        per rank (``torch.save``; :meth:`load_state` reads them with ``weights_only=True``), not
        the ``torch.distributed.checkpoint`` folders of ``save_state``, whose metadata is read
        back with ``pickle.load``. DDP: the main process writes the weights (safetensors; with
        ``trainable_only``, LoRA, the trainable tensors only) and the optimizer (``torch.save``,
        plain tensors and numbers). Registered objects go to ``custom_state_{i}.json`` (main
        process), RNG states to ``rng_state_{rank}.json``."""
        module, optimizer = self._module_and_optimizer()
        if self.sharded:
            from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

            plugin = self.accelerator.state.fsdp_plugin
            save_fsdp_model(plugin, self.accelerator, module, str(folder), use_dcp=False)
            save_fsdp_optimizer(plugin, self.accelerator, optimizer, module, str(folder),
                                use_dcp=False)
        elif self.is_main:
            model = self.unwrap(module)
            if trainable_only:
                save_file({n: p.detach().contiguous() for n, p in model.named_parameters()
                           if p.requires_grad}, str(folder / MODEL_FILE))
            else:
                save_model(model, str(folder / MODEL_FILE))       # handles tied weights
            torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
        if self.is_main:
            for i, obj in enumerate(self.checkpointed):
                (folder / f"custom_state_{i}.json").write_text(json.dumps(obj.state_dict()))
        (folder / f"rng_state_{self.rank}.json").write_text(json.dumps(_rng_state(self.device)))

    def load_state(self, folder: Path, *, trainable_only: bool = False) -> None:
        """Restore :meth:`save_state`; every rank must call it. With ``trainable_only`` the frozen
        tensors are not in the file and keep their values. Only the files :meth:`save_state`
        writes are read, as safetensors, JSON or ``torch.load(weights_only=True)`` (tensors and
        plain containers, never arbitrary pickles); anything else in ``folder`` (accelerate's
        ``custom_checkpoint_*.pkl`` or ``random_states_*.pkl``) is ignored. Raises ``OSError``,
        ``ValueError``, ``KeyError``, ``TypeError``, ``RuntimeError`` or
        ``pickle.UnpicklingError`` on a missing or malformed file."""
        module, optimizer = self._module_and_optimizer()
        # The JSON first: a malformed file fails before any collective operation of the loaders.
        custom = [_json_object(folder / f"custom_state_{i}.json")
                  for i in range(len(self.checkpointed))]
        rng = _json_object(folder / f"rng_state_{self.rank}.json")
        if self.sharded:
            from accelerate.utils import load_fsdp_model, load_fsdp_optimizer

            plugin = self.accelerator.state.fsdp_plugin
            load_fsdp_model(plugin, self.accelerator, module, str(folder), use_dcp=False)
            load_fsdp_optimizer(plugin, self.accelerator, optimizer, module, str(folder),
                                use_dcp=False)
        else:
            model = self.unwrap(module)
            if trainable_only:
                load_trainable(model, folder / MODEL_FILE)
            else:
                load_model(model, folder / MODEL_FILE)      # to CPU, copied to the parameters
            optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location="cpu",
                                                 weights_only=True))
        for obj, state in zip(self.checkpointed, custom):
            if set(state) != set(obj.state_dict()):
                raise ValueError(f"custom_state: the fields of a {type(obj).__name__} are "
                                 f"{sorted(obj.state_dict())}, not {sorted(state)}")
            obj.load_state_dict(state)
        _set_rng_state(rng, self.device)

    def _module_and_optimizer(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        if self.prepared is None:
            raise RuntimeError("save_state/load_state need the model and optimizer of prepare()")
        return self.prepared

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


def _json_object(path: Path) -> dict[str, Any]:
    state = json.loads(path.read_text())
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return state


def _rng_state(device: str) -> dict[str, Any]:
    """This process's Python and torch RNG states (and those of its CUDA device), as JSON."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state().tolist()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def _set_rng_state(state: dict[str, Any], device: str) -> None:
    """Restore :func:`_rng_state`. A malformed state raises: ``random.setstate`` and
    ``torch.set_rng_state`` check types and lengths."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)


def load_trainable(model: torch.nn.Module, path: Path) -> None:
    """Copy the tensors of a ``trainable_only`` weights file into ``model``'s trainable ones."""
    saved = load_file(path)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        raise ValueError("the checkpoint holds other trainable tensors (another LoRA config?)")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])
