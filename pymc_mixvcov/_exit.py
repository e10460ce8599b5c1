"""Interpreter exit without a last garbage-collector pass over long-lived objects.

A process that has imported PyMC and fitted a model holds a few hundred thousand objects that
the cyclic garbage collector tracks (PyMC's and pytensor's modules, the model's graphs, the
compiled functions). At interpreter shutdown CPython runs full collections over all of them,
about 0.3 s on a 2-core machine, before the memory is handed back to the operating system
anyway. An ``atexit`` hook that calls :func:`gc.freeze` moves every object into the permanent
generation, which those last collections skip.

The only observable difference: ``__del__`` methods of objects that are part of reference
cycles still alive at exit do not run (CPython does not guarantee that they run at exit either;
``atexit`` hooks and ``weakref.finalize`` callbacks, which is how files, loggers and temporary
directories clean up, run as before). Set the environment variable
``PYMC_MIXVCOV_FAST_EXIT=0`` to keep CPython's default.
"""

from __future__ import annotations

import atexit
import gc
import os

__all__ = ["ENV_VAR", "install"]

#: Environment variable that turns the hook off (``0``, ``false``, ``no`` or ``off``).
ENV_VAR = "PYMC_MIXVCOV_FAST_EXIT"

_installed = False


def install() -> bool:
    """Register the exit hook once per process, unless turned off; returns whether it is registered."""
    global _installed
    if _installed:
        return True
    if os.environ.get(ENV_VAR, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    atexit.register(gc.freeze)
    _installed = True
    return True
