"""Metric logging: JSONL always; TensorBoard and Weights & Biases when installed and asked for.

Both optional back-ends are imported only when asked for, and asking for one that is not installed
is a :class:`~pos2distill.errors.ConfigError` that names the package to install. One
:class:`Tracker` covers one training run (TensorBoard: its own sub-folder; W&B: its own run in the
experiment's group), so step numbers start again at 1 for every run, as they do in its log.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from pos2distill.errors import ConfigError

log = logging.getLogger(__name__)

REPORT_TO = ("tensorboard", "wandb")


def _tensorboard_writer(logdir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("report_to: tensorboard is not installed (pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(logdir))


def _wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError("report_to: wandb is not installed (pip install wandb)") from None
    return wandb


def check_backends(report_to: Sequence[str]) -> None:
    """Fail early, before any work, when a requested back-end is unknown or not installed."""
    for name in report_to:
        if name not in REPORT_TO:
            raise ConfigError(f"report_to: {name!r} is not one of {', '.join(REPORT_TO)}")
        if name == "wandb":
            _wandb()
        else:
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError:
                raise ConfigError("report_to: tensorboard is not installed "
                                  "(pip install tensorboard)") from None


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"eval": {"mean": 0.5}}`` → ``{"eval/mean": 0.5}``; keeps finite numbers only."""
    flat: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(flatten(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            flat[key] = float(v)
    return flat


class Tracker:
    """Log dicts of numbers by step to ``jsonl_path`` and to the requested back-ends."""

    def __init__(self, jsonl_path: str | Path, *, report_to: Sequence[str] = (), name: str = "",
                 group: str = "", config: Mapping[str, Any] | None = None,
                 tensorboard_dir: str | Path | None = None):
        check_backends(report_to)
        self.path = Path(jsonl_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")  # a run is logged once, when it ends
        self._tb = (_tensorboard_writer(Path(tensorboard_dir or self.path.parent / "tensorboard"))
                    if "tensorboard" in report_to else None)
        self._wandb_run = (_wandb().init(name=name or None, group=group or None,
                                         config=dict(config or {}), reinit=True)
                           if "wandb" in report_to else None)

    def log(self, metrics: Mapping[str, Any], *, step: int) -> None:
        flat = flatten(metrics)
        self._file.write(json.dumps({"step": step, **flat}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in flat.items():
                self._tb.add_scalar(k, v, global_step=step)
        if self._wandb_run is not None:
            self._wandb_run.log(flat, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
