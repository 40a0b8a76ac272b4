"""The synthetic multi-document QA benchmark the embedded tiny model was pretrained on.

Each record asks where one person lives; each of its documents, titled with a person's name, holds
that person's city (``- Title: Kavo`` / ``Lima``). Exactly one document is about the asked person. Records
are ordinary :class:`~pos2distill.records.Record` objects and go through the same prompt, tokenizer
and generation code as real data.

Held-out questions are disjoint from training ones: the people asked about in the ``test`` split never
appear as the subject of a ``train`` question (they do appear as distractors in both).
"""

from __future__ import annotations

import random

from pos2distill.records import Document, Record

CITIES = (
    "Paris", "Lima", "Oslo", "Cairo", "Dublin", "Madrid", "Rome", "Vienna", "Berlin", "Prague",
    "Athens", "Lisbon", "Tokyo", "Seoul", "Delhi", "Dhaka", "Hanoi", "Manila", "Jakarta", "Nairobi",
    "Lagos", "Accra", "Dakar", "Tunis", "Rabat", "Quito", "Bogota", "Caracas", "Havana", "Ottawa",
    "Boston", "Denver", "Austin", "Chicago", "Toronto", "Sydney", "Perth", "Auckland", "Helsinki",
    "Warsaw",
)
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
N_NAMES = 200
N_TEST_NAMES = 50


def make_names(n: int = N_NAMES, seed: int = 0) -> tuple[str, ...]:
    """``n`` distinct two-syllable names (``Kavo``, ``Dilu``, ...), fixed for a given seed."""
    syllables = [o + v for o in _ONSETS for v in _VOWELS]
    pool = sorted({(a + b).capitalize() for a in syllables for b in syllables})
    pool = [p for p in pool if p not in CITIES]
    return tuple(random.Random(seed).sample(pool, n))


NAMES = make_names()
TEST_NAMES = NAMES[:N_TEST_NAMES]
TRAIN_NAMES = NAMES[N_TEST_NAMES:]
SPLITS = ("train", "test")


def make_record(rng: random.Random, subject: str, *, n_documents: int, record_id: str) -> Record:
    """One question about ``subject`` with ``n_documents`` documents (gold first; positions are
    placed later by :func:`pos2distill.positions.place_gold`)."""
    others = rng.sample([n for n in NAMES if n != subject], n_documents - 1)
    people = [subject] + others
    # Short documents keep a 20-document prompt near 140 tokens, so the demo runs in minutes on a CPU.
    documents = tuple(Document(title=p, text=rng.choice(CITIES)) for p in people)
    answer = documents[0].text
    return Record(id=record_id, question=f"Which city is home to {subject}", answers=(answer,),
                  documents=documents, gold=(0,), task="qa")


def generate(split: str, n: int, *, seed: int = 0, n_documents: int = 20) -> list[Record]:
    """``n`` records of ``split`` ("train" or "test"); deterministic for (split, n, seed, n_documents)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 2 <= n_documents <= N_NAMES:
        raise ValueError(f"n_documents must be in 2..{N_NAMES}, got {n_documents}")
    subjects = TEST_NAMES if split == "test" else TRAIN_NAMES
    rng = random.Random(f"synthetic|{split}|{seed}|{n_documents}")
    return [make_record(rng, rng.choice(subjects), n_documents=n_documents,
                        record_id=f"synth-{split}-{seed}-{k}") for k in range(n)]
