"""``pos2distill train --method r1``: Pos2Distill-R1 (METHOD.md §2), its ablations and baselines.

``--method`` picks a named configuration of :mod:`pos2distill.training.methods` (loss, weights, anchors,
target); everything below is the same loop for all of them. Cross-entropy methods (sft, seqkd, r2)
never build the teacher: their per-example loss is the student's cross-entropy on the target tokens.

Read top to bottom: encode the pairs, then the loop. The teacher is a frozen copy of the starting
model reading the stored advantageous prompt; the student reads the same response after the prompt
with the gold document elsewhere. Both sides see identical response tokens.

Alignment: sequences are left-padded so every response ends at the last position. With R the longest
response in the batch (EOS included), the logits at the last R+1 positions minus the very last one are
exactly the distributions that predict the R final tokens: the logit at the last prompt position
predicts the first response token (kept), the logit at EOS predicts what follows EOS (dropped).
Only the hidden states of those R positions go through the output head, a chunk of tokens at a time
(:mod:`pos2distill.training.heads`), never [B, T, V]; :class:`~pos2distill.training.teacher.ResponseLoss` is that
computation as the student's forward, so accelerate can wrap it.

Teacher (KL methods): a frozen copy of the starting model (``--teacher-device`` puts it elsewhere),
the student's own base weights with the LoRA adapter disabled (``--lora-rank``), or a teacher cache
(``--teacher-cache``, :mod:`pos2distill.stages.cache`). Several processes: :mod:`pos2distill.training.distributed`;
the position-aware weights are computed on the losses and positions gathered from every rank.

Weights with gradient accumulation: the position-aware weights group the whole optimizer batch
(the paper's "batch"), so with ``--grad-accum > 1`` a no-grad pass computes every micro-batch's
per-example KL first, then a second pass backpropagates with those weights.

Checkpoints: every ``--save-every`` optimizer steps, and after the last one, ``OUT/checkpoint`` is
replaced atomically by the student weights (the adapter only, with LoRA), optimizer, scheduler and
RNG states and the data order. Under several processes the weights, optimizer and RNG states are
accelerate's ``save_state`` (every rank takes part, so sharded FSDP state is gathered or saved
sharded), next to the same ``trainer_state.json``; the final model is the state dict gathered from
every rank (:meth:`~pos2distill.training.distributed.Dist.full_state_dict`), written by the main process.
Re-running the same command continues from it and ends with the same weights as an uninterrupted
run; log rows written after the checkpoint are dropped and written
again. A non-finite loss stops training before the optimizer step, so the last checkpoint on disk is
always a good one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import logging
import math
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch

from pos2distill.config import TrainConfig
from pos2distill.training.distributed import Dist, shard
from pos2distill.errors import ConfigError, DataError, TrainingError
from pos2distill.training.losses import (per_example_cross_entropy, per_example_kl, position_weights,
                                weighted_loss)
from pos2distill.training.methods import Method, get_method
from pos2distill.tasks.prompts import encode_prompt
from pos2distill.data.records import iter_jsonl
from pos2distill.training.teacher import CachedTeacher, CrossEntropyTargets, OnlineTeacher, ResponseLoss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    student_ids: tuple[int, ...]   # student prompt + response (EOS included)
    teacher_ids: tuple[int, ...]   # teacher prompt + the same response; () without a teacher
    response_len: int
    position: int                  # -1 when the row has no single integer position (R2 hop pairs)
    adv_position: int


def _int_or(value: Any, default: int = -1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def encode_pair(row: dict[str, Any], tokenizer: Any, *, target: str = "response",
                teacher: bool = True) -> Example:
    """Token ids of one pair. ``target``: ``"response"`` (the pair's response) or ``"gold"`` (its
    first gold answer, for SFT); ``teacher=False`` skips the teacher side (cross-entropy methods)."""
    text = row["response"] if target == "response" else row["answers"][0]
    response = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    chat = bool(row["chat"])
    student = encode_prompt(tokenizer, row["student_prompt"], chat=chat) + response
    teacher_ids = encode_prompt(tokenizer, row["teacher_prompt"], chat=chat) + response if teacher else []
    return Example(tuple(student), tuple(teacher_ids), len(response), _int_or(row.get("position")),
                   _int_or(row.get("adv_position")))


def is_anchor(row: dict[str, Any]) -> bool:
    """An anchor row: the student also at the advantageous position."""
    if "anchor" in row:
        return bool(row["anchor"])
    pos, adv = row.get("position"), row.get("adv_position")
    return isinstance(pos, int) and pos == adv


def read_pairs(path: str, fields: Sequence[str] = ("student_prompt", "teacher_prompt", "response",
                                                   "position", "adv_position", "chat")
               ) -> list[dict[str, Any]]:
    rows = []
    for n, row in iter_jsonl(path):
        for key in fields:
            if key not in row:
                raise DataError("missing (is this a `pos2distill pairs` output?)", path=path,
                                line=n, field=key)
        rows.append(row)
    if not rows:
        raise DataError("no training pairs", path=path)
    return rows


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (B, T), sequences right-aligned."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):] = torch.tensor(s, dtype=torch.long)
        att[b, T - len(s):] = 1
    return ids, att


def response_mask(response_lens: Sequence[int]) -> torch.Tensor:
    """(B, R) bool: True on the last ``response_lens[b]`` of R columns."""
    R = max(response_lens)
    cols = torch.arange(R)
    return cols.unsqueeze(0) >= (R - torch.tensor(response_lens)).unsqueeze(1)


def response_logits(model: Any, ids: torch.Tensor, att: torch.Tensor, R: int) -> torch.Tensor:
    """(B, R, V) logits predicting the last R tokens of each left-padded row."""
    # Position ids count real tokens only, so left padding does not shift rotary positions.
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=R + 1,
                use_cache=False)
    return out.logits[:, :-1]


def batch_tensors(examples: Sequence[Example], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    s_ids, s_att = left_pad([e.student_ids for e in examples], pad_id)
    lens = [e.response_len for e in examples]
    b = {"s_ids": s_ids.to(device), "s_att": s_att.to(device), "mask": response_mask(lens).to(device),
         "positions": torch.tensor([e.position for e in examples], device=device)}
    if examples[0].teacher_ids:
        t_ids, t_att = left_pad([e.teacher_ids for e in examples], pad_id)
        b.update(t_ids=t_ids.to(device), t_att=t_att.to(device))
    return b


def micro_kl(student: Any, teacher: Any, b: dict[str, torch.Tensor], *,
             temperature: float = 1.0) -> torch.Tensor:
    """(B,) per-example KL(teacher ‖ student) of one micro-batch; grad flows into the student."""
    R = b["mask"].shape[1]
    with torch.no_grad():
        t_logits = response_logits(teacher, b["t_ids"], b["t_att"], R)
    s_logits = response_logits(student, b["s_ids"], b["s_att"], R)
    return per_example_kl(t_logits, s_logits, b["mask"], temperature=temperature)


def micro_ce(student: Any, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) per-example cross-entropy of the student on its target tokens (EOS included, prompt
    ignored) of one micro-batch: the loss of sft, seqkd and r2. Targets are the last R tokens of
    the left-padded rows, predicted by the logits of :func:`response_logits`."""
    R = b["mask"].shape[1]
    s_logits = response_logits(student, b["s_ids"], b["s_att"], R)
    return per_example_cross_entropy(s_logits, b["s_ids"][:, -R:], b["mask"])


def select_rows(rows: list[dict[str, Any]], method: Method, path: str) -> list[dict[str, Any]]:
    """The rows ``method`` trains on: anchors are dropped for methods without them."""
    if method.anchors:
        return rows
    kept = [r for r in rows if not is_anchor(r)]
    if not kept:
        raise DataError(f"only anchor rows, and --method {method.name} trains without anchors",
                        path=path)
    return kept


def lr_lambda(step: int, *, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _by_position(values: torch.Tensor, positions: torch.Tensor) -> dict[str, float]:
    return {str(int(p)): float(values[positions == p].mean()) for p in positions.unique()}


# ---------------------------------------------------------------------------------------------
# Checkpoints: OUT/checkpoint holds everything a resumed run needs to continue bit for bit.
# ---------------------------------------------------------------------------------------------

CHECKPOINT = "checkpoint"
#: Config fields that do not change the trained weights (a run may resume with other values).
RESUME_IGNORES = ("out", "device", "log_every", "save_every", "teacher_device", "head_chunk")


def save_checkpoint(out: Path, *, step: int, student: Any, opt: torch.optim.Optimizer,
                    sched: Any, state: dict[str, Any], trainable_only: bool = False) -> Path:
    """Write ``out/checkpoint`` after optimizer step ``step``: student weights (safetensors),
    optimizer and scheduler state, torch and python RNG states, and ``state`` (fingerprint, data
    order). Everything goes to a temporary folder first, which then replaces the old checkpoint
    (:func:`~pos2distill.runinfo.replace_dir`), so a kill never leaves a half-written checkpoint."""
    from safetensors.torch import save_model

    from pos2distill.runinfo import replace_dir

    final = out / CHECKPOINT
    tmp = out / (".tmp-" + CHECKPOINT)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if trainable_only:  # LoRA: the frozen base is the --model folder itself; keep the adapter
        from safetensors.torch import save_file

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
    from safetensors.torch import load_model

    state = _checked_trainer_state(path, fingerprint=fingerprint, order=order, processes=1)
    try:
        if trainable_only:
            _load_trainable(student, path / "model.safetensors")
        else:
            load_model(student, path / "model.safetensors", device=device)
        blob = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        return int(state["step"])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as e:
        raise ConfigError(f"{path}: unreadable checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); delete it to start "
                          "over") from None


def save_distributed_checkpoint(out: Path, dist: Dist, *, step: int, state: dict[str, Any],
                                trainable_only: bool = False) -> Path:
    """:func:`save_checkpoint` under several processes: every rank writes its part through
    accelerate's ``save_state`` (model, optimizer, scheduler, per-rank RNG states; FSDP shards are
    gathered or saved sharded, as the accelerate config says) into a temporary folder, then the main
    process adds ``trainer_state.json`` and swaps the folder in."""
    from pos2distill.runinfo import replace_dir

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
            {**state, "step": step, "format": "accelerate", "processes": dist.world}))
        replace_dir(tmp, final)
    dist.barrier()
    return final


def read_trainer_state(path: Path, *, fingerprint: str, order: list[int], processes: int) -> int:
    """The step of an accelerate checkpoint (:func:`save_distributed_checkpoint`), after the same
    checks as :func:`load_checkpoint` and that it was written by as many processes."""
    state = _checked_trainer_state(path, fingerprint=fingerprint, order=order, processes=processes)
    try:
        return int(state["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable checkpoint ({e!r}); delete it to start over") from None


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
    written = state.get("processes", 1)
    if written != processes or (processes > 1 and state.get("format") != "accelerate"):
        raise ConfigError(f"{path} was written by {written} process(es); resume it with the same "
                          f"launch (this one has {processes}), or delete it")
    return state


def _load_trainable(student: Any, path: Path) -> None:
    """Copy the trainable tensors of a ``trainable_only`` checkpoint into ``student``."""
    from safetensors.torch import load_file

    saved = load_file(path)
    params = {n: p for n, p in student.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        raise ValueError("the checkpoint holds other trainable tensors (another LoRA config?)")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])


def truncate_log(path: Path, step: int) -> None:
    """Keep the log rows of steps up to ``step`` (those the checkpoint has seen); a resumed run
    appends the rest, so no step is missing or logged twice. A torn last line is dropped."""
    from pos2distill.runinfo import write_text_atomic

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


def main(cfg: TrainConfig) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from pos2distill.modeling import load_causal_lm, load_config, load_tokenizer, resolve_model_path
    from pos2distill.runinfo import fingerprint, recover_dir, replace_dir, start_run, write_json_atomic

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    method = get_method(cfg.method)
    formula = method.resolve_formula(cfg.formula)
    all_rows = read_pairs(cfg.pairs, method.pair_fields())
    rows = select_rows(all_rows, method, cfg.pairs)
    line_of = {id(r): n for n, r in enumerate(all_rows)}
    pair_index = [line_of[id(r)] for r in rows]      # line of each training row in the pairs file
    advs = {_int_or(r.get("adv_position")) for r in rows}
    if len(advs) != 1 and method.loss == "kl":
        raise DataError(f"pairs use several advantageous positions {sorted(advs)}; expected one",
                        path=cfg.pairs, field="adv_position")
    adv = min(advs)
    if cfg.teacher_cache and not method.needs_teacher:
        raise ConfigError(f"--teacher-cache: --method {cfg.method} has no teacher")
    load_config(cfg.model, trust_remote_code=cfg.trust_remote_code)  # not a causal LM: refuse now
    from pos2distill.training import lora

    quantized = lora.quantization_flag(cfg)
    if quantized:
        lora.check_quantization_support(quantized, cfg.device)
    dist = Dist(device=cfg.device)
    world, device = dist.world, dist.device
    if dist.sharded and cfg.lora_rank and method.needs_teacher and not cfg.teacher_cache:
        raise ConfigError("FSDP with LoRA: the disabled-adapter teacher would run the sharded "
                          "weights outside the wrapped forward; use --teacher-cache")
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(f"--batch-size {cfg.batch_size} must split into {world} processes x "
                          f"--grad-accum {cfg.grad_accum} equal micro-batches")
    inputs = [cfg.pairs, resolve_model_path(cfg.model)] + \
        ([str(Path(cfg.teacher_cache) / "cache.json")] if cfg.teacher_cache else [])
    resumed = start_run(out, cfg, inputs=inputs, stage="train", ignore=RESUME_IGNORES) \
        if dist.is_main else True
    dist.barrier()
    summary_path, model_dir, log_path = out / "train_summary.json", out / "model", out / "log.jsonl"
    if resumed and summary_path.exists() and (model_dir.is_dir() or (out / "adapter").is_dir()):
        log.info("%s is complete; nothing to do", out)
        return json.loads(summary_path.read_text())
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    examples = [encode_pair(r, tokenizer, target=method.target, teacher=method.needs_teacher)
                for r in rows]
    student = load_causal_lm(cfg.model, dtype=cfg.dtype, device=device,
                             trust_remote_code=cfg.trust_remote_code,
                             quantization=lora.quantization_kwargs(cfg, device))
    autocast = _autocast(cfg.autocast, device)
    # --- the teacher: none (cross-entropy), cached, the LoRA base, or a frozen copy ---------------
    teacher: Any = None
    if method.needs_teacher and cfg.teacher_cache:
        from pos2distill.stages.cache import CacheReader

        reader = CacheReader(cfg.teacher_cache, pairs=cfg.pairs,
                             model_path=resolve_model_path(cfg.model), temperature=cfg.temperature,
                             vocab_size=student.get_output_embeddings().weight.shape[0],
                             n_pairs=len(all_rows))
        teacher = CachedTeacher(reader, temperature=cfg.temperature)
    elif method.needs_teacher and not cfg.lora_rank:
        t_device = cfg.teacher_device or device
        frozen = copy.deepcopy(student) if t_device == device else load_causal_lm(
            cfg.model, dtype=cfg.dtype, device=t_device, trust_remote_code=cfg.trust_remote_code)
        teacher = OnlineTeacher(frozen.eval().requires_grad_(False), temperature=cfg.temperature,
                                device=t_device, autocast=_autocast(cfg.autocast, t_device))
    if cfg.lora_rank:
        if quantized:
            student = lora.prepare_quantized(student,
                                             gradient_checkpointing=cfg.gradient_checkpointing)
        student = lora.apply_lora(student, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                  dropout=cfg.lora_dropout, targets=cfg.lora_targets)
        if method.needs_teacher and teacher is None:
            if cfg.teacher_device:
                raise ConfigError("--teacher-device: with LoRA the teacher is the student's own "
                                  "base weights (adapter disabled), on --device")
            teacher = OnlineTeacher(student, temperature=cfg.temperature, device=device,
                                    context=lora.teacher_context(student), autocast=autocast)
    if cfg.gradient_checkpointing:
        # transformers 5 renamed it activation checkpointing; older versions have the old name.
        if hasattr(student, "activation_checkpointing_enable"):
            student.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            student.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
    student.train()

    def example_loss(b: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) per-example loss of the method: KL against the teacher, or cross-entropy."""
        targets = teacher.targets(b, b["mask"]) if teacher is not None else \
            CrossEntropyTargets(b, b["mask"])
        with autocast():
            return loss_module(b["s_ids"], b["s_att"], b["mask"], targets)

    def example_weights(loss: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if formula is None:  # cross-entropy: every example counts 1
            return torch.ones_like(loss)
        return position_weights(loss, positions, anchor_position=adv,
                                anchor_weight=cfg.anchor_weight, formula=formula)

    def make_batch(ids: list[int]) -> dict[str, torch.Tensor]:
        b = batch_tensors([examples[i] for i in ids], tokenizer.pad_token_id, device)
        b["index"] = torch.tensor([pair_index[i] for i in ids])
        return b

    total = max(1, int(len(examples) * cfg.epochs) // cfg.batch_size)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    while len(order) < total * cfg.batch_size:
        perm = list(range(len(examples)))
        rng.shuffle(perm)
        order += perm
    trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2]
    no_decay = [p for n, p in trainable if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                            betas=(cfg.adam_beta1, cfg.adam_beta2))
    # Model and optimizer are prepared together (FSDP2 swaps in the sharded parameters).
    loss_module, opt = dist.prepare(ResponseLoss(student, chunk=cfg.head_chunk), opt)
    warmup = max(1, round(cfg.warmup_ratio * total)) if cfg.warmup_ratio > 0 else 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, total=total, warmup=warmup, min_ratio=cfg.min_lr_ratio)
        if warmup else lr_lambda(s + 1, total=total, warmup=1, min_ratio=cfg.min_lr_ratio))
    if dist.accelerator is not None:
        dist.register_for_checkpointing(sched)
    # float16 autocast on CUDA needs loss scaling; disabled, the scaler passes everything through.
    scaler = torch.amp.GradScaler(torch.device(device).type,
                                  enabled=cfg.autocast == "float16" and device.startswith("cuda"))
    local = cfg.batch_size // world                   # this rank's share of an optimizer batch
    micro = local // cfg.grad_accum

    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(cfg, ignore=RESUME_IGNORES)
    state = {"fingerprint": fp, "seed": cfg.seed, "total": total, "order": order}
    start = 0
    checkpoint = recover_dir(out / CHECKPOINT) if dist.is_main else None
    dist.barrier()
    checkpoint = checkpoint or ((out / CHECKPOINT) if (out / CHECKPOINT).is_dir() else None)
    # LoRA under DDP: accelerate checkpoints keep the adapter only (FSDP writes its own files).
    adapter_only = bool(cfg.lora_rank) and not dist.sharded
    if checkpoint is not None and dist.accelerator is not None:
        start = read_trainer_state(checkpoint, fingerprint=fp, order=order, processes=world)
        dist.load_state(checkpoint, trainable_only=adapter_only)
    elif checkpoint is not None:
        start = load_checkpoint(checkpoint, student=student, opt=opt, sched=sched, fingerprint=fp,
                                order=order, device=device, trainable_only=bool(cfg.lora_rank))
    if checkpoint is not None:
        log.info("resuming from %s at step %d of %d", checkpoint, start, total)
    saved = start if checkpoint is not None else None  # step of the last good checkpoint
    if dist.is_main:
        truncate_log(log_path, start)

    def stop(step: int, what: str, value: float) -> TrainingError:
        kept = (f"the last good checkpoint (step {saved}) stays in {out / CHECKPOINT}"
                if saved is not None else "no checkpoint was written yet")
        return TrainingError(f"step {step}: {what} is {value}; training stopped and {kept}. "
                             "Lower --lr (or check the pairs) and train into a new --out")

    # DDP averages gradients over the W ranks; W x this rank's sum makes the update the gradient of
    # sum_e w_e L_e over the whole optimizer batch, as on one process.
    def backward(per_example: torch.Tensor, w: torch.Tensor) -> None:
        loss_part = weighted_loss(per_example, w)
        scaler.scale(loss_part * world if world > 1 else loss_part).backward()

    with tqdm(total=total, initial=start, desc=f"train {cfg.method}", unit="step",
              disable=not dist.is_main) as bar, \
            open(log_path if dist.is_main else os.devnull, "a", encoding="utf-8") as log_file:
        for step in range(start, total):
            idx = shard(order[step * cfg.batch_size:(step + 1) * cfg.batch_size], dist.rank, world)
            batches = [make_batch(idx[k:k + micro]) for k in range(0, len(idx), micro)]
            # Weights group the whole optimizer batch of every rank: gather losses and positions.
            positions = dist.gather(torch.cat([b["positions"] for b in batches]))
            if cfg.grad_accum == 1:
                kl = example_loss(batches[0])
                kl_all = dist.gather(kl.detach())
                weights = example_weights(kl_all, positions)
                mine = weighted_loss(kl, weights.view(world, -1)[dist.rank])  # this rank's examples
                loss = dist.sum(mine.detach())
                if not torch.isfinite(loss):
                    raise stop(step + 1, "the loss", loss.item())
                scaler.scale(mine * world if world > 1 else mine).backward()
            else:
                with torch.no_grad():
                    kl_all = dist.gather(torch.cat([example_loss(b) for b in batches]))
                weights = example_weights(kl_all, positions)
                loss = weighted_loss(kl_all, weights)
                if not torch.isfinite(loss):
                    raise stop(step + 1, "the loss", loss.item())
                mine = weights.view(world, -1)[dist.rank]
                for k, b in enumerate(batches):
                    last = k == len(batches) - 1
                    with (dist.no_sync(loss_module) if not last else contextlib.nullcontext()):
                        backward(example_loss(b), mine[k * micro:(k + 1) * micro])
            norm = None
            if cfg.max_grad_norm > 0:
                scaler.unscale_(opt)
                norm = dist.clip_grad_norm(loss_module, [p for _, p in trainable],
                                           cfg.max_grad_norm)
                if not torch.isfinite(norm) and not scaler.is_enabled():
                    raise stop(step + 1, "the gradient norm", norm.item())
            lr = sched.get_last_lr()[0]  # the lr this step used
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix({"loss": f"{loss.item():.4f}", method.loss: f"{kl_all.mean().item():.4f}"})
            if dist.is_main and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
                # kl_* for KL methods, ce_* for cross-entropy ones (the per-example loss).
                log_file.write(json.dumps({
                    "step": step + 1, "lr": lr, "loss": loss.item(),
                    f"{method.loss}_mean": kl_all.mean().item(),
                    f"{method.loss}_by_position": _by_position(kl_all, positions),
                    "weight_by_position": _by_position(weights, positions),
                    **({"grad_norm": norm.item()} if norm is not None else {})}) + "\n")
                log_file.flush()
            # The log row is written first: a checkpoint at step s implies log rows up to s.
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == total:
                if dist.accelerator is not None:
                    save_distributed_checkpoint(out, dist, step=step + 1, state=state,
                                                trainable_only=adapter_only)
                elif dist.is_main:
                    save_checkpoint(out, step=step + 1, student=student, opt=opt, sched=sched,
                                    state=state, trainable_only=bool(cfg.lora_rank))
                saved = step + 1
    student.eval()
    summary = {"steps": total, "examples": len(examples), "method": cfg.method, "adv_position": adv,
               "processes": world, "teacher": _teacher_kind(cfg, method.needs_teacher),
               "log": str(log_path)}
    # Every rank takes part in gathering the weights (sharded under FSDP); the main process writes.
    full = dist.full_state_dict(loss_module, prefix="model.")
    if dist.is_main:
        if cfg.lora_rank:
            # A quantised or sharded base cannot be merged in place: merge into a fresh copy.
            merge_base = (lambda: load_causal_lm(cfg.model, dtype=cfg.dtype, device="cpu",
                                                 trust_remote_code=cfg.trust_remote_code)) \
                if quantized or dist.sharded else None
            summary.update(lora.save(student, tokenizer, out, merge=cfg.lora_merge,
                                     state_dict=full, merge_base=merge_base))
        else:
            tmp_model = out / ".tmp-model"
            if tmp_model.exists():
                shutil.rmtree(tmp_model)
            student.save_pretrained(tmp_model, safe_serialization=True,
                                    **({"state_dict": full} if full is not None else {}))
            tokenizer.save_pretrained(tmp_model)
            replace_dir(tmp_model, model_dir)
            summary["model"] = str(model_dir)
        write_json_atomic(summary_path, summary)
    dist.barrier()
    dist.end()
    return summary


def _autocast(kind: str, device: str) -> Callable[[], ContextManager[Any]]:
    """A factory of autocast contexts for ``--autocast`` (``off``: a no-op)."""
    if kind == "off":
        return contextlib.nullcontext

    device_type = torch.device(device).type
    return lambda: torch.autocast(device_type, dtype=getattr(torch, kind))


def _teacher_kind(cfg: TrainConfig, needs_teacher: bool) -> str:
    if not needs_teacher:
        return "none"
    if cfg.teacher_cache:
        return "cache"
    return "lora-base" if cfg.lora_rank else "online"
