"""LoRA through peft: the student is the base model plus a low-rank adapter, and the teacher is the
same base weights with the adapter disabled (no second copy of the model in memory).

Only the adapter trains. At the end ``OUT/adapter`` holds the adapter
(``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), OUT/adapter)``) and, unless
``--no-lora-merge``, ``OUT/model`` the merged model (``AutoModelForCausalLM.from_pretrained``).
QLoRA-ready: the adapter is applied to whatever :func:`pos2distill.modeling.load_causal_lm` returns,
so a quantised base (bitsandbytes, when installed) trains the same way.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from pos2distill.errors import ConfigError

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


def save(peft_model: Any, tokenizer: Any, out: Path, *, merge: bool) -> dict[str, str]:
    """Write ``out/adapter`` and, with ``merge``, ``out/model`` (each atomically)."""
    import shutil

    from pos2distill.runinfo import replace_dir

    paths = {}
    tmp = out / ".tmp-adapter"
    if tmp.exists():
        shutil.rmtree(tmp)
    peft_model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, out / "adapter")
    paths["adapter"] = str(out / "adapter")
    if merge:
        tmp = out / ".tmp-model"
        if tmp.exists():
            shutil.rmtree(tmp)
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, out / "model")
        paths["model"] = str(out / "model")
    return paths
