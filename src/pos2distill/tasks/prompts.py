"""Prompt templates and rendering.

Three templates, each a pure function of a :class:`~pos2distill.data.records.Record` whose documents are
already in prompt order (see :mod:`pos2distill.tasks.positions`):

- ``authors``: one instruction line, each document as ``- Title: {title}`` with its text on the next
  line, a blank line, ``Question: {question}`` (the Pos2Distill paper's prompt);
- ``litm``: the lost-in-the-middle layout, ``Document [k](Title: {title}) {text}`` lines and a final
  ``Answer:``;
- ``kv``: key-value retrieval over a JSON object (the lost-in-the-middle KV task);
- ``reasoning``: multi-hop questions with chain-of-thought: the instruction first, the documents as in
  ``authors``, then ``Question: {question}`` last, so the reasoning starts right after the question.
- ``judge``: a judging item (``--task judge``): the documents as in ``authors`` (none for items
  without context), ``Question: {question}``, ``Answer A: {first shown candidate}``,
  ``Answer B: {second}``, then the instruction *last* (it names the verdict strings). A judge
  template may also be the text of a file with the slots ``{answer_a}`` and ``{answer_b}`` (and
  optionally ``{documents}``, ``{question}``, ``{instruction}``): see :func:`check_judge_template`.

Every template opens with its instruction line (:data:`INSTRUCTIONS`); ``instruction`` replaces that
text verbatim (a RAG pipeline's own instruction, to measure the positional bias it gives) and leaves the
rest of the layout as it is.

The body becomes one user turn in the model's chat template when the tokenizer has one (``chat="auto"``),
or is used as plain text followed by ``Answer:`` otherwise.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pos2distill.errors import ConfigError
from pos2distill.data.records import Record

TEMPLATES = ("authors", "litm", "kv", "reasoning", "judge")
#: The slots a judge template must have, and those it may have.
JUDGE_SLOTS = ("{answer_a}", "{answer_b}")
JUDGE_OPTIONAL_SLOTS = ("{documents}", "{question}", "{instruction}")
ChatMode = Literal["auto", "on", "off"]

QA_INSTRUCTION = ("Write a high-quality answer for the given question using only the provided "
                  "search results (some of which might be irrelevant).")
REASONING_INSTRUCTION = ("Answer the question using only the provided documents (some of which might "
                         "be irrelevant). List the relevant facts, reason step by step, and finish "
                         "with \"The answer is:\" followed by the answer.")
KV_INSTRUCTION = ("Extract the value corresponding to the specified key in the JSON object below.")

#: The verdict strings of a judge by default: the first shown answer, the second, a tie.
DEFAULT_VERDICTS = ("[[A]]", "[[B]]", "[[C]]")


def judge_instruction(verdicts: tuple[str, ...] = DEFAULT_VERDICTS) -> str:
    """The judge template's last line, naming the verdict strings (the third, when given, is the
    tie)."""
    tie = f" ({verdicts[2]} for a tie)" if len(verdicts) > 2 else ""
    return f"Which answer is right? Give a short reason, then {verdicts[0]} or {verdicts[1]}{tie}."



#: Each template's own instruction line.
INSTRUCTIONS = {"authors": QA_INSTRUCTION, "litm": QA_INSTRUCTION, "kv": KV_INSTRUCTION,
                "reasoning": REASONING_INSTRUCTION, "judge": judge_instruction()}


def document_blocks(record: Record, template: str) -> list[str]:
    """The text each document contributes to a ``template`` prompt, in prompt order (the renderers
    join these; :mod:`pos2distill.analysis.spans` finds them again in a rendered prompt)."""
    if template in ("authors", "reasoning", "judge") or is_judge_template(template):
        return [f"- Title: {d.title}\n{d.text}" for d in record.documents]
    if template == "litm":
        return [f"Document [{k}](Title: {d.title}) {d.text}"
                for k, d in enumerate(record.documents, start=1)]
    if template == "kv":
        # Documents of a kv record hold one '"key": "value"' pair each (see loaders.load_kv).
        return [d.text for d in record.documents]
    raise ConfigError(f"--template: unknown template {template!r}; "
                      f"choose one of {', '.join(TEMPLATES)}")


def _authors(record: Record, instruction: str) -> str:
    docs = "\n".join(document_blocks(record, "authors"))
    return f"{instruction}\n{docs}\n\nQuestion: {record.question}"


def _reasoning(record: Record, instruction: str) -> str:
    docs = "\n".join(document_blocks(record, "reasoning"))
    return f"{instruction}\n{docs}\n\nQuestion: {record.question}"


def _litm(record: Record, instruction: str) -> str:
    docs = "\n".join(document_blocks(record, "litm"))
    return f"{instruction}\n\n{docs}\n\nQuestion: {record.question}\nAnswer:"


def _kv(record: Record, instruction: str) -> str:
    body = ",\n ".join(document_blocks(record, "kv"))
    return (f"{instruction}\n\nJSON data:\n{{{body}}}\n\n"
            f"Key: {json.dumps(record.question)}\nCorresponding value:")


def _judge(record: Record, instruction: str) -> str:
    """Documents (when the item has any), question, the two answers in shown order, then the
    instruction."""
    a, b = _shown_candidates(record)
    docs = "\n".join(document_blocks(record, "judge"))
    context = f"{docs}\n\n" if docs else ""
    return (f"{context}Question: {record.question}\nAnswer A: {a}\nAnswer B: {b}\n"
            f"{instruction}")


def _shown_candidates(record: Record) -> tuple[str, str]:
    if record.kind != "judge" or len(record.candidates) != 2:
        raise ConfigError(f"record {record.id!r} is not a judging item (two candidate answers): "
                          "a judge template shows a pair of answers; use --task judge on "
                          "judging data")
    return record.candidates[0], record.candidates[1]


def is_judge_template(template: str) -> bool:
    """Whether ``template`` is the text of a user's judge template (not a template name)."""
    return template not in TEMPLATES and any(s in template for s in JUDGE_SLOTS)


def check_judge_template(text: str, source: str = "--template") -> str:
    """``text`` if it can render a judging item (both answer slots), else a ConfigError."""
    missing = [s for s in JUDGE_SLOTS if s not in text]
    if missing:
        raise ConfigError(f"{source}: a judge template needs both answer slots {{answer_a}} and "
                          f"{{answer_b}}; {' and '.join(missing)} missing")
    return text


def _custom_judge(record: Record, template: str, instruction: str) -> str:
    """A user's judge template with its slots filled in one pass (no str.format: braces in the
    template stay, and an answer containing "{question}" is not filled again)."""
    a, b = _shown_candidates(record)
    values = {"{documents}": "\n".join(document_blocks(record, "judge")),
              "{question}": record.question, "{instruction}": instruction,
              "{answer_a}": a, "{answer_b}": b}
    return _SLOT.sub(lambda m: values[m.group(0)], template)


_SLOT = re.compile("|".join(re.escape(s) for s in JUDGE_SLOTS + JUDGE_OPTIONAL_SLOTS))

_RENDERERS = {"authors": _authors, "litm": _litm, "kv": _kv, "reasoning": _reasoning,
              "judge": _judge}


def user_message(record: Record, template: str = "authors", *, instruction: str = "") -> str:
    """The prompt body (documents in ``record.documents`` order). A non-empty ``instruction``
    replaces the template's own (:data:`INSTRUCTIONS`) verbatim."""
    if is_judge_template(template):
        return _custom_judge(record, template, instruction or INSTRUCTIONS["judge"])
    try:
        render = _RENDERERS[template]
    except KeyError:
        raise ConfigError(f"--template: unknown template {template!r}; "
                          f"choose one of {', '.join(TEMPLATES)}") from None
    return render(record, instruction or INSTRUCTIONS[template])


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat(tokenizer: Any, chat: ChatMode) -> bool:
    """Resolve ``chat`` ("auto" = the tokenizer's chat template when it has one)."""
    if chat == "auto":
        return has_chat_template(tokenizer)
    if chat == "on":
        if not has_chat_template(tokenizer):
            raise ConfigError("--chat on: this tokenizer has no chat template; use --chat off "
                              "(plain text prompts) or a chat model's tokenizer")
        return True
    if chat == "off":
        return False
    raise ConfigError(f"--chat: {chat!r} is not one of auto, on, off")


def render_prompt(record: Record, tokenizer: Any, *, template: str = "authors",
                  chat: ChatMode = "auto", instruction: str = "") -> str:
    """The exact prompt text given to the model (generation starts right after it); a non-empty
    ``instruction`` replaces the template's instruction line (see :func:`user_message`)."""
    body = user_message(record, template, instruction=instruction)
    if use_chat(tokenizer, chat):
        return tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                             add_generation_prompt=True)
    return body if body.endswith(":") else body + "\nAnswer:"


def encode_prompt(tokenizer: Any, prompt: str, *, chat: bool) -> list[int]:
    """Token ids of a rendered prompt. A chat template already writes the special tokens it
    wants (BOS included), so they are only added for plain-text prompts."""
    return tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
