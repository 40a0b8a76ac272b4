"""distributed: two CPU processes (gloo, through accelerate) give the position weights and the update
of one process on the concatenated batch; shards and gathers keep the single-process order."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from test_checkpoints import plant_pickles
from pos2distill.stages import train
from pos2distill.config import TrainConfig
from pos2distill.training.checkpoints import DISTRIBUTED_FORMAT
from pos2distill.training.distributed import Dist, shard
from pos2distill.errors import ConfigError
from pos2distill.training.losses import position_weights

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_shard_blocks_concatenate_to_the_batch() -> None:
    items = list(range(12))
    assert shard(items, 0, 3) + shard(items, 1, 3) + shard(items, 2, 3) == items
    with pytest.raises(ValueError):
        shard(items, 0, 5)


def test_weights_of_gathered_shards_equal_weights_of_the_batch() -> None:
    torch.manual_seed(0)
    loss, pos = torch.rand(16), torch.randint(0, 5, (16,))
    whole = position_weights(loss, pos, anchor_position=0, anchor_weight=1.0)
    # A gather concatenates the ranks' blocks in rank order: the batch itself.
    blocks = [(shard(loss.tolist(), r, 4), shard(pos.tolist(), r, 4)) for r in range(4)]
    gathered = position_weights(torch.tensor(sum((b[0] for b in blocks), [])),
                                torch.tensor(sum((b[1] for b in blocks), [])),
                                anchor_position=0, anchor_weight=1.0)
    torch.testing.assert_close(gathered, whole)


def test_single_process_dist_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = Dist(device="cpu")
    t = torch.arange(3.0)
    m = torch.nn.Linear(2, 2)
    assert (d.world, d.rank, d.is_main) == (1, 0, True)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    assert d.gather(t) is t and d.sum(t) is t and d.prepare(m, opt) == (m, opt)
    assert d.full_state_dict(m) is None and d.unwrap(m) is m and not d.sharded


class FakeAccelerator:
    """Stands in for accelerate's Accelerator where this CPU cannot go (FSDP, DeepSpeed)."""

    def __init__(self, kind: str, processes: int = 2):
        self.distributed_type, self.num_processes = kind, processes
        self.process_index, self.device = 0, "cpu"
        self.calls: list[str] = []

    def __call__(self, **kwargs: Any) -> "FakeAccelerator":
        return self

    def clip_grad_norm_(self, params: Any, max_norm: float) -> torch.Tensor:
        self.calls.append("clip")
        return torch.nn.utils.clip_grad_norm_(list(params), max_norm)

    def get_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        self.calls.append("get_state_dict")
        return module.state_dict()


def _dist_with(monkeypatch: pytest.MonkeyPatch, fake: FakeAccelerator) -> Dist:
    import accelerate

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "Accelerator", fake)
    return Dist(device="cpu")


def test_sharded_runs_go_through_accelerate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under FSDP the gradient norm and the saved weights come from accelerate (which gathers the
    shards); DeepSpeed and a group smaller than WORLD_SIZE are refused with one line."""
    pytest.importorskip("accelerate", reason="several processes need accelerate")
    fake = FakeAccelerator("DistributedType.FSDP")
    d = _dist_with(monkeypatch, fake)
    assert d.sharded and (d.world, d.rank, d.is_main) == (2, 0, True)
    m = torch.nn.Sequential(torch.nn.Linear(2, 2))
    m(torch.ones(1, 2)).sum().backward()
    d.clip_grad_norm(m, [], 1.0)                       # the parameters come from the module
    sd = d.full_state_dict(m, prefix="0.")
    assert fake.calls == ["clip", "get_state_dict"] and set(sd) == {"weight", "bias"}
    assert not _dist_with(monkeypatch, FakeAccelerator("DistributedType.MULTI_CPU")).sharded
    with pytest.raises(ConfigError, match="DeepSpeed is not supported"):
        _dist_with(monkeypatch, FakeAccelerator("DistributedType.DEEPSPEED"))
    with pytest.raises(ConfigError, match="WORLD_SIZE is 2 but accelerate formed a group of 1"):
        _dist_with(monkeypatch, FakeAccelerator("DistributedType.NO", processes=1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(args: list[str], *, script: list[str] | None = None,
                env: dict[str, str] | None = None) -> None:
    """``pos2distill train ARGS`` as 2 CPU processes, the way torchrun/accelerate launch set them up
    (``script``: another entry point, given the train arguments)."""
    port = str(_free_port())
    procs = []
    cmd = script if script is not None else ["-m", "pos2distill", "-q", "train"]
    for rank in (0, 1):
        env_r = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
                 "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", **(env or {})}
        procs.append(subprocess.Popen([sys.executable, *cmd, *args], env=env_r,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("grad_accum", [pytest.param(2, id="accum2"),
                                        pytest.param(1, id="accum1", marks=pytest.mark.slow)])
def test_two_processes_equal_one_process_on_the_concatenated_batch(
        dist_pairs: Path, tiny_model_dir: Path, tmp_path: Path, grad_accum: int) -> None:
    pytest.importorskip("accelerate", reason="several processes need accelerate")
    common = dict(pairs=str(dist_pairs), model=str(tiny_model_dir), batch_size=8, epochs=1.0,
                  lr=5e-2, warmup_ratio=0.0, max_grad_norm=0.5)
    _launch_two([f"--{k.replace('_', '-')}={v}" for k, v in common.items()]
                + [f"--out={tmp_path / 'two'}", f"--grad-accum={grad_accum}"])
    train.main(TrainConfig(**common, out=str(tmp_path / "one")))
    two, one = _log(tmp_path / "two"), _log(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    for a, b in zip(two, one):
        assert a["weight_by_position"].keys() == b["weight_by_position"].keys()
        # The weights of the global batch. Step 2 follows an Adam update whose float rounding
        # differs between one and two processes (1.4e-5 relative seen on a KL): rel 1e-4.
        for p in a["weight_by_position"]:
            assert a["weight_by_position"][p] == pytest.approx(b["weight_by_position"][p], rel=1e-4)
            assert a["kl_by_position"][p] == pytest.approx(b["kl_by_position"][p], rel=1e-4)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        # The gradient of the whole batch (before clipping): DDP's average times W is the sum.
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2
    from safetensors.torch import load_file

    w2 = load_file(tmp_path / "two" / "model" / "model.safetensors")
    w1 = load_file(tmp_path / "one" / "model" / "model.safetensors")
    w0 = load_file(tiny_model_dir / "model.safetensors")
    moved = max((w1[k] - w0[k]).abs().max().item() for k in w1)
    assert moved > 5e-2                                   # the update is real ...
    for k in w1:           # ... and the same on 2 processes, up to rounding (Adam divides by
        # sqrt(v), which magnifies the rounding of near-zero gradients to ~1e-5)
        torch.testing.assert_close(w2[k], w1[k], atol=1e-4, rtol=0)


# The entry point of the resume test's processes: `pos2distill train ARGS`, stopped for good right
# after its checkpoint at step STOP_AT is complete on every rank (as a kill between two steps would,
# but deterministically); with RESUMED set, each rank writes the step it resumed from (None: it
# started over) to RESUMED + rank. With FORCE_FSDP=1 accelerate's state is switched to FSDP right
# after the Accelerator is built: accelerate 1.15 shards only on GPUs and other accelerators and
# sets up plain DDP on CPU (DistributedType.MULTI_CPU), though torch's FSDP2 runs on CPU with gloo.
# Everything after the switch (fully_shard, sharded clipping, accelerate's per-rank FSDP savers and
# loaders, get_state_dict) is accelerate's and torch's own FSDP2 code.
_ENTRY = """
import os, sys
if os.environ.get("FORCE_FSDP") == "1":
    import accelerate
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    _init = accelerate.Accelerator.__init__

    def init(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        for shared in (PartialState._shared_state, AcceleratorState._shared_state):
            shared["distributed_type"] = DistributedType.FSDP
        AcceleratorState._shared_state["fsdp_plugin"] = FullyShardedDataParallelPlugin()

    accelerate.Accelerator.__init__ = init

from pos2distill.stages import train
from pos2distill.cli import main

_save = train.save_distributed_checkpoint

def save_and_stop(out, dist, *, step, **kw):
    path = _save(out, dist, step=step, **kw)
    if step == int(os.environ.get("STOP_AT", "0")):
        os._exit(0)
    return path

train.save_distributed_checkpoint = save_and_stop
_resume = train.resume

def resume_and_tell(out, dist, **kw):
    step = _resume(out, dist, **kw)
    if os.environ.get("RESUMED"):
        with open(os.environ["RESUMED"] + str(dist.rank), "w") as f:
            f.write(str(step))
    return step

train.resume = resume_and_tell
sys.exit(main(["-q", "train", *sys.argv[1:]]))
"""
# FSDP2 from the environment, as `accelerate launch --config_file configs/accelerate/fsdp.yaml`
# sets it (one shard unit per decoder layer, sharded checkpoints).
_FSDP_ENV = {"FORCE_FSDP": "1", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
             "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT", "FSDP_RESHARD_AFTER_FORWARD": "true"}


@pytest.mark.parametrize("backend,lora_rank,method", [
    pytest.param("fsdp", 0, "r1", id="fsdp"),
    pytest.param("ddp", 0, "r1", id="ddp", marks=pytest.mark.slow),
    pytest.param("ddp", 4, "r1", id="ddp-lora", marks=pytest.mark.slow),
    # FSDP with LoRA needs a teacher cache or a cross-entropy method (the LoRA teacher is refused)
    pytest.param("fsdp", 4, "sft", id="fsdp-lora", marks=pytest.mark.slow)])
def test_two_processes_resume_from_an_accelerate_checkpoint(
        dist_pairs: Path, tiny_model_dir: Path, tmp_path: Path, backend: str, lora_rank: int,
        method: str) -> None:
    """The checkpoint of several processes is written by every rank (sharded under FSDP, one
    file per rank); a run stopped after step 2 of 4 and re-run ends with the weights of one
    process, and the final model is the state dict gathered from every rank. With LoRA the DDP
    checkpoint keeps the adapter only and the saved adapter (peft, from the gathered state dict)
    is the same. The pickles accelerate's load_state would unpickle, planted in the checkpoint
    before the re-run, are never read."""
    pytest.importorskip("accelerate", reason="several processes need accelerate")
    if lora_rank:
        pytest.importorskip("peft", reason="LoRA needs peft")
    common = dict(pairs=str(dist_pairs), model=str(tiny_model_dir), batch_size=8, epochs=2.0,
                  lr=5e-2, warmup_ratio=0.0, max_grad_norm=0.5, grad_accum=2, save_every=2,
                  lora_rank=lora_rank, method=method)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in common.items()]
    args.append(f"--out={tmp_path / 'two'}")
    entry = tmp_path / "entry.py"
    entry.write_text(_ENTRY)
    env = _FSDP_ENV if backend == "fsdp" else {}
    _launch_two(args, script=[str(entry)], env={**env, "STOP_AT": "2"})
    ckpt = tmp_path / "two" / "checkpoint"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["step"], state["format"], state["processes"]) == (2, DISTRIBUTED_FORMAT, 2)
    names = {p.name for p in ckpt.iterdir()}
    json_files = {"custom_state_0.json", "rng_state_0.json", "rng_state_1.json"}
    from safetensors.torch import load_file

    if backend == "fsdp":          # sharded model and optimizer: one file per rank
        assert names == json_files | {"trainer_state.json", "pytorch_model_fsdp_0_rank0.bin",
                                      "pytorch_model_fsdp_0_rank1.bin", "optimizer_0_rank0.bin",
                                      "optimizer_0_rank1.bin"}
    else:
        assert names == json_files | {"trainer_state.json", "model.safetensors", "optimizer.bin"}
        saved = load_file(ckpt / "model.safetensors")
        assert saved and all(("lora_" in k) == bool(lora_rank) for k in saved)
    assert not (tmp_path / "two" / "model").exists()
    assert [r["step"] for r in _log(tmp_path / "two")] == [1, 2]
    with pytest.raises(ConfigError, match="written by 2 process"):   # one process cannot resume it
        train.main(TrainConfig(**common, out=str(tmp_path / "two")))
    marker = tmp_path / "pwned"
    plant_pickles(ckpt, marker)
    resumed = str(tmp_path / "resumed")
    _launch_two(args, script=[str(entry)], env={**env, "RESUMED": resumed})  # the same launch
    assert [Path(resumed + r).read_text() for r in "01"] == ["2", "2"]     # resumes at step 2
    assert not marker.exists()
    train.main(TrainConfig(**common, out=str(tmp_path / "one")))
    two, one = _log(tmp_path / "two"), _log(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3, 4]
    for a, b in zip(two, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4, abs=1e-6)
    files = ["model/model.safetensors"]
    if lora_rank:
        files.append("adapter/adapter_model.safetensors")
    w0 = load_file(tiny_model_dir / "model.safetensors")
    for f in files:
        w2, w1 = load_file(tmp_path / "two" / f), load_file(tmp_path / "one" / f)
        assert w2.keys() == w1.keys() and w1
        for k in w1:
            # Float summation order differs between one and two processes, and Adam's division by
            # the gradient scale magnifies it where a gradient is near zero (2.3e-4 seen with 2
            # threads); 1e-3 is still 50× below the update checked below.
            torch.testing.assert_close(w2[k], w1[k], atol=1e-3, rtol=0)
    moved = load_file(tmp_path / "one" / files[0])
    assert max((moved[k] - w0[k]).abs().max().item() for k in w0) > 5e-2   # a real update


def test_fsdp_with_the_lora_teacher_is_refused(monkeypatch: pytest.MonkeyPatch, dist_pairs: Path,
                                               tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("accelerate", reason="several processes need accelerate")
    import accelerate

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator("DistributedType.FSDP"))
    with pytest.raises(ConfigError, match="FSDP with LoRA.*--teacher-cache"):
        train.main(TrainConfig(pairs=str(dist_pairs), model=str(tiny_model_dir), lora_rank=2,
                               out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def dist_pairs(make_pairs_file: Any) -> Path:
    return make_pairs_file(4, K=3)   # 16 pairs
