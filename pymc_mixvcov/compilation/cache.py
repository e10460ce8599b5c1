"""Compiled functions kept in memory and on disk, keyed by what fixes their graph.

The core functions of :mod:`pymc_mixvcov.compilation.derivatives` depend only on a model's signature
(number of fixed effects, random-effect term sizes, cluster block sizes) and take the data as
inputs, so a compiled function serves every later fit with the same signature: in this process
from memory, in later processes from a pickle in the cache directory. A model's own map to the
core parameters is keyed by a hash of its serialised graph (:func:`dumps_graph`).

The directory is ``$PYMC_MIXVCOV_CACHE`` if set, else ``$XDG_CACHE_HOME/pymc_mixvcov`` (by
default ``~/.cache/pymc_mixvcov``); set ``PYMC_MIXVCOV_CACHE=off`` to keep nothing on disk.
Entries are named by the key, the evaluation mode (``PYMC_MIXVCOV_MODE``, whose rewrites they
hold) and the versions of this package, pytensor and numpy, so an upgrade never loads a stale
function. Each entry also carries its key and those versions in a header that is checked before
its graph is unpickled: an entry that belongs to another key (or version) under this name, or
one that cannot be read, is never evaluated but rebuilt and replaced. Writes are atomic (a
temporary file, then a rename), so concurrent processes never see half a file; a failed write
(a read-only or full disk) is reported once per process as a :class:`MixVcovWarning`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytensor
from pytensor.compile.builders import OpFromGraph
from pytensor.graph.basic import Apply, Constant, Variable
from pytensor.graph.traversal import io_toposort

from ..errors import MixVcovWarning

__all__ = ["cache_dir", "load_graph", "clear", "dumps_graph", "loads_graph"]


def cache_dir() -> Path | None:
    """The on-disk cache directory, or ``None`` when disabled."""
    env = os.environ.get("PYMC_MIXVCOV_CACHE")
    if env is not None:
        return None if env.lower() in {"", "off", "0", "none"} else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pymc_mixvcov"


def _versions() -> str:
    """What the stored graphs depend on besides their key: the on-disk format, the evaluation mode
    (``PYMC_MIXVCOV_MODE``, whose rewrites they hold), the versions of this package, pytensor and
    numpy, and the source of the modules that write them."""
    from .. import __version__
    from .derivatives import compile_mode

    mode = compile_mode()
    return f"{FORMAT}|{mode}|{__version__}|{pytensor.__version__}|{np.__version__}|{_source_hash()}"


def _file(key: str) -> Path | None:
    d = cache_dir()
    if d is None:
        return None
    tag = hashlib.sha256(f"{key}|{_versions()}".encode()).hexdigest()[:16]
    return d / f"{key}-{tag}.pkl"


@functools.cache
def _source_hash() -> str:
    """Hash of the modules that write the cached graphs: an edit invalidates the cache."""
    package = Path(__file__).parent.parent
    h = hashlib.sha256()
    for name in (
        "engines/marginal.py",
        "engines/laplace.py",
        "engines/jets.py",
        "engines/linalg.py",
        "compilation/derivatives.py",
        "compilation/cache.py",
    ):
        h.update((package / name).read_bytes())
    return h.hexdigest()[:16]


#: Version of the on-disk format: an entry is a pickled header ``{"format", "key", "versions"}``
#: followed by the pickled graph of :func:`dumps_graph`.
FORMAT = 3


def dumps_graph(inputs: list[Variable], outputs: list[Variable]) -> bytes:
    """Serialise a graph as a flat, topologically ordered list of nodes (no deep recursion).

    Each node is stored as its ``Op``, the indices of its inputs and the types of its outputs;
    constants with their data. Nothing from compilation (thunks, caches) is stored.
    """
    index: dict[Variable, int] = {}
    table: list[tuple] = []
    for v in inputs:
        index[v] = len(table)
        table.append(("input", v.type, v.name))
    for node in io_toposort(inputs, outputs):
        ins = []
        for v in node.inputs:
            if v not in index:
                if not isinstance(v, Constant):
                    raise ValueError(f"graph input {v} is not listed among the inputs")
                index[v] = len(table)
                table.append(("const", type(v), v.type, v.data))
            ins.append(index[v])
        table.append(("node", node.op, ins, [o.type for o in node.outputs]))
        for k, o in enumerate(node.outputs):
            index[o] = (len(table) - 1, k)
    out_ref = []
    for o in outputs:
        if o not in index:
            index[o] = len(table)
            table.append(("const", type(o), o.type, o.data))
        out_ref.append(index[o])
    buf = io.BytesIO()
    _GraphPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump((table, out_ref))
    return buf.getvalue()


class _GraphPickler(pickle.Pickler):
    """Pickles ``OpFromGraph`` ops without their derivative caches (closures, rebuilt on demand)."""

    def reducer_override(self, obj):
        if isinstance(obj, OpFromGraph) and (obj._lop_op_cache or obj._rop_op_cache is not None):
            clean = copy.copy(obj)
            clean._lop_op_cache = {}
            clean._rop_op_cache = None
            return clean.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        return NotImplemented


def loads_graph(blob: bytes) -> tuple[list[Variable], list[Variable]]:
    """Inverse of :func:`dumps_graph`: fresh variables, the same computation.

    Built without pytensor's creation tracebacks (``traceback__limit=0``): a cached graph has no
    user code to point to, and collecting a stack per variable costs a third of the load.
    """
    with pytensor.config.change_flags(traceback__limit=0):
        return _loads_graph(blob)


def _loads_graph(blob: bytes) -> tuple[list[Variable], list[Variable]]:
    table, out_ref = pickle.loads(blob)
    made: list = []
    inputs = []
    for entry in table:
        kind = entry[0]
        if kind == "input":
            v = entry[1](name=entry[2])
            inputs.append(v)
            made.append(v)
        elif kind == "const":
            made.append(entry[1](entry[2], entry[3]))
        else:
            _, op, ins, types = entry
            args = [made[i] if isinstance(i, int) else made[i[0]].outputs[i[1]] for i in ins]
            made.append(Apply(op, args, [t() for t in types]))
    outputs = [made[i] if isinstance(i, int) else made[i[0]].outputs[i[1]] for i in out_ref]
    return inputs, outputs


def load_graph(key: str, build: Callable[[], tuple[list[Variable], list[Variable]]]):
    """The graph stored under ``key`` on disk, or ``build()`` (stored for next time).

    An entry is used only if its header names this ``key`` and the current format, evaluation
    mode and versions (:func:`_versions`); the graph itself is unpickled only then. An entry
    that fails that check (one written for another signature, or by another version, and
    found under this name) or that cannot be read (truncated, corrupt) is never evaluated: the
    graph is built again and the entry overwritten.
    """
    path = _file(key)
    if path is not None:
        loaded = _read(path, key)
        if loaded is not None:
            return loaded
    inputs, outputs = build()
    if path is not None:
        _store(path, key, inputs, outputs)
    return inputs, outputs


def _header(key: str) -> dict[str, object]:
    return {"format": FORMAT, "key": key, "versions": _versions()}


def _read(path: Path, key: str) -> tuple[list[Variable], list[Variable]] | None:
    """The graph in ``path`` if its header matches ``key`` and the current versions, else ``None``."""
    try:
        with path.open("rb") as fh:
            header = pickle.load(fh)
            if header != _header(key):
                return None
            inputs, outputs = loads_graph(fh.read())
    except Exception:  # missing, truncated, corrupt, or not this format: rebuild it
        return None
    if not (isinstance(inputs, list) and isinstance(outputs, list) and outputs):
        return None
    return inputs, outputs


#: Whether a failed cache write has been reported in this process (it is reported once).
_write_warned = False


def _store(path: Path, key: str, inputs, outputs) -> None:
    global _write_warned
    try:
        blob = pickle.dumps(_header(key), protocol=pickle.HIGHEST_PROTOCOL) + dumps_graph(inputs, outputs)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except Exception as err:  # a read-only home, a full disk: carry on without the disk cache
        if not _write_warned:
            _write_warned = True
            warnings.warn(
                f"could not write the compile cache in {path.parent} ({type(err).__name__}: {err}); "
                "compiled graphs are rebuilt in every process until it can. Set PYMC_MIXVCOV_CACHE to "
                "a writable directory, or to 'off' to keep nothing on disk (this warning is shown once "
                "per process)",
                MixVcovWarning,
                stacklevel=3,
            )


def clear() -> None:
    """Delete the on-disk cache entries."""
    d = cache_dir()
    if d is not None and d.exists():
        for f in d.glob("*.pkl"):
            f.unlink(missing_ok=True)
