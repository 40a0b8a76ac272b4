"""The synthetic multi-document QA benchmark the embedded tiny model was pretrained on.

Each record asks where one person lives; each of its documents, titled with a person's name, holds
that person's city (``- Title: Kavo`` / ``Lima``). Exactly one document is about the asked person. Records
are ordinary :class:`~pos2distill.data.records.Record` objects and go through the same prompt, tokenizer
and generation code as real data.

Three splits ask about disjoint people: ``train`` (for teaching and pretraining), ``dev`` (for
choosing recipes and defaults) and ``test`` (read only to report). A person asked about in one split
is never the subject of a question in another (every person appears as a distractor in all three).
"""

from __future__ import annotations

import random

from pos2distill.data.records import Document, Record

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
N_DEV_NAMES = 30


def make_names(n: int = N_NAMES, seed: int = 0) -> tuple[str, ...]:
    """``n`` distinct two-syllable names (``Kavo``, ``Dilu``, ...), fixed for a given seed."""
    syllables = [o + v for o in _ONSETS for v in _VOWELS]
    pool = sorted({(a + b).capitalize() for a in syllables for b in syllables})
    pool = [p for p in pool if p not in CITIES]
    return tuple(random.Random(seed).sample(pool, n))


NAMES = make_names()
TEST_NAMES = NAMES[:N_TEST_NAMES]
DEV_NAMES = NAMES[N_TEST_NAMES:N_TEST_NAMES + N_DEV_NAMES]
TRAIN_NAMES = NAMES[N_TEST_NAMES + N_DEV_NAMES:]
SPLITS = ("train", "dev", "test")
SUBJECTS = {"train": TRAIN_NAMES, "dev": DEV_NAMES, "test": TEST_NAMES}


def make_record(rng: random.Random, subject: str, *, n_documents: int, record_id: str) -> Record:
    """One question about ``subject`` with ``n_documents`` documents (gold first; positions are
    placed later by :func:`pos2distill.tasks.positions.place_gold`)."""
    others = rng.sample([n for n in NAMES if n != subject], n_documents - 1)
    people = [subject] + others
    # Short documents keep a 20-document prompt near 140 tokens, so the demo runs in minutes on a CPU.
    documents = tuple(Document(title=p, text=rng.choice(CITIES)) for p in people)
    answer = documents[0].text
    return Record(id=record_id, question=f"Which city is home to {subject}", answers=(answer,),
                  documents=documents, gold=(0,), kind="qa")


def _check(split: str, n_documents: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 2 <= n_documents <= N_NAMES:
        raise ValueError(f"n_documents must be in 2..{N_NAMES}, got {n_documents}")


def generate(split: str, n: int, *, seed: int = 0, n_documents: int = 20) -> list[Record]:
    """``n`` records of ``split`` (one of :data:`SPLITS`); deterministic for (split, n, seed,
    n_documents)."""
    _check(split, n_documents)
    subjects = SUBJECTS[split]
    rng = random.Random(f"synthetic|{split}|{seed}|{n_documents}")
    return [make_record(rng, rng.choice(subjects), n_documents=n_documents,
                        record_id=f"synth-{split}-{seed}-{k}") for k in range(n)]


# ---------------------------------------------------------------------------------------------
# The synthetic two-hop reasoning benchmark (Pos2Distill-R2)
#
# A record asks "Where does X's manager work?". The first-hop document (title X) says
# "Y is X's manager."; the second-hop document (title Y) says "Z is where Y works.". The other
# documents are complete chains of the same two forms among other people. Every person of a record
# appears in exactly one chain, so each name is the subject of at most one "manager" fact and at
# most one "works" fact, and X and Y occur nowhere else: the answer is never ambiguous.
#
# Each document's text starts with the value its title asks for (as a retrieval document, `- Title:
# Kavo` / `Lima`, does), while the chain-of-thought states the facts the usual way round ("X's
# manager is Y. Y works in Z."): every hop is then "find the title of the name just written, read
# the word after it", the one-token lookup a small model learns from document repeats. With the
# facts written "X's manager is Y." in the documents too, the value sits four tokens after the name
# and the tiny model's lookups stayed at chance (docs/tiny-model-notes.md).

REASONING_ID_PREFIX = "synth-reasoning"


def manager_fact(person: str, manager: str) -> str:
    """The first-hop document's text."""
    return f"{manager} is {person}'s manager."


def works_fact(person: str, city: str) -> str:
    """The second-hop document's text."""
    return f"{city} is where {person} works."


def reasoning_question(person: str) -> str:
    return f"Where does {person}'s manager work?"


def reasoning_cot(person: str, manager: str, city: str) -> str:
    """The reference chain-of-thought for a two-hop question: the two facts in hop order, then
    ``The answer is: CITY`` (the pretraining target, and what the reasoning metric reads)."""
    return f"{person}'s manager is {manager}. {manager} works in {city}. The answer is: {city}"


def record_cot(record: Record) -> str:
    """:func:`reasoning_cot` of a synthetic reasoning record, read from its hop documents."""
    hop1, hop2 = (record.documents[g] for g in record.gold)
    return reasoning_cot(hop1.title, hop2.title, record.answers[0])


def make_reasoning_record(rng: random.Random, subject: str, *, n_documents: int,
                          record_id: str) -> Record:
    """One two-hop question about ``subject`` with ``n_documents`` documents (even): the first hop
    at index 0, the second at index 1, then the distractor chains, each as its two documents in a
    random order (positions are placed later by :func:`pos2distill.tasks.positions.place_hops`)."""
    people = [subject] + rng.sample([n for n in NAMES if n != subject], n_documents - 1)
    documents: list[Document] = []
    distractors: list[Document] = []
    for k in range(0, n_documents, 2):
        person, manager, city = people[k], people[k + 1], rng.choice(CITIES)
        chain = [Document(title=person, text=manager_fact(person, manager)),
                 Document(title=manager, text=works_fact(manager, city))]
        if k == 0:
            documents, answer = chain, city
        else:
            distractors += chain
    rng.shuffle(distractors)
    return Record(id=record_id, question=reasoning_question(subject), answers=(answer,),
                  documents=tuple(documents + distractors), gold=(0, 1), kind="multihop")


def generate_reasoning(split: str, n: int, *, seed: int = 0, n_documents: int = 20) -> list[Record]:
    """``n`` two-hop records of ``split``; deterministic for (split, n, seed, n_documents), and a
    shorter set is a prefix of a longer one. The asked person comes from ``SUBJECTS[split]``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 2 <= n_documents <= N_NAMES or n_documents % 2:
        raise ValueError(f"n_documents must be even and in 2..{N_NAMES}, got {n_documents}")
    subjects = SUBJECTS[split]
    rng = random.Random(f"synthetic-reasoning|{split}|{seed}|{n_documents}")
    return [make_reasoning_record(rng, rng.choice(subjects), n_documents=n_documents,
                                  record_id=f"{REASONING_ID_PREFIX}-{split}-{seed}-{k}")
            for k in range(n)]


# ---------------------------------------------------------------------------------------------
# The synthetic judging set (LLM-as-a-judge, METHOD.md section 6b)
#
# Each item is a retrieval record ("Which city is home to X", documents titled with people) whose
# gold document sits at a seeded random position, and two candidate answers: the true city and a
# wrong city taken from another document of the same context, so both candidates appear in the
# documents and only the lookup tells them apart. The label is the true city's candidate; the true
# city is candidate 1 in every other item (exactly half of a set of even size), so a judge that
# always names one slot scores 0.5. The asked person comes from SUBJECTS[split], as in the
# retrieval set.

JUDGE_ID_PREFIX = "synth-judge"


def make_judge_record(rng: random.Random, subject: str, *, n_documents: int, record_id: str,
                      true_first: bool) -> Record:
    """One judging item about ``subject`` with ``n_documents`` documents (see the section note);
    ``true_first``: the true city is candidate 1."""
    base = make_record(rng, subject, n_documents=n_documents, record_id=record_id)
    gold, others = base.documents[0], list(base.documents[1:])
    truth = gold.text
    if all(d.text == truth for d in others):   # rare: make one distractor's city differ
        k = rng.randrange(len(others))
        others[k] = Document(others[k].title, rng.choice([c for c in CITIES if c != truth]))
    wrong = rng.choice(sorted({d.text for d in others} - {truth}))
    position = rng.randrange(n_documents)
    rng.shuffle(others)
    documents = tuple(others[:position] + [gold] + others[position:])
    candidates = (truth, wrong) if true_first else (wrong, truth)
    return Record(id=record_id, question=base.question, answers=(truth,), documents=documents,
                  gold=(position,), kind="judge", candidates=candidates,
                  label="1" if true_first else "2")


def generate_judge(split: str, n: int, *, seed: int = 0, n_documents: int = 20) -> list[Record]:
    """``n`` judging items of ``split``; deterministic for (split, n, seed, n_documents), and a
    shorter set is a prefix of a longer one."""
    _check(split, n_documents)
    subjects = SUBJECTS[split]
    rng = random.Random(f"synthetic-judge|{split}|{seed}|{n_documents}")
    return [make_judge_record(rng, rng.choice(subjects), n_documents=n_documents,
                              record_id=f"{JUDGE_ID_PREFIX}-{split}-{seed}-{k}",
                              true_first=k % 2 == 0)
            for k in range(n)]
