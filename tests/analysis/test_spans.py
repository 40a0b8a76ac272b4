"""Document token spans: found where the documents really are, whatever the template, the chat
template or the tokenizer (offsets and incremental encoding agree)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pos2distill.analysis.spans import document_char_spans, document_token_spans, token_spans
from pos2distill.data import synthetic
from pos2distill.data.records import Document, Record
from pos2distill.errors import DataError
from pos2distill.tasks.positions import place_gold, place_hops
from pos2distill.tasks.prompts import document_blocks, encode_prompt, render_prompt

#: A ChatML-like template with a system turn that quotes a document of the prompt (a decoy the
#: search must not take for the document) and content written inside other text.
CHATML = ("{{ bos_token }}<|system|>\nYou answer from documents like '- Title: {{ decoy }}'."
          "<|end|>\n"
          "{% for m in messages %}<|{{ m['role'] }}|>\nContext follows.\n{{ m['content'] }}"
          "\nThink.<|end|>\n{% endfor %}<|assistant|>\n")


def _retrieval(n: int = 5, position: int = 2) -> Record:
    record = synthetic.generate("test", 1, n_documents=n)[0]
    return place_gold(record, position, random.Random(0))


def _reasoning() -> Record:
    record = synthetic.generate_reasoning("test", 1, n_documents=6)[0]
    return place_hops(record, (4, 1), random.Random(0))


def _bpe(tok: Any) -> Any:
    """A byte-level BPE tokenizer trained here on rendered prompts (merges cross word and line
    boundaries differently from the word-level tokenizer), with the ChatML-like template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [render_prompt(_retrieval(), tok, template=t, chat="off") for t in
             ("authors", "litm")] * 20
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|pad|>", "<|bos|>", "<|end|>", "<|user|>",
                                        "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|pad|>", bos_token="<|bos|>",
                                   eos_token="<|end|>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>",
                                                              "<|system|>"])
    fast.chat_template = CHATML.replace("{{ decoy }}", "Kavo")
    return fast


def _check(record: Record, prompt: str, tokenizer: Any, template: str, chat: bool) -> None:
    ids, spans = document_token_spans(record, prompt, tokenizer, template=template, chat=chat)
    assert ids == encode_prompt(tokenizer, prompt, chat=chat)
    assert len(spans) == len(record.documents)
    for (a, b), (c, d), doc in zip(spans, spans[1:] + [(len(ids), len(ids))], record.documents):
        assert 0 <= a < b <= c                                   # in order, never overlapping
        text = tokenizer.decode(ids[a:b]).replace(" ", "")
        assert doc.title.replace(" ", "") in text and doc.text.replace(" ", "")[:8] in text
    # Incremental encoding (what tokenizers without offsets use) finds the same spans.
    class Slow:
        is_fast = False

        def __call__(self, *a: Any, **k: Any) -> Any:
            return tokenizer(*a, **k)

    blocks = document_char_spans(prompt, document_blocks(record, template))
    assert token_spans(Slow(), prompt, blocks, chat=chat) == (ids, spans)


@pytest.mark.parametrize("template", ["authors", "litm", "reasoning"])
@pytest.mark.parametrize("chat", ["on", "off"])
def test_spans_of_every_template(tok: Any, template: str, chat: str) -> None:
    record = _reasoning() if template == "reasoning" else _retrieval()
    prompt = render_prompt(record, tok, template=template, chat=chat)  # type: ignore[arg-type]
    _check(record, prompt, tok, template, chat == "on")


def test_spans_of_kv_records(tok: Any) -> None:
    docs = tuple(Document("", f'"{k}": "{v}"') for k, v in
                 (("Lima", "Oslo"), ("Rome", "Paris"), ("Cairo", "Dublin"), ("Madrid", "Vienna")))
    record = Record("kv", "Cairo", ("Dublin",), docs, (2,), kind="kv")
    prompt = render_prompt(record, tok, template="kv", chat="off")
    ids, spans = document_token_spans(record, prompt, tok, template="kv", chat=False)
    assert [tok.decode(ids[a:b]).replace(" ", "") for a, b in spans] == \
        [d.text.replace(" ", "") for d in docs]


@pytest.mark.parametrize("template", ["authors", "litm"])
def test_spans_with_bpe_and_another_chat_template(tok: Any, template: str) -> None:
    """Merges across boundaries, a system turn that quotes a document, text around the body."""
    bpe = _bpe(tok)
    record = _retrieval()
    prompt = render_prompt(record, bpe, template=template, chat="on")
    assert "Context follows." in prompt
    _check(record, prompt, bpe, template, True)


def test_a_decoy_before_the_body_is_never_taken(tok: Any) -> None:
    record = _retrieval()
    decoy = document_blocks(record, "authors")[0]
    bpe = _bpe(tok)
    bpe.chat_template = CHATML.replace("- Title: {{ decoy }}", decoy)
    prompt = render_prompt(record, bpe, template="authors", chat="on")
    assert prompt.count(decoy) == 2
    spans = document_char_spans(prompt, document_blocks(record, "authors"),
                                body=prompt[prompt.index("Write"):])
    assert spans[0][0] > prompt.index("Context follows.")


def test_a_rewritten_document_is_an_error() -> None:
    with pytest.raises(DataError, match="document 2 is not in the rendered prompt"):
        document_char_spans("- Title: A\nx\n- Title: B\ny", ["- Title: A\nx", "- Title: C\nz"])
