"""The only place that compiles pytensor graphs: values, gradients, Hessians, Jacobians.

Every derivative is symbolic (pytensor's reverse mode; Hessians as Jacobians of gradients);
none is a finite difference. The work is split in two so that almost nothing is compiled per
model:

* **core functions** of the core parameters ``phi = (beta, theta, sigma)`` (see
  :class:`pymc_mixvcov.engines.marginal.CoreGraph`) with the cluster statistics as *inputs*: their graphs
  depend only on the :class:`~pymc_mixvcov.engines.marginal.Signature` (number of fixed effects, term
  sizes, block sizes), so they are compiled once per signature and kept in memory and in an
  on-disk cache (:mod:`pymc_mixvcov.compilation.cache`) that later processes load;
* a small **model map** ``nat -> phi`` read off the ``pm.Model`` (the covariance factors and
  the residual SD as expressions of the model's parameters) with its exact Jacobian ``J`` and
  second derivatives ``T_k = d^2 phi_k / d nat^2``.

The chain rule joins them exactly: ``grad_nat = J^T grad_phi`` and
``H_nat = J^T H_phi J + sum_k (grad_phi)_k T_k``; per-cluster scores and information
contributions transform the same way. Expected information is the Hessian of a KL divergence
whose gradient vanishes at the reference point, so ``E_nat = J^T E_phi J``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
import pytensor
import pytensor.scalar as ps
import pytensor.tensor as pt
from pytensor.compile.mode import optdb
from pytensor.gradient import grad
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.replace import graph_replace
from pytensor.graph.rewriting.basic import MergeOptimizer, SequentialGraphRewriter, dfs_rewriter, node_rewriter
from pytensor.graph.rewriting.db import RewriteDatabaseQuery
from pytensor.graph.utils import MissingInputError
from pytensor.tensor import TensorVariable
from pytensor.tensor.elemwise import Elemwise

from ..engines.marginal import ClusterStructure, CoreGraph, Signature, core_phi, data_values, signature_of
from ..errors import MixVcovError
from ..output.progress import task as progress_task
from . import cache
from .evaluator import GraphFunction, freeze_shared, inline_op_from_graph, light_function

__all__ = ["Mode", "compile_mode", "compile_fn", "hessian", "jacobian_of", "core_function", "ModelMap", "LMMFunctions"]

#: The compilation modes ``PYMC_MIXVCOV_MODE`` may name. ``"PY"`` (the default) evaluates the
#: graphs with NumPy, node by node (:mod:`pymc_mixvcov.compilation.evaluator`), after pytensor's
#: ``canonicalize`` rewrites: no JIT and no C compiler, so a first fit costs seconds. ``"NUMBA"``
#: compiles them with pytensor's numba backend and its full ``fast_run`` rewrites (``"FAST_RUN"``
#: is pytensor's name for the same mode); ``"JAX"`` with its JAX backend (needs ``jax``). The
#: compiled modes cost tens of seconds per Hessian graph on a first run and seconds in later
#: processes (rewritten graphs are kept on disk, numba's code by pytensor) and give the same
#: numbers to rounding.
Mode = Literal["PY", "NUMBA", "FAST_RUN", "JAX"]

#: pytensor's rewrites at or after this position assume a destroy handler (``add_destroy_handler``
#: sits at 49.5: in-place updates, then backend-specific fusions that write into their inputs);
#: the graphs cached for a compiled mode are rewritten up to here, ``pytensor.function`` does the rest.
_DESTROY_HANDLER_POSITION = 49.5


def compile_mode() -> Mode:
    """The compilation mode named by ``PYMC_MIXVCOV_MODE`` (``"PY"`` when unset or empty).

    Read at every compilation, so a process may switch modes; compiled functions are kept per
    mode in memory, rewritten graphs per mode on disk.

    Raises
    ------
    MixVcovError
        The variable names no mode of :data:`Mode`, or ``"JAX"`` without ``jax`` installed.
    """
    name = os.environ.get("PYMC_MIXVCOV_MODE") or "PY"
    valid = get_args(Mode)
    if name not in valid:
        raise MixVcovError(
            f"PYMC_MIXVCOV_MODE={name!r} is not a compilation mode of pymc_mixvcov; use one of "
            f"{', '.join(repr(v) for v in valid)} (or unset it for the default 'PY')"
        )
    if name == "JAX" and importlib.util.find_spec("jax") is None:
        raise MixVcovError("PYMC_MIXVCOV_MODE='JAX' needs the jax package: pip install jax (or unset the variable)")
    return name


@node_rewriter([Elemwise])
def _split_wide_elemwise(fgraph, node):
    """Split a variadic ``add``/``mul`` with more than 31 inputs (NumPy's ufunc operand limit,
    which the Python ``perform`` enforces) into a tree of narrower ones."""
    if len(node.inputs) <= 31 or not isinstance(node.op.scalar_op, ps.Add | ps.Mul):
        return None
    parts = [node.op(*node.inputs[k : k + 16]) for k in range(0, len(node.inputs), 16)]
    out = node.op(*parts) if len(parts) <= 31 else None
    if out is None:
        return None
    return [pt.cast(out, node.outputs[0].dtype)] if out.dtype != node.outputs[0].dtype else [out]


def _rewriter():
    """Graph rewrites applied once, before a core graph is cached.

    In the default mode, pytensor's ``canonicalize`` set (merging, constant folding, algebraic
    simplification), without in-place updates. It removes about a third of the nodes of a
    Hessian graph at a fraction of the cost of the full ``fast_run`` set, whose elementwise
    fusion would moreover run element by element in Python under the Python linker. In a
    compiled mode, that mode's rewrites before pytensor's destroy handler.
    """
    mode = compile_mode()
    if mode != "PY":
        # the mode's own rewrites up to the destroy handler: what follows it (in-place updates,
        # fusions that write into their inputs) needs the supervisor that pytensor.function
        # attaches, and a graph holding such nodes is refused by it
        m = pytensor.compile.mode.get_mode(mode)
        query = copy.copy(m.provided_optimizer)
        query.position_cutoff = _DESTROY_HANDLER_POSITION
        # cloned so that the backend's own exclusions (e.g. numba's of the C BLAS rewrites) apply
        return SequentialGraphRewriter(dfs_rewriter(inline_op_from_graph), m.clone(optimizer=query).optimizer)
    canonicalize = optdb.query(RewriteDatabaseQuery(include=["canonicalize"], exclude=["inplace"]))
    # inlined before and after canonicalize, whose rewrites make some (``AllocDiag``)
    return SequentialGraphRewriter(
        dfs_rewriter(inline_op_from_graph),
        canonicalize,
        dfs_rewriter(inline_op_from_graph),
        dfs_rewriter(_split_wide_elemwise),
        MergeOptimizer(),
    )


def compile_fn(inputs: Sequence[TensorVariable], outputs: Sequence[TensorVariable], rewrite: bool = True):
    """Compile ``outputs`` as a function of ``inputs`` in the configured mode.

    ``rewrite=False`` skips graph rewriting in the default mode (for graphs already merged).
    """
    mode = compile_mode()
    if mode == "PY":
        return light_function(inputs, outputs) if rewrite else GraphFunction(list(inputs), list(outputs))
    with pytensor.config.change_flags(traceback__limit=0):
        fn = pytensor.function(list(inputs), list(outputs), mode=mode, on_unused_input="ignore")
    return fn if mode != "JAX" else _NumpyOutputs(fn)


class _NumpyOutputs:
    """A compiled function returning writable NumPy arrays (JAX returns its own, immutable ones)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args) -> list[np.ndarray]:
        return [np.array(v) for v in self.fn(*args)]

    def __getattr__(self, name: str):
        return getattr(self.fn, name)


def jacobian_of(y: TensorVariable, x: TensorVariable | Sequence[TensorVariable]):
    """Jacobian ``dy/dx`` of a vector ``y`` (static length) with respect to ``x``: one reverse pass per entry.

    ``x`` may be a list of variables; then a list of Jacobians is returned, each of shape
    ``(len(y), *x_i.shape)``.
    """
    xs = list(x) if isinstance(x, list | tuple) else [x]
    m = y.type.shape[0]
    if m is None:
        raise ValueError("jacobian_of needs a vector of static length")
    if m == 0:
        out = [pt.zeros((0, *xi.shape)) for xi in xs]
    else:
        rows = [grad(y[i], xs, disconnected_inputs="ignore") for i in range(m)]
        out = [pt.stack([r[j] for r in rows]) for j in range(len(xs))]
    return out if isinstance(x, list | tuple) else out[0]


def hessian(f: TensorVariable, x: TensorVariable) -> TensorVariable:
    """Full Hessian of scalar ``f`` with respect to the vector ``x`` (Jacobian of the gradient)."""
    return jacobian_of(grad(f, x), x)


# -- core functions (per signature, cached) -------------------------------------------------------
def _build_profile(sig: Signature, method: str):
    core = CoreGraph(sig)
    ts = pt.vector("ts", shape=(sig.n_theta + 1,))
    theta, sigma = ts[:-1], ts[-1]
    f = core.profiled_loglik(theta, sigma, method)
    beta, _ = core.gls(theta, sigma)
    return [ts, *core.data_inputs], [f, grad(f, ts), beta]


def _cluster_inputs(sig: Signature):
    core = CoreGraph(sig)
    phis = [pt.matrix(f"phi{k}", shape=(None, sig.dim)) for k in range(len(sig.sizes))]
    phif = pt.vector("phif", shape=(sig.dim,))
    return core, phis, phif


def _per_cluster_hessians(total: TensorVariable, wrt: list[TensorVariable], dim: int):
    """Gradient of ``total`` with respect to each of ``wrt`` and the per-cluster Hessians."""
    g = grad(total, wrt, disconnected_inputs="ignore")
    rows = []
    for i in range(dim):
        gi = sum(pt.sum(gk[..., i]) for gk in g)
        rows.append(grad(gi, wrt, disconnected_inputs="ignore"))
    hess = [pt.stack([r[j] for r in rows], axis=-2) for j in range(len(wrt))]
    return g, hess


def _build_cluster_observed(sig: Signature, _method: str):
    core, phis, phif = _cluster_inputs(sig)
    lls = [core.cluster_loglik(bt, *core.split(ph)) for bt, ph in zip(core.batches, phis, strict=True)]
    bf, _, sf = core.split(phif)
    llf = core.free_loglik(bf, sf)
    total = sum(pt.sum(ll) for ll in lls) + llf
    g, hess = _per_cluster_hessians(total, [*phis, phif], sig.dim)
    return [*phis, phif, *core.data_inputs], [*lls, llf, *g, *hess]


def _build_cluster_expected(sig: Signature, _method: str):
    core, phis, phif = _cluster_inputs(sig)
    phi0 = pt.vector("phi0", shape=(sig.dim,))
    b0, t0, s0 = core.split(phi0)
    kls = [core.cluster_kl(bt, *core.split(ph), b0, t0, s0) for bt, ph in zip(core.batches, phis, strict=True)]
    bf, _, sf = core.split(phif)
    total = sum(pt.sum(k) for k in kls) + core.free_kl(bf, sf, b0, s0)
    _, hess = _per_cluster_hessians(total, [*phis, phif], sig.dim)
    return [*phis, phif, phi0, *core.data_inputs], hess


def _build_reml_observed(sig: Signature, _method: str):
    core = CoreGraph(sig)
    ts = pt.vector("ts", shape=(sig.n_theta + 1,))
    ll = core.reml_loglik(ts[:-1], ts[-1])
    _, XtVX = core.gls(ts[:-1], ts[-1])
    g = grad(ll, ts)
    return [ts, *core.data_inputs], [ll, g, -jacobian_of(g, ts), XtVX]


def _build_reml_expected(sig: Signature, _method: str):
    core = CoreGraph(sig)
    ts = pt.vector("ts", shape=(sig.n_theta + 1,))
    ts0 = pt.vector("ts0", shape=(sig.n_theta + 1,))
    kl = core.reml_kl(ts[:-1], ts[-1], ts0[:-1], ts0[-1])
    return [ts, ts0, *core.data_inputs], [hessian(kl, ts)]


def _lower_colmajor(r: int) -> list[tuple[int, int]]:
    return [(i, j) for j in range(r) for i in range(j, r)]


def _build_scales(sig: Signature, _method: str, tail: str = "sigma"):
    """Values and Jacobians (in ``phi``) of the var, sd and cholesky scales.

    ``tail="sigma"``: a Gaussian model, ``phi = (beta, theta, sigma)``, lme4's relative Cholesky
    factor; ``tail="psi"``: other likelihoods, the absolute factor and ``psi`` as it is.
    """
    phi = pt.vector("phi", shape=(sig.dim,))
    parts = _scale_parts(phi, sig.p, sig.r, sig.n_theta, tail)
    outs = []
    for name in ("var", "sd", "cholesky"):
        val = pt.concatenate(parts[name])
        outs += [val, jacobian_of(val, phi)]
    return [phi], outs


def _scale_parts(phi, p: int, r_terms, n_theta: int, tail: str):
    """Values of the var, sd and cholesky scales from ``phi`` (see :func:`_build_scales`)."""
    beta, theta = phi[:p], phi[p : p + n_theta]
    rest = phi[p + n_theta :]
    parts: dict[str, list[TensorVariable]] = {"var": [beta], "sd": [beta], "cholesky": [beta]}
    off = 0
    for r in r_terms:
        idx = _lower_colmajor(r)
        rows = np.array([i for i, _ in idx])
        cols = np.array([j for _, j in idx])
        L = pt.set_subtensor(pt.zeros((r, r))[rows, cols], theta[off : off + len(idx)])
        off += len(idx)
        G = pt.dot(L, L.T)
        # guarded at 0 (a boundary fit), where the derivative of the square root is infinite
        sd = pt.sqrt(pt.maximum(pt.diagonal(G), 1e-300))
        parts["var"].append(G[rows, cols])
        # diagonal entries are SDs, off-diagonal ones correlations; built separately so that no
        # infinite derivative of an unused branch meets a zero cotangent (0 * inf = NaN)
        parts["sd"].append(
            pt.stack([sd[i] if i == j else G[i, j] / (sd[i] * sd[j]) for i, j in zip(rows, cols, strict=True)])
        )
        parts["cholesky"].append(L[rows, cols] / rest[0] if tail == "sigma" else L[rows, cols])
    if tail == "sigma":
        sigma = rest[0]
        parts["var"].append(pt.reshape(sigma**2, (1,)))
        parts["sd"].append(pt.reshape(sigma, (1,)))
        parts["cholesky"].append(pt.reshape(sigma, (1,)))
    else:  # the likelihood's own parameters, as they are
        for k in parts:
            parts[k].append(rest)
    return parts


def _build_scales_laplace(sig, method: str):
    """Scales of a non-Gaussian model (see :func:`_build_scales`)."""
    return _build_scales(sig, method, tail="psi")


def _xtvx_derivatives(XtVX: TensorVariable, wrt: TensorVariable, p: int):
    """``d XtVX / d wrt_i`` with one reverse pass per entry of ``wrt``.

    ``g(U) = d tr(U^T XtVX) / d wrt`` is linear in the ``p x p`` matrix ``U``, so its Jacobian in
    ``U`` is ``d XtVX / d wrt`` whatever ``U`` (an input, fed zeros): one pass per entry of
    ``wrt`` rather than one per entry of ``XtVX``.
    """
    U = pt.matrix("U", shape=(p, p))
    g = grad(pt.sum(U * XtVX), wrt)
    return U, [jacobian_of(g, U)]


def _build_xtvx_theta(sig: Signature, _method: str):
    """``X^T V^{-1} X`` and its first derivatives in the core variance parameters ``(theta, sigma)``."""
    core = CoreGraph(sig)
    ts = pt.vector("ts", shape=(sig.n_theta + 1,))
    _, XtVX = core.gls(ts[:-1], ts[-1])
    U, derivs = _xtvx_derivatives(XtVX, ts, sig.p)
    return [ts, U, *core.data_inputs], [XtVX, *derivs]


_BUILDERS: dict[str, Callable] = {
    "xtvx_theta": _build_xtvx_theta,
    "profile": _build_profile,
    "cluster_observed": _build_cluster_observed,
    "cluster_expected": _build_cluster_expected,
    "reml_observed": _build_reml_observed,
    "reml_expected": _build_reml_expected,
    "scales": _build_scales,
    "scales_laplace": _build_scales_laplace,
}


def core_function(name: str, sig: Signature, method: str = "ML"):
    """The compiled core function ``name`` for ``sig``: from memory, the disk cache, or built now."""
    key = f"{name}{'-' + method if name == 'profile' else ''}-{sig.key()}"
    return _cached_function(key, lambda: _BUILDERS[name](sig, method))


def _cached_function(key: str, make_graph: Callable):
    """A compiled function: from this process's memory, else from the disk cache, else built by
    ``make_graph()`` (returning ``(inputs, outputs)``), rewritten once and stored."""
    entry = (key, compile_mode())
    fn = _COMPILED.get(entry)
    if fn is None:
        inputs, outputs = _cached_graph(key, make_graph)
        fn = _COMPILED[entry] = compile_fn(inputs, outputs, rewrite=False)
    else:
        _COMPILED.move_to_end(entry)  # most recently used last
    while len(_COMPILED) > COMPILED_MAXSIZE:
        _COMPILED.popitem(last=False)  # least recently used first: rebuilt from the disk cache if needed again
    return fn


def _cached_graph(key: str | None, make_graph: Callable):
    """``(inputs, outputs)`` of a rewritten graph: from the disk cache, else built by
    ``make_graph()``, rewritten once and stored (built every time when ``key`` is ``None``)."""

    def build():
        with (
            progress_task("pymc_mixvcov", detail=_BUILDING),
            pytensor.config.change_flags(traceback__limit=0),
        ):
            inputs, outputs = make_graph()
            fg = FunctionGraph(inputs, freeze_shared(list(outputs)), clone=True)
            _rewriter().rewrite(fg)
        return list(fg.inputs), list(fg.outputs)

    return build() if key is None else cache.load_graph(key, build)


#: The stage shown while a new signature's graphs are built (see :mod:`pymc_mixvcov.output.progress`).
_BUILDING = "building the graphs of a new model signature (once: later fits load them from the disk cache)"

#: Most compiled functions kept in this process's memory (about seven per model signature): a
#: process that fits models of many signatures holds a bounded number; the least recently used
#: are dropped first, and loaded again from the disk cache when needed.
COMPILED_MAXSIZE = 64

#: Compiled core functions of this process, by key and compilation mode, least recently used first.
_COMPILED: OrderedDict[tuple[str, str], object] = OrderedDict()

#: Compiled model maps of this process, by the key of their graph (:func:`_graph_key`).
_MAPS: OrderedDict[tuple[str, str], tuple] = OrderedDict()


# -- the model map nat -> phi ------------------------------------------------------------------------
class ModelMap:
    """The map from a model's natural parameters to the core parameters, and its derivatives.

    ``phi(nat) = (nat[fixed], theta(nat), sigma(nat))`` where ``theta`` stacks the lower
    triangles of the random-effect covariance factors. Its graph is small (the transforms of the
    covariance parameters only), but differentiating it twice and compiling the result costs
    more than a fit of a small model; so the derivatives are built once per distinct map and
    kept on disk, keyed by a hash of the serialised map itself (the same model in a later
    process finds them; any change to the model's transforms gives another key). Maps with
    shared variables (``pm.Data``) are built in every process.
    """

    def __init__(self, spec, sig: Signature):
        self.spec, self.sig = spec, sig
        self._fns: tuple | None = None
        self._affine = False
        self._ref: tuple | None = None

    def _phi(self, nat: TensorVariable) -> TensorVariable:
        spec = self.spec
        repl = {spec.nat: nat}
        parts = [nat[spec.fixed_index]]
        for t in spec.terms:
            lam = graph_replace(t.lam, repl, strict=False)
            idx = _lower_colmajor(t.r)
            parts.append(lam[np.array([i for i, _ in idx]), np.array([j for _, j in idx])])
        if spec.gaussian:
            parts.append(pt.reshape(graph_replace(spec.sigma, repl, strict=False), (1,)))
        else:
            parts.append(nat[spec.psi_index])
        return pt.concatenate(parts)

    def _functions(self) -> tuple:
        """``(first, second, unconstrained)``: compiled ``nat -> (phi, J, upper)``, ``nat -> T``
        (rows ``p:``) and ``nat -> (u, J_u)``, from one graph."""
        if self._fns is None:
            nat_s = pt.vector("nat", shape=(self.spec.n_params,))
            phi = self._phi(nat_s)
            upper = self._upper_entries(nat_s)
            u = graph_replace(self.spec.unconstrained(), {self.spec.nat: nat_s}, strict=False)
            p, dim = self.sig.p, self.sig.dim

            def make_graph():
                J = jacobian_of(phi, nat_s)
                T = pt.stack([jacobian_of(J[k], nat_s) for k in range(p, dim)])
                return [nat_s], [phi, J, upper, T, u, jacobian_of(u, nat_s)]

            try:
                key = "modelmap-" + _graph_key([nat_s], [phi, upper, u])
            except (ValueError, MissingInputError):  # shared variables in the map: not keyed by its graph alone
                key = None
            entry = (key, compile_mode())
            if key is not None and entry in _MAPS:  # the same map, compiled earlier in this process
                self._fns, self._affine = _MAPS[entry]
                _MAPS.move_to_end(entry)
                return self._fns
            inputs, outputs = _cached_graph(key, make_graph)
            self._fns = (
                compile_fn(inputs, outputs[:3], rewrite=False),
                compile_fn(inputs, outputs[3:4], rewrite=False),
                compile_fn(inputs, outputs[4:], rewrite=False),
            )
            # a map whose Jacobian and upper-triangle check do not involve the values of nat
            # (only its shape) is affine: phi(nat) = phi(nat_0) + J (nat - nat_0), T = 0 exactly
            self._affine = not _uses_values(outputs[1], inputs[0]) and not _uses_values(outputs[2], inputs[0])
            if key is not None:
                _MAPS[entry] = (self._fns, self._affine)
                while len(_MAPS) > COMPILED_MAXSIZE:
                    _MAPS.popitem(last=False)
        return self._fns

    def __call__(self, nat: np.ndarray, second: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(phi, J, T)`` at ``nat``: ``J[k, i] = d phi_k / d nat_i``, ``T[k] = d^2 phi_k / d nat^2``.

        ``second=False`` skips ``T`` (returned as ``None``).
        """
        nat = np.asarray(nat, float)
        first, second_fn, _ = self._functions()
        if self._affine and self._ref is not None:
            nat0, phi0, J = self._ref
            phi = phi0 + J @ (nat - nat0)
            return phi, J.copy(), (np.zeros((self.sig.dim, nat.size, nat.size)) if second else None)
        phi, J, upper = first(nat)
        if self._affine and np.all(np.isfinite(phi)) and np.all(np.isfinite(J)):
            self._ref = (nat.copy(), np.asarray(phi, float).copy(), np.asarray(J, float).copy())
        if np.any(np.abs(upper) > 0):
            raise MixVcovError(
                "a random-effect covariance factor is not lower triangular; give the covariance "
                "(MvNormal cov=...) or a Cholesky factor (chol=...) so that it can be factored"
            )
        if not second:
            return phi, J, None
        T = np.zeros((self.sig.dim, nat.size, nat.size))
        T[self.sig.p :] = second_fn(nat)[0]
        return phi, J, T

    def _upper_entries(self, nat: TensorVariable) -> TensorVariable:
        out = [pt.zeros((0,))]
        for t in self.spec.terms:
            if t.r > 1:
                lam = graph_replace(t.lam, {self.spec.nat: nat}, strict=False)
                iu = np.triu_indices(t.r, 1)
                out.append(lam[iu])
        return pt.concatenate(out)

    def unconstrained(self, nat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """PyMC's unconstrained values at ``nat`` and their Jacobian in ``nat``."""
        u, J = self._functions()[2](np.asarray(nat, float))
        return np.asarray(u), np.asarray(J)


def _uses_values(out: TensorVariable, x: TensorVariable) -> bool:
    """Whether ``out`` depends on the values of ``x``, not only on its shape."""
    from pytensor.graph.traversal import io_toposort
    from pytensor.tensor.shape import Shape, Shape_i

    tainted = {x}
    for node in io_toposort([x], [out]):
        if isinstance(node.op, Shape | Shape_i):
            continue
        ins = node.inputs
        if isinstance(node.op, Elemwise) and isinstance(node.op.scalar_op, ps.Second):
            ins = ins[1:]  # fill(a, b): b broadcast to a's shape
        if any(v in tainted for v in ins):
            tainted.update(node.outputs)
    return out in tainted


def _graph_key(inputs, outputs) -> str:
    """A hash of the computation ``inputs -> outputs`` that is the same in every process.

    ``OpFromGraph`` nodes (``pt.diag``'s ``AllocDiag``, ``einsum``) pickle with their inner
    graph's generated variables, which differ from one build to the next: they are inlined first
    (in a copy), so that the same model always finds its cached map.
    """
    fg = FunctionGraph(list(inputs), list(outputs), clone=True)
    dfs_rewriter(inline_op_from_graph).rewrite(fg)
    return hashlib.sha256(cache.dumps_graph(list(fg.inputs), list(fg.outputs))).hexdigest()[:24]


def _scales(model_map: ModelMap, scales_fn, nat: np.ndarray) -> dict[str, np.ndarray]:
    """Values of the var, sd, cholesky and unconstrained scales at ``nat`` and their Jacobians in
    ``nat``: the core scale function's Jacobians in ``phi`` times ``J = d phi / d nat``."""
    phi, J, _ = model_map(nat, second=False)
    out: dict[str, np.ndarray] = {}
    vals = scales_fn(phi)
    for k, name in enumerate(("var", "sd", "cholesky")):
        out[f"value_{name}"] = np.asarray(vals[2 * k])
        out[f"jac_{name}"] = np.asarray(vals[2 * k + 1]) @ J
    u, Ju = model_map.unconstrained(nat)
    out["value_unconstrained"], out["jac_unconstrained"] = u, Ju
    return out


# -- the model-level functions ---------------------------------------------------------------------
class LMMFunctions:
    """Criterion, derivatives and per-cluster pieces of a Gaussian LMM on its natural parameters.

    ``beta`` is profiled out of the optimiser's criterion (``profiled = True``).

    Parameters
    ----------
    spec : GaussianSpec
        The inspected model.
    structure : ClusterStructure
        Its clusters and their statistics.
    method : {"ML", "REML"}
        The criterion.
    """

    profiled = True

    def __init__(self, spec, structure: ClusterStructure, method: str):
        self.spec, self.structure, self.method = spec, structure, method
        self.sig = signature_of(structure)
        self.data = data_values(structure)
        self.map = ModelMap(spec, self.sig)
        self.P = spec.n_params
        self.vi = spec.variance_index
        self.fi = spec.fixed_index
        # prior weights: the statistics are of the rows scaled by sqrt(w); the log-likelihood adds
        # sum log(w) / 2 (per cluster, and in total), which no derivative sees
        hl = structure.half_logw
        self._half_logw = np.zeros(structure.n_clusters) if hl is None else np.asarray(hl, float)
        self._half_logw_total = float(self._half_logw.sum() + structure.half_logw_free)

    def _fn(self, name: str):
        return core_function(name, self.sig, self.method)

    def _per_batch(self, phi: np.ndarray) -> list[np.ndarray]:
        return [np.broadcast_to(phi, (bt.clusters.size, phi.size)) for bt in self.structure.batches]

    def profile(self, vv: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Profiled criterion (``beta`` at its GLS value), its gradient in ``vv`` and the full ``nat``."""
        nat = np.zeros(self.P)
        nat[self.vi] = vv
        phi, J, _ = self.map(nat, second=False)
        p = self.sig.p
        f, g, beta = self._fn("profile")(phi[p:], *self.data)
        b0 = self.structure.b0  # the GLS estimate of the centred response's beta - b0 (engines.marginal)
        nat[self.fi] = beta if b0 is None else beta + b0
        return float(f) + self._half_logw_total, J[p:, self.vi].T @ np.asarray(g), nat

    def information(self, nat: np.ndarray, expected: bool = False) -> dict[str, np.ndarray]:
        """Criterion, gradient and observed (and optionally expected) information on the natural scale.

        For ML these are derivatives in all natural parameters. For REML the criterion does not
        involve ``beta``: gradient and information are those of the REML criterion in the variance
        parameters, with ``X^T V^{-1} X`` as the ``beta`` block (zero cross block; see
        :meth:`reml_observed_ml_cross` for merDeriv's alternative).
        """
        nat = np.asarray(nat, float)
        phi, J, T = self.map(nat)
        if self.method == "ML":
            c = self.clusters(nat, phi=(phi, J, T))
            out = {"loglik": c["loglik_total"], "grad": c["grad"], "observed": c["observed"]}
            if expected:
                out["expected"] = self.clusters_expected(nat, phi=(phi, J, T))["expected"]
            return out
        p = self.sig.p
        ll, g, H, XtVX = self._fn("reml_observed")(phi[p:], *self.data)
        Jv = J[p:][:, self.vi]
        Tv = T[p:][:, self.vi][:, :, self.vi]
        gv = Jv.T @ g
        obs_v = Jv.T @ H @ Jv - np.einsum("k,kij->ij", g, Tv)
        out = {
            "loglik": float(ll) + self._half_logw_total,
            "grad": self._embed_vector(gv),
            "observed": self._blockdiag(XtVX, obs_v),
        }
        if expected:
            (E,) = self._fn("reml_expected")(phi[p:], phi[p:], *self.data)
            out["expected"] = self._blockdiag(XtVX, Jv.T @ E @ Jv)
        return out

    def reml_observed_ml_cross(self, nat: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """The REML observed information ``observed`` with merDeriv's fixed/variance cross block.

        The REML criterion ``l_R(psi) = -1/2 (log|V| + log|X^T V^{-1} X| + y^T P y)`` does not
        involve ``beta``, so :meth:`information` gives the block-diagonal
        ``[[X^T V^{-1} X, 0], [0, -d2 l_R / d psi2]]``. merDeriv's ``vcov.lmerMod(full = TRUE,
        information = "observed")`` fills the cross block of a REML fit with the ML observed
        information's, at the REML estimates (``beta`` the GLS estimate):

        ``-d2 l_ML / d beta d psi_j = X^T V^{-1} (dV / d psi_j) V^{-1} (y - X beta)``

        (here on the natural scale: the exact ML Hessian of :meth:`clusters`, whose ``beta``
        block is also ``X^T V^{-1} X``). This returns ``observed`` with that block put in.
        """
        nat = np.asarray(nat, float)
        ml = self.clusters(nat)["observed"]
        out = np.array(observed, float, copy=True)
        fv, vf = np.ix_(self.fi, self.vi), np.ix_(self.vi, self.fi)
        out[fv], out[vf] = ml[fv], ml[vf]
        return out

    def clusters(self, nat: np.ndarray, phi=None) -> dict[str, np.ndarray]:
        """Per-cluster log-likelihoods, scores and observed information on the natural scale (ML).

        The last result is kept: the fit's information at the optimum and the result's scores and
        sandwiches ask for the same point.
        """
        key = np.asarray(nat, float).tobytes()
        last = getattr(self, "_last_clusters", None)
        if last is not None and last[0] == key:
            return last[1]
        out = self._clusters(nat, phi)
        self._last_clusters = (key, out)
        return out

    def _clusters(self, nat: np.ndarray, phi=None) -> dict[str, np.ndarray]:
        phi, J, T = self.map(nat) if phi is None else phi
        nb = len(self.structure.batches)
        pc = core_phi(self.structure, phi)  # beta - b0: the statistics are of the centred response
        res = self._fn("cluster_observed")(*self._per_batch(pc), pc, *self.data)
        lls, llf = res[:nb], res[nb]
        g, gf = res[nb + 1 : 2 * nb + 1], res[2 * nb + 1]
        h, hf = res[2 * nb + 2 : 3 * nb + 2], res[3 * nb + 2]
        C = self.structure.n_clusters
        ll = np.zeros(C)
        S = np.zeros((C, self.sig.dim))
        H = np.zeros((C, self.sig.dim, self.sig.dim))
        for bt, a, b, c in zip(self.structure.batches, lls, g, h, strict=True):
            ll[bt.clusters], S[bt.clusters], H[bt.clusters] = a, b, c
        gphi = S.sum(0) + gf
        Hphi = H.sum(0) + hf
        scores = S @ J
        obs_c = -(np.einsum("ki,ckl,lj->cij", J, H, J) + np.einsum("ck,kij->cij", S, T))
        ll = ll + self._half_logw
        llf = float(llf) + self.structure.half_logw_free
        return {
            "loglik_total": float(ll.sum() + llf),
            "loglik": ll,
            "loglik_free": float(llf),
            "scores": scores,
            "observed_clusters": obs_c,
            "grad": J.T @ gphi,
            "observed": -(J.T @ Hphi @ J + np.einsum("k,kij->ij", gphi, T)),
        }

    def clusters_expected(self, nat: np.ndarray, phi=None) -> dict[str, np.ndarray]:
        """Per-cluster expected information and its total on the natural scale (ML)."""
        phi, J, _ = self.map(nat, second=False) if phi is None else phi
        nb = len(self.structure.batches)
        pc = core_phi(self.structure, phi)  # beta - b0 (engines.marginal)
        res = self._fn("cluster_expected")(*self._per_batch(pc), pc, pc, *self.data)
        C = self.structure.n_clusters
        E = np.zeros((C, self.sig.dim, self.sig.dim))
        for bt, e in zip(self.structure.batches, res[:nb], strict=True):
            E[bt.clusters] = e
        Ephi = E.sum(0) + res[nb]
        return {"expected_clusters": np.einsum("ki,ckl,lj->cij", J, E, J), "expected": J.T @ Ephi @ J}

    def observation_scores(self, nat: np.ndarray) -> np.ndarray:
        """Scores of every observation on the natural scale, ``(n, P)`` (merDeriv's casewise
        decomposition, :func:`pymc_mixvcov.inference.scores.casewise_scores`)."""
        from ..inference.scores import casewise_scores

        phi, J, _ = self.map(np.asarray(nat, float), second=False)
        return casewise_scores(self.spec, self.structure, self.sig, phi) @ J

    def scales(self, nat: np.ndarray) -> dict[str, np.ndarray]:
        """Values and Jacobians (with respect to the natural parameters) of every scale."""
        return _scales(self.map, self._fn("scales"), nat)

    def xtvx(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``X^T V^{-1} X`` at the core parameters ``phi = (beta, theta, sigma)`` and its derivatives in
        ``(theta, sigma)``, ``(n_theta + 1, p, p)``: pytensor's derivative of the GLS graph
        (``xtvx_theta``), one reverse pass per variance parameter."""
        p = self.sig.p
        XtVX, D = self._fn("xtvx_theta")(np.asarray(phi, float)[p:], np.zeros((p, p)), *self.data)
        return np.asarray(XtVX), np.asarray(D)

    def var_scale_pieces(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``X^T V^{-1} X``, ``P_i`` and ``H_ij = Q_ij + Q_ji`` on the var scale at ``phi = (beta, theta,
        sigma)``, in closed form from the cluster statistics
        (:func:`pymc_mixvcov.engines.cluster_ddf.var_scale_pieces`)."""
        from ..engines.cluster_ddf import var_scale_pieces

        p = self.sig.p
        phi = np.asarray(phi, float)
        return var_scale_pieces(self.structure, self.sig, phi[p:-1], float(phi[-1]))

    def _embed_vector(self, gv: np.ndarray) -> np.ndarray:
        return reml_gradient(self.P, self.vi, gv)

    def _blockdiag(self, XtVX: np.ndarray, Hv: np.ndarray) -> np.ndarray:
        return reml_information(self.P, self.fi, self.vi, XtVX, Hv)


def reml_gradient(P: int, vi: np.ndarray, gv: np.ndarray) -> np.ndarray:
    """The REML gradient in all ``P`` natural parameters: ``gv`` on the variance parameters ``vi``, 0 on
    the fixed effects (the REML criterion does not involve them)."""
    out = np.zeros(P)
    out[vi] = gv
    return out


def reml_information(P: int, fi: np.ndarray, vi: np.ndarray, XtVX: np.ndarray, Hv: np.ndarray) -> np.ndarray:
    """The REML information in all ``P`` natural parameters: ``X^T V^{-1} X`` for the fixed effects
    ``fi``, ``Hv`` for the variance parameters ``vi``, a zero cross block (docs/design.md)."""
    out = np.zeros((P, P))
    out[np.ix_(fi, fi)] = XtVX
    out[np.ix_(vi, vi)] = Hv
    return out


# -- non-Gaussian likelihoods: the Laplace engine ----------------------------------------------------
def _laplace_builders(spec):
    from pytensor.gradient import pushforward

    from ..engines.laplace import LaplaceGraph

    def inputs(sig):
        g = LaplaceGraph(sig, spec)
        phi = pt.vector("phi", shape=(sig.dim,))
        return g, phi, g.mode_inputs()

    def gh(sig):
        g, phi, vs = inputs(sig)
        hs, gs, Hs = g.grad_hess(*g.split(phi), vs)
        return [phi, *vs, *g.data_inputs], [*hs, *gs, *Hs]

    def value(sig):
        g, phi, vs = inputs(sig)
        lls = g.cluster_loglik(phi, vs)
        total = sum(pt.sum(ll) for ll in lls)
        return [phi, *vs, *g.data_inputs], [*lls, total, grad(total, phi)]

    def _scores(g, phi, vs, sig):
        lls = g.cluster_loglik(phi, vs)
        eye = np.eye(sig.dim)
        cols = [pushforward(lls, phi, [pt.constant(eye[k])]) for k in range(sig.dim)]
        return lls, [pt.stack([c[b] for c in cols], axis=1) for b in range(len(lls))]

    def hess(sig):
        g, phi, vs = inputs(sig)
        total = sum(pt.sum(ll) for ll in g.cluster_loglik(phi, vs))
        return [phi, *vs, *g.data_inputs], [hessian(total, phi)]

    def scores(sig):
        g, phi, vs = inputs(sig)
        _, S = _scores(g, phi, vs, sig)
        return [phi, *vs, *g.data_inputs], S

    def cluster_hessians(sig):
        g, phi, vs = inputs(sig)
        _, S = _scores(g, phi, vs, sig)
        eye = np.eye(sig.dim)
        cols = [pushforward(S, phi, [pt.constant(eye[k])]) for k in range(sig.dim)]
        return [phi, *vs, *g.data_inputs], [pt.stack([c[b] for c in cols], axis=2) for b in range(len(S))]

    return {"gh": gh, "value": value, "hess": hess, "scores": scores, "cluster_hessians": cluster_hessians}


def laplace_function(name: str, sig, spec):
    """Compiled Laplace function ``name`` (see :func:`_laplace_builders`), cached like the core functions."""
    return _cached_function(f"{name}-{sig.key()}", lambda: _laplace_builders(spec)[name](sig))


class LaplaceFunctions:
    """Criterion, derivatives and per-cluster pieces of a non-Gaussian mixed model (Laplace).

    Same interface as :class:`LMMFunctions` (``information``, ``clusters``, ``scales``, ``map``),
    plus ``value`` for the optimiser; no profiling (``beta`` is optimised with the rest).
    """

    profiled = False

    def __init__(self, spec, structure: ClusterStructure, method: str = "ML", nagq: int = 1):
        from ..engines.laplace import laplace_data, laplace_signature

        self.spec, self.structure, self.method = spec, structure, method
        free = int(np.sum(structure.obs_cluster < 0))
        if free:
            from ..errors import MixVcovError

            raise MixVcovError(
                f"{free} observation(s) of {spec.observed_name!r} use none of the random effects; the Laplace engine "
                "integrates the random effects cluster by cluster and needs every observation in a cluster: model "
                "those rows separately, or give them a random-effect level"
            )
        self.sig = laplace_signature(spec, structure, nagq)
        self.data = laplace_data(spec, structure)
        self.map = ModelMap(spec, self.sig)
        self.P = spec.n_params
        self.vi = spec.variance_index
        self.fi = spec.fixed_index
        self._modes = [np.zeros((bt.clusters.size, bt.s)) for bt in structure.batches]
        self.modes_converged = True
        # Laplace: closed-form derivatives from per-observation jets; quadrature: graph derivatives
        from ..engines.jets import JetLaplace

        # per-observation pieces: the Laplace derivatives (nAGQ = 1) and the fit diagnostics
        self._jet_pieces = JetLaplace(spec, structure, self.sig, self._jets)
        self.jet = self._jet_pieces if nagq == 1 else None

    def _fn(self, name: str):
        return laplace_function(name, self.sig, self.spec)

    def _jets(self, order: int):
        from ..engines.jets import observation_jets

        return _cached_function(f"jets{order}-{self.sig.likelihood}", lambda: observation_jets(self.spec, order))

    def modes(self, phi: np.ndarray) -> list[np.ndarray]:
        """Modes of the random effects (standardised) at ``phi``, warm-started from the last ones."""
        from ..engines.laplace import find_modes

        key = np.asarray(phi, float).tobytes()
        if getattr(self, "_modes_at", None) == key:  # asked again at the same point
            return self._modes
        if self.jet is not None:

            def search(v0):
                return self.jet.modes(phi, v0)
        else:

            def search(v0):
                return find_modes(self._fn("gh"), phi, v0, self.data)

        start = self._modes
        last = getattr(self.jet, "last_vprime", None)
        if last is not None:
            # first-order prediction from the last full evaluation: v_hat + v' (phi - phi_0)
            d = np.asarray(phi, float) - last[0]
            pred = [v + vp @ d for v, vp in zip(last[1], last[2], strict=True)]
            if all(np.all(np.isfinite(v)) for v in pred):
                start = pred
        vs, ok = search(start)
        if not ok and start is not self._modes:
            vs, ok = search(self._modes)
        if not ok:
            vs, ok = search([np.zeros_like(v) for v in vs])
        self.modes_converged = ok
        self._modes_at = None
        if all(np.all(np.isfinite(v)) for v in vs):
            self._modes = vs
            self._modes_at = key if ok else None
        return vs

    def glm_start(self, nat: np.ndarray) -> np.ndarray | None:
        """``nat`` with the fixed effects at the maximum of the GLM log-likelihood without random
        effects (``eta = offset + X beta``), by Newton's method with step halving, or ``None``
        where that likelihood is not concave or Newton fails (the optimiser then warms up the
        fixed effects on the Laplace likelihood itself).
        """
        if self.jet is None:
            return None
        nat = np.asarray(nat, float).copy()
        phi, _, _ = self.map(nat, second=False)
        X, o = self.jet.X, self.jet.o
        beta = phi[: self.sig.p].copy()

        def pieces(b):
            raw = self.jet._jet(2, o + X @ b, phi)
            return float(np.sum(raw[0])), X.T @ raw[1], (X * raw[2 + self.jet.m][:, None]).T @ X

        with np.errstate(all="ignore"):
            f, g, H = pieces(beta)
            for _ in range(50):
                if not (np.isfinite(f) and np.all(np.isfinite(H))):
                    return None
                try:
                    L = np.linalg.cholesky(-H)
                except np.linalg.LinAlgError:
                    return None
                step = np.linalg.solve(L.T, np.linalg.solve(L, g))
                if g @ step < 1e-10 * (1.0 + abs(f)):
                    nat[self.fi] = beta
                    return nat
                t = 1.0
                for _ in range(30):
                    f_new, g_new, H_new = pieces(beta + t * step)
                    if f_new >= f:
                        break
                    t *= 0.5
                else:
                    return None
                beta, f, g, H = beta + t * step, f_new, g_new, H_new
        return None

    def diagnose(self, nat: np.ndarray, labels: list[str]) -> list[str]:
        """Problems of the fit at ``nat``, as messages for warnings (``labels``: the fixed effects').

        - The inner mode search did not converge (a cluster's random effects have no finite
          mode, e.g. all its responses at one end of the support with a large variance).
        - Rows fitted at the edge of the response's support (probability 0 or 1, or a zero
          mean): the sign of (quasi-)complete separation, under which the fixed effects that
          separate the data drift to infinity; named are those with the largest
          ``|beta_k| max_i |x_ik|``.
        """
        phi, _, _ = self.map(np.asarray(nat, float), second=False)
        vs = self.modes(phi)
        out = []
        if not self.modes_converged:
            out.append(
                "the random effects' conditional modes did not converge at the estimates (a cluster whose "
                "responses all sit at one end of the support, with a large random-effect variance, has no "
                "finite mode): the Laplace approximation and its derivatives are unreliable there"
            )
        rows = self._jet_pieces.boundary_rows(phi, vs)
        if rows.size:
            X = np.asarray(self.spec.X, float)
            beta = phi[: self.sig.p]
            reach = np.abs(beta) * np.max(np.abs(X), axis=0)
            suspects = [labels[k] for k in np.argsort(-reach)[:2] if reach[k] > 10]
            named = f"; the estimates of {', '.join(suspects)} are drifting to infinity" if suspects else ""
            out.append(
                f"{rows.size} of {self.spec.n} rows of {self.spec.observed_name!r} are fitted at the edge of the "
                f"response's support (probability 0 or 1, or a zero mean): (quasi-)complete separation{named}. "
                "Their standard errors and Wald tests are not meaningful; remove or merge the separating "
                "predictor, or fit with method='MAP' and a weakly informative prior on the fixed effects"
            )
        return out

    def _pieces(self, phi: np.ndarray, order: int) -> dict:
        """Per-batch cluster log-likelihoods, scores (``order >= 1``) and Hessians (``order 2``)
        in ``phi``, with their totals. The last result is kept: optimisers and the result's
        covariances ask again for the point they stopped at."""
        key = np.asarray(phi, float).tobytes()
        last = getattr(self, "_last", None)
        if last is not None and last[0] == key and last[1] >= order:
            return last[2]
        out = self._compute_pieces(phi, order)
        self._last = (key, order, out)
        return out

    def _compute_pieces(self, phi: np.ndarray, order: int) -> dict:
        vs = self.modes(phi)
        nb = len(vs)
        if self.jet is not None:
            out = self.jet.evaluate(phi, vs, order)
        else:
            val = self._fn("value")(phi, *vs, *self.data)
            out = {"loglik": list(val[:nb])}
            if order >= 1:
                out["grad"] = list(self._fn("scores")(phi, *vs, *self.data))
            if order >= 2:
                out["hess"] = list(self._fn("cluster_hessians")(phi, *vs, *self.data))
        out["total"] = float(sum(np.sum(a) for a in out["loglik"]))
        if order >= 1:
            out["total_grad"] = sum(np.sum(g, axis=0) for g in out["grad"])
        if order >= 2:
            out["total_hess"] = sum(np.sum(h, axis=0) for h in out["hess"])
        return out

    def _total_hess(self, phi: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        if self.jet is not None:
            out = self._pieces(phi, 2)
            return out["total"], out["total_grad"], out["total_hess"]
        vs = self.modes(phi)
        nb = len(vs)
        val = self._fn("value")(phi, *vs, *self.data)
        (H,) = self._fn("hess")(phi, *vs, *self.data)
        return float(val[nb]), np.asarray(val[nb + 1]), np.asarray(H)

    def loglik(self, nat: np.ndarray) -> float:
        """The Laplace (or AGQ) log-likelihood alone at ``nat``: the modes, no derivatives."""
        phi, _, _ = self.map(np.asarray(nat, float), second=False)
        if self.jet is not None:
            return self._pieces(phi, 0)["total"]
        vs = self.modes(phi)
        return float(self._fn("value")(phi, *vs, *self.data)[len(vs)])

    def value(self, nat: np.ndarray) -> tuple[float, np.ndarray]:
        """Laplace log-likelihood and its gradient in ``nat``."""
        phi, J, _ = self.map(nat, second=False)
        if self.jet is not None:
            out = self._pieces(phi, 1)
            return out["total"], J.T @ out["total_grad"]
        vs = self.modes(phi)
        res = self._fn("value")(phi, *vs, *self.data)
        nb = len(vs)
        return float(res[nb]), J.T @ np.asarray(res[nb + 1])

    def information(self, nat: np.ndarray, expected: bool = False) -> dict[str, np.ndarray]:
        """Laplace log-likelihood, gradient and observed information (exact Hessian) at ``nat``."""
        nat = np.asarray(nat, float)
        phi, J, T = self.map(nat)
        total, gphi, Hphi = self._total_hess(phi)
        out = {
            "loglik": total,
            "grad": J.T @ gphi,
            "observed": -(J.T @ Hphi @ J + np.einsum("k,kij->ij", gphi, T)),
        }
        if expected:
            out["expected"] = None
        return out

    def _by_cluster(self, per_batch: list[np.ndarray]) -> np.ndarray:
        C = self.structure.n_clusters
        first = per_batch[0]
        out = np.zeros((C, *first.shape[1:]))
        for bt, a in zip(self.structure.batches, per_batch, strict=True):
            out[bt.clusters] = a
        return out

    def clusters(self, nat: np.ndarray) -> dict[str, np.ndarray]:
        """Per-cluster log-likelihoods and scores, and the total gradient (natural scale)."""
        nat = np.asarray(nat, float)
        phi, J, _ = self.map(nat, second=False)
        out = self._pieces(phi, 1)
        return {
            "loglik_total": out["total"],
            "loglik": self._by_cluster(out["loglik"]),
            "scores": self._by_cluster(out["grad"]) @ J,
            "grad": J.T @ out["total_grad"],
        }

    def cluster_observed(self, nat: np.ndarray) -> np.ndarray:
        """Each cluster's observed information contribution on the natural scale, ``(C, P, P)``."""
        phi, J, T = self.map(np.asarray(nat, float))
        out = self._pieces(phi, 2)
        Hc, Sc = self._by_cluster(out["hess"]), self._by_cluster(out["grad"])
        return -(np.einsum("ki,ckl,lj->cij", J, Hc, J) + np.einsum("ck,kij->cij", Sc, T))

    def scales(self, nat: np.ndarray) -> dict[str, np.ndarray]:
        """Values and Jacobians (with respect to the natural parameters) of every scale."""
        return _scales(self.map, core_function("scales_laplace", self.sig), nat)


class MAPFunctions:
    """``method="MAP"``: the marginal log-likelihood plus the log prior density of the parameters.

    The criterion is ``log p(y | nat) + sum_k log p_k(nat_k)``, the log marginal posterior density
    of the natural parameters (priors on the constrained scale, no Jacobian of PyMC's
    transforms): its maximiser is the marginal posterior mode, and the inverse of its negative
    Hessian there is the Laplace (normal) approximation of the posterior covariance. The random
    effects are integrated out as for ML. Useful when the likelihood alone is flat or maximised
    on a boundary (few clusters, a variance estimated at 0): weakly informative priors keep the
    mode inside the parameter space, and the covariance then describes the posterior, not the
    sampling distribution of an estimator.

    The per-cluster pieces (:meth:`clusters`, :meth:`cluster_observed`) are the likelihood's
    alone, priors excluded: a prior is not a sum over clusters. They are what the MAP sandwich
    needs (bread: the negative Hessian of the whole criterion, :meth:`information`; meat: the
    cluster scores of the log-likelihood, which at the posterior mode sum to
    ``-grad log p(nat)``, not zero; see :meth:`pymc_mixvcov.inference.results.MixedFit.sandwich`).
    """

    profiled = False

    def __init__(self, base):
        self.base = base
        self.spec, self.structure, self.sig, self.map = base.spec, base.structure, base.sig, base.map
        self.method = "ML"
        self.P, self.vi, self.fi = base.P, base.vi, base.fi
        spec = base.spec
        import pymc as pm

        nat = pt.vector("nat", shape=(spec.n_params,))
        repl = {p.rv: pt.reshape(nat[p.slice], p.shape) for p in spec.params}
        terms = []
        for p in spec.params:
            rv = graph_replace(p.rv, {k: v for k, v in repl.items() if k is not p.rv}, strict=False)
            terms.append(pt.sum(pm.logp(rv, repl[p.rv])))
        lp = pt.sum(pt.stack(terms))
        g = grad(lp, nat)
        self._prior = compile_fn([nat], [lp, g, jacobian_of(g, nat)])

    def prior(self, nat):
        lp, g, H = self._prior(np.asarray(nat, float))
        return float(lp), np.asarray(g), np.asarray(H)

    def loglik(self, nat: np.ndarray) -> float:
        """Log-likelihood plus log-prior at ``nat`` (the value of the MAP criterion)."""
        base = self.base.loglik(nat) if hasattr(self.base, "loglik") else self.base.information(nat)["loglik"]
        return base + self.prior(nat)[0]

    def value(self, nat: np.ndarray) -> tuple[float, np.ndarray]:
        lp, g, _ = self.prior(nat)
        if hasattr(self.base, "value"):
            f, gf = self.base.value(nat)
        else:
            info = self.base.information(nat)
            f, gf = info["loglik"], info["grad"]
        return f + lp, gf + g

    def information(self, nat: np.ndarray, expected: bool = False) -> dict[str, np.ndarray]:
        info = dict(self.base.information(nat))
        lp, g, H = self.prior(nat)
        info["loglik_only"] = info["loglik"]
        info["loglik"] = info["loglik"] + lp
        info["grad"] = info["grad"] + g
        info["observed"] = info["observed"] - H
        if expected:
            info["expected"] = None
        return info

    def clusters(self, nat: np.ndarray) -> dict[str, np.ndarray]:
        """Per-cluster log-likelihoods and scores of the likelihood alone (priors excluded), with
        the likelihood's total gradient ``grad``; their column sums are ``-grad log p(nat)`` at
        the posterior mode."""
        return self.base.clusters(nat)

    def cluster_observed(self, nat: np.ndarray) -> np.ndarray:
        """Each cluster's observed information contribution of the likelihood alone, ``(C, P, P)``."""
        if hasattr(self.base, "cluster_observed"):
            return self.base.cluster_observed(nat)
        return self.base.clusters(nat)["observed_clusters"]

    def observation_scores(self, nat: np.ndarray) -> np.ndarray:
        """Scores of every observation of the likelihood alone (priors excluded), ``(n, P)``: the
        base engine's (Gaussian models, and the blocked Laplace engine)."""
        return self.base.observation_scores(nat)

    def scales(self, nat):
        return self.base.scales(nat)
