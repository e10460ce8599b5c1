"""Inspect a ``pm.Model``: fixed parameters, random-effect blocks, clusters, likelihood.

The fitting engine never sees a formula. It sees a ``pm.Model`` and the names of the
random-effect variables to integrate out, and reads everything else from the model's graph:

* the observed variable and its likelihood (here: Normal, for the exact Gaussian engine);
* the free parameters (every continuous free variable that is not integrated out), their
  supports (from PyMC's transforms) and their roles (entering the mean, or the variances);
* for each random-effect variable, its grouping dimension, its effect coordinates, the
  cluster of every observation and the design values ``z`` (found by evaluating the linear
  predictor, then verified), and the factor ``Lambda`` of its covariance, as a symbolic
  expression of the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.replace import graph_replace
from pytensor.graph.rewriting.basic import dfs_rewriter
from pytensor.graph.traversal import ancestors
from pytensor.tensor import TensorVariable
from pytensor.tensor.random.basic import MvNormalRV, NormalRV

from ..compilation.evaluator import light_function
from ..errors import MixVcovError
from .weights import split_residual_sd

__all__ = ["FreeParam", "RandomTerm", "GaussianSpec", "inspect_model"]

#: For graphs that may still hold random variables (shapes, transforms of the free variables):
#: ``fast_compile``'s shape rewrites keep their evaluation from drawing from them.
_FAST = pytensor.compile.mode.Mode(linker="py", optimizer="fast_compile")


def _light(inputs: list, outputs):
    """A function of ``outputs`` for graphs whose free variables are all replaced by inputs:
    only ``OpFromGraph`` inlining and merging (:func:`pymc_mixvcov.compilation.evaluator.light_function`),
    a fraction of ``fast_compile``'s time. A single output (not a list) gives a function
    returning that output alone, as ``pytensor.function`` does."""
    if isinstance(outputs, list | tuple):
        return light_function(inputs, list(outputs))
    fn = light_function(inputs, [outputs])
    return lambda *args: fn(*args)[0]


@dataclass(frozen=True)
class FreeParam:
    """A free variable of the model that is estimated (not integrated out).

    Attributes
    ----------
    name : str
        The PyMC variable's name.
    shape : tuple of int
        Its shape; it occupies ``size`` consecutive entries of the natural vector.
    start : int
        Offset of its first entry in the natural parameter vector.
    labels : list of str
        One label per entry: ``name`` for scalars, ``name[coord]`` (``name[c1, c2]``) for
        entries along named dimensions, ``name[i]`` otherwise.
    lower, upper : numpy.ndarray
        Support of each entry, read from the variable's transform.
    role : {"fixed", "variance"}
        ``"fixed"`` if the linear predictor depends on it, ``"variance"`` otherwise.
    """

    name: str
    rv: TensorVariable = field(repr=False)
    shape: tuple[int, ...]
    start: int
    labels: list[str]
    lower: np.ndarray
    upper: np.ndarray
    role: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=int))

    @property
    def slice(self) -> slice:
        return slice(self.start, self.start + self.size)


@dataclass(frozen=True)
class RandomTerm:
    """One random-effect variable: ``u[level, effect] ~ N(0, Lambda Lambda^T)`` per level.

    Attributes
    ----------
    name : str
        The PyMC variable's name.
    group : str
        Name of its grouping dimension (the cluster factor).
    levels : list of str
        Coordinate values of the grouping dimension.
    effects : list of str
        Coordinate values of the effect dimension (``r`` of them).
    codes : numpy.ndarray
        Level index of every observation (``-1`` where the observation does not use it).
    z : numpy.ndarray
        Design values, shape ``(n, r)``: ``eta_i = ... + sum_k z[i, k] u[codes[i], k]``.
    lam : TensorVariable
        ``r x r`` lower-triangular factor of the covariance, in terms of the natural vector.
    """

    name: str
    group: str
    levels: list[str]
    effects: list[str]
    codes: np.ndarray = field(repr=False)
    z: np.ndarray = field(repr=False)
    lam: TensorVariable = field(repr=False)

    @property
    def r(self) -> int:
        return len(self.effects)


@dataclass(frozen=True)
class GaussianSpec:
    """A linear mixed model read off a ``pm.Model``: ``y = offset + X beta + Z u + e``.

    ``nat`` is the symbolic natural parameter vector (free variables on their constrained
    scale, in model order); ``sigma`` and every ``RandomTerm.lam`` are expressions of it.
    ``fixed_index`` lists the entries of ``nat`` that form ``beta`` (the columns of ``X``).
    """

    model: object = field(repr=False)
    nat: TensorVariable = field(repr=False)
    params: list[FreeParam]
    terms: list[RandomTerm]
    X: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    offset: np.ndarray = field(repr=False)
    sigma: TensorVariable = field(repr=False)
    fixed_index: np.ndarray
    nat0: np.ndarray
    observed_name: str
    residual_index: np.ndarray  # entries of ``nat`` that the residual SD depends on
    family: str = "gaussian"
    #: non-Gaussian likelihoods: ``(eta, y, lp)``, the per-observation log-density ``lp`` as a
    #: graph of the linear predictor ``eta``, the data ``y`` and ``nat`` (its ``psi`` entries)
    logp: tuple | None = field(default=None, repr=False)
    psi_index: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    #: Gaussian precision weights ``w_i`` (residual variance ``sigma^2 / w_i``), read from a residual
    #: SD ``sigma / sqrt(w)``; ``None`` without (:mod:`pymc_mixvcov.model.weights`)
    weights: np.ndarray | None = field(default=None, repr=False)
    #: non-Gaussian observed likelihoods: ``(eta, draw, shape)``, the observed random variable as a
    #: graph of the linear predictor ``eta`` and ``nat`` (what simulating from the model draws)
    #: and the observed data's shape; ``None`` for Gaussian models and likelihood Potentials
    draw: tuple | None = field(default=None, repr=False)

    @property
    def gaussian(self) -> bool:
        return self.logp is None

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_params(self) -> int:
        return int(self.nat0.size)

    @property
    def natural_labels(self) -> list[str]:
        return [lab for p in self.params for lab in p.labels]

    @property
    def variance_index(self) -> np.ndarray:
        mask = np.ones(self.n_params, bool)
        mask[self.fixed_index] = False
        return np.flatnonzero(mask)

    @property
    def lower(self) -> np.ndarray:
        return np.concatenate([p.lower for p in self.params])

    @property
    def upper(self) -> np.ndarray:
        return np.concatenate([p.upper for p in self.params])

    def unconstrained(self) -> TensorVariable:
        """The model's unconstrained (transformed) values as an expression of ``nat``."""
        model, parts = self.model, []
        repl = _rv_replacements(self.params, self.nat)
        for p in self.params:
            value = repl[p.rv]
            tr = model.rvs_to_transforms.get(p.rv)
            if tr is not None:
                inputs = graph_replace(list(p.rv.owner.inputs[2:]), repl, strict=False)
                value = tr.forward(value, *p.rv.owner.inputs[:2], *inputs)
            parts.append(pt.flatten(value))
        return pt.concatenate(parts) if len(parts) > 1 else parts[0]

    def unconstrained_labels(self) -> list[str]:
        model, out = self.model, []
        for p in self.params:
            tr = model.rvs_to_transforms.get(p.rv)
            if tr is None:
                out += p.labels
            else:
                suffix = f"_{tr.name}__"
                out += [_relabel(lab, p.name, p.name + suffix) for lab in p.labels]
        return out


def _value(x) -> np.ndarray:
    """Value of a constant expression (evaluated without rewrites or compilation to C)."""
    if isinstance(x, np.ndarray | float | int):
        return np.asarray(x)
    if isinstance(x, pt.TensorConstant):
        return np.asarray(x.data)
    return np.asarray(pytensor.function([], pt.as_tensor(x), mode=_FAST)())


def _relabel(label: str, old: str, new: str) -> str:
    return new + label[len(old) :]


def _entry_labels(model, rv, shape: tuple[int, ...]) -> list[str]:
    name = rv.name
    if shape == ():
        return [name]
    dims = model.named_vars_to_dims.get(name)
    if dims and all(d is not None and d in model.coords for d in dims):
        coords = [list(model.coords[d]) for d in dims]
        grid = np.array(np.meshgrid(*[np.arange(len(c)) for c in coords], indexing="ij"))
        grid = grid.reshape(len(dims), -1).T
        return [f"{name}[{', '.join(str(coords[k][i]) for k, i in enumerate(idx))}]" for idx in grid]
    idx = np.array(np.unravel_index(np.arange(int(np.prod(shape))), shape)).T
    return [f"{name}[{', '.join(str(i) for i in row)}]" for row in idx]


def _support(model, rv, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of each entry, from the variable's PyMC transform."""
    from pymc.distributions.transforms import CholeskyCovPacked
    from pymc.logprob.transforms import IntervalTransform, LogOddsTransform, LogTransform

    lower, upper = np.full(size, -np.inf), np.full(size, np.inf)
    tr = model.rvs_to_transforms.get(rv)
    if tr is None:
        return lower, upper
    if isinstance(tr, LogTransform):
        return np.zeros(size), upper
    if isinstance(tr, LogOddsTransform):
        return np.zeros(size), np.ones(size)
    if isinstance(tr, CholeskyCovPacked):
        lower[np.asarray(_value(tr.diag_idxs))] = 0.0
        return lower, upper
    if isinstance(tr, IntervalTransform):
        a, b = tr.args_fn(*rv.owner.inputs)
        a = -np.inf if a is None else np.broadcast_to(np.asarray(_value(a)), (size,))
        b = np.inf if b is None else np.broadcast_to(np.asarray(_value(b)), (size,))
        return np.broadcast_to(np.asarray(a, float), (size,)).copy(), np.broadcast_to(
            np.asarray(b, float), (size,)
        ).copy()
    raise MixVcovError(
        f"free variable {rv.name!r} has a {type(tr).__name__}, whose support pymc_mixvcov cannot "
        "read; supported transforms are log, log-odds, interval and LKJ Cholesky. Reparameterise "
        "the variable or pass a model without it."
    )


def _rv_replacements(params: list[FreeParam], nat: TensorVariable) -> dict:
    return {p.rv: pt.reshape(nat[p.slice], p.shape) for p in params}


def _strip_expand(x: TensorVariable) -> TensorVariable:
    from pytensor.tensor.elemwise import DimShuffle

    while x.owner is not None and isinstance(x.owner.op, DimShuffle) and x.owner.op.is_expand_dims:
        x = x.owner.inputs[0]
    return x


def _cov_factor(cov: TensorVariable) -> TensorVariable:
    """A lower-triangular factor of ``cov``: ``A`` when ``cov = A @ A.T``, else ``cholesky``."""
    from pytensor.tensor.blockwise import Blockwise
    from pytensor.tensor.math import Dot

    cov = _strip_expand(cov)
    node = cov.owner
    if node is not None:
        op = node.op.core_op if isinstance(node.op, Blockwise) else node.op
        if isinstance(op, Dot) or type(op).__name__ in {"Matmul", "Dot"}:
            a, b = node.inputs
            b0 = b.owner
            if b0 is not None and type(b0.op).__name__ in {"MatrixTranspose", "DimShuffle"}:
                if b0.inputs[0] is a:
                    return a
    return pt.linalg.cholesky(cov)


def inspect_model(model, random: list[str], noncentered: dict[str, str] | None = None) -> GaussianSpec:
    """Read a linear mixed model off a ``pm.Model``.

    Parameters
    ----------
    model : pymc.Model
        The model. Exactly one observed variable, with a Normal likelihood whose mean is
        affine in the random effects and in the fixed-effect parameters.
    random : list of str
        Names of the free variables to integrate out. Each must be a zero-mean ``Normal`` or
        ``MvNormal`` whose first dimension is a named grouping dimension.
    noncentered : dict, optional
        ``{random variable: deterministic}`` for non-centred random effects whose deterministic
        cannot be found automatically (see :func:`_mean_target`).

    Returns
    -------
    GaussianSpec

    Raises
    ------
    MixVcovError
        When the model is outside what the exact Gaussian engine supports; the message names
        the variable and what is supported.
    """
    if not random:
        raise MixVcovError("`random` is empty: name at least one random-effect variable")
    names = {v.name: v for v in model.free_RVs}
    for r in random:
        if r not in names:
            raise MixVcovError(
                f"{r!r} in `random` is not a free variable of the model; free variables are: {', '.join(names)}"
            )
    imputed = [v.name for v in model.free_RVs if v.name.endswith("_unobserved")]
    if imputed:
        raise MixVcovError(
            f"the observed data have missing values: PyMC turned them into the free variable(s) {imputed} "
            "(automatic imputation), which would be estimated as parameters. Remove the rows with missing "
            "values before building the model."
        )
    rand_rvs = [names[r] for r in random]
    potential = None
    if getattr(model, "potentials", None):
        potential = _likelihood_potential(model)
    elif not model.observed_RVs:
        raise MixVcovError("the model has no observed variable; give the likelihood observed=data")
    if potential is not None:
        obs = potential  # a sum of per-observation terms: its terms play the observed log-density
        y = None
        gaussian = False
        roots = [potential]
    else:
        if len(model.observed_RVs) != 1:
            raise MixVcovError(f"the model has {len(model.observed_RVs)} observed variables; exactly one is supported")
        obs = model.observed_RVs[0]
        raw = np.asarray(_value(model.rvs_to_values[obs])).reshape(-1)
        if raw.dtype.kind == "i" and raw.size and raw.min() == np.iinfo(raw.dtype).min:
            rows = np.flatnonzero(raw == np.iinfo(raw.dtype).min)[:10].tolist()
            raise MixVcovError(
                f"observed variable {obs.name!r} holds {np.iinfo(raw.dtype).min} at rows {rows}: the value that a "
                f"number beyond the {raw.dtype} range (such as a count of 1e19 given as a float) becomes when PyMC "
                f"casts it; counts must be below 2**63"
            )
        y = raw.astype(float)
        if not np.all(np.isfinite(y)):
            raise MixVcovError(f"observed variable {obs.name!r} has missing or infinite values")
        gaussian = isinstance(obs.owner.op, NormalRV)
        roots = (
            [obs.owner.inputs[2]]
            if gaussian
            else [v for v in obs.owner.inputs if str(getattr(v.type, "dtype", "")).startswith("float")]
        )
    # the variable through which the mean uses each random effect: itself (centred) or a
    # deterministic of it (non-centred: u = Deterministic(z * sd) or z @ chol.T)
    targets = [_mean_target(model, u, roots, rand_rvs, (noncentered or {}).get(u.name)) for u in rand_rvs]
    init = initial_natural(model)
    if gaussian:
        mu, sigma = obs.owner.inputs[2], obs.owner.inputs[3]
        if any(t in set(ancestors([sigma], blockers=targets)) for t in targets):
            gaussian = False  # a random effect in the residual SD: not a linear mixed model
    if gaussian:
        eta = mu
    else:
        eta = _find_eta(obs, targets, roots, model, rand_rvs, init)
        sigma = None
    if y is None:  # a Potential: as many "observations" as terms
        y = np.zeros(int(pytensor.function([], pt.as_tensor(potential.owner.inputs[0].shape[0]), mode=_FAST)()))
    _check_used(rand_rvs, targets, eta)

    params: list[FreeParam] = []
    start = 0
    mean_anc = set(ancestors([eta], blockers=targets))
    var_anc = set(ancestors([sigma], blockers=rand_rvs)) if gaussian else set()
    resid_anc = set(var_anc)
    lik_anc = set() if gaussian else set(ancestors(roots, blockers=[eta, *targets]))
    for u, t in zip(rand_rvs, targets, strict=True):
        var_anc |= set(ancestors(u.owner.inputs[2:], blockers=rand_rvs))
        if t is not u:
            var_anc |= set(ancestors([t], blockers=rand_rvs)) - {u}
    for rv in model.free_RVs:
        if rv in rand_rvs:
            continue
        if not rv.type.dtype.startswith("float"):
            raise MixVcovError(
                f"free variable {rv.name!r} is discrete ({rv.type.dtype}); only continuous parameters can be estimated"
            )
        shape = tuple(np.shape(init[rv.name]))
        size = int(np.prod(shape, dtype=int))
        lower, upper = _support(model, rv, size)
        in_mean, in_var, in_lik = rv in mean_anc, rv in var_anc, rv in lik_anc
        if in_mean + in_var + in_lik > 1:
            raise MixVcovError(
                f"parameter {rv.name!r} enters more than one of the linear predictor, the random-effect "
                "covariances and the likelihood's other parameters; they must be separate parameters"
            )
        params.append(
            FreeParam(
                rv.name,
                rv,
                shape,
                start,
                _entry_labels(model, rv, shape),
                lower,
                upper,
                "fixed" if in_mean else ("likelihood" if in_lik else "variance"),
            )
        )
        start += size
    nat = pt.vector("nat", shape=(start,))
    repl = _rv_replacements(params, nat)
    nat0 = np.concatenate([init[p.name].reshape(-1) for p in params]) if params else np.zeros(0)

    shapes = [tuple(np.shape(init[u.name])) for u in rand_rvs]
    sizes = [int(np.prod(s, dtype=int)) for s in shapes]
    uvec = pt.vector("u", shape=(sum(sizes),))
    offs = np.concatenate([[0], np.cumsum(sizes)])
    urepl = {t: pt.reshape(uvec[offs[k] : offs[k + 1]], shapes[k]) for k, t in enumerate(targets)}
    mu_g = graph_replace(eta, {**repl, **urepl}, strict=False)
    mu_g = pt.broadcast_to(mu_g, (y.size,)) if mu_g.ndim == 0 else pt.flatten(mu_g)
    mu_fn = _light([nat, uvec], mu_g)
    weights = None
    draw = None
    if gaussian:
        sigma_g = graph_replace(sigma, repl, strict=False)
        sigma_val = np.asarray(_light([nat], sigma_g)(nat0))
        if sigma_val.size != 1:
            split = split_residual_sd(sigma, [p.rv for p in params], y.size, obs.name)
            if split is not None:
                sigma_g = graph_replace(split[0], repl, strict=False)
                sigma_val, weights = np.asarray(_light([nat], sigma_g)(nat0)), split[1]
            if sigma_val.size != 1:
                raise MixVcovError(
                    f"the residual SD of {obs.name!r} varies across observations; the exact Gaussian engine needs "
                    "one residual SD, or one SD and precision weights written sigma / pt.sqrt(w) (sigma a "
                    "parameter, w positive data: lme4's weights)"
                )
        sigma_s = pt.reshape(sigma_g, ())
        logp = None
    else:
        sigma_s = None
        if potential is not None:
            logp = _potential_logp(potential, eta, repl, targets, y.size)
        else:
            obs_shape = tuple(np.shape(_value(model.rvs_to_values[obs])))
            logp = _observation_logp(obs, eta, repl, targets, y, obs_shape)
            draw = (*_observation_draw(obs, eta, repl, y.size), obs_shape)

    fixed_index = np.concatenate(
        [np.arange(p.start, p.start + p.size) for p in params if p.role == "fixed"] or [np.zeros(0, int)]
    ).astype(int)
    base = nat0.copy()
    base[fixed_index] = 0.0
    zero_u = np.zeros(offs[-1])
    offset = mu_fn(base, zero_u)
    X = np.empty((y.size, fixed_index.size))
    for j, k in enumerate(fixed_index):
        e = base.copy()
        e[k] = 1.0
        X[:, j] = mu_fn(e, zero_u) - offset

    terms = []
    for k, u in enumerate(rand_rvs):
        term = _random_term(model, u, shapes[k], offs[k], offs[-1], mu_fn, base, offset, repl, rand_rvs, nat, nat0)
        if targets[k] is not u:
            term = _through_deterministic(model, term, u, targets[k], shapes[k], repl, nat, nat0)
        terms.append(term)
    _verify_affine(mu_fn, base, offset, X, terms, offs, fixed_index, params, nat0)
    residual_index = np.array(
        [i for p in params if p.rv in resid_anc for i in range(p.start, p.start + p.size)], dtype=int
    )
    psi_index = np.array(
        [i for p in params if p.role == "likelihood" for i in range(p.start, p.start + p.size)], dtype=int
    )
    return GaussianSpec(
        model,
        nat,
        params,
        terms,
        X,
        y,
        offset,
        sigma_s,
        fixed_index,
        nat0,
        obs.name,
        residual_index,
        family="gaussian" if gaussian else type(obs.owner.op).__name__.removesuffix("RV"),
        logp=logp,
        psi_index=psi_index,
        weights=weights,
        draw=draw,
    )


def _mean_target(model, u, roots, rand_rvs, name: str | None):
    """The variable through which the linear predictor uses the random variable ``u``.

    ``u`` itself for a centred random effect. For a non-centred one (``z ~ N(0, 1)`` and
    ``u = pm.Deterministic("u", z * sd)`` or ``z @ chol.T``) the deterministic: found as the
    only deterministic of ``u`` through which every use of ``u`` in the mean passes, or named
    by the user (``noncentered={"z": "u"}``). Its covariance factor is then read off the
    deterministic (see :func:`_through_deterministic`).
    """
    others = [r for r in rand_rvs if r is not u]
    if name is not None:
        dets = {d.name: d for d in model.deterministics}
        if name not in dets:
            raise MixVcovError(
                f"noncentered names {name!r} for random variable {u.name!r}, but the model has no "
                f"deterministic of that name; deterministics: {', '.join(dets) or 'none'}"
            )
        d = dets[name]
        if u not in set(ancestors([d], blockers=others)):
            raise MixVcovError(f"deterministic {name!r} does not depend on random variable {u.name!r}")
        return d
    if u not in set(ancestors(roots, blockers=others)):
        return u  # unused: reported by _check_used
    candidates = [
        d
        for d in model.deterministics
        if u in set(ancestors([d], blockers=others))
        and d in set(ancestors(roots, blockers=others))
        and u not in set(ancestors(roots, blockers=[*others, d]))
        and _per_level(d, u, others)
    ]
    if not candidates:
        return u
    # the deterministic closest to the mean: not an ancestor of another candidate
    closest = [d for d in candidates if not any(d in set(ancestors([e])) for e in candidates if e is not d)]
    first = [d for d in closest if not any(e in set(ancestors([d])) for e in closest if e is not d)]
    return first[0] if len(first) == 1 else min(candidates, key=lambda d: len(list(ancestors([d]))))


def _per_level(d, u, others) -> bool:
    """Whether deterministic ``d`` can be a per-level map of random variable ``u``: the same shape
    (levels, effects) and no other random variable among its inputs. This rules out the linear
    predictor itself when a model keeps it as a deterministic (bambi's ``mu``, of shape ``n``,
    which every random effect reaches)."""
    if set(others) & set(ancestors([d])):
        return False
    if d.ndim != u.ndim:
        return False
    try:
        d_shape, u_shape = pytensor.function([], [pt.as_tensor(d.shape), pt.as_tensor(u.shape)], mode=_FAST)()
    except Exception:  # shapes not evaluable alone: keep the candidate, as before
        return True
    return bool(np.array_equal(np.asarray(d_shape), np.asarray(u_shape)))


def _find_eta(obs, targets, roots, model, rand_rvs, init):
    """The linear predictor of a non-Gaussian likelihood (``eta`` in ``Poisson(exp(eta))``).

    The variable closest to the likelihood through which every random effect enters, that is
    affine in the random effects with a design free of every parameter (checked numerically at
    two parameter points; ``(y - eta) / sigma`` is rejected: its design depends on ``sigma``).
    Its affinity in the fixed effects is verified later by probing.
    """
    from pytensor.graph.traversal import toposort

    tset = set(targets)
    dependent = [
        out
        for node in reversed(list(toposort(roots)))
        for out in node.outputs
        if str(getattr(out.type, "dtype", "")).startswith("float") and tset & set(ancestors([out], blockers=targets))
    ]
    for var in dependent:
        if var.ndim <= 1 and not tset & set(ancestors(roots, blockers=[var])):
            if _design_is_free(var, targets, model, rand_rvs, init):
                return var
    raise MixVcovError(
        f"cannot find the linear predictor of observed variable {obs.name!r}: the random effects must "
        "enter its likelihood through one linear predictor eta = offset + X beta + Z u (e.g. "
        "Poisson(mu=exp(eta)))"
    )


def _design_is_free(var, targets, model, rand_rvs, init) -> bool:
    """Whether ``var`` is affine in the random effects with a design that no parameter changes
    (``init``: :func:`initial_natural` of the model)."""
    free = [rv for rv in model.free_RVs if rv not in rand_rvs]
    sizes = [init[rv.name].size for rv in free]
    offs = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    pvec = pt.vector("p", shape=(int(offs[-1]),))
    repl = {rv: pt.reshape(pvec[offs[k] : offs[k + 1]], init[rv.name].shape) for k, rv in enumerate(free)}
    tshapes = [tuple(np.shape(init[u.name])) for u in rand_rvs]
    tsizes = [int(np.prod(sh, dtype=int)) for sh in tshapes]
    toffs = np.concatenate([[0], np.cumsum(tsizes)]).astype(int)
    uvec = pt.vector("u", shape=(int(toffs[-1]),))
    urepl = {t: pt.reshape(uvec[toffs[k] : toffs[k + 1]], tshapes[k]) for k, t in enumerate(targets)}
    g = pt.flatten(graph_replace(var, {**repl, **urepl}, strict=False))
    # probes may overflow (exp of a large linear predictor): such a variable is not taken as affine
    with np.errstate(all="ignore"):
        try:
            fn = _light([pvec, uvec], g)
            rng = np.random.default_rng(5)
            p0 = np.concatenate([init[rv.name].reshape(-1) for rv in free]) if free else np.zeros(0)
            p1 = p0 * (1.0 + 0.3 * rng.uniform(size=p0.size)) + 0.1 * np.sign(p0 + 1e-300)
            u1, u2, zero = (
                rng.normal(size=uvec.type.shape[0]),
                rng.normal(size=uvec.type.shape[0]),
                np.zeros(uvec.type.shape[0]),
            )
            f0 = fn(p0, zero)
            d1, d2, d12 = fn(p0, u1) - f0, fn(p0, u2) - f0, fn(p0, u1 + u2) - f0
            e1 = fn(p1, u1) - fn(p1, zero)
            # and affine in the parameters (the fixed effects): rejects log(alpha) - eta and the like
            fm, f1 = fn(0.5 * (p0 + p1), zero), fn(p1, zero)
        except Exception:  # not evaluable alone (e.g. depends on data outside the graph)
            return False
    scale = 1e-8 * (1.0 + np.max(np.abs(d12)))
    pscale = 1e-8 * (1.0 + np.max(np.abs(np.r_[f0, f1])))
    return bool(
        np.all(np.isfinite(d12))
        and np.allclose(d12, d1 + d2, atol=scale)
        and np.allclose(e1, d1, atol=scale)
        and np.allclose(fm, 0.5 * (f0 + f1), atol=pscale)
    )


def _observation_logp(obs, eta, repl, targets, y, obs_shape):
    """Per-observation log-density as a graph of ``eta``, ``y`` and ``nat`` (see GaussianSpec.logp)."""
    import pymc as pm

    n = y.size
    eta_in = pt.vector("eta", shape=(n,))
    y_in = pt.vector("yobs", shape=(n,))
    value = pt.cast(y_in, obs.type.dtype) if obs.type.dtype != "float64" else y_in
    eta_rep = eta_in if eta.ndim == 1 else eta_in[0]
    # the observed variable with its linear predictor and parameters replaced, then its log-density
    # (PyMC's logp machinery clones graphs, so the replacement must come first)
    obs_new = graph_replace(graph_replace(obs, {eta: eta_rep}, strict=False), repl, strict=False)
    lp = pm.logp(obs_new, pt.reshape(value, obs_shape))
    # shared variables (coordinate lengths, pm.Data) become constants: the graph is cached
    shared = [v for v in ancestors([lp]) if isinstance(v, SharedVariable) and hasattr(v.type, "dtype")]
    if shared:
        lp = graph_replace(lp, {v: pt.constant(v.get_value(), dtype=v.type.dtype) for v in shared}, strict=False)
    lp = pt.broadcast_to(lp, (n,)) if lp.ndim == 0 else pt.flatten(lp)
    # PyMC's parameter checks raise; as -inf the optimiser can step back from invalid values
    from pymc.logprob.utils import local_check_parameter_to_ninf_switch
    from pytensor.graph.fg import FunctionGraph
    from pytensor.graph.traversal import graph_inputs

    roots = [v for v in graph_inputs([lp]) if not isinstance(v, pt.TensorConstant | SharedVariable)]
    fg = FunctionGraph(roots, [lp], clone=False)
    dfs_rewriter(local_check_parameter_to_ninf_switch).rewrite(fg)
    lp = fg.outputs[0]
    if set(targets) & set(ancestors([lp])):
        raise MixVcovError(
            f"the likelihood of {obs.name!r} uses the random effects outside its linear predictor; the "
            "Laplace engine needs them inside one linear predictor"
        )
    return eta_in, y_in, lp


def _observation_draw(obs, eta, repl, n: int):
    """The observed random variable as a graph of ``eta`` and ``nat`` (see GaussianSpec.draw)."""
    eta_in = pt.vector("eta", shape=(n,))
    eta_rep = eta_in if eta.ndim == 1 else eta_in[0]
    return eta_in, graph_replace(graph_replace(obs, {eta: eta_rep}, strict=False), repl, strict=False)


def _likelihood_potential(model):
    """The one ``pm.Potential`` that holds the likelihood: ``pm.Potential(name, terms.sum())``.

    Its per-observation terms (the summed vector) take the place of an observed variable's
    log-density. Models with observed variables and potentials, or several potentials, are refused:
    a potential's terms cannot otherwise be assigned to clusters.
    """
    from pytensor.tensor.math import Sum

    names = ", ".join(v.name or "?" for v in model.potentials)
    if model.observed_RVs or len(model.potentials) != 1:
        raise MixVcovError(
            f"the model has pm.Potential terms ({names}) besides {len(model.observed_RVs)} observed variable(s); "
            "supported are one observed variable, or one Potential holding the whole likelihood as a sum of "
            "per-observation terms, pm.Potential('loglik', terms.sum())"
        )
    pot = model.potentials[0]
    node = pot.owner
    while node is not None and type(node.op).__name__ == "DimShuffle":
        node = node.inputs[0].owner
    if node is None or not isinstance(node.op, Sum) or node.inputs[0].ndim != 1:
        raise MixVcovError(
            f"pm.Potential {pot.name!r} must be the sum of a vector of per-observation log-likelihood terms, "
            "pm.Potential(name, terms.sum()), so that its terms can be assigned to clusters"
        )
    return node.outputs[0]


def _potential_logp(potential, eta, repl, targets, n: int):
    """Per-observation terms of a likelihood Potential as a graph of ``eta`` and ``nat``."""
    eta_in = pt.vector("eta", shape=(n,))
    y_in = pt.vector("yobs", shape=(n,))
    eta_rep = eta_in if eta.ndim == 1 else eta_in[0]
    terms = potential.owner.inputs[0]
    lp = graph_replace(graph_replace(terms, {eta: eta_rep}, strict=False), repl, strict=False)
    shared = [v for v in ancestors([lp]) if isinstance(v, SharedVariable) and hasattr(v.type, "dtype")]
    if shared:
        lp = graph_replace(lp, {v: pt.constant(v.get_value(), dtype=v.type.dtype) for v in shared}, strict=False)
    lp = pt.flatten(lp)
    if set(targets) & set(ancestors([lp])):
        raise MixVcovError(
            "the Potential uses the random effects outside its linear predictor; the Laplace engine needs "
            "them inside one linear predictor"
        )
    return eta_in, y_in, lp


def _check_used(rand_rvs, targets, mu) -> None:
    anc = set(ancestors([mu], blockers=targets))
    for u, t in zip(rand_rvs, targets, strict=True):
        if t not in anc:
            raise MixVcovError(
                f"random variable {u.name!r} is not used by the likelihood's mean; only random effects "
                "that enter the linear predictor can be integrated out"
            )


def _through_deterministic(model, term: RandomTerm, u, det, shape, repl, nat, nat0) -> RandomTerm:
    """A non-centred term: the mean uses ``det = f(u)``, linear in each level of ``u``.

    Per level ``det[l] = M(theta) u[l]``; ``M`` is the symbolic Jacobian of one level, verified
    to be the same for every level at random points. The covariance factor of ``det`` is then
    ``M Lambda_u`` (lower triangular as for ``z * sd`` or ``z @ chol.T``; otherwise the Cholesky
    factor of ``M Lambda_u Lambda_u^T M^T``).
    """
    r = term.r
    n_lev = shape[0]
    zz = pt.matrix("zz", shape=(n_lev, r))
    d_of = graph_replace(det, {u: pt.reshape(zz, shape), **repl}, strict=False)
    d_of = pt.reshape(d_of, (n_lev, r))
    M = pt.stack([pytensor.gradient.grad(d_of[0, i], zz)[0] for i in range(r)])
    fn = _light([nat, zz], [d_of, M])
    rng = np.random.default_rng(11)
    for point in (nat0, nat0 * (1.0 + 0.3 * rng.uniform(size=nat0.size)) + 0.1):
        z = rng.normal(size=(n_lev, r))
        d_val, M_val = fn(point, z)
        if not np.allclose(d_val, z @ M_val.T, rtol=1e-8, atol=1e-10 * (1 + np.abs(d_val).max())):
            raise MixVcovError(
                f"deterministic {det.name!r} is not the same linear map of every level of random variable "
                f"{u.name!r}; a non-centred random effect must be u[l] = M z[l] (e.g. z * sd or z @ chol.T)"
            )
    M_sym = graph_replace(M, {zz: pt.zeros((n_lev, r))}, strict=False)
    fac = pt.dot(M_sym, term.lam)
    f_val = _light([nat], fac)(nat0)
    if r > 1 and np.any(np.abs(np.triu(f_val, 1)) > 0):
        fac = pt.linalg.cholesky(pt.dot(fac, fac.T))
    name = det.name
    dims = model.named_vars_to_dims.get(name)
    effects = term.effects
    if dims and len(dims) > 1 and dims[1] in model.coords:
        effects = [str(c) for c in model.coords[dims[1]]]
    elif r == 1:
        effects = [name]
    group = dims[0] if dims and dims[0] in model.coords else term.group
    return RandomTerm(name, group, term.levels, effects, term.codes, term.z, fac)


def _known_shape(model, rv) -> np.ndarray | None:
    """The shape of ``rv`` from its static type or from the lengths of its dims' coordinates, or ``None``."""
    if None not in rv.type.shape:
        return np.asarray(rv.type.shape, int)
    dims = model.named_vars_to_dims.get(rv.name)
    if dims is None or len(dims) != rv.type.ndim:
        return None
    out = []
    for dim, static in zip(dims, rv.type.shape, strict=True):
        values = model.coords.get(dim) if dim is not None else None
        if values is None:
            return None
        n = len(values)
        if static is not None and static != n:
            return None
        out.append(n)
    return np.asarray(out, int)


def initial_natural(model) -> dict[str, np.ndarray]:
    """Starting values of every free variable on its constrained (natural) scale.

    A numeric ``initval`` given to the variable is used as it is; otherwise the value whose
    unconstrained transform is zero (``1`` for a positive variable, the identity for an LKJ
    Cholesky factor, the midpoint of an interval, ``0`` for an unbounded variable). This needs
    only the variables' shapes and transforms; unlike ``model.initial_point()`` it evaluates no
    prior moment or random draw. Symbolic or strategy initvals fall back to PyMC's initial point.
    """
    free = list(model.free_RVs)
    initvals = {rv: model.rvs_to_initial_values.get(rv) for rv in free}
    if any(v is not None and not isinstance(v, int | float | np.ndarray | list | tuple) for v in initvals.values()):
        point = model.initial_point()
        out = {}
        for rv in free:
            v = point[model.rvs_to_values[rv].name]
            tr = model.rvs_to_transforms.get(rv)
            if tr is not None:
                v = _value(tr.backward(pt.as_tensor(np.asarray(v)), *rv.owner.inputs))
            out[rv.name] = np.asarray(v, float)
        return out
    from pymc.logprob.transforms import LogTransform

    # shapes known statically or from the variables' dims need no evaluation (a formula's all are)
    known_shapes = [_known_shape(model, rv) for rv in free]
    if all(k is not None for k in known_shapes):
        shapes = known_shapes
    else:
        shapes = pytensor.function([], [pt.as_tensor(rv.shape) for rv in free], mode=_FAST)() if free else []
    outs, names = [], []
    known: dict[str, np.ndarray] = {}
    for rv, shape in zip(free, shapes, strict=True):
        shape = tuple(int(k) for k in np.asarray(shape).reshape(-1))
        tr = model.rvs_to_transforms.get(rv)
        if initvals[rv] is not None:
            continue
        if tr is None:
            continue
        if type(tr) is LogTransform:  # exp(0)
            known[rv.name] = np.ones(shape)
            continue
        value = model.rvs_to_values[rv]
        zero = pt.zeros(tuple(value.type.shape) if None not in value.type.shape else shape)
        outs.append(pt.broadcast_to(tr.backward(zero, *rv.owner.inputs), shape))
        names.append(rv.name)
    values = dict(zip(names, pytensor.function([], outs, mode=_FAST)() if outs else [], strict=True))
    values.update(known)
    result = {}
    for rv, shape in zip(free, shapes, strict=True):
        shape = tuple(int(k) for k in np.asarray(shape).reshape(-1))
        if initvals[rv] is not None:
            result[rv.name] = np.broadcast_to(np.asarray(initvals[rv], float), shape).copy()
        elif rv.name in values:
            result[rv.name] = np.asarray(values[rv.name], float).reshape(shape)
        else:
            result[rv.name] = np.zeros(shape)
    return result


def _random_term(model, u, shape, off, q, mu_fn, base, offset, repl, rand_rvs, nat, nat0) -> RandomTerm:
    name = u.name
    dims = model.named_vars_to_dims.get(name)
    if not dims or dims[0] is None or dims[0] not in model.coords:
        raise MixVcovError(
            f"random variable {name!r} has no grouping dimension; declare it with "
            "dims=('group',) or dims=('group', 'effect') so that its clusters are known"
        )
    group = dims[0]
    levels = [str(c) for c in model.coords[group]]
    if len(shape) == 1:
        effects = [name]
    elif len(shape) == 2:
        edim = dims[1] if len(dims) > 1 else None
        effects = [str(c) for c in model.coords[edim]] if edim in model.coords else [str(i) for i in range(shape[1])]
    else:
        raise MixVcovError(f"random variable {name!r} must have one or two dimensions (group, effect)")
    n_lev, r = shape[0], len(effects)
    lam = _prior_factor(model, u, r, repl, rand_rvs, nat, nat0)

    n = offset.size
    codes = np.full(n, -1)
    z = np.zeros((n, r))
    lev = np.arange(1, n_lev + 1, dtype=float)
    for j in range(r):
        d1 = np.zeros((n_lev, r))
        d1[:, j] = 1.0
        d2 = np.zeros((n_lev, r))
        d2[:, j] = lev
        v1, v2 = np.zeros(q), np.zeros(q)
        v1[off : off + n_lev * r] = d1.reshape(-1)
        v2[off : off + n_lev * r] = d2.reshape(-1)
        zj = mu_fn(base, v1) - offset
        tj = mu_fn(base, v2) - offset
        used = np.abs(zj) > 1e-300
        cj = np.rint(tj[used] / zj[used]).astype(int) - 1
        clash = (codes[used] >= 0) & (codes[used] != cj)
        if np.any(clash) or np.any((cj < 0) | (cj >= n_lev)):
            raise MixVcovError(
                f"observations use several levels of random variable {name!r} at once; each "
                "observation must use one level of each random-effect variable (index it as "
                "u[group_idx])"
            )
        codes[used] = cj
        z[:, j] = zj
    return RandomTerm(name, group, levels, effects, codes, z, lam)


def _prior_factor(model, u, r, repl, rand_rvs, nat, nat0) -> TensorVariable:
    op, inputs = u.owner.op, u.owner.inputs
    if isinstance(op, NormalRV):
        loc, scale = inputs[2], inputs[3]
    elif isinstance(op, MvNormalRV):
        loc, scale = inputs[2], inputs[3]
    else:
        raise MixVcovError(
            f"random variable {u.name!r} has a {type(op).__name__.removesuffix('RV')} prior; random "
            "effects must be zero-mean Normal or MvNormal"
        )
    if any(a in rand_rvs for a in ancestors([loc, scale], blockers=rand_rvs) if a is not u):
        raise MixVcovError(f"the prior of random variable {u.name!r} depends on another random variable")
    loc_g, scale_g = graph_replace([loc, scale], repl, strict=False)
    fn = _light([nat], [loc_g, scale_g])
    loc_v, scale_v = fn(nat0)
    if np.any(np.asarray(loc_v) != 0):
        raise MixVcovError(f"random variable {u.name!r} must have mean zero")
    if isinstance(op, NormalRV):
        sv = np.asarray(scale_v)
        if (
            sv.ndim >= 1
            and sv.shape[-1] not in (1, r)
            or (sv.ndim == 2 and sv.shape[0] != 1)
            or (sv.ndim == 1 and u.ndim == 1 and sv.shape[0] != 1)
        ):
            raise MixVcovError(
                f"the SD of random variable {u.name!r} varies across clusters; it must be one SD per effect"
            )
        sd = pt.flatten(scale_g)
        sd = pt.alloc(sd[0], r) if (sv.size == 1) else sd[-r:]
        return pt.diag(sd)
    fac = graph_replace([_cov_factor(scale)], repl, strict=False)[0]
    while fac.ndim > 2:
        fac = fac[0]
    return fac


def _verify_affine(mu_fn, base, offset, X, terms, offs, fixed_index, params, nat0) -> None:
    rng = np.random.default_rng(20261121)
    q = offs[-1]
    for trial in range(2):
        v = rng.normal(size=q)
        b = rng.normal(size=fixed_index.size)
        point = base.copy() if trial == 0 else nat0 * (1.0 + 0.3 * rng.uniform(size=nat0.size)) + 0.1
        point[fixed_index] = b
        got = mu_fn(point, v)
        want = offset + X @ b
        for k, t in enumerate(terms):
            ublk = v[offs[k] : offs[k + 1]].reshape(len(t.levels), t.r)
            used = t.codes >= 0
            want[used] += np.sum(t.z[used] * ublk[t.codes[used]], axis=1)
        scale = np.max(np.abs(want)) + 1.0
        if not np.allclose(got, want, rtol=1e-8, atol=1e-8 * scale):
            what = (
                "the fixed effects and random effects"
                if trial == 0
                else "the variance parameters (a non-centred parameterisation?)"
            )
            hint = (
                ". If a random effect is non-centred (z ~ Normal(0, 1) scaled by an SD in the mean), let the "
                "mean use a deterministic u = pm.Deterministic('u', z * sd) (or z @ chol.T), or name it: "
                "noncentered={'z': 'u'}"
            )
            raise MixVcovError(
                "the linear predictor is not affine in the random effects with a design that is "
                f"free of {what}; the engine needs mean = offset + X beta + Z u{hint}"
            )
