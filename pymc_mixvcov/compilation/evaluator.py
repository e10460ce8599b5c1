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
function itself for elementwise ops that have one (computed in the result's dtype for integer
inputs, as ``perform`` does), ``astype`` for casts, a chain of binary ufuncs (left to right) for
a variadic ``add``/``mul``, a broadcast for ``second``, ``logaddexp(0, x)`` for ``softplus``.

NumPy loops innermost over an array's last axis, which on batches of small blocks, shape
``(C, s, s)``, has length ``s``; so a reduction over short or interleaved axes is done after one
strided copy (:func:`_rearranged_reduce`), a product of small blocks entry by entry over the
batch (:func:`_matmul_thunk`), and a scatter-add ``x[idx] += y`` with ``np.bincount`` instead of
``np.add.at``. An ``OpFromGraph`` left in a graph runs through a :class:`GraphFunction` of its
inner graph instead of being compiled with pytensor's C backend. Every other node keeps its
``Op.perform``. Outputs are cast to the dtype the graph declares, as ``Elemwise.perform`` does.
Floating-point warnings are silenced for the whole evaluation, as ``Elemwise.perform``
silences them for each node.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import reduce

import numpy as np
import pytensor.scalar as ps
import pytensor.scalar.math as psm
from pytensor.compile.builders import OpFromGraph
from pytensor.compile.rewriting import inline_ofg_node
from pytensor.graph.basic import Apply
from pytensor.graph.rewriting.basic import node_rewriter
from pytensor.graph.traversal import io_toposort
from pytensor.tensor import TensorVariable
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.elemwise import CAReduce, Elemwise
from pytensor.tensor.math import Dot
from pytensor.tensor.subtensor import AdvancedIncSubtensor
from pytensor.tensor.type import discrete_dtypes, float_dtypes
from pytensor.tensor.utils import import_func_from_string

__all__ = ["GraphFunction", "thunk_of", "inline_op_from_graph", "light_function", "freeze_shared"]


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
    if op.inplace_pattern or len(node.outputs) != 1:
        return None
    cast = _cast(node.outputs[0].type.dtype)
    scalar = op.scalar_op
    if isinstance(scalar, ps.Second):

        def second(a, b):
            return cast(np.broadcast_to(b, np.broadcast_shapes(np.shape(a), np.shape(b))))

        return second
    if isinstance(scalar, ps.Cast) and len(node.inputs) == 1:
        dtype = np.dtype(node.outputs[0].type.dtype)

        def astype(x):
            return np.asarray(x).astype(dtype)

        return astype
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
    spec = getattr(op, "nfunc_spec", None)
    if not spec or spec[1] != len(node.inputs) or spec[2] != 1:
        return None
    fn = _numpy_function(spec[0])
    if fn is None:
        return None
    out_dtype = node.outputs[0].type.dtype
    if isinstance(fn, np.ufunc) and out_dtype in float_dtypes and node.inputs[0].type.dtype in discrete_dtypes:
        # integer inputs, float result (gammaln of counts): computed in the result's dtype, as
        # perform does, so that NumPy does not pick a float16 loop for small integer types
        char = np.dtype(out_dtype).char
        sig = char * len(node.inputs) + "->" + char

        def direct_float(*xs):
            return cast(fn(*xs, signature=sig))

        return direct_float

    def direct(*xs):
        return cast(fn(*xs))

    return direct


@functools.cache
def _numpy_function(name: str) -> Callable | None:
    """The NumPy (or SciPy) function an ``Elemwise`` names in its ``nfunc_spec``.

    Looked up here rather than through ``Op.prepare_node``, which also builds scalar nodes that
    the direct thunks never use (a third of the set-up time of a large graph).
    """
    try:
        return import_func_from_string(name)
    except Exception:  # an optional module that is not installed: perform handles the node
        return None


def _careduce_thunk(node: Apply) -> Callable | None:
    op = node.op
    ufunc = getattr(op, "ufunc", None)
    if not isinstance(ufunc, np.ufunc) or len(node.outputs) != 1:
        return None
    out_dtype = node.outputs[0].type.dtype
    acc = op.acc_dtype if getattr(op, "acc_dtype", None) is not None else out_dtype
    cast = _cast(out_dtype)
    nd = node.inputs[0].type.ndim
    axis = op.axis
    red = tuple(range(nd)) if axis is None else tuple(sorted(a % nd for a in axis))
    kept = tuple(a for a in range(nd) if a not in red)
    leading = red == tuple(range(len(red)))
    trailing = red == tuple(range(nd - len(red), nd))

    def careduce(x):
        x = np.asarray(x)
        if kept and red and x.size >= _REARRANGE_MIN and x.dtype == acc:
            r = 1
            for a in red:
                r *= x.shape[a]
            k = x.size // r if r else 0
            # NumPy's inner loop runs along the kept axes for a leading block, along the reduced
            # ones for a trailing block: fast only when that loop is long
            if not ((leading and k >= _LONG_LOOP) or (trailing and r >= _LONG_LOOP)):
                return cast(_rearranged_reduce(ufunc, x, red, kept, r, k))
        return cast(ufunc.reduce(x, axis=axis, dtype=acc))

    return careduce


#: Smallest array whose reduction may be rearranged (below it NumPy's overhead dominates).
_REARRANGE_MIN = 512

#: Length from which an inner loop of a NumPy reduction counts as long.
_LONG_LOOP = 32


def _rearranged_reduce(
    ufunc: np.ufunc, x: np.ndarray, red: tuple[int, ...], kept: tuple[int, ...], r: int, k: int
) -> np.ndarray:
    """``ufunc.reduce`` of ``x`` over the axes ``red`` (``r`` entries reduced into each of ``k``),
    with long contiguous inner loops.

    NumPy's reduction loops innermost over the last axis of the array's memory order; on a batch
    of small blocks, shape ``(C, s, s)``, that axis has length ``s``, and a reduction then costs
    up to 30 times a contiguous one. Here ``x`` is copied with the reduced axes first (a strided
    copy, which NumPy orders well) and reduced by adding whole rows when they are few, else
    copied with them last and reduced along the contiguous axis. Results equal
    ``ufunc.reduce`` up to the order of summation.
    """
    kshape = tuple(x.shape[a] for a in kept)
    if r <= 8:
        rows = np.ascontiguousarray(x.transpose(red + kept)).reshape(r, k)
        return reduce(ufunc, rows).reshape(kshape)
    block = np.ascontiguousarray(x.transpose(kept + red)).reshape(k, r)
    return ufunc.reduce(block, axis=1).reshape(kshape)


def _scatter_add_thunk(node: Apply) -> Callable | None:
    """``x[i_1, ..., i_d] += y`` with one integer index array per axis of ``x``: a weighted
    ``bincount`` on the flat positions.

    ``np.add.at``, which ``perform`` uses, takes about 40 ns per index; ``bincount`` a tenth of
    that. Index arrays broadcast against each other as in NumPy; negative or out-of-range
    indices go to ``perform`` (NumPy's semantics and its ``IndexError``).
    """
    op = node.op
    x, y, *idx = node.inputs
    if (
        op.set_instead_of_inc
        or op.ignore_duplicates
        or tuple(op.idx_list) != tuple(range(len(idx)))
        or len(idx) != x.type.ndim
        or not all(i.type.dtype.startswith(("int", "uint")) for i in idx)
        or not x.type.dtype.startswith("float")
        or node.outputs[0].type.dtype != x.type.dtype
    ):
        return None
    perform = op.perform

    def scatter_add(x, y, *index):
        if any(i.size and (i.min() < 0 or i.max() >= n) for i, n in zip(index, x.shape, strict=True)):
            store = [[None]]
            perform(node, [x, y, *index], store)
            return store[0][0]
        flat = index[-1]
        stride = 1
        for i, n in zip(index[-2::-1], x.shape[:0:-1], strict=True):  # C-order positions
            stride *= n
            flat = flat + i * stride
        w = np.broadcast_to(y, np.shape(flat)).ravel()
        return x + np.bincount(np.ravel(flat), weights=w, minlength=x.size).reshape(x.shape)

    return scatter_add


#: Largest ``m * k * n`` of a batched product ``(C, m, k) @ (C, k, n)`` computed entry by entry.
SMALL_MATMUL = 16


def _matmul_thunk(node: Apply) -> Callable | None:
    """A batched product of small blocks, ``(C, m, k) @ (C, k, n)``, one output entry at a time.

    ``np.matmul`` loops over the batch with a kernel per ``m x k`` block: for ``2 x 2`` blocks
    that is about 25 ns per block when both operands are C-ordered and 75 ns when one is a
    transposed view. Each output entry ``sum_l a[:, i, l] b[:, l, j]`` is instead ``k``
    products of length-``C`` vectors, which costs a fifth as much for ``m k n <= 16``.
    """
    core = getattr(node.op, "core_op", None)
    if not isinstance(core, Dot) or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    out_t = node.outputs[0].type
    m, k = a.type.shape[-2:] if a.type.ndim == 3 else (None, None)
    n = b.type.shape[-1] if b.type.ndim == 3 else None
    if None in (m, k, n) or not k or m * k * n > SMALL_MATMUL or out_t.ndim != 3 or not out_t.dtype.startswith("float"):
        return None
    dtype = out_t.dtype

    def small_matmul(a, b):
        out = np.empty((max(a.shape[0], b.shape[0]), m, n), dtype=dtype)
        for i in range(m):
            for j in range(n):
                acc = a[:, i, 0] * b[:, 0, j]
                for el in range(1, k):
                    acc = acc + a[:, i, el] * b[:, el, j]
                out[:, i, j] = acc
        return out

    return small_matmul


def _op_from_graph_thunk(node: Apply) -> Callable:
    """An ``OpFromGraph`` left in a graph: its inner graph, evaluated by a :class:`GraphFunction`.

    Its own ``perform`` would compile the inner graph with pytensor's C backend (a C compiler
    run and about 0.5 s, once per process).
    """
    op = node.op
    inner = GraphFunction(list(op.inner_inputs), list(op.inner_outputs))
    cast = _cast(node.outputs[0].type.dtype)

    def op_from_graph(*xs):
        return cast(inner(*xs)[0])

    return op_from_graph


def thunk_of(node: Apply) -> Callable | None:
    """A direct NumPy function of the node's input values returning its (single) output, or
    ``None`` where the node keeps its ``Op.perform``."""
    if isinstance(node.op, Elemwise):
        return _elemwise_thunk(node)
    if isinstance(node.op, AdvancedIncSubtensor):
        return _scatter_add_thunk(node)
    if isinstance(node.op, Blockwise):
        return _matmul_thunk(node)
    if isinstance(node.op, OpFromGraph) and len(node.outputs) == 1:
        return _op_from_graph_thunk(node)
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
        nodes = io_toposort(inputs, outputs)
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
            ins = tuple(slot[v] for v in node.inputs)
            outs = tuple(slot[v] for v in node.outputs)
            free = tuple(i for i in set(ins) if last.get(i) == k and i not in keep)
            thunk = thunk_of(node)
            if thunk is None:
                node.op.prepare_node(node, None, None, "py")
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


def freeze_shared(outputs: list[TensorVariable]) -> list[TensorVariable]:
    """Replace shared variables (PyMC's coordinate lengths, ``pm.Data``) by constants of their values."""
    from pytensor.compile.sharedvalue import SharedVariable
    from pytensor.graph.replace import graph_replace
    from pytensor.graph.traversal import graph_inputs
    from pytensor.tensor import constant

    shared = [v for v in graph_inputs(outputs) if isinstance(v, SharedVariable) and hasattr(v.type, "dtype")]
    if not shared:
        return outputs
    return graph_replace(outputs, {v: constant(v.get_value(), dtype=v.type.dtype) for v in shared}, strict=False)


def light_function(inputs: list[TensorVariable], outputs: list[TensorVariable]) -> GraphFunction:
    """A :class:`GraphFunction` of ``outputs`` after the lightest rewriting that it needs.

    Shared variables become constants, ``OpFromGraph`` nodes are inlined and equal nodes
    merged; nothing else. For small graphs evaluated a few times, where pytensor's own
    ``function`` spends more time compiling (its graph checks, rewriting passes and linking)
    than the evaluations take.
    """
    import pytensor
    from pytensor.graph.fg import FunctionGraph
    from pytensor.graph.rewriting.basic import MergeOptimizer, SequentialGraphRewriter, dfs_rewriter

    with pytensor.config.change_flags(traceback__limit=0):
        fg = FunctionGraph(list(inputs), freeze_shared(list(outputs)), clone=True)
        SequentialGraphRewriter(dfs_rewriter(inline_op_from_graph), MergeOptimizer()).rewrite(fg)
    return GraphFunction(list(fg.inputs), list(fg.outputs))
