"""``pos2distill train --method r1``: Pos2Distill-R1 (METHOD.md §2), its ablations and baselines.

``--method`` picks a named configuration of :mod:`pos2distill.training.methods` (loss, weights,
anchors, target); everything below is the same loop for all of them. Cross-entropy methods (sft,
seqkd, r2) never build the teacher: their per-example loss is the student's cross-entropy on the
target tokens.

Read :func:`main` top to bottom: read and encode the pairs (:mod:`pos2distill.training.batches`),
load the student, build the teacher, the optimiser and schedule, resume, then one
:func:`optimizer_step` per batch, then save. The teacher reads the stored advantageous prompt; the
student reads the same response after the prompt with the gold document(s) elsewhere. Both sides
see identical response tokens; only the hidden states of response tokens go through the output
head, a chunk of tokens at a time (:mod:`pos2distill.training.heads`), never [B, T, V].
:class:`~pos2distill.training.teacher.ResponseLoss` is that computation as the student's forward,
so accelerate can wrap it.

Teacher (KL methods): a frozen copy of the starting model (``--teacher-device`` puts it elsewhere),
the student's own base weights with the LoRA adapter disabled (``--lora-rank``), or a teacher cache
(``--teacher-cache``, :mod:`pos2distill.stages.cache`). Several processes:
:mod:`pos2distill.training.distributed`; the position-aware weights are computed on the losses and
slots gathered from every rank.

Weights with gradient accumulation: the position-aware weights group the whole optimizer batch
(the paper's "batch"), so with ``--grad-accum > 1`` a no-grad pass computes every micro-batch's
per-example loss first, then a second pass backpropagates with those weights.

Checkpoints (:mod:`pos2distill.training.checkpoints`): every ``--save-every`` optimizer steps, and
after the last one, ``OUT/checkpoint`` is replaced atomically. Re-running the same command continues
from it and ends with the same weights as an uninterrupted run; log rows written after the
checkpoint are dropped and written again. A non-finite loss stops training before the optimizer
step, so the last checkpoint on disk is always a good one. The final model is the state dict
gathered from every rank (:meth:`~pos2distill.training.distributed.Dist.full_state_dict`),
written by the main process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import os
import random
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch
from torch import Tensor

from pos2distill import modelcard, modeling, progress
from pos2distill.config import TrainConfig
from pos2distill.errors import ConfigError, DataError, TrainingError
from pos2distill.runinfo import (file_sha256, fingerprint, one_writer, recover_dir, replace_dir,
                                 start_run, write_json_atomic)
from pos2distill.tasks.positions import Slot, slot_key, slot_label
from pos2distill.training import lora
from pos2distill.training.batches import (Example, batch_tensors, encode_pair, read_pairs,
                                          select_rows, slot_ids)
from pos2distill.training.cache import CacheReader
from pos2distill.training.checkpoints import (CHECKPOINT, load_checkpoint,
                                              load_distributed_checkpoint, save_checkpoint,
                                              save_distributed_checkpoint, truncate_log)
from pos2distill.training.distributed import Dist, shard
from pos2distill.training.losses import position_weights, weighted_loss
from pos2distill.training.methods import Method, get_method
from pos2distill.training.optim import build_optimizer, build_schedule
from pos2distill.training.teacher import (CachedTeacher, CrossEntropyTargets, OnlineTeacher,
                                          ResponseLoss, with_fixed_tokens)

log = logging.getLogger(__name__)

#: Config fields that do not change the trained weights (a run may resume with other values).
RESUME_IGNORES = ("out", "device", "log_every", "save_every", "teacher_device", "head_chunk",
                  "base_model_id")

SUMMARY = "train_summary.json"

Teacher = OnlineTeacher | CachedTeacher


def main(cfg: TrainConfig) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    method = get_method(cfg.method)
    all_rows = read_pairs(cfg.pairs, method.pair_fields())
    rows = select_rows(all_rows, method, cfg.pairs)
    adv = advantageous_slot(rows, method, cfg.pairs)
    quantized = check_config(cfg, method)
    dist = Dist(device=cfg.device)
    check_launch(cfg, method, dist)
    with one_writer(out, enabled=dist.is_main):   # one run per --out; the main process holds it
        return run(cfg, method, dist, out, all_rows=all_rows, rows=rows, adv=adv,
                   quantized=quantized)


def run(cfg: TrainConfig, method: Method, dist: Dist, out: Path, *,
        all_rows: list[dict[str, Any]], rows: list[dict[str, Any]], adv: Slot,
        quantized: str) -> dict[str, Any]:
    """The run itself, once :func:`main` has checked everything and holds ``out``."""
    finished = open_run(cfg, dist, out)
    if finished is not None:
        return finished
    tokenizer = modeling.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    examples = [encode_pair(r, tokenizer, target=method.target, teacher=method.needs_teacher)
                for r in rows]
    pair_index = line_numbers(rows, all_rows)        # line of each training row in the pairs file
    slot_id = slot_ids([e.slot for e in examples] + [adv])
    student = load_student(cfg, dist.device, quantized)
    teacher = build_teacher(cfg, method, student, device=dist.device, n_pairs=len(all_rows))
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    student.train()
    total, order = data_order(len(examples), batch_size=cfg.batch_size, epochs=cfg.epochs,
                              seed=cfg.seed)
    trainable = [p for p in student.parameters() if p.requires_grad]
    loss_module, opt, sched, scaler = build_optimizer_and_schedule(cfg, student, trainable, dist,
                                                                   total=total)
    out.mkdir(parents=True, exist_ok=True)
    state = {"fingerprint": fingerprint(cfg, ignore=RESUME_IGNORES), "seed": cfg.seed,
             "total": total, "order": order}
    saved = resume(out, dist, student=student, opt=opt, sched=sched, state=state,
                   lora_rank=cfg.lora_rank, device=dist.device)   # step of the last good checkpoint
    start = saved or 0
    log_path = out / "log.jsonl"
    if dist.is_main:
        truncate_log(log_path, start)
    loss_of = functools.partial(per_example_loss, loss_module=loss_module, teacher=teacher,
                                autocast=_autocast(cfg.autocast, dist.device))
    weigh = functools.partial(example_weights, formula=method.resolve_formula(cfg.formula),
                              anchor=slot_id[adv], anchor_weight=cfg.anchor_weight)
    micro = cfg.batch_size // dist.world // cfg.grad_accum
    keys = [slot_key(s) for s in slot_id]                # log key of each slot id
    with progress.bar(total=total, initial=start, desc=f"train {cfg.method}", unit="step",
                      disable=not dist.is_main) as bar, \
            open(log_path if dist.is_main else os.devnull, "a", encoding="utf-8") as log_file:
        for step in range(start, total):
            idx = shard(order[step * cfg.batch_size:(step + 1) * cfg.batch_size], dist.rank,
                        dist.world)
            batches = [micro_batch(idx[k:k + micro], examples, pair_index, slot_id,
                                   pad_id=tokenizer.pad_token_id, device=dist.device)
                       for k in range(0, len(idx), micro)]
            done = optimizer_step(batches, loss_of=loss_of, weigh=weigh, dist=dist,
                                  loss_module=loss_module, opt=opt, sched=sched, scaler=scaler,
                                  trainable=trainable, max_grad_norm=cfg.max_grad_norm,
                                  stop=functools.partial(stopped, step + 1, saved, out))
            bar.update(1)
            bar.set_postfix({"loss": f"{done.loss.item():.4f}",
                             method.loss: f"{done.losses.mean().item():.4f}"})
            if dist.is_main and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
                log_file.write(json.dumps(log_row(step + 1, done, method.loss, keys)) + "\n")
                log_file.flush()
            # The log row is written first: a checkpoint at step s implies log rows up to s.
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == total:
                checkpoint(out, dist, step=step + 1, student=student, opt=opt, sched=sched,
                           state=state, lora_rank=cfg.lora_rank)
                saved = step + 1
    student.eval()
    summary = {"steps": total, "examples": len(examples), "method": cfg.method,
               "adv_slot": list(adv), "processes": dist.world,
               "teacher": _teacher_kind(cfg, method.needs_teacher), "log": str(log_path)}
    card = card_facts(cfg, method, rows=rows, all_rows=all_rows, adv=adv, steps=total,
                      last_loss=done.losses.mean().item() if total > start else None) \
        if dist.is_main else None
    summary = save_final(cfg, dist, student=student, loss_module=loss_module, tokenizer=tokenizer,
                         out=out, quantized=bool(quantized), summary=summary, card=card)
    dist.barrier()
    dist.end()
    return summary


# ---------------------------------------------------------------------------------------------
# Before anything is loaded: what the pairs and the config allow
# ---------------------------------------------------------------------------------------------

def advantageous_slot(rows: Sequence[dict[str, Any]], method: Method, path: str) -> Slot:
    """The advantageous slot of the training rows. KL methods anchor their weights there, so their
    pairs must have exactly one; cross-entropy methods only report it (the smallest, or ``()``)."""
    advs = {tuple(r.get("adv_slot", ())) for r in rows}
    if len(advs) != 1 and method.loss == "kl":
        raise DataError(f"pairs use several advantageous slots {[list(s) for s in sorted(advs)]}; "
                        "expected one", path=path, field="adv_slot")
    return min(advs)


def check_config(cfg: TrainConfig, method: Method) -> str:
    """Refuse a config that cannot train, before anything is loaded or written: a teacher cache
    without a teacher, a model that is not a causal LM, quantisation this machine cannot run.
    Returns the quantisation flag (``""`` without one)."""
    if cfg.teacher_cache and not method.needs_teacher:
        raise ConfigError(f"--teacher-cache: --method {cfg.method} has no teacher")
    modeling.load_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
    quantized = lora.quantization_flag(cfg)
    if quantized:
        lora.check_quantization_support(quantized, cfg.device)
    return quantized


def check_launch(cfg: TrainConfig, method: Method, dist: Dist) -> None:
    """Refuse what the processes of this launch cannot run."""
    if dist.sharded and cfg.lora_rank and method.needs_teacher and not cfg.teacher_cache:
        raise ConfigError("FSDP with LoRA: the disabled-adapter teacher would run the sharded "
                          "weights outside the wrapped forward; use --teacher-cache")
    if cfg.batch_size % (dist.world * cfg.grad_accum):
        raise ConfigError(f"--batch-size {cfg.batch_size} must split into {dist.world} processes "
                          f"x --grad-accum {cfg.grad_accum} equal micro-batches")


def open_run(cfg: TrainConfig, dist: Dist, out: Path) -> dict[str, Any] | None:
    """Record the run in ``out`` (or check that ``out`` holds a run of this config); the summary
    of a finished run (nothing to do), else None."""
    inputs = [cfg.pairs, modeling.resolve_model_path(cfg.model)] + \
        ([str(Path(cfg.teacher_cache) / "cache.json")] if cfg.teacher_cache else [])
    resumed = start_run(out, cfg, inputs=inputs, stage="train", ignore=RESUME_IGNORES) \
        if dist.is_main else True
    dist.barrier()
    if resumed and (out / SUMMARY).exists() and \
            ((out / "model").is_dir() or (out / "adapter").is_dir()):
        log.info("%s is complete; nothing to do", out)
        return json.loads((out / SUMMARY).read_text())
    return None


# ---------------------------------------------------------------------------------------------
# The models and the optimiser
# ---------------------------------------------------------------------------------------------

def load_student(cfg: TrainConfig, device: str, quantized: str) -> Any:
    """The model that trains: ``--model``, plus a LoRA adapter with ``--lora-rank`` (QLoRA: on
    the quantised base, prepared for k-bit training first)."""
    student = modeling.load_causal_lm(cfg.model, dtype=cfg.dtype, device=device,
                                      trust_remote_code=cfg.trust_remote_code,
                                      quantization=lora.quantization_kwargs(cfg, device))
    if not cfg.lora_rank:
        return student
    if quantized:
        student = lora.prepare_quantized(student, gradient_checkpointing=cfg.gradient_checkpointing)
    return lora.apply_lora(student, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                           dropout=cfg.lora_dropout, targets=cfg.lora_targets)


def build_teacher(cfg: TrainConfig, method: Method, student: Any, *, device: str,
                  n_pairs: int) -> Teacher | None:
    """The teacher of a KL method, None for cross-entropy: the teacher cache (``--teacher-cache``),
    the student's own base weights with the adapter disabled (LoRA), or a frozen copy of the
    starting model (on ``--teacher-device``, loaded again there, when given). Call it before the
    student trains: the copy is the starting weights."""
    if not method.needs_teacher:
        return None
    if cfg.teacher_cache:
        reader = CacheReader(cfg.teacher_cache, pairs=cfg.pairs,
                             model_path=modeling.resolve_model_path(cfg.model),
                             temperature=cfg.temperature,
                             vocab_size=student.get_output_embeddings().weight.shape[0],
                             n_pairs=n_pairs)
        return CachedTeacher(reader, temperature=cfg.temperature)
    if cfg.lora_rank:
        if cfg.teacher_device:
            raise ConfigError("--teacher-device: with LoRA the teacher is the student's own "
                              "base weights (adapter disabled), on --device")
        return OnlineTeacher(student, temperature=cfg.temperature, device=device,
                             context=lora.teacher_context(student),
                             autocast=_autocast(cfg.autocast, device))
    t_device = cfg.teacher_device or device
    frozen = copy.deepcopy(student) if t_device == device else modeling.load_causal_lm(
        cfg.model, dtype=cfg.dtype, device=t_device, trust_remote_code=cfg.trust_remote_code)
    return OnlineTeacher(frozen.eval().requires_grad_(False), temperature=cfg.temperature,
                         device=t_device, autocast=_autocast(cfg.autocast, t_device))


def enable_gradient_checkpointing(model: Any) -> None:
    # transformers 5 renamed it activation checkpointing; older versions have the old name.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_optimizer_and_schedule(cfg: TrainConfig, student: Any,
                                 trainable: Sequence[torch.nn.Parameter], dist: Dist, *,
                                 total: int) -> tuple[torch.nn.Module, torch.optim.Optimizer,
                                                      Any, torch.amp.GradScaler]:
    """(loss module, optimizer, schedule, gradient scaler). The loss module is the student's
    forward as :class:`~pos2distill.training.teacher.ResponseLoss`, wrapped for data parallelism
    together with the optimizer (FSDP2 swaps in the sharded parameters)."""
    opt = build_optimizer(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay,
                          betas=(cfg.adam_beta1, cfg.adam_beta2))
    loss_module, opt = dist.prepare(ResponseLoss(student, chunk=cfg.head_chunk), opt)
    sched = build_schedule(opt, total=total, warmup_ratio=cfg.warmup_ratio,
                           min_ratio=cfg.min_lr_ratio)
    if dist.accelerator is not None:
        dist.register_for_checkpointing(sched)
    # float16 autocast on CUDA needs loss scaling; disabled, the scaler passes everything through.
    enabled = cfg.autocast == "float16" and dist.device.startswith("cuda")
    scaler = torch.amp.GradScaler(torch.device(dist.device).type, enabled=enabled)
    return loss_module, opt, sched, scaler


# ---------------------------------------------------------------------------------------------
# Data order, resume, one optimizer step
# ---------------------------------------------------------------------------------------------

def data_order(n: int, *, batch_size: int, epochs: float, seed: int) -> tuple[int, list[int]]:
    """(optimizer steps, example order): seeded shuffles of the ``n`` examples, one after the
    other, until every step has a full batch."""
    total = max(1, int(n * epochs) // batch_size)
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < total * batch_size:
        perm = list(range(n))
        rng.shuffle(perm)
        order += perm
    return total, order


def resume(out: Path, dist: Dist, *, student: Any, opt: torch.optim.Optimizer, sched: Any,
           state: dict[str, Any], lora_rank: int, device: str) -> int | None:
    """Restore ``OUT/checkpoint`` (weights, optimizer, schedule, RNG states) if there is one and
    return its step; None to start from step 0. A checkpoint of another config, data order or
    launch, or a multi-process one of an earlier version (pickled), is refused. Nothing is
    unpickled beyond ``torch.load(weights_only=True)``."""
    checkpoint = recover_dir(out / CHECKPOINT) if dist.is_main else None
    dist.barrier()
    checkpoint = checkpoint or ((out / CHECKPOINT) if (out / CHECKPOINT).is_dir() else None)
    if checkpoint is None:
        return None
    if dist.accelerator is not None:   # the schedule is restored as registered with dist
        step = load_distributed_checkpoint(checkpoint, dist, fingerprint=state["fingerprint"],
                                           order=state["order"],
                                           trainable_only=_adapter_only(lora_rank, dist))
    else:
        step = load_checkpoint(checkpoint, student=student, opt=opt, sched=sched,
                               fingerprint=state["fingerprint"], order=state["order"],
                               device=device, trainable_only=bool(lora_rank))
    log.info("resuming from %s at step %d of %d", checkpoint, step, state["total"])
    return step


def line_numbers(rows: Sequence[dict[str, Any]], all_rows: Sequence[dict[str, Any]]) -> list[int]:
    """The 0-based line in the pairs file of each of ``rows`` (a selection of ``all_rows``)."""
    line_of = {id(r): n for n, r in enumerate(all_rows)}
    return [line_of[id(r)] for r in rows]


def micro_batch(chosen: Sequence[int], examples: Sequence[Example], pair_index: Sequence[int],
                slot_id: dict[Slot, int], *, pad_id: int, device: str) -> dict[str, Tensor]:
    """The tensors of the ``chosen`` examples (:func:`~pos2distill.training.batches.batch_tensors`)
    plus ``index`` (B,), each one's line in the pairs file (the teacher cache's key), and
    ``slots`` (B,), each one's slot id."""
    b = batch_tensors([examples[i] for i in chosen], pad_id, device)
    b["index"] = torch.tensor([pair_index[i] for i in chosen])
    b["slots"] = torch.tensor([slot_id[examples[i].slot] for i in chosen], device=device)
    return b


def per_example_loss(b: dict[str, Tensor], *, loss_module: Any, teacher: Teacher | None,
                     autocast: Callable[[], ContextManager[Any]]) -> Tensor:
    """(B,) per-example loss of a micro-batch: KL(teacher ‖ student) with a teacher, else the
    student's cross-entropy on its target tokens."""
    targets = with_fixed_tokens(teacher.targets(b, b["mask"]), b,
                                temperature=teacher.temperature) if teacher is not None else \
        CrossEntropyTargets(b, b["mask"])
    with autocast():
        return loss_module(b["s_ids"], b["s_att"], b["mask"], targets)


def example_weights(losses: Tensor, slots: Tensor, *, formula: str | None, anchor: int,
                    anchor_weight: float) -> Tensor:
    """(B,) weights of the optimizer batch: position-aware (``formula``) for KL methods, grouped
    by slot id with the advantageous slot ``anchor``; 1 for every example of cross-entropy."""
    if formula is None:
        return torch.ones_like(losses)
    return position_weights(losses, slots, anchor_position=anchor, anchor_weight=anchor_weight,
                            formula=formula)


@dataclass(frozen=True)
class StepResult:
    loss: Tensor                # () sum_e w_e L_e over the optimizer batch of every rank
    losses: Tensor              # (B,) per-example losses L_e, every rank's, in rank order
    weights: Tensor             # (B,) their weights w_e
    slots: Tensor               # (B,) their slot ids
    grad_norm: Tensor | None    # before clipping; None without --max-grad-norm
    lr: float                   # the learning rate this step used


def optimizer_step(batches: Sequence[dict[str, Tensor]], *, loss_of: Callable[[dict], Tensor],
                   weigh: Callable[[Tensor, Tensor], Tensor], dist: Dist,
                   loss_module: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                   scaler: torch.amp.GradScaler, trainable: Sequence[torch.nn.Parameter],
                   max_grad_norm: float,
                   stop: Callable[[str, float], TrainingError]) -> StepResult:
    """One optimizer step on this rank's micro-batches (METHOD.md 2.4): per-example losses,
    weights of the whole optimizer batch (losses and slots gathered from every rank), the
    gradient of ``sum_e w_e L_e``, clipping, the update. A non-finite loss or gradient norm
    raises ``stop(what, value)`` before the update.

    The weights need every micro-batch's losses before any backward pass. One micro-batch keeps
    the graph of that forward pass and backpropagates it; several are first run without
    gradients, then each again with them.
    """
    keep_graph = len(batches) == 1
    with torch.set_grad_enabled(keep_graph):
        parts = [loss_of(b) for b in batches]                        # (micro,) each
    mine = torch.cat(parts).detach()                                 # this rank's examples
    losses = dist.gather(mine)
    slots = dist.gather(torch.cat([b["slots"] for b in batches]))
    weights = weigh(losses, slots)
    my_weights = weights.view(dist.world, -1)[dist.rank]
    loss = dist.sum(weighted_loss(mine, my_weights))
    if not torch.isfinite(loss):
        raise stop("the loss", loss.item())
    for k, (b, w) in enumerate(zip(batches, my_weights.split([len(p) for p in parts]))):
        per_example = parts[k] if keep_graph else loss_of(b)
        last = k == len(batches) - 1
        # DDP averages gradients over the W ranks; W x this rank's sum makes the update the
        # gradient of sum_e w_e L_e over the whole optimizer batch, as on one process.
        with dist.no_sync(loss_module) if not last else contextlib.nullcontext():
            part = weighted_loss(per_example, w)
            scaler.scale(part * dist.world if dist.world > 1 else part).backward()
    norm = None
    if max_grad_norm > 0:
        scaler.unscale_(opt)
        norm = dist.clip_grad_norm(loss_module, trainable, max_grad_norm)
        if not torch.isfinite(norm) and not scaler.is_enabled():
            raise stop("the gradient norm", norm.item())
    lr = sched.get_last_lr()[0]  # the lr this step uses
    scaler.step(opt)
    scaler.update()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return StepResult(loss, losses, weights, slots, norm, lr)


def stopped(step: int, saved: int | None, out: Path, what: str, value: float) -> TrainingError:
    """The error that stops training at ``step`` because ``what`` is ``value`` (not finite)."""
    kept = (f"the last good checkpoint (step {saved}) stays in {out / CHECKPOINT}"
            if saved is not None else "no checkpoint was written yet")
    return TrainingError(f"step {step}: {what} is {value}; training stopped and {kept}. "
                         "Lower --lr (or check the pairs) and train into a new --out")


def log_row(step: int, done: StepResult, loss_name: str, keys: Sequence[str]) -> dict[str, Any]:
    """The log row of a step: ``kl_*`` for KL methods, ``ce_*`` for cross-entropy ones (the
    per-example loss); means by slot under ``keys[slot id]`` (``"5"``, ``"0,1"``)."""
    return {"step": step, "lr": done.lr, "loss": done.loss.item(),
            f"{loss_name}_mean": done.losses.mean().item(),
            f"{loss_name}_by_position": _by_slot(done.losses, done.slots, keys),
            "weight_by_position": _by_slot(done.weights, done.slots, keys),
            **({"grad_norm": done.grad_norm.item()} if done.grad_norm is not None else {})}


def _by_slot(values: Tensor, slots: Tensor, keys: Sequence[str]) -> dict[str, float]:
    return {keys[int(s)]: float(values[slots == s].mean()) for s in slots.unique()}


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def checkpoint(out: Path, dist: Dist, *, step: int, student: Any, opt: torch.optim.Optimizer,
               sched: Any, state: dict[str, Any], lora_rank: int) -> None:
    """``OUT/checkpoint`` after ``step``: under several processes every rank writes its part
    (:meth:`Dist.save_state`; the schedule is registered with ``dist``), else the main process
    writes the student, optimizer, schedule and RNG states."""
    if dist.accelerator is not None:
        save_distributed_checkpoint(out, dist, step=step, state=state,
                                    trainable_only=_adapter_only(lora_rank, dist))
    elif dist.is_main:
        save_checkpoint(out, step=step, student=student, opt=opt, sched=sched, state=state,
                        trainable_only=bool(lora_rank))


def save_final(cfg: TrainConfig, dist: Dist, *, student: Any, loss_module: torch.nn.Module,
               tokenizer: Any, out: Path, quantized: bool, summary: dict[str, Any],
               card: modelcard.Training | None) -> dict[str, Any]:
    """Write the trained model and its card (``README.md``), then ``train_summary.json``
    (``summary`` plus the model's paths), which marks the run complete; returns the summary.
    Every rank takes part in gathering the weights (sharded under FSDP); the main process
    writes."""
    paths = save_model(cfg, dist, student=student, loss_module=loss_module, tokenizer=tokenizer,
                       out=out, quantized=quantized)
    summary = {**summary, **paths}
    if dist.is_main:
        modelcard.write_training_cards(paths, card)
        write_json_atomic(out / SUMMARY, summary)
    return summary


#: TrainConfig fields a model card leaves out of its options: where things are and run, not what
#: shapes the weights.
_CARD_SKIPS = ("pairs", "model", "out", "device", "teacher_device", "teacher_cache", "log_every",
               "save_every", "head_chunk", "trust_remote_code", "base_model_id")


def card_facts(cfg: TrainConfig, method: Method, *, rows: Sequence[dict[str, Any]],
               all_rows: Sequence[dict[str, Any]], adv: Slot, steps: int,
               last_loss: float | None) -> modelcard.Training:
    """What the model card says about this run (:mod:`pos2distill.modelcard`)."""
    values = dataclasses.asdict(cfg)
    defaults = dataclasses.asdict(TrainConfig())
    shown = [k for k in values if k not in _CARD_SKIPS
             and not (k.startswith(("lora_", "load_in_")) and not cfg.lora_rank)
             and not (k in ("formula", "temperature") and not method.needs_teacher)
             and not (k == "anchor_weight" and not (method.needs_teacher and method.anchors))]
    options = {k.replace("_", "-"): values[k] for k in shown}
    options["teacher"] = _teacher_kind(cfg, method.needs_teacher)
    flags = ["--model", cfg.model, "--pairs", cfg.pairs, "--method", cfg.method] + [
        arg for k in shown if k != "method" and values[k] != defaults[k]
        for arg in _flag(k, values[k])] + ["--out", cfg.out]
    base_path = modeling.resolve_model_path(cfg.model)
    tasks = sorted({str(r.get("task", "retrieval")) for r in rows})
    return modelcard.Training(
        base_model=cfg.model, base_path=base_path,
        base_model_id=cfg.base_model_id or modelcard.hub_id(base_path),
        method=cfg.method, method_summary=method.summary, task=", ".join(tasks), options=options,
        command=" ".join(["pos2distill", "train", *map(shlex.quote, flags)]),
        loss_name="KL" if method.loss == "kl" else "cross-entropy",
        pairs_path=cfg.pairs, pairs_sha256=file_sha256(cfg.pairs),
        questions=len({r.get("question_id", r.get("id")) for r in rows}), pairs=len(all_rows),
        trained_pairs=len(rows), adv_slot=slot_label(adv) if adv else "", steps=steps,
        batch_size=cfg.batch_size, last_loss=last_loss)


def _flag(name: str, value: Any) -> list[str]:
    """The command-line form of one option (``--no-x`` for a false boolean)."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + name.replace("_", "-")]
    return [flag, str(value)]


def save_model(cfg: TrainConfig, dist: Dist, *, student: Any, loss_module: torch.nn.Module,
               tokenizer: Any, out: Path, quantized: bool) -> dict[str, str]:
    """Write ``OUT/model`` (and ``OUT/adapter`` with LoRA) and return their paths (main
    process; the other ranks only help gather the weights and return ``{}``)."""
    full = dist.full_state_dict(loss_module, prefix="model.")
    if not dist.is_main:
        return {}
    if cfg.lora_rank:
        # A quantised or sharded base cannot be merged in place: merge into a fresh copy.
        merge_base = (lambda: modeling.load_causal_lm(cfg.model, dtype=cfg.dtype, device="cpu",
                                                      trust_remote_code=cfg.trust_remote_code)) \
            if quantized or dist.sharded else None
        return lora.save(student, tokenizer, out, merge=cfg.lora_merge, state_dict=full,
                         merge_base=merge_base)
    tmp = out / ".tmp-model"
    if tmp.exists():
        shutil.rmtree(tmp)
    student.save_pretrained(tmp, safe_serialization=True,
                            **({"state_dict": full} if full is not None else {}))
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, out / "model")
    return {"model": str(out / "model")}


def _adapter_only(lora_rank: int, dist: Dist) -> bool:
    """LoRA under DDP: multi-process checkpoints keep the adapter only (FSDP writes each rank's
    shard)."""
    return bool(lora_rank) and not dist.sharded


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
