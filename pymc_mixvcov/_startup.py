"""Pausing the cyclic garbage collector around the package's own work, and restoring it.

Importing PyMC, pytensor, SciPy and formulae creates about a million objects that live as long
as the process: modules, classes, functions, pytensor's rewrite databases. While they are
created, CPython's cyclic collector runs a few hundred times and traverses the young ones again
and again, looking for garbage that is not there. Building and evaluating graphs during a fit
allocates many small objects too.

:func:`paused_gc` switches the collector off for the duration of a block and back on at its
end if it was on; nothing else about the collector changes. In particular no object is moved
between generations: objects made in the block (and the caller's own objects) are left where
CPython put them, to the next young collection, which frees the reference cycles among them
soon. (Promoting them to the oldest generation untraversed would skip a pass over the import's
objects, but it would also promote the caller's objects and any garbage cycle alive at that
moment, which then waits for a full collection, and those become rarer the larger the oldest
generation is: a loop of fits would pile garbage up.)
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator

__all__ = ["paused_gc", "import_formulae"]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the ``with`` block, and switch it back on after
    it if it was on (a collector the caller switched off stays off)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def import_formulae() -> None:
    """Import ``formulae`` (the formula front end's parser) with the collector paused, once."""
    if "formulae" in sys.modules:
        return
    with paused_gc():
        import formulae  # noqa: F401
