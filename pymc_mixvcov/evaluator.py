"""Evaluate a rewritten pytensor graph node by node with NumPy: the default ``"PY"`` mode.

pytensor's Python linker calls each ``Op``'s ``perform``. For the graphs of this package, with
hundreds of nodes on arrays of a few thousand entries, the per-node overhead of ``perform``
(run-time broadcast checks, a floating-point error state and storage cells per node) is most
of the cost, and some nodes are slow for reasons that have nothing to do with the arithmetic:

* an ``Elemwise`` whose scalar op has no NumPy function, ``second`` (fill) and ``softplus``
  (which the ``stabilize`` rewrites make of ``log(sigmoid(x))``) among them, falls back to
  ``np.frompyfunc``: one Python call per array *element*;
* ``CAReduce`` (``Sum``) copies its input before reducing.

:class:`GraphFunction` gives such nodes a direct NumPy thunk with the same result: the NumPy
function itself for elementwise ops that have one, a chain of binary ufuncs (left to right) for
a variadic ``add``/``mul``, a broadcast for ``second``, ``logaddexp(0, x)`` for ``softplus``, a
reduction without the copy for ``CAReduce``. Every other node keeps its ``Op.perform``. Outputs
are cast to the dtype the graph declares, as ``Elemwise.perform`` does. Floating-point warnings
are silenced for the whole evaluation, as ``Elemwise.perform`` silences them for each node.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce

import numpy as np
import pytensor.scalar as ps
import pytensor.scalar.math as psm
from pytensor.compile.builders import OpFromGraph
from pytensor.compile.rewriting import inline_ofg_node
from pytensor.graph.basic import Apply
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.rewriting.basic import node_rewriter
from pytensor.tensor import TensorVariable
from pytensor.tensor.elemwise import CAReduce, Elemwise

__all__ = ["GraphFunction", "thunk_of", "inline_op_from_graph"]


@node_rewriter([OpFromGraph])
def inline_op_from_graph(fgraph, node):
    """Replace an ``OpFromGraph`` (``pt.diag``, ``einsum``, PyMC helpers) by its inner graph.

    Left in place, each would compile its inner graph with pytensor's default (C) backend.
    """
    return inline_ofg_node(node)


#: Binary NumPy ufuncs that chain a variadic scalar op.
_VARIADIC = {ps.Add: np.add, ps.Mul: np.multiply}


def _softplus(x):
    """``log(1 + exp(x))`` without overflow (pytensor's ``Softplus`` has no NumPy function)."""
    return np.logaddexp(0.0, x)


#: NumPy implementations of float scalar ops that have no NumPy function of their own.
_UNARY = {psm.Softplus: _softplus}


def _cast(dtype: str) -> Callable[[object], np.ndarray]:
    """``x`` as an array of ``dtype`` that owns its data (no copy when it already is one)."""
    dt = np.dtype(dtype)

    def cast(x):
        if type(x) is np.ndarray and x.dtype == dt and x.flags.owndata:
            return x
        return np.array(x, dtype=dt)

    return cast


def _elemwise_thunk(node: Apply) -> Callable | None:
    op = node.op
    if op.inplace_pattern or len(node.outputs) != 1 or hasattr(node.tag, "sig"):
        return None
    cast = _cast(node.outputs[0].type.dtype)
    scalar = op.scalar_op
    if isinstance(scalar, ps.Second):

        def second(a, b):
            return cast(np.broadcast_to(b, np.broadcast_shapes(np.shape(a), np.shape(b))))

        return second
    unary = _UNARY.get(type(scalar))
    if unary is not None and len(node.inputs) == 1 and node.inputs[0].type.dtype.startswith("float"):

        def direct_unary(x):
            return cast(unary(x))

        return direct_unary
    binary = _VARIADIC.get(type(scalar))
    if binary is not None and len(node.inputs) > 2:
        # a sum with boolean inputs keeps perform: NumPy's bool + bool is a logical or
        if isinstance(scalar, ps.Add) and any(v.type.dtype == "bool" for v in node.inputs):
            return None

        def variadic(*xs):
            return cast(reduce(binary, xs))

        return variadic
    if op.nfunc is None or op.nfunc_spec[1] != len(node.inputs) or op.nfunc_spec[2] != 1:
        return None
    fn = op.nfunc

    def direct(*xs):
        return cast(fn(*xs))

    return direct


def _careduce_thunk(node: Apply) -> Callable | None:
    op = node.op
    ufunc = getattr(op, "ufunc", None)
    if not isinstance(ufunc, np.ufunc) or len(node.outputs) != 1:
        return None
    out_dtype = node.outputs[0].type.dtype
    acc = op.acc_dtype if getattr(op, "acc_dtype", None) is not None else out_dtype
    cast, axis = _cast(out_dtype), op.axis

    def careduce(x):
        return cast(ufunc.reduce(np.asarray(x), axis=axis, dtype=acc))

    return careduce


def thunk_of(node: Apply) -> Callable | None:
    """A direct NumPy function of the node's input values returning its (single) output, or
    ``None`` where the node keeps its ``Op.perform``."""
    if isinstance(node.op, Elemwise):
        return _elemwise_thunk(node)
    if isinstance(node.op, CAReduce) and type(node.op.scalar_op) in (ps.Add, ps.Mul, ps.Maximum, ps.Minimum):
        return _careduce_thunk(node)
    return None


class GraphFunction:
    """Evaluate an already rewritten graph node by node (see the module docstring).

    This is what pytensor's Python linker does (``Op.make_py_thunk``), without its per-node
    closures and storage cells and with direct NumPy thunks where ``perform`` is slow: a graph
    of a few thousand nodes links in milliseconds and leaves few objects for the garbage
    collector to scan. Intermediate values are released after their last use.

    Parameters
    ----------
    inputs, outputs : list of Variable
        The graph; every non-constant root must be among ``inputs``.
    """

    def __init__(self, inputs: list[TensorVariable], outputs: list[TensorVariable]):
        fg = FunctionGraph(inputs, outputs, clone=False)
        nodes = fg.toposort()
        slot: dict = {}
        for v in inputs:
            slot[v] = len(slot)
        self._constants: list[tuple[int, object]] = []
        for node in nodes:
            for v in node.inputs:
                if v not in slot:
                    slot[v] = len(slot)
                    self._constants.append((slot[v], v.data))
            for v in node.outputs:
                slot[v] = len(slot)
        for v in outputs:
            if v not in slot:  # an output that is a constant
                slot[v] = len(slot)
                self._constants.append((slot[v], v.data))
        keep = {slot[v] for v in outputs} | {i for i, _ in self._constants} | set(range(len(inputs)))
        last: dict[int, int] = {}
        for k, node in enumerate(nodes):
            for v in node.inputs:
                last[slot[v]] = k
        program = []
        for k, node in enumerate(nodes):
            node.op.prepare_node(node, None, None, "py")
            ins = tuple(slot[v] for v in node.inputs)
            outs = tuple(slot[v] for v in node.outputs)
            free = tuple(i for i in set(ins) if last.get(i) == k and i not in keep)
            thunk = thunk_of(node)
            if thunk is None:
                program.append((None, node.op.perform, node, ins, outs, free))
            else:
                program.append((thunk, None, None, ins, outs[0], free))
        self._program = program
        self._n = len(slot)
        self._in_dtypes = [v.type.dtype for v in inputs]
        self._out = [slot[v] for v in outputs]

    def __call__(self, *args):
        vals: list = [None] * self._n
        for i, (a, dt) in enumerate(zip(args, self._in_dtypes, strict=True)):
            vals[i] = np.asarray(a, dtype=dt)
        for i, c in self._constants:
            vals[i] = c
        with np.errstate(all="ignore"):
            for thunk, perform, node, ins, outs, free in self._program:
                if thunk is not None:
                    vals[outs] = thunk(*[vals[i] for i in ins])
                else:
                    store = [[None] for _ in outs]
                    perform(node, [vals[i] for i in ins], store)
                    for i, cell in zip(outs, store, strict=True):
                        vals[i] = cell[0]
                for i in free:
                    vals[i] = None
        return [vals[i] for i in self._out]
