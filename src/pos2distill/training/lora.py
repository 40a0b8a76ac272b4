"""LoRA through peft: the student is the base model plus a low-rank adapter, and the teacher is the
same base weights with the adapter disabled (no second copy of the model in memory).

Only the adapter trains. At the end ``OUT/adapter`` holds the adapter
(``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), OUT/adapter)``) and, unless
``--no-lora-merge``, ``OUT/model`` the merged model (``AutoModelForCausalLM.from_pretrained``).
QLoRA (``--load-in-4bit``, or ``--load-in-8bit``): the base is loaded through transformers'
``BitsAndBytesConfig`` (:func:`quantization_kwargs`), prepared with peft's
``prepare_model_for_kbit_training``, and the adapter trains on top of it in full precision; the
teacher is then the quantised base with the adapter disabled (still no second copy). bitsandbytes
needs a CUDA GPU: :func:`check_quantization_support` refuses anything else in one line. The merged
model of a quantised or sharded run is built from the saved adapter and the unquantised ``--model``
folder (:func:`merge_from_disk`), never from the 4-bit weights.
"""

from __future__ import annotations

import importlib.util
import shutil
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from pos2distill.errors import ConfigError
from pos2distill.runinfo import replace_dir

#: ``--lora-targets all-linear``: every linear layer but the output head (peft's own rule).
ALL_LINEAR = "all-linear"


def parse_targets(spec: str) -> str | list[str]:
    """``all-linear`` or a comma-separated list of module names (``q_proj,v_proj``)."""
    spec = spec.strip()
    if spec == ALL_LINEAR:
        return ALL_LINEAR
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError("--lora-targets: give module names like q_proj,v_proj or all-linear")
    if any(n in ("lm_head", "embed_tokens") for n in names):
        raise ConfigError("--lora-targets: the output head and embeddings are not LoRA targets "
                          "(the teacher shares them); give attention/MLP projections")
    return names


def quantization_flag(cfg: Any) -> str:
    """``--load-in-4bit``, ``--load-in-8bit`` or ``""`` (no quantisation) for a TrainConfig."""
    if cfg.load_in_4bit:
        return "--load-in-4bit"
    return "--load-in-8bit" if cfg.load_in_8bit else ""


def quantization_kwargs(cfg: Any, device: str | None = None) -> dict[str, Any]:
    """The extra ``from_pretrained`` keyword arguments of a quantised base (empty without
    ``--load-in-4bit``/``--load-in-8bit``): a ``BitsAndBytesConfig`` (4 bits: nf4, double
    quantisation, compute dtype = ``--autocast`` if set, else bfloat16) and a ``device_map`` that
    puts the whole model on ``device`` (default ``cfg.device``; quantised models cannot be moved
    after loading). Pure: builds the config object, loads nothing, needs no bitsandbytes."""
    if not quantization_flag(cfg):
        return {}
    from transformers import BitsAndBytesConfig  # only for a quantised base

    if cfg.load_in_4bit:
        compute = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.autocast,
                                                                             torch.bfloat16)
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
    else:
        q = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": q, "device_map": {"": device or cfg.device}}


def check_quantization_support(flag: str, device: str) -> None:
    """Refuse a quantised load that cannot work here, in one line: bitsandbytes missing, no CUDA
    device, or ``--device`` not a CUDA device."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{flag} needs bitsandbytes and a CUDA GPU: pip install bitsandbytes "
                          "(it is not part of any pos2distill extra)")
    if not torch.cuda.is_available():
        raise ConfigError(f"{flag}: bitsandbytes quantisation needs a CUDA GPU and none is visible "
                          "here; drop the flag to train LoRA in --dtype")
    if not str(device).startswith("cuda"):
        raise ConfigError(f"{flag}: quantised weights live on the GPU; use --device cuda "
                          f"(got --device {device})")


def prepare_quantized(model: Any, *, gradient_checkpointing: bool) -> Any:
    """peft's ``prepare_model_for_kbit_training``: freeze the quantised base, keep norms and the
    head in float32, enable input gradients (and checkpointing, non-reentrant, when asked)."""
    try:
        from peft import prepare_model_for_kbit_training
    except ImportError:
        raise ConfigError("--lora-rank needs peft: pip install 'pos2distill[lora]'") from None
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_lora(model: Any, *, rank: int, alpha: float, dropout: float, targets: str) -> Any:
    """``model`` wrapped as a peft ``PeftModel`` with a fresh LoRA adapter; base weights frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("--lora-rank needs peft: pip install 'pos2distill[lora]'") from None
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=parse_targets(targets), bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise ConfigError(f"--lora-targets {targets}: {str(e).splitlines()[0]}") from None


def teacher_context(peft_model: Any) -> Callable[[], AbstractContextManager[Any]]:
    """Entered around every teacher computation: the adapter off and the model in eval mode (the
    frozen teacher has no dropout), restored on exit."""

    @contextmanager
    def frozen_base() -> Iterator[None]:
        was_training = peft_model.training
        peft_model.eval()
        try:
            with peft_model.disable_adapter():
                yield
        finally:
            peft_model.train(was_training)

    return frozen_base


def save(peft_model: Any, tokenizer: Any, out: Path, *, merge: bool,
         state_dict: Mapping[str, Any] | None = None,
         merge_base: Callable[[], Any] | None = None) -> dict[str, str]:
    """Write ``out/adapter`` and, with ``merge``, ``out/model`` (each atomically).

    ``state_dict``: the full state dict of ``peft_model`` gathered from every rank (FSDP/ZeRO-3,
    :meth:`pos2distill.training.distributed.Dist.full_state_dict`); peft keeps its adapter tensors.
    ``merge_base``: returns a fresh unquantised base model; when given, the merged model is that
    base plus the adapter just written (:func:`merge_from_disk`) instead of ``merge_and_unload`` of
    ``peft_model`` (whose weights are quantised or sharded)."""
    paths = {}
    tmp = out / ".tmp-adapter"
    if tmp.exists():
        shutil.rmtree(tmp)
    extra = {"state_dict": dict(state_dict)} if state_dict is not None else {}
    peft_model.save_pretrained(tmp, safe_serialization=True, **extra)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, out / "adapter")
    paths["adapter"] = str(out / "adapter")
    if merge:
        tmp = out / ".tmp-model"
        if tmp.exists():
            shutil.rmtree(tmp)
        merged = merge_from_disk(merge_base(), out / "adapter") if merge_base is not None \
            else peft_model.merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, out / "model")
        paths["model"] = str(out / "model")
    return paths


def merge_from_disk(base: Any, adapter_dir: Path) -> Any:
    """``base`` (an unquantised model) with the adapter saved in ``adapter_dir`` merged in."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
