"""Loading models and tokenizers from local folders (offline, no remote code unless asked)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pos2distill.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(spec: str) -> str:
    """``tiny`` (or ``embedded``) names the shipped model; anything else must be a local folder."""
    if spec in ("tiny", "embedded"):
        from pos2distill.tiny import TINY_MODEL_DIR
        return str(TINY_MODEL_DIR)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"--model: {spec} does not exist (give a local Hugging Face model folder, "
                          "or 'tiny' for the embedded default; nothing is downloaded)")
    if not (path / "config.json").exists():
        raise ConfigError(f"--model: {spec} has no config.json; is it a Hugging Face model folder?")
    return str(path)


def load_tokenizer(spec: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--model: cannot load a tokenizer from {path}: {e}") from None
    if tok.pad_token_id is None:
        # Padding only fills masked positions; any known token will do, EOS is the usual choice.
        if tok.eos_token_id is None:
            raise ConfigError(f"--model: the tokenizer in {path} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(spec: str, *, dtype: str = "float32", device: str = "cpu",
                   trust_remote_code: bool = False) -> Any:
    """An ``AutoModelForCausalLM`` from a local folder, in eval mode on ``device``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(spec)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True,
                                            trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=DTYPES[dtype],
                                                     trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise ConfigError(f"--model: {path} is not a causal language model "
                          f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    except OSError as e:
        raise ConfigError(f"--model: cannot load {path}: {str(e).splitlines()[0]}") from None
    log.info("loaded %s (%s, %d parameters)", path, config.model_type,
             sum(p.numel() for p in model.parameters()))
    return model.to(device).eval()
