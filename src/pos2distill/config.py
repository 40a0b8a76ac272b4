"""Typed configs, one dataclass per stage. Field docs (``metadata["help"]``) are the ``--help``.

Every config validates itself in ``__post_init__`` with errors that name the flag. A YAML file loads
into the same dataclass (:func:`pos2distill.options.from_yaml`); an unknown key is an error that
lists the known ones. The lists of allowed values come from the modules that own them; none of
those imports torch, so building the command line (``--help``) stays light.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pos2distill.data.loaders import FORMATS
from pos2distill.errors import ConfigError
from pos2distill.generation import BACKENDS
from pos2distill.modeling import DTYPES
from pos2distill.options import check_choice, check_positive, from_mapping, not_a_mapping, option
from pos2distill.tasks import TASKS, get_task
from pos2distill.tasks.fitting import TOO_LONG
from pos2distill.tasks.judge import CALIBRATIONS, default_instruction, parse_verdicts
from pos2distill.tasks.prompts import DEFAULT_VERDICTS, TEMPLATES
from pos2distill.tracking import REPORT_TO
from pos2distill.training.methods import METHOD_NAMES, WEIGHT_FORMULAS, get_method

#: Default top-k of the teacher cache (bench/cache_error.py: KL error < 1e-3 nats/token on the
#: embedded default).
DEFAULT_TOP_K = 320
#: ``--autocast`` values.
AUTOCAST = ("off", "bfloat16", "float16")


_TOO_LONG_HELP = ("A prompt longer than the model's context minus --max-new-tokens: fail; skip "
                  "(count and report); truncate (drop distractors from the end of the question's "
                  "list until it fits, the gold keeping its position; skipped when impossible).")


def check_slot_options(cfg: Any, task_name: str) -> None:
    """Refuse a slot option (``positions``, ``configurations``) of another task than
    ``task_name``: those options must keep their default ``all``."""
    task = get_task(task_name)
    for other in TASKS.values():
        value = getattr(cfg, other.slot_option, "all")
        if other.slot_option != task.slot_option and value != "all":
            raise ConfigError(f"--{other.slot_option} places the documents of --task {other.name}; "
                              f"with --task {task.name} use --{task.slot_option}")


@dataclass
class ModelOptions:
    model: str = option("tiny", "Local Hugging Face model folder, or 'tiny' for the embedded default.")
    task: str = option("retrieval", f"Task: {', '.join(TASKS)}. retrieval: one gold document "
                   "(Pos2Distill-R1); reasoning: multi-hop questions, chain-of-thought, hop "
                   "documents at position pairs, reasoning EM (Pos2Distill-R2); judge: pairs of "
                   "answers judged in both orders (LLM-as-a-judge order bias).")
    template: str = option("auto", f"Prompt template: {', '.join(TEMPLATES)}, or auto (reasoning for "
                       "--task reasoning, judge for --task judge, authors otherwise). --task "
                       "judge also takes a template file with the slots {answer_a} and "
                       "{answer_b} (optional: {documents}, {question}, {instruction}).")
    instruction: str = option("", "Text that replaces the template's instruction line, verbatim "
                          "(e.g. your RAG pipeline's instruction, to measure its positional bias); "
                          "empty = the template's own.", count_when_set=True)
    chat: str = option("auto", "Use the tokenizer's chat template: auto (when it has one), on, off.")
    dtype: str = option("float32", f"Model weights dtype: {', '.join(DTYPES)}.")
    device: str = option("cpu", "Torch device, e.g. cpu, cuda, cuda:1.")
    trust_remote_code: bool = option(False, "Allow model code from the model folder (off by default).")
    verdicts: str = option(",".join(DEFAULT_VERDICTS), "--task judge: the verdict strings for the "
                           "answer shown first, the one shown second and (optional) a tie, "
                           "comma-separated; the last one in the judge's text is its verdict.",
                           count_when_set=True)

    def __post_init__(self) -> None:
        task = get_task(self.task)
        if self.template == "auto":
            self.template = task.default_template
        self.template = task.resolve_template(self.template)
        verdicts = parse_verdicts(self.verdicts)
        if verdicts != DEFAULT_VERDICTS and self.task != "judge":
            raise ConfigError(f"--verdicts: verdict strings are read by --task judge, not "
                              f"--task {self.task}")
        if self.task == "judge" and not self.instruction:
            # Verdict strings of one's own: the template's instruction must name them.
            self.instruction = default_instruction(verdicts)
        if self.instruction and not self.instruction.strip():
            raise ConfigError("--instruction: only whitespace; give the instruction text, or leave "
                              "it empty for the template's own")
        check_choice("chat", self.chat, ("auto", "on", "off"))
        check_choice("dtype", self.dtype, DTYPES)


@dataclass
class DataOptions:
    data: str = option("synthetic:test", "Data: a local file (.jsonl, .jsonl.gz, .json, .parquet) or "
                   "datasets folder (save_to_disk) in any format of --data-format, or "
                   "synthetic:SPLIT, synthetic-reasoning:SPLIT (two-hop) or synthetic-judge:SPLIT "
                   "(pairs of answers to judge) with SPLIT train, dev "
                   "(for choosing settings) or test (for reporting); the three ask about disjoint "
                   "people. Nothing is downloaded.")
    data_format: str = option("auto", f"Data format: auto, {', '.join(FORMATS)}.")
    split: str = option("", "Split of a DatasetDict folder (--data saved with "
                        "DatasetDict.save_to_disk); empty: its only split.", count_when_set=True)
    n_documents: int = option(20, "Documents per question for single-document (oracle) files and "
                          "the synthetic set; other questions' gold passages are the distractors.")
    limit: int = option(0, "Use only the first N questions (0 = all).")
    seed: int = option(0, "Seed for distractor orders and data building.")

    def __post_init__(self) -> None:
        check_choice("data-format", self.data_format, ("auto",) + FORMATS)
        for n in document_counts(self.n_documents):
            check_positive("n-documents", n)
        check_positive("limit", self.limit, allow_zero=True)


def document_counts(n_documents: int | list[int]) -> list[int]:
    """The numbers of documents of an ``--n-documents`` (one, or a list)."""
    return list(n_documents) if isinstance(n_documents, list) else [n_documents]


@dataclass
class GenerationOptions:
    batch_size: int = option(64, "Prompts per generation batch.")
    max_new_tokens: int = option(32, "Tokens generated per answer.")
    too_long: str = option("fail", _TOO_LONG_HELP)
    backend: str = option("hf", "Generation backend: hf (transformers, batched with a KV cache) or "
                      "vllm (when installed).")

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, BACKENDS)
        check_positive("batch-size", self.batch_size)
        check_positive("max-new-tokens", self.max_new_tokens)
        check_choice("too-long", self.too_long, TOO_LONG)


@dataclass
class ProbeConfig(ModelOptions, DataOptions, GenerationOptions):
    """Accuracy by gold position: batched greedy generation at every requested position."""

    out: str = option("runs/probe", "Output folder (rows.jsonl, summary.json, table.md, plot); with "
                      "several --n-documents, one such folder per count (OUT/n10, OUT/n20, ...) "
                      "and the heatmap (heatmap.json, heatmap.md, heatmap.png).")
    n_documents: int | list[int] = option(
        20, "Documents per question for single-document (oracle) files and the synthetic set. "
        "Several (e.g. 10,20,30): one probe per count with one model load, and a heatmap of "
        "accuracy by gold depth (percent of the context) x number of documents (retrieval).")
    positions: str = option("all", "Gold positions, 0-based: all, or a list like 0,4,9,14,19 "
                            "(valid for every --n-documents).")
    configurations: str = option("all", "--task reasoning: hop position pairs, 0-based (first hop, "
                             "second hop): all (the paper's 12, scaled to the document count), "
                             "connected, disconnected, reversed, or a list like '0,1;5,6;8,0'.")
    orders: str = option("all", "--task judge: the answer orders, 0-based candidate indices: all "
                         "(0,1 and 1,0: every pair judged both ways), 0,1 or 1,0.",
                         count_when_set=True)
    samples: int = option(0, "--task judge: also sample N answers per prompt (at --temperature) "
                          "and report repetition stability (0: greedy only).", count_when_set=True)
    temperature: float = option(1.0, "--task judge: sampling temperature of --samples.",
                                count_when_set=True)
    calibrate: str = option("none", f"--task judge: {', '.join(CALIBRATIONS)}; bpc also reports "
                            "balanced position calibration (verdict probabilities of both orders "
                            "averaged per candidate: one verdict per pair, two passes).",
                            count_when_set=True)

    def __post_init__(self) -> None:
        counts = document_counts(self.n_documents)
        # One count is stored as a number, as before lists were allowed: run.json fingerprints
        # of earlier probes stay the same.
        self.n_documents = counts[0] if len(counts) == 1 else counts
        ModelOptions.__post_init__(self)
        DataOptions.__post_init__(self)
        GenerationOptions.__post_init__(self)
        check_slot_options(self, self.task)
        check_positive("samples", self.samples, allow_zero=True)
        check_positive("temperature", self.temperature)
        check_choice("calibrate", self.calibrate, CALIBRATIONS)
        if self.task != "judge" and (self.samples or self.calibrate != "none"):
            raise ConfigError("--samples and --calibrate measure a judge: use them with --task "
                              "judge")
        if len(counts) > 1:
            if len(set(counts)) < len(counts):
                raise ConfigError(f"--n-documents: {','.join(map(str, counts))} repeats a count")
            if get_task(self.task).slot_width != 1:
                raise ConfigError(f"--n-documents: several counts draw a heatmap by the depth of "
                                  f"one gold document; --task {self.task} places several: probe "
                                  "one count at a time")


@dataclass
class TeachConfig(ModelOptions, DataOptions, GenerationOptions):
    """Teacher responses at the advantageous position, kept only when correct."""

    data: str = option("synthetic:train", DataOptions.__dataclass_fields__["data"].metadata["help"])
    out: str = option("runs/teach.jsonl", "Output JSONL: one row per kept question.")
    advantageous: str = option("default", "Advantageous gold position: first, last, an integer, or "
                           "auto (the best of --probe); default first. --task reasoning: the hop "
                           "pair, like 18,19, last (the last two documents, the default), first "
                           "(the first two), or auto (the best configuration of --probe). --task "
                           "judge: balanced (the only one: the judge answers in both orders and "
                           "its order-balanced verdict is the teacher).")
    probe: str = option("", "Probe folder (or its summary.json) for --advantageous auto.")

    def __post_init__(self) -> None:
        ModelOptions.__post_init__(self)
        DataOptions.__post_init__(self)
        GenerationOptions.__post_init__(self)
        if self.advantageous == "default":
            self.advantageous = get_task(self.task).default_advantageous
        if self.advantageous == "auto" and not self.probe:
            raise ConfigError("--advantageous auto needs --probe (a probe output folder)")
        if self.task == "judge" and self.backend != "hf":
            raise ConfigError("--backend: a judge's teacher needs its verdict probabilities, "
                              "which --backend hf reads; use --backend hf")


@dataclass
class PairsConfig:
    """Training pairs: K trivial positions per question plus anchor copies."""

    teach: str = option("runs/teach.jsonl", "Teacher responses from `pos2distill teach`.")
    out: str = option("runs/pairs.jsonl", "Output JSONL: one row per (question, student position).")
    model: str = option("tiny", "Model folder whose tokenizer renders the prompts (chat template).")
    K: int = option(4, "Distinct trivial (non-advantageous) positions per question (paper: 4). "
                    "Judge teacher rows: both answer orders, whatever K.")
    anchors: int = option(1, "Copies per question with the student also at the advantageous position.")
    seed: int = option(0, "Seed for position draws and distractor orders.")
    first_line: bool = option(True, "Distil only the first line of the teacher's response "
                          "(short-answer retrieval).")
    configurations: str = option("any", "Reasoning teacher rows (R2): the hop position pairs the K "
                             "are drawn from: any (every ordered pair but the advantageous one), "
                             "or a --configurations spec of `probe`. R2 has no anchors: --anchors "
                             "and --first-line apply to retrieval rows only.")

    def __post_init__(self) -> None:
        check_positive("K", self.K, allow_zero=True)
        check_positive("anchors", self.anchors, allow_zero=True)
        if self.K + self.anchors == 0:
            raise ConfigError("--K and --anchors are both 0: no training pairs would be made")


@dataclass
class TrainConfig:
    """Training on pairs: Pos2Distill-R1 (teacher = the frozen starting model), its ablations and
    the baselines, chosen by --method (see pos2distill.training.methods)."""

    pairs: str = option("runs/pairs.jsonl", "Training pairs from `pos2distill pairs`.")
    model: str = option("tiny", "Starting model (student init and frozen teacher).")
    out: str = option("runs/train", "Output folder: model/ (a Hugging Face checkpoint), log.jsonl.")
    method: str = option("r1", f"Training method: {', '.join(METHOD_NAMES)} (sft/seqkd/r2: "
                     "cross-entropy, no teacher model; kl: uniform weights, no anchors; kl+align: "
                     "position-aware weights, no anchors; r1: weights + anchors; on judge pairs "
                     "r1 distils the order-balanced verdict into each order; swap-sft: "
                     "cross-entropy on the gold verdict in both orders, the judge baseline).")
    formula: str = option("pos2distill", "Position-aware weights of r1 and kl+align: "
                      f"{', '.join(WEIGHT_FORMULAS)}.")
    anchor_weight: float = option(1.0, "λ, the weight of anchor examples in r1 (paper: 1).")
    temperature: float = option(1.0, "Softmax temperature of the KL.")
    lr: float = option(3e-6, "Peak learning rate (paper: 3e-6 for 7B; tiny models want ~1e-3).")
    epochs: float = option(1.0, "Passes over the pairs.")
    batch_size: int = option(32, "Examples per optimizer step (the batch the weights group).")
    grad_accum: int = option(1, "Micro-batches per optimizer step (batch_size must divide evenly).")
    warmup_ratio: float = option(0.05, "Fraction of steps of linear warm-up.")
    min_lr_ratio: float = option(0.1, "Cosine schedule floor, as a fraction of --lr.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.95, "AdamW beta2.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 = off).")
    seed: int = option(0, "Seed for data order and initialisation of anything random.")
    dtype: str = option("float32", f"Model weights dtype: {', '.join(DTYPES)}.")
    device: str = option("cpu", "Torch device.")
    log_every: int = option(1, "Write a log row every N optimizer steps.")
    save_every: int = option(50, "Optimizer steps between checkpoints in OUT/checkpoint (0 = only at "
                         "the end); re-running the same command resumes from the last one.")
    trust_remote_code: bool = option(False, "Allow model code from the model folder (off by default).")
    teacher_cache: str = option("", "Teacher cache folder from `pos2distill cache` (KL methods): the "
                            "teacher is read from it instead of run (empty = online teacher).")
    teacher_device: str = option("", "Device of the online teacher, e.g. cuda:1, or cpu to offload it "
                             "(empty = --device).")
    lora_rank: int = option(0, "LoRA rank (0 = full fine-tuning). With LoRA the teacher is the base "
                        "model with the adapter disabled: no second copy.")
    lora_alpha: float = option(16.0, "LoRA alpha (the update is scaled by alpha / rank).")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    lora_targets: str = option("all-linear", "Modules given an adapter: all-linear, or names such as "
                           "q_proj,k_proj,v_proj,o_proj.")
    lora_merge: bool = option(True, "With LoRA, also write OUT/model, the merged model (OUT/adapter is "
                          "always written).")
    load_in_4bit: bool = option(False, "QLoRA: load the frozen base in 4 bits (bitsandbytes nf4, "
                            "double quantisation; compute dtype from --autocast, else bfloat16). "
                            "Needs --lora-rank, a CUDA GPU and bitsandbytes.", count_when_set=True)
    load_in_8bit: bool = option(False, "Load the frozen base in 8 bits (bitsandbytes LLM.int8). Needs "
                            "--lora-rank, a CUDA GPU and bitsandbytes.", count_when_set=True)
    autocast: str = option("off", f"Autocast forward passes: {', '.join(AUTOCAST)} (float16 uses a "
                       "gradient scaler on CUDA).")
    gradient_checkpointing: bool = option(False, "Recompute the student's activations in the backward "
                                      "pass (less memory, about a third more compute).")
    head_chunk: int = option(1024, "Response tokens per output-head chunk (peak logits memory is "
                         "head-chunk x vocabulary).")
    base_model_id: str = option("", "Hub id of --model (e.g. Qwen/Qwen2.5-7B-Instruct), written as "
                            "base_model in the model card; empty: read from a Hugging Face cache "
                            "path (models--ORG--NAME/snapshots/...), else left out.",
                            count_when_set=True)

    def __post_init__(self) -> None:
        check_positive("lora-rank", self.lora_rank, allow_zero=True)
        check_positive("lora-alpha", self.lora_alpha)
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout: must be in [0, 1), got {self.lora_dropout}")
        check_choice("autocast", self.autocast, AUTOCAST)
        check_positive("head-chunk", self.head_chunk)
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("--load-in-4bit and --load-in-8bit: choose one")
        if (self.load_in_4bit or self.load_in_8bit) and not self.lora_rank:
            flag = "--load-in-4bit" if self.load_in_4bit else "--load-in-8bit"
            raise ConfigError(f"{flag}: quantised weights are frozen, so quantised full "
                              "fine-tuning is not supported; add --lora-rank (QLoRA)")
        if self.teacher_cache and self.teacher_device:
            raise ConfigError("--teacher-device: the cached teacher runs no model; drop one of "
                              "--teacher-cache and --teacher-device")
        check_choice("method", self.method, METHOD_NAMES)
        check_choice("formula", self.formula, WEIGHT_FORMULAS)
        get_method(self.method).resolve_formula(self.formula)  # kl+align refuses uniform
        check_positive("anchor-weight", self.anchor_weight, allow_zero=True)
        check_positive("temperature", self.temperature)
        check_positive("lr", self.lr)
        check_positive("epochs", self.epochs)
        check_positive("batch-size", self.batch_size)
        check_positive("grad-accum", self.grad_accum)
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"--batch-size {self.batch_size} is not divisible by "
                              f"--grad-accum {self.grad_accum}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio: must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--min-lr-ratio: must be in [0, 1], got {self.min_lr_ratio}")
        check_choice("dtype", self.dtype, DTYPES)
        check_positive("log-every", self.log_every)
        check_positive("save-every", self.save_every, allow_zero=True)


@dataclass
class CacheConfig:
    """The teacher's top-k distribution over every response token, computed once for training."""

    pairs: str = option("runs/pairs.jsonl", "Training pairs from `pos2distill pairs`.")
    model: str = option("tiny", "The teacher: the starting model `train` will use.")
    out: str = option("runs/teacher_cache", "Output folder (teacher.safetensors, cache.json).")
    top_k: int = option(DEFAULT_TOP_K, "Teacher log-probabilities kept per token, plus one tail bucket "
                    "(0 = the whole vocabulary).")
    temperature: float = option(1.0, "Softmax temperature (must match train's --temperature).")
    batch_size: int = option(16, "Teacher prompts per forward pass.")
    dtype: str = option("float32", f"Model weights dtype: {', '.join(DTYPES)}.")
    autocast: str = option("off", f"Autocast the forward pass: {', '.join(AUTOCAST)}.")
    device: str = option("cpu", "Torch device.")
    trust_remote_code: bool = option(False, "Allow model code from the model folder (off by default).")

    def __post_init__(self) -> None:
        check_positive("top-k", self.top_k, allow_zero=True)
        check_positive("temperature", self.temperature)
        check_positive("batch-size", self.batch_size)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("autocast", self.autocast, AUTOCAST)


@dataclass
class ReportConfig:
    """Before/after tables and plots from two probe outputs."""

    before: str = option("runs/probe_before", "Probe folder of the starting model.")
    after: str = option("runs/probe_after", "Probe folder of the trained model.")
    out: str = option("runs/report", "Output folder: report.md, report.json, plot.")
    title: str = option("", "Plot title.")


@dataclass
class CrossTaskConfig:
    """Cross-task table (the paper's Table 6 shape) from probe folders: each trained model on
    retrieval and on reasoning, next to the base model. Leave out the probes you do not have."""

    base_retrieval: str = option("", "Retrieval probe folder of the base model.")
    base_reasoning: str = option("", "Reasoning probe folder (--task reasoning) of the base model.")
    r1_retrieval: str = option("", "Retrieval probe of the R1-trained model (its own task).")
    r1_reasoning: str = option("", "Reasoning probe of the R1-trained model.")
    r2_retrieval: str = option("", "Retrieval probe of the R2-trained model.")
    r2_reasoning: str = option("", "Reasoning probe of the R2-trained model (its own task).")
    out: str = option("runs/cross_task", "Output folder: cross_task.md, cross_task.json.")

    def __post_init__(self) -> None:
        if not (self.base_retrieval or self.base_reasoning):
            raise ConfigError("--base-retrieval or --base-reasoning: the table compares with the "
                              "base model, give at least one of its probes")


@dataclass
class DemoConfig:
    """The whole pipeline on the embedded default: probe → teach → pairs → train → probe → report,
    for retrieval (R1), reasoning (R2, plus the R2 model on retrieval), both (plus the cross-task
    table), or judging (R1 for a judge, beside BPC and swap-SFT)."""

    out: str = option("runs/demo", "Output folder.")
    model: str = option("", "Model (default: the embedded one: tiny, or tiny-judge with --task "
                        "judge).")
    n_test: int = option(100, "Held-out questions, each probed at every position (configuration).")
    n_train: int = option(600, "R1: training questions given to the teacher (chosen on "
                         "synthetic:dev).")
    K: int = option(4, "Trivial positions (R2: configurations) per question.")
    anchors: int = option(1, "R1: anchor copies per question.")
    lr: float = option(7e-4, "R1: peak learning rate (chosen on synthetic:dev).")
    epochs: float = option(3.0, "R1: passes over the pairs (chosen on synthetic:dev).")
    batch_size: int = option(32, "Examples per optimizer step.")
    formula: str = option("pos2distill", f"Position-aware weights: {', '.join(WEIGHT_FORMULAS)}.")
    seed: int = option(0, "Seed for everything.")
    split: str = option("test", "Questions probed before and after: test (to report) or dev (to "
                        "choose settings; the defaults were chosen on it).")
    task: str = option("retrieval", "retrieval (R1), reasoning (R2 on the two-hop set, and the R2 "
                   "model on retrieval), both (both chains and the cross-task table) or judge (a "
                   "judge's order bias: R1 with the order-balanced verdict as teacher, beside BPC "
                   "and the swap-SFT baseline).")
    r2_lr: float = option(7e-4, "R2: peak learning rate.")
    r2_epochs: float = option(1.0, "R2: passes over the pairs (chosen on synthetic-reasoning:dev).")
    r2_n_train: int = option(3500, "R2: training questions given to the teacher (0: as many as "
                         "--n-train; chosen on synthetic-reasoning:dev).")
    r2_max_new_tokens: int = option(24, "R2: tokens generated per chain-of-thought (the synthetic "
                                "one is 17 tokens and EOS).")
    analyze: bool = option(False, "Also run `pos2distill analyze` on the base and trained models "
                           "(tokens, thoughts and attention for R1; thoughts and attention for "
                           "R2) into OUT/analysis and OUT/reasoning/analysis.")
    analyze_limit: int = option(100, "--analyze: questions per analysis.")
    judge_n_test: int = option(200, "Judge: held-out pairs, each judged in both orders.")
    judge_n_train: int = option(400, "Judge: training pairs given to the teacher (both orders).")
    judge_n_documents: int = option(6, "Judge: documents per judging prompt (chosen on "
                                    "synthetic-judge:dev).")
    judge_lr: float = option(3e-4, "Judge: peak learning rate of R1 and swap-SFT (chosen on "
                             "synthetic-judge:dev).")
    judge_epochs: float = option(2.0, "Judge: passes over the pairs.")
    judge_max_new_tokens: int = option(8, "Judge: tokens generated per verdict (the embedded "
                                       "judge writes a city, the verdict and EOS: 7).")

    def __post_init__(self) -> None:
        if not self.model:
            self.model = "tiny-judge" if self.task == "judge" else "tiny"
        check_positive("n-test", self.n_test)
        check_positive("n-train", self.n_train)
        check_choice("formula", self.formula, WEIGHT_FORMULAS)
        check_choice("task", self.task, ("retrieval", "reasoning", "both", "judge"))
        check_choice("split", self.split, ("dev", "test"))
        check_positive("r2-lr", self.r2_lr)
        check_positive("r2-epochs", self.r2_epochs)
        check_positive("r2-n-train", self.r2_n_train, allow_zero=True)
        check_positive("r2-max-new-tokens", self.r2_max_new_tokens)
        check_positive("analyze-limit", self.analyze_limit)
        check_positive("judge-n-test", self.judge_n_test)
        check_positive("judge-n-train", self.judge_n_train)
        check_positive("judge-n-documents", self.judge_n_documents)
        check_positive("judge-lr", self.judge_lr)
        check_positive("judge-epochs", self.judge_epochs)
        check_positive("judge-max-new-tokens", self.judge_max_new_tokens)
        if self.analyze and self.task == "judge":
            raise ConfigError("--analyze: the analyses read retrieval and reasoning, not --task "
                              "judge")


@dataclass
class GridConfig:
    """One grid of an experiment: every combination of its lists is a run (method, K, number of
    training questions, seed), each evaluated at every number of documents in ``eval_documents``."""

    name: str = option("grid", "Name of the grid (for logs).")
    methods: list[str] = option(["r1"], "Training methods (see `pos2distill train --method`).")
    seeds: list[int] = option([0], "Training seeds (pairs' positions and distractor orders, data order).")
    K: list[int] = option([4], "Trivial positions per question; K = 0 is the untrained base model.")
    n_train: list[int] = option([400], "Training questions given to the teacher (the first N).")
    eval_documents: list[int] = option([20], "Documents per question at evaluation.")

    def __post_init__(self) -> None:
        for key in ("methods", "seeds", "K", "n_train", "eval_documents"):
            if not getattr(self, key):
                raise ConfigError(f"grid {self.name!r}: '{key}' is empty")
        for m in self.methods:
            check_choice("methods", m, EXPERIMENT_METHODS)
        for k in self.K:
            check_positive("K", k, allow_zero=True)
        for n in self.n_train:
            check_positive("n-train", n)
        for d in self.eval_documents:
            check_positive("eval-documents", d)


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

    out: str = option("runs/experiment", "Output folder (shared/, runs/, results.*, plots/).")
    train_data: str = option("synthetic:train", "Training questions (the teacher answers them).")
    test_data: str = option("synthetic:test", "Held-out questions for evaluation.")
    data_format: str = option("auto", "Data format of both files: auto, records, litm, authors, kv.")
    data_seed: int = option(0, "Seed of questions, teacher and evaluation distractor orders: the same "
                        "for every run, so every model is compared on the same prompts.")
    n_documents: int = option(20, "Documents per training question.")
    n_test: int = option(100, "Held-out questions, each asked at every evaluated position.")
    positions: str = option("all", "Evaluated gold positions: all, a list like 0,4,9 (valid for every "
                        "document count), or even:N (N evenly spaced, first and last included).")
    positions_by_documents: dict = option({}, "Evaluated positions per document count, overriding "
                                      "--positions, e.g. {20: '0,4,9,14,19', 30: 'even:5'}.")
    advantageous: str = option("default", "Advantageous position of the teacher: first, last, integer "
                           "(default first); task reasoning: the hop pair, last (default), first "
                           "or 'A,B'.")
    configurations: str = option("all", "task reasoning: evaluated hop position pairs (a probe "
                             "--configurations spec: all, connected, ..., or '0,1;5,6').")
    anchors: int = option(1, "Anchor copies per question in the pairs (used by sft and r1; r2 has "
                         "none).")
    train: dict = option({}, "TrainConfig options for every run (lr, epochs, batch_size, formula, "
                     "...; JSON on the command line).")
    generation: dict = option({}, "Generation options of teach and probes: batch_size, "
                          "max_new_tokens, too_long (JSON on the command line).")
    grids: list[dict] = option([{}], "Grids of runs (name, methods, seeds, K, n_train, "
                           "eval_documents); runs shared by several grids are trained once.")
    report_to: list[str] = option([], "Also log to: tensorboard, wandb (need those packages).")
    shard: str = option("", "I/N: run only the runs whose index modulo N is I (one process per GPU; "
                    "shared stages are locked so the shards share them). Empty: every run.")

    def __post_init__(self) -> None:
        if self.task == "judge":
            raise ConfigError("experiment: --task judge has no experiment grid yet; run probe, "
                              "teach, pairs and train --task judge")
        ModelOptions.__post_init__(self)
        check_choice("data-format", self.data_format, ("auto", "records", "litm", "authors", "kv"))
        check_positive("n-documents", self.n_documents)
        check_positive("n-test", self.n_test)
        check_positive("anchors", self.anchors, allow_zero=True)
        if self.advantageous == "default":
            self.advantageous = get_task(self.task).default_advantageous
        check_slot_options(self, self.task)
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
                task = get_task(self.task)
                if m not in task.methods:
                    owner = next(t.name for t in TASKS.values() if m in t.methods)
                    raise ConfigError(f"grid {g.name!r}: methods: {m} trains {owner} pairs; task "
                                      f"{self.task} trains {', '.join(task.methods)}")
        for r in self.report_to:
            check_choice("report-to", r, REPORT_TO)
        for k, v in self.positions_by_documents.items():
            if not (isinstance(v, str) and str(k).isdigit()):
                raise ConfigError(f"positions_by_documents: {k!r}: {v!r}: expected "
                                  "DOCUMENTS: 'POSITIONS'")
        self.shard_index()

    def lock_part(self) -> str:
        """The part of ``out`` this process writes alone: its shard (shards share the folder)."""
        i, n = self.shard_index()
        return f"shard-{i}-of-{n}" if n > 1 else ""

    def shard_index(self) -> tuple[int, int]:
        """(I, N) of ``--shard I/N``; (0, 1) without sharding."""
        if not self.shard:
            return 0, 1
        i, _, n = self.shard.partition("/")
        if not (i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
            raise ConfigError(f"--shard: {self.shard!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        return int(i), int(n)

    def slot_spec(self, option: str, n_documents: int) -> str:
        """The evaluated slots with ``n_documents``: ``positions_by_documents`` for that count,
        else the task's slot option (``positions`` or ``configurations``)."""
        by = {int(k): v for k, v in self.positions_by_documents.items()}
        return by.get(n_documents, getattr(self, option))

    def grid_configs(self) -> list[GridConfig]:
        return [from_mapping(GridConfig, {"name": f"grid{i}", **g}, source=f"grids[{i}]")
                if isinstance(g, dict) else not_a_mapping(f"grids[{i}]")
                for i, g in enumerate(self.grids)]

    def train_config(self, **values: Any) -> TrainConfig:
        base = {"model": self.model, "dtype": self.dtype, "device": self.device,
                "trust_remote_code": self.trust_remote_code}
        return from_mapping(TrainConfig, {**base, **self.train, **values}, source="train")

    def generation_options(self) -> dict[str, Any]:
        return dataclasses.asdict(from_mapping(GenerationOptions, self.generation,
                                               source="generation"))




#: ``pos2distill analyze`` analyses.
ANALYSES = ("tokens", "thoughts", "attention")


@dataclass
class AnalyzeConfig(ModelOptions, DataOptions):
    """Where the positional bias lives (METHOD.md section 6): `tokens` (per-token KL of the
    advantageous response at every other position, divergence token, its rank, token recovery),
    `thoughts` (chain-of-thought failures by hop configuration; perplexity of the advantageous
    response against the gold label), `attention` (attention mass on each document, by gold
    position)."""

    what: str = option("tokens", f"The analysis: {', '.join(ANALYSES)} (also the first argument, "
                   "`pos2distill analyze tokens`).")
    out: str = option("", "Output folder (empty: runs/analyze/WHAT): rows.jsonl, summary.json, "
                  "table.md and figures.")
    limit: int = option(100, "Use only the first N questions (0 = all).")
    positions: str = option("all", "Gold positions, 0-based: all, or a list like 0,4,9,14,19 "
                        "(tokens leaves the advantageous one out).")
    configurations: str = option("all", "--task reasoning: hop position pairs, as probe's "
                             "--configurations (all: the paper's 12).")
    advantageous: str = option("default", "The advantageous position: first (default), last or an "
                           "integer; --task reasoning: the hop pair, last (default), first or "
                           "A,B. All positions share its distractor order: only the gold moves.")
    teach: str = option("", "Advantageous responses from `pos2distill teach` by the same model "
                    "(its questions, prompts and answers); empty: answered greedily here, kept "
                    "when correct (attention keeps every question).")
    compare: str = option("", "attention: a second model folder (e.g. after training), analysed "
                      "the same way and drawn beside --model.")
    batch_size: int = option(32, "Sequences per forward pass or generation batch.")
    max_new_tokens: int = option(32, "Tokens generated per answer (advantageous responses, "
                             "recovery, chains).")

    def __post_init__(self) -> None:
        if self.task == "judge":
            raise ConfigError("analyze: --task judge is not analysed (retrieval and reasoning "
                              "are); probe a judge with `pos2distill probe --task judge`")
        ModelOptions.__post_init__(self)
        DataOptions.__post_init__(self)
        check_choice("what", self.what, ANALYSES)
        if not self.out:
            self.out = f"runs/analyze/{self.what}"
        check_slot_options(self, self.task)
        if self.advantageous == "default":
            self.advantageous = get_task(self.task).default_advantageous
        if self.advantageous == "auto":
            raise ConfigError("--advantageous auto: analyze takes the advantageous slot itself "
                              "(first, last, an integer; reasoning: last, first or A,B)")
        if self.compare and self.what != "attention":
            raise ConfigError(f"--compare draws two models' attention; analyze {self.what} "
                              "takes one model (run it once per model)")
        check_positive("batch-size", self.batch_size)
        check_positive("max-new-tokens", self.max_new_tokens)
