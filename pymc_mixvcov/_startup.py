"""Importing the heavy dependencies with the cyclic garbage collector paused.

Importing PyMC, pytensor, SciPy and formulae creates about a million objects that live as long
as the process: modules, classes, functions, pytensor's rewrite databases. While they are
created, CPython's cyclic collector runs a few hundred times and traverses them again and
again, looking for garbage that is not there: about 0.1 s of a 1 s import on a 2-core machine.
:func:`paused_gc` switches the collector off for the duration of an import and back on after
it (if it was on); cycles made meanwhile are collected by the next collection as usual, so
nothing changes but the time.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused_gc", "import_formulae"]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the ``with`` block (restored after it)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def import_formulae() -> None:
    """Import ``formulae`` (the formula front end's parser) with the collector paused."""
    with paused_gc():
        import formulae  # noqa: F401
