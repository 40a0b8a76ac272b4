"""The embedded default: a tiny Llama pretrained on the synthetic benchmark, shipped in the package.

``TINY_MODEL_DIR`` is a normal Hugging Face folder (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json`` with a chat template), loadable with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``. It is produced by
``python -m pos2distill.tiny.pretrain`` (seeded; see that module for the recipe).
"""

from __future__ import annotations

from pathlib import Path

TINY_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-llama"
#: The embedded judge (``--model tiny-judge``): ``TINY_MODEL_DIR`` taught to judge two answers to a
#: short retrieval question (``python -m pos2distill.tiny.recipe --judge``; its README says how).
TINY_JUDGE_DIR = TINY_MODEL_DIR.parent / "tiny-judge"
