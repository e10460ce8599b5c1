"""The command line's exit without a last garbage-collector pass over long-lived objects.

A process that has imported PyMC and fitted a model holds a few hundred thousand objects that
the cyclic garbage collector tracks (PyMC's and pytensor's modules, the model's graphs, the
compiled functions). At interpreter shutdown CPython runs full collections over all of them,
about 0.3 s on a 2-core machine, before the memory is handed back to the operating system
anyway. An ``atexit`` hook that calls :func:`gc.freeze` moves every object into the permanent
generation, which those last collections skip.

The hook changes how the interpreter exits: ``__del__`` methods of objects that are part of
reference cycles still alive at exit do not run. So it is installed only by the
``pymc-mixvcov`` command (:func:`pymc_mixvcov.cli.main`), for its own process, never by
importing the package. Set the environment variable ``PYMC_MIXVCOV_FAST_EXIT=0`` to keep
CPython's default there too.
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
    """Register the exit hook once per process, unless turned off; returns whether it is registered.

    For the command line's own process only: a library imported into someone else's process
    must not change how that process exits.
    """
    global _installed
    if _installed:
        return True
    if os.environ.get(ENV_VAR, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    atexit.register(gc.freeze)
    _installed = True
    return True
