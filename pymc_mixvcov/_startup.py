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

A fit pauses the collector too (building and evaluating graphs allocates many small objects),
but without the promotion: its garbage cycles are freed by the next young collection.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused_gc", "import_formulae"]


@contextlib.contextmanager
def paused_gc(promote: bool = True) -> Iterator[None]:
    """Pause the cyclic garbage collector inside the ``with`` block, and switch it back on after
    it if it was on.

    Parameters
    ----------
    promote : bool
        Move every tracked object to the oldest generation at the end, untraversed: for
        imports, whose objects live as long as the process. ``False`` leaves the objects
        made in the block to the next young collection, which frees the reference cycles among
        them soon: for blocks that leave garbage (building graphs during a fit), so that a
        loop of fits does not pile it up until a full collection.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if promote:
            gc.freeze()  # everything into the permanent generation ...
            gc.unfreeze()  # ... and back into the oldest one, untraversed
        if was_enabled:
            gc.enable()


def import_formulae() -> None:
    """Import ``formulae`` (the formula front end's parser) with the collector paused."""
    with paused_gc():
        import formulae  # noqa: F401
