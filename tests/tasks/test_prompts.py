"""Prompt templates: golden strings, chat rendering, and which special tokens encoding adds."""

from __future__ import annotations

from typing import Any

import pytest

from pos2distill.errors import ConfigError
from pos2distill.tasks.prompts import (INSTRUCTIONS, TEMPLATES, encode_prompt, has_chat_template,
                                 render_prompt, use_chat, user_message)
from pos2distill.data.records import Document, Record

RECORD = Record(id="q", question="What is the capital of Norway?", answers=("Oslo",),
                documents=(Document("Norway", "Oslo is the capital."),
                           Document("Peru", "Lima is the capital.")), gold=(0,))
KV_RECORD = Record(id="kv", question="k1", answers=("v1",),
                   documents=(Document("", '"k0": "v0"'), Document("", '"k1": "v1"')), gold=(1,),
                   kind="kv")

INSTRUCTION = ("Write a high-quality answer for the given question using only the provided search "
               "results (some of which might be irrelevant).")

AUTHORS_PLAIN = (
    "Write a high-quality answer for the given question using only the provided search results "
    "(some of which might be irrelevant).\n"
    "- Title: Norway\n"
    "Oslo is the capital.\n"
    "- Title: Peru\n"
    "Lima is the capital.\n"
    "\n"
    "Question: What is the capital of Norway?\n"
    "Answer:"
)
LITM_PLAIN = (
    "Write a high-quality answer for the given question using only the provided search results "
    "(some of which might be irrelevant).\n"
    "\n"
    "Document [1](Title: Norway) Oslo is the capital.\n"
    "Document [2](Title: Peru) Lima is the capital.\n"
    "\n"
    "Question: What is the capital of Norway?\n"
    "Answer:"
)
KV_PLAIN = (
    "Extract the value corresponding to the specified key in the JSON object below.\n"
    "\n"
    "JSON data:\n"
    '{"k0": "v0",\n'
    ' "k1": "v1"}\n'
    "\n"
    'Key: "k1"\n'
    "Corresponding value:"
)
AUTHORS_CHAT = (
    "<|bos|><|user|>\n"
    "Write a high-quality answer for the given question using only the provided search results "
    "(some of which might be irrelevant).\n"
    "- Title: Norway\n"
    "Oslo is the capital.\n"
    "- Title: Peru\n"
    "Lima is the capital.\n"
    "\n"
    "Question: What is the capital of Norway?"
)


class PlainTokenizer:
    """No chat template; records the ``add_special_tokens`` flag of every call and, like most
    Llama tokenizers, prepends BOS (id 1) when asked to add special tokens."""

    chat_template = None

    def __init__(self) -> None:
        self.flags: list[bool] = []

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        self.flags.append(add_special_tokens)
        ids = [100 + len(w) for w in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_golden_plain_strings() -> None:
    tok = PlainTokenizer()
    assert render_prompt(RECORD, tok, template="authors", chat="auto") == AUTHORS_PLAIN
    assert render_prompt(RECORD, tok, template="litm", chat="off") == LITM_PLAIN
    assert render_prompt(KV_RECORD, tok, template="kv", chat="off") == KV_PLAIN


def test_user_message_bodies() -> None:
    # The chat body of the authors template has no "Answer:" (the assistant turn follows).
    assert user_message(RECORD, "authors") == AUTHORS_PLAIN.removesuffix("\nAnswer:")
    assert user_message(RECORD, "litm") == LITM_PLAIN
    assert user_message(KV_RECORD, "kv") == KV_PLAIN
    assert user_message(RECORD).startswith(INSTRUCTION + "\n- Title: Norway\n")


def test_documents_follow_record_order() -> None:
    swapped = Record(id="q", question=RECORD.question, answers=RECORD.answers,
                     documents=RECORD.documents[::-1], gold=(1,))
    text = render_prompt(swapped, PlainTokenizer(), template="litm", chat="off")
    assert "Document [1](Title: Peru) Lima is the capital.\n" \
           "Document [2](Title: Norway) Oslo is the capital." in text


def test_golden_chat_string(tok: Any) -> None:
    assert has_chat_template(tok)
    assert render_prompt(RECORD, tok, template="authors", chat="auto") == AUTHORS_CHAT
    assert render_prompt(RECORD, tok, template="authors", chat="on") == AUTHORS_CHAT
    # chat=off with a chat tokenizer gives the plain text.
    assert render_prompt(RECORD, tok, template="authors", chat="off") == AUTHORS_PLAIN
    litm_chat = render_prompt(RECORD, tok, template="litm", chat="on")
    assert litm_chat == "<|bos|><|user|>\n" + LITM_PLAIN


def test_chat_on_without_template_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--chat on: this tokenizer has no chat template"):
        render_prompt(RECORD, PlainTokenizer(), chat="on")
    assert use_chat(PlainTokenizer(), "auto") is False
    assert use_chat(PlainTokenizer(), "off") is False


def test_chat_mode_must_be_known(tok: Any) -> None:
    with pytest.raises(ConfigError, match="--chat: 'yes' is not one of auto, on, off"):
        use_chat(tok, "yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("template", ["nope", "Authors", ""])
def test_unknown_template(template: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown template {template!r}") as info:
        render_prompt(RECORD, PlainTokenizer(), template=template, chat="off")
    for name in TEMPLATES:
        assert name in str(info.value)


def test_encode_prompt_special_tokens_only_for_plain_prompts() -> None:
    tok = PlainTokenizer()
    assert encode_prompt(tok, "a bb ccc", chat=False) == [1, 101, 102, 103]
    assert encode_prompt(tok, "a bb ccc", chat=True) == [101, 102, 103]
    assert tok.flags == [True, False]


def test_encode_prompt_with_the_tiny_tokenizer(tok: Any) -> None:
    # The chat template writes BOS itself; encoding must not add a second one.
    ids = encode_prompt(tok, AUTHORS_CHAT, chat=True)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.convert_ids_to_tokens(ids[:2]) == ["<|bos|>", "<|user|>"]
    assert ids == tok(AUTHORS_CHAT, add_special_tokens=False)["input_ids"]
    # This word-level tokenizer has no post-processor: plain encoding adds nothing either.
    plain = encode_prompt(tok, AUTHORS_PLAIN, chat=False)
    assert plain == tok(AUTHORS_PLAIN, add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id not in plain


REASONING_RECORD = Record(id="r", question="Where does Kavo's manager work?", answers=("Lima",),
                          documents=(Document("Dilu", "Dilu works in Lima."),
                                     Document("Kavo", "Kavo's manager is Dilu.")),
                          gold=(1, 0), kind="multihop")
REASONING_CHAT = (
    "<|bos|><|user|>\n"
    "Answer the question using only the provided documents (some of which might be irrelevant). "
    'List the relevant facts, reason step by step, and finish with "The answer is:" followed by '
    "the answer.\n"
    "- Title: Dilu\n"
    "Dilu works in Lima.\n"
    "- Title: Kavo\n"
    "Kavo's manager is Dilu.\n"
    "\n"
    "Question: Where does Kavo's manager work?"
)


def test_golden_reasoning_string(tok: Any) -> None:
    # Instruction first, question last: the chain-of-thought starts right after the question.
    assert render_prompt(REASONING_RECORD, tok, template="reasoning") == REASONING_CHAT
    plain = render_prompt(REASONING_RECORD, tok, template="reasoning", chat="off")
    assert plain == REASONING_CHAT.removeprefix("<|bos|><|user|>\n") + "\nAnswer:"


# ---------------------------------------------------------------------------------------------
# A user's own instruction line (--instruction)

CUSTOM = "Answer the question."
AUTHORS_CUSTOM_PLAIN = (
    "Answer the question.\n"
    "- Title: Norway\n"
    "Oslo is the capital.\n"
    "- Title: Peru\n"
    "Lima is the capital.\n"
    "\n"
    "Question: What is the capital of Norway?\n"
    "Answer:"
)


def test_empty_instruction_keeps_the_golden_prompts(tok: Any) -> None:
    plain = PlainTokenizer()
    assert render_prompt(RECORD, plain, template="authors", instruction="") == AUTHORS_PLAIN
    assert render_prompt(RECORD, plain, template="litm", instruction="") == LITM_PLAIN
    assert render_prompt(KV_RECORD, plain, template="kv", instruction="") == KV_PLAIN
    assert render_prompt(RECORD, tok, template="authors", instruction="") == AUTHORS_CHAT
    assert render_prompt(REASONING_RECORD, tok, template="reasoning",
                         instruction="") == REASONING_CHAT
    assert user_message(RECORD, "authors", instruction="") == user_message(RECORD, "authors")


def test_golden_custom_instruction_string(tok: Any) -> None:
    assert render_prompt(RECORD, PlainTokenizer(), template="authors",
                         instruction=CUSTOM) == AUTHORS_CUSTOM_PLAIN
    assert render_prompt(RECORD, tok, template="authors", instruction=CUSTOM) == (
        "<|bos|><|user|>\n" + AUTHORS_CUSTOM_PLAIN.removesuffix("\nAnswer:"))


@pytest.mark.parametrize("record, template", [(RECORD, "authors"), (RECORD, "litm"),
                                              (KV_RECORD, "kv"), (REASONING_RECORD, "reasoning")])
@pytest.mark.parametrize("instruction", [CUSTOM, "You are a careful assistant.\nBe brief. "])
def test_instruction_replaces_only_the_instruction_line(record: Record, template: str,
                                                        instruction: str) -> None:
    default = render_prompt(record, PlainTokenizer(), template=template, chat="off")
    custom = render_prompt(record, PlainTokenizer(), template=template, chat="off",
                           instruction=instruction)
    # The template's own line opens the prompt; the user's text takes its place verbatim
    # (inner newlines and trailing spaces included) and nothing else moves.
    assert default.startswith(INSTRUCTIONS[template] + "\n")
    assert custom == instruction + default.removeprefix(INSTRUCTIONS[template])
    assert INSTRUCTIONS[template] not in custom
