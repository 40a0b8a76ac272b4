"""Tasks: retrieval (R1), reasoning (R2) and judging (LLM-as-a-judge order bias), each a
:class:`~pos2distill.tasks.base.Task`."""

from __future__ import annotations

from pos2distill.errors import ConfigError
from pos2distill.tasks.base import Task
from pos2distill.tasks.judge import Judge
from pos2distill.tasks.reasoning import Reasoning
from pos2distill.tasks.retrieval import Retrieval

#: Every task by its ``--task`` name.
TASKS: dict[str, Task] = {t.name: t for t in (Retrieval(), Reasoning(), Judge())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"--task: {name!r} is not one of {', '.join(TASKS)}") from None
