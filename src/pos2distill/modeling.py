"""Loading models and tokenizers from local folders (offline, no remote code unless asked).

transformers is imported inside the functions that load something: configs import this module for
its dtype names, and `pos2distill --help` should not pay for transformers or torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pos2distill.errors import ConfigError
from pos2distill.tiny import TINY_JUDGE_DIR, TINY_MODEL_DIR

log = logging.getLogger(__name__)

#: ``--dtype`` values: names of torch dtypes (``getattr(torch, name)``), which ``from_pretrained``
#: also takes as strings, so this module loads neither torch nor transformers until a model is.
DTYPES = ("float32", "bfloat16", "float16")


def resolve_model_path(spec: str) -> str:
    """``tiny`` (or ``embedded``) names the shipped model, ``tiny-judge`` the shipped judge;
    anything else must be a local folder."""
    if spec in ("tiny", "embedded"):
        return str(TINY_MODEL_DIR)
    if spec == "tiny-judge":
        return str(TINY_JUDGE_DIR)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"--model: {spec} does not exist (give a local Hugging Face model folder, "
                          "or 'tiny' / 'tiny-judge' for the embedded models; nothing is "
                          "downloaded)")
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


def check_causal_lm(config: Any, path: str) -> None:
    """Refuse a config that is not a decoder-only causal LM: encoder-decoder models, encoders
    (BERT and the like load as ``*LMHeadModel`` but attend both ways), heads other than a language
    model head (a classifier checkpoint), and model types with no causal-LM class."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    causal = {name for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
              for name in ((v,) if isinstance(v, str) else v)}
    model_type = getattr(config, "model_type", None) or "unknown type"
    architectures = list(getattr(config, "architectures", None) or [])
    remote = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if getattr(config, "is_encoder_decoder", False):
        reason = "an encoder-decoder model"
    elif architectures and not any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel"))
                                   for a in architectures):
        reason = f"saved as {', '.join(architectures)}"
    elif model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        reason = "an encoder: it attends in both directions"
    elif model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not remote:
        reason = "transformers has no causal-LM class for it"
    else:
        return
    raise ConfigError(f"--model: {path} is not a causal language model ({model_type}: {reason}); "
                      "give a decoder-only model folder such as Llama, Qwen or Mistral")


def load_config(spec: str, *, trust_remote_code: bool = False) -> Any:
    """The model's config, checked to be a causal LM (cheap: no weights are read)."""
    from transformers import AutoConfig

    path = resolve_model_path(spec)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"--model: cannot read the config of {path}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    check_causal_lm(config, path)
    return config


def load_causal_lm(spec: str, *, dtype: str = "float32", device: str = "cpu",
                   trust_remote_code: bool = False,
                   quantization: dict[str, Any] | None = None) -> Any:
    """An ``AutoModelForCausalLM`` from a local folder, in eval mode on ``device``.

    ``quantization``: extra ``from_pretrained`` arguments of a quantised load
    (:func:`pos2distill.training.lora.quantization_kwargs`); such a model is placed by its ``device_map``
    and never moved afterwards."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    config = load_config(spec, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                     trust_remote_code=trust_remote_code,
                                                     **(quantization or {}))
    except ValueError as e:
        raise ConfigError(f"--model: {path} is not a causal language model "
                          f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    except OSError as e:
        raise ConfigError(f"--model: cannot load {path}: {str(e).splitlines()[0]}") from None
    log.info("loaded %s (%s, %d parameters)", path, config.model_type,
             sum(p.numel() for p in model.parameters()))
    return (model if quantization else model.to(device)).eval()
