"""Importing the heavy dependencies without the cyclic garbage collector's passes over them.

Importing PyMC, pytensor, SciPy and formulae creates about a million objects that live as long
as the process: modules, classes, functions, pytensor's rewrite databases. While they are
created, CPython's cyclic collector runs a few hundred times and traverses them again and
again, looking for garbage that is not there; and when it is simply switched off during the
import, its first pass afterwards traverses them all at once (about 0.08 s after PyMC, 0.07 s
after formulae, on a 2-core machine).

:func:`paused_gc` switches the collector off for the duration of an import and, at its end,
moves every tracked object to the oldest generation (``gc.freeze()`` then ``gc.unfreeze()``:
two list splices, no traversal) before switching it back on (if it was on). Nothing is kept
from the collector: a reference cycle that becomes garbage is collected by the next full
collection, which is where objects that survive an import end up anyway.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused_gc", "import_formulae"]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the ``with`` block; after it, objects are in the
    oldest generation and the collector is on again if it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()  # everything into the permanent generation ...
        gc.unfreeze()  # ... and back into the oldest one, untraversed
        if was_enabled:
            gc.enable()


def import_formulae() -> None:
    """Import ``formulae`` (the formula front end's parser) with the collector paused."""
    with paused_gc():
        import formulae  # noqa: F401
