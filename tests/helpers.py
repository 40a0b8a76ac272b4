"""Small helpers several test files share (not fixtures)."""

from __future__ import annotations

from typing import Any, Sequence

from pos2distill.data.records import Record
from pos2distill.stages import teach
from pos2distill.tasks import get_task


def teacher_rows(records: Sequence[Record], generator: Any, tokenizer: Any, *, task: str,
                 adv: tuple[int, ...], template: str, chat: str, seed: int, max_new_tokens: int,
                 instruction: str = "") -> list[dict[str, Any]]:
    """What ``teach`` computes for ``records`` in one go (teach.main does it in resumable
    chunks): the teacher prompts at ``adv``, answered by ``generator``."""
    t = get_task(task)
    prompts = teach.teacher_prompts(records, tokenizer, task=t, adv=adv, template=template,
                                    chat=chat, seed=seed, instruction=instruction)
    return teach.answer_prompts(prompts, generator, task=t, adv=adv, template=template, chat=chat,
                                max_new_tokens=max_new_tokens, instruction=instruction)


def retrieval_summary(accs: dict[int, float], counts: dict[int, int], best: int) -> dict[str, Any]:
    """A retrieval probe summary with these accuracies (s.e. 0.01 × the 1-based position)."""
    values = list(accs.values())
    return {"task": "retrieval",
            "by_slot": [{"slot": [p], "accuracy": a, "stderr": 0.01 * (p + 1),
                         "count": counts[p]} for p, a in accs.items()],
            "mean": sum(values) / len(values), "gap": max(values) - min(values),
            "best_slot": [best], "worst_slot": [min(accs, key=accs.get)],  # type: ignore[arg-type]
            "n_per_slot": min(counts.values())}


def chat(text: str) -> str:
    """``text`` as one user turn of the test tokenizer's chat template."""
    return f"<|bos|><|user|>\n{text}<|end|>\n<|assistant|>\n"


def pair_row(student: str, teacher: str, response: str, slot: tuple[int, ...] = (1,)
             ) -> dict[str, Any]:
    """A retrieval pairs row (advantageous slot (0,)) with these prompts and response."""
    return {"student_prompt": chat(student), "teacher_prompt": chat(teacher), "response": response,
            "task": "retrieval", "slot": list(slot), "adv_slot": [0], "anchor": slot == (0,),
            "chat": True}


#: Pairs whose responses align differently with their prompts (the alignment tests' rows).
ALIGNMENT_ROWS = [
    pair_row("Where does Tude live ?", "Tude lives in Oslo .", "Oslo ."),
    pair_row("Dublin", "Oslo Lima Paris Rome Dublin", "Lima Paris Rome Oslo", slot=(2,)),
    pair_row("Kavo lives in Rome . Where does Kavo live ?", "Rome", "Rome")]
