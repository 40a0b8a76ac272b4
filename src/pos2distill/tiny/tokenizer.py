"""A word-level tokenizer with a chat template for the tiny model, built locally (no hub)."""

from __future__ import annotations

import dataclasses
import random
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pos2distill.tasks import prompts
from pos2distill.data import synthetic
from pos2distill.tasks.judge import gold_response, place_order
from pos2distill.tasks.positions import place_gold, place_hops

PAD, UNK, BOS, EOS, USER, ASSISTANT, SYSTEM = (
    "<|pad|>", "<|unk|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>")
SPECIALS = (PAD, UNK, BOS, EOS, USER, ASSISTANT, SYSTEM)

# A completion-style chat format: a user turn opens with <|user|> and the assistant's reply follows
# it directly, ending with <|end|> (also EOS). With no token between the question and the answer,
# a 4-layer model learns the lookup as plain induction (see pos2distill.tiny.pretrain).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %} {{ message['content'] }}<|end|>\n"
    "{% else %}<|{{ message['role'] }}|>\n{{ message['content'] }}{% endif %}{% endfor %}"
)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # Words and single punctuation marks; whitespace carries no information for this model.
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                    pre_tokenizers.Punctuation(behavior="isolated")])


# Decoding writes text as it is written: words apart, no space before punctuation and none around an
# apostrophe ("Viku's manager is Rale.", not "Viku ' s manager is Rale ."), none inside brackets
# ("Vienna [[A]]", a judge's verdict). Encoding the decoded
# text gives the same ids back, since the pre-tokenizer splits punctuation off again.
_GLUED = ((" '", "'"), ("' ", "'"), (" .", "."), (" ,", ","), (" :", ":"), (" ?", "?"), (" !", "!"),
          ("[ ", "["), (" ]", "]"))


def _decoder() -> decoders.Decoder:
    return decoders.Sequence([decoders.WordPiece(prefix="##", cleanup=False), decoders.Fuse(),
                              *(decoders.Replace(a, b) for a, b in _GLUED)])


def corpus_words(reasoning: bool = True, judge: bool = False) -> list[str]:
    """Every word the synthetic benchmarks' prompts (retrieval and two-hop reasoning) and the
    reasoning chain-of-thought can contain, in every template they use; with ``judge``, also the
    judge template's and its responses' (``Vienna [[A]]``).

    The retrieval words come first (sorted), then the words only reasoning uses (sorted), then
    those only judging uses (sorted): a model pretrained on retrieval-shaped data alone
    (``reasoning=False``: only the first part) keeps its token ids when it later grows the
    reasoning words at the end, and the judge model (``judge=True``) keeps the ids of the model it
    starts from."""
    pre = _pre_tokenizer()

    def words_of(*texts: str) -> set[str]:
        return {w for text in texts for w, _ in pre.pre_tokenize_str(text)}

    words: set[str] = set(synthetic.NAMES) | set(synthetic.CITIES)
    words |= {str(k) for k in range(0, 101)}
    record = synthetic.generate("train", 1, n_documents=3)[0]
    record = place_gold(record, 1, random.Random(0))
    for template in ("authors", "litm"):
        words |= words_of(prompts.user_message(record, template) + "\nAnswer:")
    if not reasoning:
        return sorted(words)
    chain = synthetic.generate_reasoning("train", 1, n_documents=4)[0]
    chain = place_hops(chain, (2, 0), random.Random(0))
    reasoning_words = words_of(prompts.user_message(chain, "reasoning") + "\nAnswer:",
                               synthetic.record_cot(chain)) - words
    ordered = sorted(words) + sorted(reasoning_words)
    if not judge:
        return ordered
    item = place_order(synthetic.generate_judge("train", 1, n_documents=3)[0], (0, 1))
    judge_words = words_of(prompts.user_message(item, "judge"), *(
        gold_response(dataclasses.replace(item, label=label)) for label in ("1", "2", "tie")))
    return ordered + sorted(judge_words - set(ordered))


def build_tokenizer(words: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """A fast tokenizer over ``SPECIALS + words`` (default: :func:`corpus_words`)."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in (corpus_words() if words is None else words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = _decoder()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK,
                                   bos_token=BOS, eos_token=EOS,
                                   additional_special_tokens=[USER, ASSISTANT, SYSTEM])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast
