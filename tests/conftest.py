"""Shared fixtures: a tiny random Llama built from a config (never downloaded), the locally built
word-level tokenizer, and fakes that implement the generation interface."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def tiny_llama(tokenizer: Any, *, seed: int = 0, initializer_range: float = 0.02,
               max_position_embeddings: int = 512) -> Any:
    """A 2-layer, 32-wide random Llama over ``tokenizer``'s vocabulary, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=max_position_embeddings,
                      initializer_range=initializer_range,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tok() -> Any:
    from pos2distill.tiny.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tok: Any) -> Any:
    """The default random tiny model (initializer range 0.02, as transformers builds it)."""
    return tiny_llama(tok)


@pytest.fixture(scope="session")
def sharp_model(tok: Any) -> Any:
    """A random tiny model with larger weights: its greedy tokens depend on the prompt (with the
    default 0.02 init every prompt gets the same first token, which would make order and padding
    checks vacuous)."""
    return tiny_llama(tok, initializer_range=0.2)


def save_model_dir(tmp_path_factory: pytest.TempPathFactory, name: str, model: Any,
                   tok: Any) -> Path:
    """A Hugging Face model folder (config, weights, tokenizer) the CLI accepts via --model."""
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tok: Any, tiny_model: Any) -> Path:
    return save_model_dir(tmp_path_factory, "tiny-random-llama", tiny_model, tok)


SHORT_CONTEXT = 64


@pytest.fixture(scope="session")
def short_context_model_dir(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> Path:
    """Like ``tiny_model_dir`` with a 64-token context: a synthetic prompt with 4 documents
    (56 tokens) fits with 4 new tokens, one with 5 documents (61 tokens) does not."""
    path = tmp_path_factory.mktemp("short-context-llama")
    tiny_llama(tok, max_position_embeddings=SHORT_CONTEXT).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------
# Fakes of the Generator protocol
# ---------------------------------------------------------------------------------------------

_TITLE = re.compile(r"^- Title: (\S+)$", re.MULTILINE)
_QUESTION = re.compile(r"Question: Which city is home to (\w+)")


def first_title(prompt: str) -> str:
    """The title of the first document of an ``authors`` prompt."""
    titles = _TITLE.findall(prompt)
    assert titles, f"no document in prompt {prompt!r}"
    return titles[0]


def oracle_answer(prompt: str) -> str:
    """What a model biased to the first document answers: the city of the asked person when their
    document is first, otherwise a wrong answer. Parses synthetic ``authors`` prompts."""
    subject = _QUESTION.search(prompt)
    assert subject, f"not a synthetic question: {prompt!r}"
    name = subject.group(1)
    if first_title(prompt) != name:
        return "I do not know"
    city = re.search(rf"^- Title: {name}\n(\w+)$", prompt, re.MULTILINE)
    assert city, prompt
    return f"{city.group(1)}\nand some more text"


class FakeGenerator:
    """Answers with ``answer(prompt)`` and records every call."""

    def __init__(self, answer: Callable[[str], str] = oracle_answer):
        self.answer = answer
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        self.calls.append((list(prompts), max_new_tokens))
        return [self.answer(p) for p in prompts]


@pytest.fixture
def fake_generator() -> FakeGenerator:
    return FakeGenerator()


class OracleHFGenerator(FakeGenerator):
    """Drop-in for :class:`pos2distill.generation.HFGenerator` (same constructor) that answers
    like :func:`oracle_answer`: patch it in to run whole stages without depending on what a random
    model happens to generate."""

    instances: list["OracleHFGenerator"] = []

    def __init__(self, model: Any, tokenizer: Any, *, chat: bool, batch_size: int = 32,
                 progress: Callable[[int], None] | None = None):
        super().__init__(oracle_answer)
        self.model, self.tokenizer, self.chat = model, tokenizer, chat
        self.batch_size, self.progress = batch_size, progress
        OracleHFGenerator.instances.append(self)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        out = super().generate(prompts, max_new_tokens=max_new_tokens)
        if self.progress is not None:
            self.progress(len(prompts))
        return out


@pytest.fixture
def oracle_hf(monkeypatch: pytest.MonkeyPatch) -> type[OracleHFGenerator]:
    """Replace HFGenerator (imported by the stages at call time) with the oracle fake."""
    OracleHFGenerator.instances = []
    monkeypatch.setattr("pos2distill.generation.HFGenerator", OracleHFGenerator)
    return OracleHFGenerator


# ---------------------------------------------------------------------------------------------
# A reasoning oracle: right only when the two hop documents are adjacent and in order

_REASONING_Q = re.compile(r"Question: Where does (\w+)'s manager work\?")
_DOC = re.compile(r"^- Title: (\w+)\n(.*)$", re.MULTILINE)


def reasoning_oracle_answer(prompt: str) -> str:
    """Parses a synthetic ``reasoning`` prompt. Hops adjacent and in order (connected): the
    reference chain-of-thought (plus a tail the metric must ignore); reversed: a chain with a wrong
    answer; apart and in order (disconnected): no "the answer is" at all."""
    from pos2distill.data.synthetic import reasoning_cot

    m = _REASONING_Q.search(prompt)
    assert m, f"not a synthetic reasoning question: {prompt!r}"
    docs = _DOC.findall(prompt)
    titles = [t for t, _ in docs]
    x = m.group(1)
    i1 = titles.index(x)
    y = re.fullmatch(rf"(\w+) is {x}'s manager\.", docs[i1][1]).group(1)  # type: ignore[union-attr]
    i2 = titles.index(y)
    z = re.fullmatch(rf"(\w+) is where {y} works\.", docs[i2][1]).group(1)  # type: ignore[union-attr]
    if i2 == i1 + 1:
        return reasoning_cot(x, y, z) + "\nQuestion: more"
    if i2 < i1:
        return f"{x}'s manager is {y}. The answer is: Atlantis"
    return f"{x}'s manager is {y}."


class ReasoningOracleHFGenerator(OracleHFGenerator):
    """Like :class:`OracleHFGenerator`, answering retrieval prompts like :func:`oracle_answer`
    and reasoning prompts like :func:`reasoning_oracle_answer`."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.answer = lambda p: (reasoning_oracle_answer(p) if _REASONING_Q.search(p)
                                 else oracle_answer(p))


@pytest.fixture
def reasoning_oracle_hf(monkeypatch: pytest.MonkeyPatch) -> type[ReasoningOracleHFGenerator]:
    OracleHFGenerator.instances = []
    monkeypatch.setattr("pos2distill.generation.HFGenerator", ReasoningOracleHFGenerator)
    return ReasoningOracleHFGenerator


# ---------------------------------------------------------------------------------------------
# Retrieval pairs files built from fake teacher rows (the oracle answers at the first position)


@pytest.fixture(scope="session")
def make_pairs_file(tmp_path_factory: pytest.TempPathFactory, tok: Any
                    ) -> Callable[..., Path]:
    """``make_pairs_file(n_questions, K=2, anchors=1, teacher_seed=0)``: a pairs file of that many
    synthetic 5-document training questions, each with K trivial positions plus anchors (made
    once per argument set for the whole session)."""
    from helpers import teacher_rows
    from pos2distill.data import synthetic
    from pos2distill.data.records import write_jsonl
    from pos2distill.stages import pairs

    made: dict[tuple[int, int, int, int], Path] = {}

    def make(n_questions: int, K: int = 2, anchors: int = 1, teacher_seed: int = 0) -> Path:
        key = (n_questions, K, anchors, teacher_seed)
        if key not in made:
            records = synthetic.generate("train", n_questions, n_documents=5)
            rows = teacher_rows(records, FakeGenerator(), tok, task="retrieval", adv=(0,),
                                template="authors", chat="auto", seed=teacher_seed,
                                max_new_tokens=8)
            assert all(row["correct"] for row in rows)
            path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
            write_jsonl(path, pairs.make_pairs(rows, tok, K=K, anchors=anchors, seed=0))
            made[key] = path
        return made[key]

    return make


@pytest.fixture(scope="session")
def pairs_file(make_pairs_file: Callable[..., Path]) -> Path:
    """12 pairs: 4 questions x (K=2 trivial positions + 1 anchor), 5 documents."""
    return make_pairs_file(4)


# ---------------------------------------------------------------------------------------------
# A judge: the test tokenizer grown by the judge template's words, and a primacy-biased fake

_SUBJECT = re.compile(r"Question: Which city is home to (\w+)")
_ANSWER = re.compile(r"^Answer ([AB]): (\w+)$", re.MULTILINE)


def truth(prompt: str) -> str:
    name = _SUBJECT.search(prompt).group(1)                          # type: ignore[union-attr]
    return re.search(rf"^- Title: {name}\n(\w+)$", prompt, re.MULTILINE).group(1)  # type: ignore


def primacy_probs(prompt: str) -> list[float]:
    """A judge that knows the city but weighs the answer shown first 5 times: greedy always
    picks [[A]] (right only when the true answer is shown first); its probabilities still lean
    to the truth, so BPC gets every pair right."""
    shown = dict(_ANSWER.findall(prompt))
    t = truth(prompt)
    w = [5 * (1 if shown["A"] == t else 0.25), 1 if shown["B"] == t else 0.25, 0.05]
    return [x / sum(w) for x in w]


class FakeJudge:
    """Drop-in for HFGenerator: greedy = the truth and the argmax verdict of ``primacy_probs``;
    samples alternate [[A]], [[B]], [[A]]; scores the verdict token with ``primacy_probs``."""

    def __init__(self, model: Any, tokenizer: Any, *, chat: bool, batch_size: int = 32,
                 progress: Callable[[int], None] | None = None):
        self.tokenizer, self.progress = tokenizer, progress

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        if self.progress:
            self.progress(len(prompts))
        out = []
        for p in prompts:
            probs = primacy_probs(p)
            out.append(f"{truth(p)} {('[[A]]', '[[B]]', '[[C]]')[probs.index(max(probs))]}")
        return out

    def next_token_logprobs(self, prompts: Sequence[str], continuations: Sequence[Sequence[int]],
                            tokens: Sequence[Sequence[int]]) -> list[list[float]]:
        return [[math.log(x) - 1.0 for x in primacy_probs(p)] for p in prompts]

    def sample(self, prompts: Sequence[str], *, n: int, temperature: float,
               max_new_tokens: int) -> list[list[str]]:
        return [[("x [[A]]", "x [[B]]")[k % 2] for k in range(n)] for _ in prompts]


@pytest.fixture(scope="session")
def judge_tok() -> Any:
    """The test tokenizer grown by the judge template's words (as the embedded judge's is)."""
    from pos2distill.tiny.tokenizer import build_tokenizer, corpus_words

    return build_tokenizer(corpus_words() + ["[", "]", "A", "B", "C", "(", ")", "Give", "short",
                                             "then", "or", "tie", "right"])


@pytest.fixture(scope="session")
def judge_model_dir(tmp_path_factory: pytest.TempPathFactory, judge_tok: Any) -> Path:
    path = tmp_path_factory.mktemp("judge-llama")
    tiny_llama(judge_tok, initializer_range=0.2).save_pretrained(path)
    judge_tok.save_pretrained(path)
    return path
