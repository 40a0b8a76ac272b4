"""Typed configs, one dataclass per stage. Field docs (``metadata["help"]``) are the ``--help``.

Every config validates itself in ``__post_init__`` with errors that name the flag. A YAML file loads
into the same dataclass (:func:`from_yaml`); an unknown key is an error that lists the known ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pos2distill.tasks.fitting import TOO_LONG
from pos2distill.errors import ConfigError

#: ``--task`` values: retrieval (R1: one gold document) and reasoning (R2: multi-hop with CoT).
TASKS = ("retrieval", "reasoning")
from pos2distill.data.loaders import FORMATS
from pos2distill.training.losses import WEIGHT_FORMULAS
from pos2distill.training.methods import METHOD_NAMES, get_method
from pos2distill.tasks.prompts import TEMPLATES

C = TypeVar("C")

#: Default top-k of the teacher cache (bench/cache_error.py: KL error < 1e-3 nats/token on the
#: embedded default).
DEFAULT_TOP_K = 320
#: ``--autocast`` values.
AUTOCAST = ("off", "bfloat16", "float16")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


#: A typed config field whose ``help`` is its ``--help`` line (for configs outside this module).
option = _f


def _check_choice(flag: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"--{flag}: {value!r} is not one of {', '.join(map(str, choices))}")


def _check_positive(flag: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"--{flag}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


_TOO_LONG_HELP = ("A prompt longer than the model's context minus --max-new-tokens: fail; skip "
                  "(count and report); truncate (drop distractors from the end of the question's "
                  "list until it fits, the gold keeping its position; skipped when impossible).")


@dataclass
class ModelOptions:
    model: str = _f("tiny", "Local Hugging Face model folder, or 'tiny' for the embedded default.")
    task: str = _f("retrieval", f"Task: {', '.join(TASKS)} (multi-hop questions, chain-of-thought, "
                   "hop documents at position pairs, reasoning EM: Pos2Distill-R2).")
    template: str = _f("auto", f"Prompt template: {', '.join(TEMPLATES)}, or auto (reasoning for "
                       "--task reasoning, authors otherwise).")
    instruction: str = _f("", "Text that replaces the template's instruction line, verbatim "
                          "(e.g. your RAG pipeline's instruction, to measure its positional bias); "
                          "empty = the template's own.", count_when_set=True)
    chat: str = _f("auto", "Use the tokenizer's chat template: auto (when it has one), on, off.")
    dtype: str = _f("float32", "Model weights dtype: float32, bfloat16, float16.")
    device: str = _f("cpu", "Torch device, e.g. cpu, cuda, cuda:1.")
    trust_remote_code: bool = _f(False, "Allow model code from the model folder (off by default).")

    def __post_init__(self) -> None:
        _check_choice("task", self.task, TASKS)
        if self.template == "auto":
            self.template = "reasoning" if self.task == "reasoning" else "authors"
        _check_choice("template", self.template, TEMPLATES)
        if self.instruction and not self.instruction.strip():
            raise ConfigError("--instruction: only whitespace; give the instruction text, or leave "
                              "it empty for the template's own")
        _check_choice("chat", self.chat, ("auto", "on", "off"))
        _check_choice("dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass
class DataOptions:
    data: str = _f("synthetic:test", "Data file (.jsonl or .jsonl.gz; lost-in-the-middle, authors', "
                   "key-value or our own format), or synthetic:train / synthetic:test, or "
                   "synthetic-reasoning:train / synthetic-reasoning:test (two-hop).")
    data_format: str = _f("auto", f"Data format: auto, {', '.join(FORMATS)}.")
    n_documents: int = _f(20, "Documents per question for single-document (oracle) files and "
                          "the synthetic set; other questions' gold passages are the distractors.")
    limit: int = _f(0, "Use only the first N questions (0 = all).")
    seed: int = _f(0, "Seed for distractor orders and data building.")

    def __post_init__(self) -> None:
        _check_choice("data-format", self.data_format, ("auto",) + FORMATS)
        _check_positive("n-documents", self.n_documents)
        _check_positive("limit", self.limit, allow_zero=True)


@dataclass
class GenerationOptions:
    batch_size: int = _f(64, "Prompts per generation batch.")
    max_new_tokens: int = _f(32, "Tokens generated per answer.")
    too_long: str = _f("fail", _TOO_LONG_HELP)
    backend: str = _f("hf", "Generation backend: hf (transformers, batched with a KV cache) or "
                      "vllm (when installed).")

    def __post_init__(self) -> None:
        _check_choice("backend", self.backend, ("hf", "vllm"))
        _check_positive("batch-size", self.batch_size)
        _check_positive("max-new-tokens", self.max_new_tokens)
        _check_choice("too-long", self.too_long, TOO_LONG)


@dataclass
class ProbeConfig(ModelOptions, DataOptions, GenerationOptions):
    """Accuracy by gold position: batched greedy generation at every requested position."""

    out: str = _f("runs/probe", "Output folder (rows.jsonl, summary.json, table.md, plot).")
    positions: str = _f("all", "Gold positions, 0-based: all, or a list like 0,4,9,14,19.")
    configurations: str = _f("all", "--task reasoning: hop position pairs, 0-based (first hop, "
                             "second hop): all (the paper's 12, scaled to the document count), "
                             "connected, disconnected, reversed, or a list like '0,1;5,6;8,0'.")

    def __post_init__(self) -> None:
        ModelOptions.__post_init__(self)
        DataOptions.__post_init__(self)
        GenerationOptions.__post_init__(self)
        if self.task == "reasoning" and self.positions != "all":
            raise ConfigError("--positions places one gold document (retrieval); with --task "
                              "reasoning use --configurations")
        if self.task != "reasoning" and self.configurations != "all":
            raise ConfigError("--configurations places hop documents; it needs --task reasoning")


@dataclass
class TeachConfig(ModelOptions, DataOptions, GenerationOptions):
    """Teacher responses at the advantageous position, kept only when correct."""

    data: str = _f("synthetic:train", DataOptions.__dataclass_fields__["data"].metadata["help"])
    out: str = _f("runs/teach.jsonl", "Output JSONL: one row per kept question.")
    advantageous: str = _f("default", "Advantageous gold position: first, last, an integer, or "
                           "auto (the best of --probe); default first. --task reasoning: the hop "
                           "pair, like 18,19, last (the last two documents, the default), first "
                           "(the first two), or auto (the best configuration of --probe).")
    probe: str = _f("", "Probe folder (or its summary.json) for --advantageous auto.")

    def __post_init__(self) -> None:
        ModelOptions.__post_init__(self)
        DataOptions.__post_init__(self)
        GenerationOptions.__post_init__(self)
        if self.advantageous == "default":
            self.advantageous = "last" if self.task == "reasoning" else "first"
        if self.advantageous == "auto" and not self.probe:
            raise ConfigError("--advantageous auto needs --probe (a probe output folder)")


@dataclass
class PairsConfig:
    """Training pairs: K trivial positions per question plus anchor copies."""

    teach: str = _f("runs/teach.jsonl", "Teacher responses from `pos2distill teach`.")
    out: str = _f("runs/pairs.jsonl", "Output JSONL: one row per (question, student position).")
    model: str = _f("tiny", "Model folder whose tokenizer renders the prompts (chat template).")
    K: int = _f(4, "Distinct trivial (non-advantageous) positions per question (paper: 4).")
    anchors: int = _f(1, "Copies per question with the student also at the advantageous position.")
    seed: int = _f(0, "Seed for position draws and distractor orders.")
    first_line: bool = _f(True, "Distil only the first line of the teacher's response "
                          "(short-answer retrieval).")
    configurations: str = _f("any", "Reasoning teacher rows (R2): the hop position pairs the K "
                             "are drawn from: any (every ordered pair but the advantageous one), "
                             "or a --configurations spec of `probe`. R2 has no anchors: --anchors "
                             "and --first-line apply to retrieval rows only.")

    def __post_init__(self) -> None:
        _check_positive("K", self.K, allow_zero=True)
        _check_positive("anchors", self.anchors, allow_zero=True)
        if self.K + self.anchors == 0:
            raise ConfigError("--K and --anchors are both 0: no training pairs would be made")


@dataclass
class TrainConfig:
    """Training on pairs: Pos2Distill-R1 (teacher = the frozen starting model), its ablations and
    the baselines, chosen by --method (see pos2distill.training.methods)."""

    pairs: str = _f("runs/pairs.jsonl", "Training pairs from `pos2distill pairs`.")
    model: str = _f("tiny", "Starting model (student init and frozen teacher).")
    out: str = _f("runs/train", "Output folder: model/ (a Hugging Face checkpoint), log.jsonl.")
    method: str = _f("r1", f"Training method: {', '.join(METHOD_NAMES)} (sft/seqkd/r2: "
                     "cross-entropy, no teacher model; kl: uniform weights, no anchors; kl+align: "
                     "position-aware weights, no anchors; r1: weights + anchors).")
    formula: str = _f("pos2distill", "Position-aware weights of r1 and kl+align: "
                      f"{', '.join(WEIGHT_FORMULAS)}.")
    anchor_weight: float = _f(1.0, "λ, the weight of anchor examples in r1 (paper: 1).")
    temperature: float = _f(1.0, "Softmax temperature of the KL.")
    lr: float = _f(3e-6, "Peak learning rate (paper: 3e-6 for 7B; tiny models want ~1e-3).")
    epochs: float = _f(1.0, "Passes over the pairs.")
    batch_size: int = _f(32, "Examples per optimizer step (the batch the weights group).")
    grad_accum: int = _f(1, "Micro-batches per optimizer step (batch_size must divide evenly).")
    warmup_ratio: float = _f(0.05, "Fraction of steps of linear warm-up.")
    min_lr_ratio: float = _f(0.1, "Cosine schedule floor, as a fraction of --lr.")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.95, "AdamW beta2.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = off).")
    seed: int = _f(0, "Seed for data order and initialisation of anything random.")
    dtype: str = _f("float32", "Model weights dtype: float32, bfloat16, float16.")
    device: str = _f("cpu", "Torch device.")
    log_every: int = _f(1, "Write a log row every N optimizer steps.")
    save_every: int = _f(50, "Optimizer steps between checkpoints in OUT/checkpoint (0 = only at "
                         "the end); re-running the same command resumes from the last one.")
    trust_remote_code: bool = _f(False, "Allow model code from the model folder (off by default).")
    teacher_cache: str = _f("", "Teacher cache folder from `pos2distill cache` (KL methods): the "
                            "teacher is read from it instead of run (empty = online teacher).")
    teacher_device: str = _f("", "Device of the online teacher, e.g. cuda:1, or cpu to offload it "
                             "(empty = --device).")
    lora_rank: int = _f(0, "LoRA rank (0 = full fine-tuning). With LoRA the teacher is the base "
                        "model with the adapter disabled: no second copy.")
    lora_alpha: float = _f(16.0, "LoRA alpha (the update is scaled by alpha / rank).")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    lora_targets: str = _f("all-linear", "Modules given an adapter: all-linear, or names such as "
                           "q_proj,k_proj,v_proj,o_proj.")
    lora_merge: bool = _f(True, "With LoRA, also write OUT/model, the merged model (OUT/adapter is "
                          "always written).")
    load_in_4bit: bool = _f(False, "QLoRA: load the frozen base in 4 bits (bitsandbytes nf4, "
                            "double quantisation; compute dtype from --autocast, else bfloat16). "
                            "Needs --lora-rank, a CUDA GPU and bitsandbytes.", count_when_set=True)
    load_in_8bit: bool = _f(False, "Load the frozen base in 8 bits (bitsandbytes LLM.int8). Needs "
                            "--lora-rank, a CUDA GPU and bitsandbytes.", count_when_set=True)
    autocast: str = _f("off", f"Autocast forward passes: {', '.join(AUTOCAST)} (float16 uses a "
                       "gradient scaler on CUDA).")
    gradient_checkpointing: bool = _f(False, "Recompute the student's activations in the backward "
                                      "pass (less memory, about a third more compute).")
    head_chunk: int = _f(1024, "Response tokens per output-head chunk (peak logits memory is "
                         "head-chunk x vocabulary).")

    def __post_init__(self) -> None:
        _check_positive("lora-rank", self.lora_rank, allow_zero=True)
        _check_positive("lora-alpha", self.lora_alpha)
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout: must be in [0, 1), got {self.lora_dropout}")
        _check_choice("autocast", self.autocast, AUTOCAST)
        _check_positive("head-chunk", self.head_chunk)
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("--load-in-4bit and --load-in-8bit: choose one")
        if (self.load_in_4bit or self.load_in_8bit) and not self.lora_rank:
            flag = "--load-in-4bit" if self.load_in_4bit else "--load-in-8bit"
            raise ConfigError(f"{flag}: quantised weights are frozen, so quantised full "
                              "fine-tuning is not supported; add --lora-rank (QLoRA)")
        if self.teacher_cache and self.teacher_device:
            raise ConfigError("--teacher-device: the cached teacher runs no model; drop one of "
                              "--teacher-cache and --teacher-device")
        _check_choice("method", self.method, METHOD_NAMES)
        _check_choice("formula", self.formula, WEIGHT_FORMULAS)
        get_method(self.method).resolve_formula(self.formula)  # kl+align refuses uniform
        _check_positive("anchor-weight", self.anchor_weight, allow_zero=True)
        _check_positive("temperature", self.temperature)
        _check_positive("lr", self.lr)
        _check_positive("epochs", self.epochs)
        _check_positive("batch-size", self.batch_size)
        _check_positive("grad-accum", self.grad_accum)
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"--batch-size {self.batch_size} is not divisible by "
                              f"--grad-accum {self.grad_accum}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio: must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--min-lr-ratio: must be in [0, 1], got {self.min_lr_ratio}")
        _check_choice("dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _check_positive("log-every", self.log_every)
        _check_positive("save-every", self.save_every, allow_zero=True)


@dataclass
class CacheConfig:
    """The teacher's top-k distribution over every response token, computed once for training."""

    pairs: str = _f("runs/pairs.jsonl", "Training pairs from `pos2distill pairs`.")
    model: str = _f("tiny", "The teacher: the starting model `train` will use.")
    out: str = _f("runs/teacher_cache", "Output folder (teacher.safetensors, cache.json).")
    top_k: int = _f(DEFAULT_TOP_K, "Teacher log-probabilities kept per token, plus one tail bucket "
                    "(0 = the whole vocabulary).")
    temperature: float = _f(1.0, "Softmax temperature (must match train's --temperature).")
    batch_size: int = _f(16, "Teacher prompts per forward pass.")
    dtype: str = _f("float32", "Model weights dtype: float32, bfloat16, float16.")
    autocast: str = _f("off", f"Autocast the forward pass: {', '.join(AUTOCAST)}.")
    device: str = _f("cpu", "Torch device.")
    trust_remote_code: bool = _f(False, "Allow model code from the model folder (off by default).")

    def __post_init__(self) -> None:
        _check_positive("top-k", self.top_k, allow_zero=True)
        _check_positive("temperature", self.temperature)
        _check_positive("batch-size", self.batch_size)
        _check_choice("dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _check_choice("autocast", self.autocast, AUTOCAST)


@dataclass
class ReportConfig:
    """Before/after tables and plots from two probe outputs."""

    before: str = _f("runs/probe_before", "Probe folder of the starting model.")
    after: str = _f("runs/probe_after", "Probe folder of the trained model.")
    out: str = _f("runs/report", "Output folder: report.md, report.json, plot.")
    title: str = _f("", "Plot title.")


@dataclass
class CrossTaskConfig:
    """Cross-task table (the paper's Table 6 shape) from probe folders: each trained model on
    retrieval and on reasoning, next to the base model. Leave out the probes you do not have."""

    base_retrieval: str = _f("", "Retrieval probe folder of the base model.")
    base_reasoning: str = _f("", "Reasoning probe folder (--task reasoning) of the base model.")
    r1_retrieval: str = _f("", "Retrieval probe of the R1-trained model (its own task).")
    r1_reasoning: str = _f("", "Reasoning probe of the R1-trained model.")
    r2_retrieval: str = _f("", "Retrieval probe of the R2-trained model.")
    r2_reasoning: str = _f("", "Reasoning probe of the R2-trained model (its own task).")
    out: str = _f("runs/cross_task", "Output folder: cross_task.md, cross_task.json.")

    def __post_init__(self) -> None:
        if not (self.base_retrieval or self.base_reasoning):
            raise ConfigError("--base-retrieval or --base-reasoning: the table compares with the "
                              "base model, give at least one of its probes")


@dataclass
class DemoConfig:
    """The whole pipeline on the embedded default: probe → teach → pairs → train → probe → report,
    for retrieval (R1), reasoning (R2, plus the R2 model on retrieval) or both (plus the cross-task
    table)."""

    out: str = _f("runs/demo", "Output folder.")
    model: str = _f("tiny", "Model (default: the embedded tiny model).")
    n_test: int = _f(100, "Held-out questions, each probed at every position (configuration).")
    n_train: int = _f(400, "R1: training questions given to the teacher.")
    K: int = _f(4, "Trivial positions (R2: configurations) per question.")
    anchors: int = _f(1, "R1: anchor copies per question.")
    lr: float = _f(2e-3, "R1: peak learning rate.")
    epochs: float = _f(2.0, "R1: passes over the pairs.")
    batch_size: int = _f(32, "Examples per optimizer step.")
    formula: str = _f("pos2distill", f"Position-aware weights: {', '.join(WEIGHT_FORMULAS)}.")
    seed: int = _f(0, "Seed for everything.")
    task: str = _f("retrieval", "retrieval (R1), reasoning (R2 on the two-hop set, and the R2 "
                   "model on retrieval) or both (both chains and the cross-task table).")
    r2_lr: float = _f(7e-4, "R2: peak learning rate.")
    r2_epochs: float = _f(1.0, "R2: passes over the pairs.")
    r2_n_train: int = _f(2500, "R2: training questions given to the teacher (0: as many as "
                         "--n-train).")
    r2_max_new_tokens: int = _f(24, "R2: tokens generated per chain-of-thought (the synthetic "
                                "one is 17 tokens and EOS).")

    def __post_init__(self) -> None:
        _check_positive("n-test", self.n_test)
        _check_positive("n-train", self.n_train)
        _check_choice("formula", self.formula, WEIGHT_FORMULAS)
        _check_choice("task", self.task, ("retrieval", "reasoning", "both"))
        _check_positive("r2-lr", self.r2_lr)
        _check_positive("r2-epochs", self.r2_epochs)
        _check_positive("r2-n-train", self.r2_n_train, allow_zero=True)
        _check_positive("r2-max-new-tokens", self.r2_max_new_tokens)


@dataclass
class GridConfig:
    """One grid of an experiment: every combination of its lists is a run (method, K, number of
    training questions, seed), each evaluated at every number of documents in ``eval_documents``."""

    name: str = _f("grid", "Name of the grid (for logs).")
    methods: list[str] = _f(["r1"], "Training methods (see `pos2distill train --method`).")
    seeds: list[int] = _f([0], "Training seeds (pairs' positions and distractor orders, data order).")
    K: list[int] = _f([4], "Trivial positions per question; K = 0 is the untrained base model.")
    n_train: list[int] = _f([400], "Training questions given to the teacher (the first N).")
    eval_documents: list[int] = _f([20], "Documents per question at evaluation.")

    def __post_init__(self) -> None:
        for key in ("methods", "seeds", "K", "n_train", "eval_documents"):
            if not getattr(self, key):
                raise ConfigError(f"grid {self.name!r}: '{key}' is empty")
        for m in self.methods:
            _check_choice("methods", m, EXPERIMENT_METHODS)
        for k in self.K:
            _check_positive("K", k, allow_zero=True)
        for n in self.n_train:
            _check_positive("n-train", n)
        for d in self.eval_documents:
            _check_positive("eval-documents", d)


#: Methods the experiment runner trains: the retrieval ones with ``task: retrieval``, r2 with
#: ``task: reasoning`` (checked by :class:`ExperimentConfig`).
EXPERIMENT_METHODS = METHOD_NAMES
#: TrainConfig fields the experiment sets itself (the rest may be given under ``train``).
EXPERIMENT_TRAIN_FIELDS = ("pairs", "model", "out", "method", "seed", "dtype", "device",
                           "trust_remote_code")


@dataclass
class ExperimentConfig(ModelOptions):
    """A grid of training runs sharing cached stages, evaluated by position, with a results table
    (mean ± std over seeds) and plots. Re-running the same command resumes it."""

    out: str = _f("runs/experiment", "Output folder (shared/, runs/, results.*, plots/).")
    train_data: str = _f("synthetic:train", "Training questions (the teacher answers them).")
    test_data: str = _f("synthetic:test", "Held-out questions for evaluation.")
    data_format: str = _f("auto", "Data format of both files: auto, records, litm, authors, kv.")
    data_seed: int = _f(0, "Seed of questions, teacher and evaluation distractor orders: the same "
                        "for every run, so every model is compared on the same prompts.")
    n_documents: int = _f(20, "Documents per training question.")
    n_test: int = _f(100, "Held-out questions, each asked at every evaluated position.")
    positions: str = _f("all", "Evaluated gold positions: all, a list like 0,4,9 (valid for every "
                        "document count), or even:N (N evenly spaced, first and last included).")
    positions_by_documents: dict = _f({}, "Evaluated positions per document count, overriding "
                                      "--positions, e.g. {20: '0,4,9,14,19', 30: 'even:5'}.")
    advantageous: str = _f("default", "Advantageous position of the teacher: first, last, integer "
                           "(default first); task reasoning: the hop pair, last (default), first "
                           "or 'A,B'.")
    configurations: str = _f("all", "task reasoning: evaluated hop position pairs (a probe "
                             "--configurations spec: all, connected, ..., or '0,1;5,6').")
    anchors: int = _f(1, "Anchor copies per question in the pairs (used by sft and r1; r2 has "
                         "none).")
    train: dict = _f({}, "TrainConfig options for every run (lr, epochs, batch_size, formula, "
                     "...; JSON on the command line).")
    generation: dict = _f({}, "Generation options of teach and probes: batch_size, "
                          "max_new_tokens, too_long (JSON on the command line).")
    grids: list[dict] = _f([{}], "Grids of runs (name, methods, seeds, K, n_train, "
                           "eval_documents); runs shared by several grids are trained once.")
    report_to: list[str] = _f([], "Also log to: tensorboard, wandb (need those packages).")
    shard: str = _f("", "I/N: run only the runs whose index modulo N is I (one process per GPU; "
                    "shared stages are locked so the shards share them). Empty: every run.")

    def __post_init__(self) -> None:
        ModelOptions.__post_init__(self)
        _check_choice("data-format", self.data_format, ("auto", "records", "litm", "authors", "kv"))
        _check_positive("n-documents", self.n_documents)
        _check_positive("n-test", self.n_test)
        _check_positive("anchors", self.anchors, allow_zero=True)
        if self.advantageous == "default":
            self.advantageous = "last" if self.task == "reasoning" else "first"
        if self.task != "reasoning" and self.configurations != "all":
            raise ConfigError("configurations places hop documents; it needs task: reasoning")
        bad = sorted(set(self.train) & set(EXPERIMENT_TRAIN_FIELDS))
        if bad:
            raise ConfigError(f"train: {', '.join(bad)} is set by the experiment itself "
                              "(use the top-level model, dtype, device, grids' methods and seeds)")
        self.train_config(pairs="p", out="o", method="r1", seed=0)   # validates the keys
        self.generation_options()
        if not self.grids:
            raise ConfigError("grids: at least one grid")
        for g in self.grid_configs():
            for m in g.methods:
                if (m == "r2") != (self.task == "reasoning"):
                    raise ConfigError(
                        f"grid {g.name!r}: methods: {m}: " + (
                            "r2 trains on reasoning pairs (hop positions): set task: reasoning"
                            if m == "r2" else "task: reasoning trains r2 only (chain-of-thought "
                            "pairs at hop configurations)"))
        for r in self.report_to:
            _check_choice("report-to", r, ("tensorboard", "wandb"))
        for k, v in self.positions_by_documents.items():
            if not (isinstance(v, str) and str(k).isdigit()):
                raise ConfigError(f"positions_by_documents: {k!r}: {v!r}: expected "
                                  "DOCUMENTS: 'POSITIONS'")
        self.shard_index()

    def shard_index(self) -> tuple[int, int]:
        """(I, N) of ``--shard I/N``; (0, 1) without sharding."""
        if not self.shard:
            return 0, 1
        i, _, n = self.shard.partition("/")
        if not (i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
            raise ConfigError(f"--shard: {self.shard!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        return int(i), int(n)

    def positions_spec(self, n_documents: int) -> str:
        by = {int(k): v for k, v in self.positions_by_documents.items()}
        return by.get(n_documents, self.positions)

    def grid_configs(self) -> list[GridConfig]:
        return [from_mapping(GridConfig, {"name": f"grid{i}", **g}, source=f"grids[{i}]")
                if isinstance(g, dict) else _not_a_mapping(f"grids[{i}]")
                for i, g in enumerate(self.grids)]

    def train_config(self, **values: Any) -> TrainConfig:
        base = {"model": self.model, "dtype": self.dtype, "device": self.device,
                "trust_remote_code": self.trust_remote_code}
        return from_mapping(TrainConfig, {**base, **self.train, **values}, source="train")

    def generation_options(self) -> dict[str, Any]:
        return dataclasses.asdict(from_mapping(GenerationOptions, self.generation,
                                               source="generation"))


def _not_a_mapping(source: str) -> Any:
    raise ConfigError(f"{source}: must be a mapping of option: value")


# ---------------------------------------------------------------------------------------------
# argparse and YAML plumbing


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field; the field's help is the flag's help, its default is shown."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        typ = hints[f.name]
        help_ = f.metadata.get("help", "")
        if typ is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=f"{help_} (default: {default})")
        elif typing.get_origin(typ) is list and typing.get_args(typ)[0] in (int, str):
            parser.add_argument(_flag(f.name), dest=f.name, type=_comma_list(typing.get_args(typ)[0]),
                                default=argparse.SUPPRESS, metavar="A,B,...",
                                help=f"{help_} (default: {','.join(map(str, default))})")
        elif typ is dict or typing.get_origin(typ) in (dict, list):
            parser.add_argument(_flag(f.name), dest=f.name, type=_json_value,
                                default=argparse.SUPPRESS, metavar="JSON",
                                help=f"{help_} (default: {json.dumps(default)})")
        else:
            parser.add_argument(_flag(f.name), dest=f.name, type=typ, default=argparse.SUPPRESS,
                                metavar=f.name.upper(), help=f"{help_} (default: {default})")
    parser.add_argument("--config", dest="_config", default=None, metavar="YAML",
                        help="Read options from a YAML file; flags given on the command line win.")


def _comma_list(typ: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [typ(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of "
                                             f"{typ.__name__}") from None
    return parse


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None


def from_mapping(cls: type[C], values: dict[str, Any], *, source: str = "config") -> C:
    """Build ``cls`` from a mapping; unknown keys are an error naming the known ones."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: "
                          f"{', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for k, v in values.items():
        typ = hints[k]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if typ is float and isinstance(v, str):
            # YAML 1.1 reads exponents without a dot (3e-6) as strings.
            try:
                v = float(v)
            except ValueError:
                pass
        if typ in (int, float, str, bool) and (not isinstance(v, typ)
                                               or (typ is not bool and isinstance(v, bool))):
            raise ConfigError(f"{source}: key '{k}' must be {typ.__name__}, got {v!r}")
        if typing.get_origin(typ) is list or typ is list:
            item = (typing.get_args(typ) or (object,))[0]
            item = typing.get_origin(item) or item
            if item in (int, str) and isinstance(v, item) and not isinstance(v, bool):
                v = [v]   # a single value where a list is expected
            if not isinstance(v, list) or not all(
                    isinstance(x, item) and not (item is int and isinstance(x, bool)) for x in v):
                raise ConfigError(f"{source}: key '{k}' must be a list of {item.__name__}, "
                                  f"got {v!r}")
        if (typ is dict or typing.get_origin(typ) is dict) and not isinstance(v, dict):
            raise ConfigError(f"{source}: key '{k}' must be a mapping, got {v!r}")
        converted[k] = v
    return cls(**converted)


def from_yaml(cls: type[C], path: str | Path) -> C:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config: {path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of option: value")
    return from_mapping(cls, {k.replace("-", "_"): v for k, v in data.items()}, source=str(path))


def from_args(cls: type[C], ns: argparse.Namespace) -> C:
    values = {k: v for k, v in vars(ns).items() if not k.startswith("_") and k != "command"}
    config_path = getattr(ns, "_config", None)
    if config_path:
        base = dataclasses.asdict(from_yaml(cls, config_path))  # type: ignore[call-overload]
        base.update(values)
        values = base
    return from_mapping(cls, values, source="flags")


def to_json(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)
