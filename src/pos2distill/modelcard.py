"""Model cards: the ``README.md`` of every model folder ``train`` writes, with the YAML metadata the
Hugging Face hub reads, and the results section ``report`` fills.

A card is YAML metadata between ``---`` lines, then Markdown:

- metadata: ``base_model`` (a hub id: ``train --base-model-id``, or read from a Hugging Face cache
  path ``models--ORG--NAME/snapshots/…``; left out when neither names one, since the hub refuses a
  ``base_model`` that is not a hub id), ``library_name`` (``transformers``; ``peft`` for an
  adapter), ``tags`` (``pos2distill``, ``positional-bias``, the method), and ``license`` (with
  ``license_name`` and ``license_link``) copied from the base model's own card when it states one;
- body: the method and its options (with the command that trains it again), the training data
  (path, sha256, questions, pairs), the steps, how to load the model, and a results section.

The results section sits between two HTML comments and holds one block per comparison, keyed by
task, data and number of documents (and one for a depth × documents heatmap): ``report`` adds a
block, or replaces the block of the same key, and copies its plot into ``MODEL/results/``, so the
card shows the latest before/after numbers of every setting it was probed on. Everything outside
that section is left as it was. Only cards this module wrote (tagged ``pos2distill``) are changed.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from pos2distill.runinfo import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

CARD = "README.md"
TAG = "pos2distill"
#: The folder of a model that holds the results' plots (relative links from the card).
IMAGES = "results"
PAPER = "https://arxiv.org/abs/2508.15709"

RESULTS_START, RESULTS_END = "<!-- pos2distill:results -->", "<!-- /pos2distill:results -->"
_BLOCK = re.compile(r"<!-- pos2distill:result (?P<key>\S+) -->\n(?P<body>.*?)"
                    r"<!-- /pos2distill:result -->\n", re.S)
_NOT_YET = ("Not probed yet. `pos2distill report --before BASE_PROBE --after PROBE` with a probe of "
            "this model as PROBE adds its before/after table and plot here.\n")
# A snapshot folder of the Hugging Face cache: .../models--ORG--NAME/snapshots/REVISION
_CACHE = re.compile(r"^models--(?P<id>.+)$")


# ---------------------------------------------------------------------------------------------
# Reading and writing cards
# ---------------------------------------------------------------------------------------------

def split_card(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a card's text; metadata is ``{}`` without a YAML header (or with one
    that is not a mapping of valid YAML)."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---\n", 3)
    if end < 0:
        return {}, text
    try:
        meta = yaml.safe_load(text[4:end]) or {}
    except yaml.YAMLError:
        return {}, text
    return (meta, text[end + 5:]) if isinstance(meta, dict) else ({}, text)


def render_card(meta: Mapping[str, Any], body: str) -> str:
    return "---\n" + yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True) + "---\n" + body


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """The metadata of ``folder/README.md`` (``{}`` when it has none)."""
    path = Path(folder) / CARD
    try:
        return split_card(path.read_text(encoding="utf-8"))[0]
    except (OSError, UnicodeDecodeError):
        return {}


def is_ours(folder: str | Path) -> bool:
    """Whether ``folder`` has a card written by this module (tagged ``pos2distill``)."""
    tags = read_metadata(folder).get("tags") or []
    return isinstance(tags, list) and TAG in tags


def hub_id(path: str | Path) -> str:
    """The hub id of a model folder inside a Hugging Face cache (``models--ORG--NAME/snapshots/
    REVISION`` → ``ORG/NAME``), else ``""``."""
    parts = Path(path).resolve().parts
    for k in range(len(parts) - 2):
        m = _CACHE.match(parts[k])
        if m and parts[k + 1] == "snapshots":
            return m["id"].replace("--", "/")
    return ""


def license_of(folder: str | Path) -> dict[str, Any]:
    """``license`` (with ``license_name`` and ``license_link`` when given) of a model's own card."""
    meta = read_metadata(folder)
    return {k: meta[k] for k in ("license", "license_name", "license_link") if meta.get(k)} \
        if meta.get("license") else {}


# ---------------------------------------------------------------------------------------------
# The card of a trained model
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Training:
    """What a card says about a training run (:func:`pos2distill.stages.train.card_facts`)."""

    base_model: str                  # --model as given ("tiny", a path)
    base_path: str                   # the folder it resolved to
    base_model_id: str               # its hub id, "" when unknown
    method: str
    method_summary: str
    task: str                        # the task of the pairs (retrieval, reasoning)
    options: dict[str, Any]          # the options that shape the weights, by flag name
    command: str                     # the `pos2distill train` command that trains it again
    pairs_path: str
    pairs_sha256: str
    questions: int                   # distinct questions among the trained pairs
    pairs: int                       # rows in the pairs file
    trained_pairs: int               # rows the method trains on (some drop the anchors)
    adv_slot: str                    # the advantageous slot, 1-based ("1", "19,20")
    steps: int
    batch_size: int
    last_loss: float | None = None   # the mean per-example loss of the last step
    loss_name: str = "loss"          # what that loss is ("KL", "cross-entropy")


def _title(t: Training) -> str:
    if t.method in ("r1", "r2"):
        return f"Pos2Distill-{t.method.upper()}"
    return f"the `{t.method}` baseline of Pos2Distill"


def metadata(t: Training, *, library: str) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if t.base_model_id:
        meta["base_model"] = t.base_model_id
    meta["library_name"] = library
    meta["tags"] = [TAG, "positional-bias", t.method]
    meta.update(license_of(t.base_path))
    return meta


def body(t: Training, *, name: str, library: str, folder: str) -> str:
    base = f"[{t.base_model_id}](https://huggingface.co/{t.base_model_id})" if t.base_model_id \
        else f"the local model `{t.base_model}`"
    what = "a LoRA adapter for" if library == "peft" else "a fine-tuned version of"
    options = "\n".join(f"| `--{k}` | {v} |" for k, v in t.options.items())
    loss = (f" The mean per-example {t.loss_name} of the last step was {t.last_loss:.4g}."
            if t.last_loss is not None else "")
    if library == "peft":
        usage = ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
                 f"base = AutoModelForCausalLM.from_pretrained({t.base_model_id or 'BASE'!r})\n"
                 f"model = PeftModel.from_pretrained(base, {folder!r})")
    else:
        usage = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                 f"tokenizer = AutoTokenizer.from_pretrained({folder!r})\n"
                 f"model = AutoModelForCausalLM.from_pretrained({folder!r})")
    return f"""
# {name}

This model is {what} {base}, trained with {_title(t)}
([arXiv 2508.15709]({PAPER})) to reduce positional bias: what the model does with the gold
document(s) at its advantageous position is distilled into every other position. Method
`{t.method}`: {t.method_summary}.

## Training

| option | value |
|---|---|
{options}

Trained again by:

```bash
{t.command}
```

## Training data

| | |
|---|---|
| pairs file | `{t.pairs_path}` |
| sha256 | `{t.pairs_sha256}` |
| task | {t.task} |
| questions | {t.questions} |
| pairs | {t.pairs} ({t.trained_pairs} trained on by `{t.method}`) |
| advantageous position (1-based) | {t.adv_slot} |

## Steps

{t.steps} optimizer steps of {t.batch_size} examples.{loss}

## Usage

```python
{usage}
```

## Results

{RESULTS_START}
{_NOT_YET}{RESULTS_END}
"""


def _name(t: Training, folder: str, kind: str) -> str:
    """The card's title: the run's folder, and what it is (``r1-run: tiny + Pos2Distill-R1``)."""
    what = f"Pos2Distill-{t.method.upper()}" if t.method in ("r1", "r2") else t.method
    adapter = " (LoRA adapter)" if kind == "adapter" else ""
    return f"{Path(folder).parent.name}: {Path(t.base_model).name} + {what}{adapter}"


def write_training_cards(folders: Mapping[str, str], t: Training) -> list[Path]:
    """A card in every folder ``train`` wrote: ``folders["model"]`` (transformers) and
    ``folders["adapter"]`` (peft, replacing the card peft writes), whichever are given."""
    written = []
    for kind, folder in folders.items():
        if kind not in ("model", "adapter"):
            continue
        library = "peft" if kind == "adapter" else "transformers"
        path = Path(folder) / CARD
        write_text_atomic(path, render_card(metadata(t, library=library),
                                            body(t, name=_name(t, folder, kind),
                                                 library=library, folder=folder)))
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# The results section
# ---------------------------------------------------------------------------------------------

def results_section(text: str) -> str | None:
    """What lies between the results markers of a card's text (None without them)."""
    start, end = text.find(RESULTS_START), text.find(RESULTS_END)
    if start < 0 or end < start:
        return None
    return text[start + len(RESULTS_START) + 1:end]


def _with_results(text: str, section: str) -> str:
    start, end = text.find(RESULTS_START), text.find(RESULTS_END)
    return text[:start + len(RESULTS_START)] + "\n" + section + text[end:]


def with_result(section: str, key: str, block: str) -> str:
    """The results ``section`` with the block of ``key`` set to ``block`` (replaced in place, or
    appended); the "not probed yet" line goes once a block is there."""
    blocks = [(m["key"], m["body"]) for m in _BLOCK.finditer(section)]
    if any(k == key for k, _ in blocks):
        blocks = [(k, block if k == key else b) for k, b in blocks]
    else:
        blocks.append((key, block))
    return "".join(f"<!-- pos2distill:result {k} -->\n{b.rstrip()}\n\n<!-- /pos2distill:result -->\n"
                   for k, b in blocks)


def result_key(task: str, data: str, what: str) -> str:
    """The key of a result block, also the name of its plot: ``retrieval-synthetic-test-d20``
    for ``what`` ``d20`` (20 documents), ``...-depth`` for the depth heatmap."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data).name if "/" in data else data).strip("-")
    return f"{task}-{slug}-{what}"


def add_result(folder: str | Path, key: str, markdown: str,
               images: Mapping[str, str | Path] = {}) -> bool:
    """Set the result block ``key`` of the card in ``folder`` to ``markdown``, with each image
    (``{alt text: plot file}``) copied into ``folder/results/`` and shown above it. Returns False
    (and changes nothing) when ``folder`` has no card of ours."""
    folder = Path(folder)
    if not is_ours(folder):
        return False
    path = folder / CARD
    text = path.read_text(encoding="utf-8")
    section = results_section(text)
    if section is None:   # a card whose markers were edited away: a new section at the end
        text, section = text.rstrip("\n") + f"\n\n## Results\n\n{RESULTS_START}\n{RESULTS_END}\n", ""
    shown = []
    for k, (alt, image) in enumerate(images.items()):
        name = f"{key}{'' if k == 0 else f'-{k}'}{Path(image).suffix}"
        with atomic_path(folder / IMAGES / name) as tmp:
            shutil.copyfile(image, tmp)
        shown.append(f"![{alt}]({IMAGES}/{name})")
    block = "\n\n".join([*shown, markdown.strip()])
    write_text_atomic(path, _with_results(text, with_result(section, key, block)))
    log.info("%s: results %s", path, key)
    return True
