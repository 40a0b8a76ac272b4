"""tracking: JSONL always; TensorBoard / W&B only when asked for, with a clear error when missing."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from pos2distill.errors import ConfigError
from pos2distill.tracking import Tracker, check_backends, flatten


def test_flatten_keeps_finite_numbers() -> None:
    assert flatten({"train": {"loss": 1.5, "by": {"0": 2}}, "name": "x", "nan": float("nan"),
                    "ok": True, "step": 3}) == {"train/loss": 1.5, "train/by/0": 2.0, "step": 3.0}


def test_jsonl_always(tmp_path: Path) -> None:
    with Tracker(tmp_path / "m.jsonl") as tr:
        tr.log({"train": {"loss": 2.0}}, step=1)
        tr.log({"eval": {"mean": 0.5, "label": "skipped"}}, step=2)
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "train/loss": 2.0}, {"step": 2, "eval/mean": 0.5}]
    assert not (tmp_path / "tensorboard").exists()


def test_missing_backends_are_clear_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)                     # import fails
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"wandb is not installed \(pip install wandb\)"):
        check_backends(["wandb"])
    with pytest.raises(ConfigError, match=r"tensorboard is not installed \(pip install tensorboard\)"):
        Tracker(tmp_path / "m.jsonl", report_to=["tensorboard"])
    with pytest.raises(ConfigError, match="'mlflow' is not one of tensorboard, wandb"):
        check_backends(["mlflow"])
    check_backends([])                                                    # nothing asked: fine


def test_backends_receive_the_same_numbers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    events: list[tuple[str, Any]] = []

    class FakeRun:
        def log(self, metrics: dict, step: int) -> None:
            events.append(("wandb.log", (metrics, step)))

        def finish(self) -> None:
            events.append(("wandb.finish", None))

    fake_wandb = types.SimpleNamespace(init=lambda **kw: events.append(("wandb.init", kw)) or FakeRun())

    class FakeWriter:
        def __init__(self, log_dir: str) -> None:
            events.append(("tb.open", Path(log_dir).name))

        def add_scalar(self, key: str, value: float, global_step: int) -> None:
            events.append(("tb.scalar", (key, value, global_step)))

        def close(self) -> None:
            events.append(("tb.close", None))

    fake_tb = types.ModuleType("torch.utils.tensorboard")
    fake_tb.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake_tb)
    with Tracker(tmp_path / "m.jsonl", report_to=["tensorboard", "wandb"], name="exp/run",
                 group="exp", config={"method": "r1"}, tensorboard_dir=tmp_path / "tb" / "run") as tr:
        tr.log({"train": {"loss": 2.0}}, step=4)
    assert events == [
        ("tb.open", "run"),
        ("wandb.init", {"name": "exp/run", "group": "exp", "config": {"method": "r1"},
                        "reinit": True}),
        ("tb.scalar", ("train/loss", 2.0, 4)),
        ("wandb.log", ({"train/loss": 2.0}, 4)),
        ("tb.close", None), ("wandb.finish", None)]
