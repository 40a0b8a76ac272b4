"""Which tokens of a rendered prompt belong to which document.

A prompt is rendered by a template (:func:`pos2distill.tasks.prompts.render_prompt`) and maybe
wrapped in the tokenizer's chat template, which can add a system turn, special tokens, or anything
else around the body. The documents are found where they really are: each document's block
(:func:`~pos2distill.tasks.prompts.document_blocks`) is searched in the rendered text, in order
and inside the body when the chat template kept the body verbatim, giving character spans; the
tokenizer's offsets then turn characters into tokens (fast tokenizers), or, for tokenizers without
offsets, the lengths of the encoded prefixes do (incremental encoding).
"""

from __future__ import annotations

from typing import Any, Sequence

from pos2distill.data.records import Record
from pos2distill.errors import DataError
from pos2distill.tasks.prompts import document_blocks, encode_prompt, user_message

Span = tuple[int, int]   # [start, end)


def document_char_spans(prompt: str, blocks: Sequence[str], body: str = "") -> list[Span]:
    """Character spans of ``blocks`` (in order) in ``prompt``, searched inside ``body`` when the
    prompt holds it verbatim, so an instruction or a system turn that happens to contain a
    document's text is never taken for it."""
    start, end = 0, len(prompt)
    if body:
        at = prompt.find(body)
        if at >= 0:
            start, end = at, at + len(body)
    spans = []
    for k, block in enumerate(blocks):
        at = prompt.find(block, start, end)
        if at < 0:
            raise DataError(f"document {k + 1} is not in the rendered prompt as the template "
                            "wrote it (does the chat template rewrite the message?)")
        spans.append((at, at + len(block)))
        start = at + len(block)
    return spans


def token_spans(tokenizer: Any, prompt: str, char_spans: Sequence[Span], *, chat: bool
                ) -> tuple[list[int], list[Span]]:
    """The prompt's token ids (as :func:`~pos2distill.tasks.prompts.encode_prompt` gives them) and
    each character span as a token span ``[a, b)``: the tokens overlapping it. A token that
    straddles two documents counts for the first; spans never overlap."""
    ids = list(encode_prompt(tokenizer, prompt, chat=chat))
    offsets = None
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(prompt, add_special_tokens=not chat, return_offsets_mapping=True)
        if list(enc["input_ids"]) == ids:
            offsets = enc["offset_mapping"]
    spans: list[Span] = []
    prev_end = 0
    for s, e in char_spans:
        if offsets is not None:
            hit = [j for j, (a, b) in enumerate(offsets) if b > a and a < e and b > s]
            a, b = (hit[0], hit[-1] + 1) if hit else (prev_end, prev_end)
        else:
            a = len(encode_prompt(tokenizer, prompt[:s], chat=chat))
            b = len(encode_prompt(tokenizer, prompt[:e], chat=chat))
        a = max(a, prev_end)
        b = max(a, b)
        spans.append((a, b))
        prev_end = b
    return ids, spans


def document_token_spans(record: Record, prompt: str, tokenizer: Any, *, template: str,
                         chat: bool, instruction: str = "") -> tuple[list[int], list[Span]]:
    """Token ids of ``prompt`` (``record`` rendered with ``template``) and the token span of each
    of ``record``'s documents, in prompt order."""
    blocks = document_blocks(record, template)
    body = user_message(record, template, instruction=instruction)
    return token_spans(tokenizer, prompt, document_char_spans(prompt, blocks, body), chat=chat)
