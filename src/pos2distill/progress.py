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
_quiet = False


def quiet(on: bool = True) -> None:
    """No bars at all while on (``pos2distill -q``: only warnings and errors)."""
    global _quiet
    _quiet = on


def bar(**kwargs: Any) -> tqdm:
    """A tqdm bar with ``kwargs``, placed by the innermost :func:`nested` (if any); hidden when
    :func:`quiet` is on, whatever ``disable`` says."""
    kwargs = {**_defaults, **kwargs}
    kwargs["disable"] = kwargs.get("disable", False) or _quiet
    return tqdm(**kwargs)


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
