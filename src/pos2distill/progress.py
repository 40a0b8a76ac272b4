"""Progress bars of the command-line runs (tqdm), and nesting them under a recipe's own bar.

Stages draw their bars with :func:`bar`; a recipe that runs many stages (``experiment``) wraps them
in :func:`nested`, so each stage's bar draws on the line below the recipe's and vanishes when done:
the terminal shows one view, the grid, then the current stage.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from tqdm.auto import tqdm

_defaults: dict[str, Any] = {}


def bar(**kwargs: Any) -> tqdm:
    """A tqdm bar with ``kwargs``, placed by the innermost :func:`nested` (if any)."""
    return tqdm(**{**_defaults, **kwargs})


@contextlib.contextmanager
def nested(position: int = 1) -> Iterator[None]:
    """Inside, :func:`bar` draws at ``position`` and clears the line when it closes."""
    saved = dict(_defaults)
    _defaults.update(position=position, leave=False)
    try:
        yield
    finally:
        _defaults.clear()
        _defaults.update(saved)
