"""Fitting: maximise the marginal likelihood of a ``pm.Model`` with random effects.

The criterion is optimised over the variance parameters with the fixed effects profiled out
(their generalised least squares value is exact for given variances), first by L-BFGS-B
within the parameters' supports, then by Newton steps with the exact Hessian, until the
Newton decrement is below ``1e-10``. Parameters on the boundary of their support (a standard
deviation of 0) are held there, as lme4 does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np
import pandas as pd
import pytensor
from scipy.optimize import minimize

from .._startup import paused_gc
from ..compilation.derivatives import LMMFunctions
from ..engines.marginal import build_structure
from ..engines.select import (
    BLOCKED_MIN_EFFECTS,
    ENGINES,
    Engine,
    build_functions,
    choose_engine,
    diagnose,
    engine_structure,
)
from ..errors import MixVcovError
from ..inference.results import MixedFit
from ..inference.scales import ScaleMaps
from ..model.frames import as_pandas
from ..model.identification import unidentified_terms
from ..model.spec import inspect_model
from ..output.progress import task as progress_task
from ..output.progress import update as progress_update
from .start import boundary_restarts, check_not_exact, curvature_scales, natural_start
from .trust import trust_region_newton

__all__ = ["fit", "Method", "Engine", "BLOCKED_MIN_EFFECTS"]

Method = Literal["ML", "REML", "MAP"]
METHODS: tuple[str, ...] = get_args(Method)

#: Engines (``"auto"``, ``"clusters"``, ``"blocked"``): see :mod:`pymc_mixvcov.engines.select`.


@dataclass(frozen=True)
class OptimResult:
    """Outcome of the optimiser: the natural parameters and the criterion's derivatives there."""

    nat: np.ndarray
    info: dict
    converged: bool
    iterations: int
    grad_norm: float
    at_bound: np.ndarray
    message: str


def fit(
    model,
    random: list[str] | None = None,
    *,
    method: Method = "ML",
    cluster=None,
    noncentered: dict[str, str] | None = None,
    fixed_labels: list[str] | None = None,
    data: pd.DataFrame | None = None,
    nAGQ: int = 1,
    engine: Engine = "auto",
    progress: bool | None = None,
) -> MixedFit:
    """Fit a PyMC model by maximising its marginal likelihood over the random effects.

    Parameters
    ----------
    model : pymc.Model or bambi.Model
        A model whose random effects are zero-mean Normal or MvNormal variables entering a
        linear predictor; its likelihood is any observed distribution PyMC can evaluate (or a
        ``pm.Potential``), Gaussian ones with a linear mean integrated exactly (precision
        weights as lme4's ``weights``: residual SD ``sigma / pt.sqrt(w)``, see
        :mod:`pymc_mixvcov.model.weights`).
        A ``bambi.Model`` is read by :func:`pymc_mixvcov.model.bambi.from_bambi` and fitted on its
        original predictor scale with lme4's labels (``random`` is then not given).
    random : list of str
        Names of the random-effect variables to integrate out (required for a ``pm.Model``).
    method : {"ML", "REML", "MAP"}
        Maximum likelihood, restricted maximum likelihood (lme4's REML criterion), or the mode
        of the marginal posterior of the parameters (priors kept; see
        :class:`pymc_mixvcov.compilation.derivatives.MAPFunctions`): its covariance is the Laplace
        approximation of the posterior covariance.
    cluster : str, array_like or list, optional
        Default clusters of :meth:`MixedFit.sandwich` (a column of ``data``, labels with one
        entry per observation, or a list for multi-way clustering). By default the clusters are
        the levels of the random variables' grouping dimension.
    noncentered : dict, optional
        ``{"z": "u"}``: random variable ``z`` is non-centred and the mean uses it through the
        deterministic ``u`` (e.g. ``u = pm.Deterministic("u", z * sd)``). Needed only when the
        deterministic cannot be found automatically (the mean uses ``z`` only through ``u``).
    fixed_labels : list of str, optional
        Labels of the fixed effects in reports (default: the model's own labels, e.g.
        ``beta[Days]``).
    data : pandas.DataFrame, optional
        The data, row-aligned with the observations, whose columns may then be named as
        clusters in :meth:`MixedFit.sandwich`.
    nAGQ : int, default 1
        Non-Gaussian likelihoods: ``1`` integrates the random effects by the Laplace
        approximation (lme4's ``glmer`` default; any random-effect structure); more points
        use adaptive Gauss-Hermite quadrature with ``nAGQ`` nodes per random effect (a product
        grid of ``nAGQ**q`` nodes for ``q`` random effects per cluster), for models whose
        random effects share one grouping factor, scalar or vector. The log-likelihood is then
        the quadrature value of the true marginal log-likelihood, all constants included.
        Gaussian likelihoods are integrated exactly and take ``nAGQ=1`` only.
    engine : {"auto", "clusters", "blocked"}
        Gaussian models: ``"clusters"`` evaluates the exact marginal likelihood cluster by cluster
        with dense factors (pytensor graphs, :mod:`pymc_mixvcov.engines.marginal`); ``"blocked"`` the whole
        model at once with the blocked sparse factor of MixedModels.jl and closed-form derivatives
        (:mod:`pymc_mixvcov.engines.blocked`), for crossed designs; ``"auto"`` picks ``"blocked"`` when the
        largest cluster has more than :data:`BLOCKED_MIN_EFFECTS` random effects. The choice is
        reported as ``fit.engine``. Non-Gaussian models: ``"clusters"`` is the Laplace/quadrature engine
        cluster by cluster (reported as ``"laplace"``), ``"blocked"`` the Laplace approximation of the
        whole model with the blocked factor (:mod:`pymc_mixvcov.engines.blocked_laplace`, ``nAGQ=1``);
        ``"auto"`` picks ``"blocked"`` on the same rule.
    progress : bool or None
        Whether a status line may show the fit's stage (the first build of a new signature's
        graphs, the optimiser's evaluations) on standard error; it appears only when the fit
        takes more than a second. ``None``: the environment variable ``PYMC_MIXVCOV_PROGRESS``
        (``0`` or ``1``) decides, else whether standard error is a terminal; see
        :mod:`pymc_mixvcov.output.progress`.

    Returns
    -------
    MixedFit
    """
    import pymc as pm

    from ..model.bambi import from_bambi, is_bambi_model

    if is_bambi_model(model):
        if random is not None or noncentered is not None or fixed_labels is not None:
            raise MixVcovError(
                "a bambi model names its own random effects and labels: pass it without random, noncentered "
                "and fixed_labels, as pmv.fit(bambi_model, method=...)"
            )
        mixed = from_bambi(model)
        if data is not None:
            mixed.data = as_pandas(data)
        if cluster is None:
            return mixed.fit(method=method, nAGQ=nAGQ, progress=progress)
        return _with_cluster(mixed, method, nAGQ, cluster, progress)
    if not isinstance(model, pm.Model):
        hint = "; pass its .model or call its .fit()" if hasattr(model, "model") else ""
        raise MixVcovError(f"model must be a pymc.Model, got {type(model).__name__}{hint}")
    if random is None:
        raise MixVcovError("random is missing: name the random-effect variables to integrate out, random=['u']")
    if not isinstance(random, list | tuple) or not all(isinstance(r, str) for r in random):
        raise MixVcovError(f"random must be a list of variable names (str), got {random!r}")
    if data is not None:
        data = as_pandas(data)  # polars and other frames (model/frames.py)
    if method not in METHODS:
        raise MixVcovError(f"unknown method {method!r}; valid methods are: {', '.join(map(repr, METHODS))}")
    if engine not in ENGINES:
        raise MixVcovError(f"unknown engine {engine!r}; valid engines are: {', '.join(map(repr, ENGINES))}")
    # graph construction records a stack trace per node unless told not to: a large share of
    # the build time of gradient graphs
    description = f"pymc_mixvcov: fitting ({method}{f', nAGQ = {nAGQ}' if nAGQ != 1 else ''})"
    with (
        pytensor.config.change_flags(traceback__limit=0),
        paused_gc(),
        progress_task(description, detail="reading the model", progress=progress),
    ):
        result = _fit(model, random, method, fixed_labels, data, cluster, noncentered, nAGQ, engine)
    # what a refit by another method needs (pymc_mixvcov.inference.anova refits REML fits by ML)
    result._call = {
        "model": model,
        "random": list(random),
        "fixed_labels": fixed_labels,
        "data": data,
        "cluster": cluster,
        "noncentered": noncentered,
        "nAGQ": nAGQ,
        "engine": engine,
    }
    return result


def _with_cluster(mixed, method, nagq, cluster, progress=None) -> MixedFit:
    """A bambi model's fit with default clusters ``cluster`` (see :func:`fit`)."""
    if mixed.source == "bambi" and method == "MAP":
        return mixed.fit(method=method, nAGQ=nagq)  # refused there, with the reason
    result = fit(
        mixed.model,
        mixed.random,
        method=method,
        cluster=cluster,
        fixed_labels=mixed.fixed_labels,
        data=mixed.data,
        nAGQ=nagq,
        progress=progress,
    )
    result.posterior_names = mixed.posterior_names
    return result


def _check_nagq(nagq, spec, structure) -> int:
    """Validate ``nAGQ`` for this model (see :func:`fit`)."""
    if isinstance(nagq, bool) or not isinstance(nagq, int | np.integer) or nagq < 1:
        raise MixVcovError(f"nAGQ must be a positive integer, got {nagq!r}")
    nagq = int(nagq)
    if nagq == 1:
        return 1
    if spec.gaussian:
        raise MixVcovError(
            f"nAGQ={nagq}: the Gaussian marginal likelihood is integrated exactly; quadrature applies to "
            "non-Gaussian likelihoods only. Use nAGQ=1"
        )
    groups = {t.group for t in spec.terms}
    same = all(np.array_equal(t.codes, spec.terms[0].codes) for t in spec.terms)
    if len(groups) > 1 or not same:
        names = ", ".join(sorted(groups))
        raise MixVcovError(
            f"nAGQ={nagq}: adaptive Gauss-Hermite quadrature needs random effects on one grouping factor; "
            f"this model has several ({names}: crossed or nested). Use nAGQ=1 (Laplace), which handles any "
            "random-effect structure"
        )
    nodes = nagq ** max(bt.s for bt in structure.batches)
    if nodes * spec.n > 5e7:
        raise MixVcovError(
            f"nAGQ={nagq} with {max(bt.s for bt in structure.batches)} random effects per cluster is a grid of "
            f"{nodes} nodes, evaluated at each of {spec.n} observations: too large. Use fewer points per "
            "random effect (nAGQ=5 to 9 is usually enough for vector random effects)"
        )
    return nagq


def _fit(model, random, method, fixed_labels, data, cluster=None, noncentered=None, nagq=1, engine="auto") -> MixedFit:
    if method == "REML":
        from pytensor.tensor.random.basic import NormalRV

        obs = list(getattr(model, "observed_RVs", []))
        if obs and not isinstance(obs[0].owner.op, NormalRV):
            raise MixVcovError(
                f"REML is defined for Gaussian likelihoods only; observed variable {obs[0].name!r} has "
                f"a {obs[0].owner.op.name} likelihood: use method='ML'"
            )
    if isinstance(random, str):
        random = [random]
    spec = inspect_model(model, list(random), noncentered)
    structure = build_structure(spec, statistics=False)
    engine = choose_engine(spec, structure, engine, nagq)
    structure = engine_structure(spec, structure, engine)
    scales = ScaleMaps(spec, fixed_labels)
    for message in unidentified_terms(spec, scales.labels("sd")):
        import warnings

        from ..errors import SingularFitWarning

        warnings.warn(message, SingularFitWarning, stacklevel=3)
    nagq = _check_nagq(nagq, spec, structure)
    fns, structure = build_functions(spec, structure, engine, method, nagq)
    opt = optimise(fns, spec) if fns.profiled else _optimise_all(fns, spec)
    problems = diagnose(fns, opt.nat, scales.labels("sd")[: spec.fixed_index.size])
    if problems:
        import warnings

        from ..errors import ConvergenceWarning

        for message in problems:
            warnings.warn(message, ConvergenceWarning, stacklevel=3)
        if method != "MAP":
            # the gradient vanishes as estimates drift to infinity (separation) or the modes do
            # not exist: a small Newton decrement there is not convergence to a maximum
            opt = replace(
                opt,
                converged=False,
                message=f"not converged: {problems[0].split(':')[0]}; the Newton decrement is small only because "
                "the likelihood flattens out there",
            )
    optimum = {**opt.info, **fns.scales(opt.nat), "nat": opt.nat}
    if method == "MAP":  # report the log-likelihood; the posterior criterion stays available
        optimum["log_posterior"], optimum["loglik"] = optimum["loglik"], optimum["loglik_only"]
    return MixedFit(
        spec=spec,
        structure=structure,
        scales=scales,
        functions=fns,
        method=method,
        optimum=optimum,
        converged=opt.converged,
        iterations=opt.iterations,
        grad_norm=opt.grad_norm,
        at_bound=opt.at_bound,
        message=opt.message,
        data=data,
        cluster=cluster,
        nagq=nagq,
        engine=engine,
    )


def optimise(fns: LMMFunctions, spec, warn: bool = True) -> OptimResult:
    """Maximise the criterion (see the module docstring).

    L-BFGS-B on the profiled criterion within the supports, then Newton steps with the exact
    Hessian of the full criterion on the parameters not held at a bound. Converged when the
    Newton decrement ``g^T A^{-1} g`` (``A`` the observed information) is below ``1e-6``.
    ``warn=False`` reports non-convergence in the result only (no ``ConvergenceWarning``).
    """
    vi = spec.variance_index
    lower, upper = spec.lower, spec.upper
    lo_v, up_v = lower[vi], upper[vi]
    # the residual SD (a positive parameter whose value 0 makes the likelihood degenerate) is
    # optimised on the log scale; the other variance parameters on their natural scale within
    # their supports, so that a random-effect SD can reach 0 exactly (a boundary fit)
    logged = np.isin(vi, spec.residual_index) & (lo_v == 0) & ~np.isfinite(up_v)
    check_not_exact(spec)
    # start in the data's units, coordinates in units of the curvature there (see start.py)
    newton_first = getattr(fns, "newton_start", False)
    start = natural_start(fns.map, spec, spec.nat0, moments=newton_first)
    x0, natural, bounds = _search_space(start[vi], lo_v, up_v, logged)
    _, _, nat_start = fns.profile(natural(x0))
    # the observed information (the Newton steps need its functions anyway); the expected one
    # only where the observed one has no curvature along a parameter
    info0 = np.full((vi.size, vi.size), np.nan)
    observed = None
    for expected in (False, True):
        with np.errstate(all="ignore"):
            try:
                info = fns.information(nat_start, expected=expected)
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                continue
        observed = observed or (None if expected else info)
        info0 = info["expected" if expected else "observed"][np.ix_(vi, vi)]
        if np.all(np.isfinite(np.diag(info0)) & (np.diag(info0) != 0)):
            break
    if newton_first and observed is not None:
        # an engine whose exact Hessian costs a few evaluations of the profiled criterion: Newton's
        # method from the start (moment estimates where the model allows), kept where it converges
        # to an interior point; otherwise the L-BFGS path below (boundary fits, an indefinite start)
        out = _newton(fns, spec, nat_start, 0, warn=False, info=observed)
        if out.converged and not _near_bound(spec, out.nat):
            return _with_gls_beta(fns, spec, out)
    d = curvature_scales(info0, natural(x0), logged)

    calls = itertools.count(1)

    def negative(w):
        x = natural(w * d)
        progress_update(f"optimising the profiled likelihood: evaluation {next(calls)}")
        with np.errstate(all="ignore"):
            try:
                f, g, _ = fns.profile(x)
            except np.linalg.LinAlgError:  # a factor not numerically positive definite (blocked engine)
                f, g = np.nan, np.zeros_like(x)
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            # e.g. a correlation parameter at +-1 (a singular covariance): make the line search step back
            return 1e300, np.zeros_like(w)
        return -f, -np.where(logged, g * x, g) * d

    if negative(x0 / d)[0] >= 1e300:
        raise MixVcovError(
            f"the criterion is not finite at the starting variance parameters {natural(x0)}; the model may "
            "be degenerate (check the data and the random-effect terms)"
        )

    scaled_bounds = [
        (None if a is None else a / s, None if b is None else b / s) for (a, b), s in zip(bounds, d, strict=True)
    ]

    def lbfgs(w0):
        return minimize(
            negative,
            w0,
            jac=True,
            method="L-BFGS-B",
            bounds=scaled_bounds,
            options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-7},
        )

    res = lbfgs(x0 / d)
    iterations = int(res.nit)
    # boundary fits: a covariance factor's diagonal entry at 0 may be a saddle (the criterion is
    # even in it) or a wall that the sign of the column below it puts up; restart from inside, with
    # that column as it is and negated (start.boundary_restarts), and from any other parameter at a
    # bound along which the criterion is convex; keep the best
    for _ in range(3):
        _, _, nat = fns.profile(natural(res.x * d))
        starts = [x[vi] for x in boundary_restarts(fns.map, spec, nat) if np.all((x[vi] > lo_v) & (x[vi] < up_v))]
        saddle = _boundary_saddles(fns, spec, nat)
        if saddle.any():
            starts.append(_saddle_restart(fns, natural(res.x * d), natural(x0), saddle))
        best = res
        for x in starts:
            w = np.where(logged, np.log(np.where(logged, x, 1.0)), x) / d
            retry = lbfgs(w)
            iterations += int(retry.nit)
            if retry.fun < best.fun - 1e-10 * (1.0 + abs(best.fun)):
                best = retry
        if best is res:
            break
        res = best
    res.x = natural(res.x * d)
    _, _, nat = fns.profile(res.x)
    out = _newton(fns, spec, nat, iterations, warn=False)
    if not out.converged and fns.method == "ML":
        # L-BFGS stalled (e.g. at the wall of a singular covariance): exact-Hessian trust region
        out = _trust_region(fns, spec, out.nat, out.iterations, warn=warn)
    elif not out.converged and warn:
        _warn_not_converged(out.message)
    return _with_gls_beta(fns, spec, out)


def _with_gls_beta(fns, spec, out: OptimResult) -> OptimResult:
    """``out`` with ``beta`` at its GLS value for the final variance parameters (REML).

    The REML criterion does not involve ``beta``: the Newton steps move only the variance
    parameters, so the ``beta`` profiled at an earlier point is re-profiled at the end.
    """
    if fns.method != "REML":
        return out
    _, _, nat = fns.profile(out.nat[spec.variance_index])
    return replace(out, nat=nat)


def _boundary_saddles(fns, spec, nat: np.ndarray) -> np.ndarray:
    """Which variance parameters sit at a bound of their support where the profiled criterion
    increases into the interior to second order (zero gradient, convex along the parameter).

    The negative Hessian of the profiled criterion is the Schur complement
    ``S = A_vv - A_vb A_bb^{-1} A_bv`` of the observed information ``A``; a parameter at its lower
    (upper) bound whose gradient does not point outward and with ``S_ii < 0`` is a saddle of the
    constrained problem, not a maximum. Returns a mask over ``spec.variance_index``.
    """
    vi, fi = spec.variance_index, spec.fixed_index
    lo, up = spec.lower[vi], spec.upper[vi]
    x = nat[vi]
    lo_f, up_f = np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(up), up, 0.0)
    at = (np.isfinite(lo) & (x <= lo_f + 1e-12 * (1.0 + np.abs(lo_f)))) | (
        np.isfinite(up) & (x >= up_f - 1e-12 * (1.0 + np.abs(up_f)))
    )
    if not at.any():
        return at
    with np.errstate(all="ignore"):
        try:
            info = fns.information(nat)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            return np.zeros_like(at)
    A = info["observed"]
    S = A[np.ix_(vi, vi)]
    if fi.size and fns.method == "ML":
        S = S - A[np.ix_(vi, fi)] @ np.linalg.solve(A[np.ix_(fi, fi)], A[np.ix_(fi, vi)])
    return at & np.isfinite(np.diag(S)) & (np.diag(S) < 0)


#: Points tried along the segment from a boundary saddle to the start: fractions 2^0 ... 2^-(n-1).
SADDLE_STEPS = 12


def _saddle_restart(fns, at: np.ndarray, start: np.ndarray, saddle: np.ndarray) -> np.ndarray:
    """An interior restart for variance parameters stuck at a boundary saddle.

    ``at`` holds the variance parameters where L-BFGS stopped, with the entries flagged in
    ``saddle`` on a bound (:func:`_boundary_saddles`); ``start`` the starting values. The restart
    moves the flagged entries back towards their start, ``at + 2^-k (start - at)``, at the ``k``
    in ``0, ..., SADDLE_STEPS - 1`` with the highest profiled criterion.

    Notes
    -----
    A random-effect SD enters the likelihood through its square, so the criterion's gradient in
    it vanishes at 0 whatever the data, and L-BFGS-B stops there ("projected gradient zero") when
    one step from a start far above the optimum crosses the whole interior. Restarting from the
    start repeats that step; the best point of the segment lies near the interior optimum along
    it, from where the criterion rises away from the bound.
    """
    best, best_f = None, -np.inf
    for k in range(SADDLE_STEPS):
        w = at.copy()
        w[saddle] = at[saddle] + 2.0**-k * (start[saddle] - at[saddle])
        with np.errstate(all="ignore"):
            f = fns.profile(w)[0]
        if np.isfinite(f) and f > best_f:
            best, best_f = w, f
    if best is None:
        best = at.copy()
        best[saddle] = start[saddle]
    return best


def _search_space(start, lower, upper, logged):
    """The optimiser's coordinates: the start (inside the supports), the map back, the bounds.

    Entries flagged in ``logged`` are optimised on the log scale, the others on their natural
    scale within their supports.
    """
    span = np.where(np.isfinite(upper - lower), upper - lower, 1.0)
    # a start strictly inside is kept as it is (its size carries the data's units); one on or
    # outside a bound is moved inside
    inside = (start > lower) & (start < upper)
    x0 = np.where(
        inside,
        start,
        np.clip(
            start,
            np.where(np.isfinite(lower), lower + 1e-3 * span, -np.inf),
            np.where(np.isfinite(upper), upper - 1e-3 * span, np.inf),
        ),
    )
    x0 = np.where(logged, np.log(np.where(logged, x0, 1.0)), x0)

    def natural(z):
        return np.where(logged, np.exp(np.where(logged, z, 0.0)), z)

    bounds = [
        (None, None) if lg else (a if np.isfinite(a) else None, b if np.isfinite(b) else None)
        for lg, a, b in zip(logged, lower, upper, strict=True)
    ]
    return x0, natural, bounds


def _optimise_all(fns, spec, warn: bool = True) -> OptimResult:
    """L-BFGS-B over all natural parameters (no profiling), then Newton steps: the Laplace engine.

    Parameters with support ``(0, inf)`` are optimised on the log scale.
    """
    lower, upper = spec.lower, spec.upper
    logged = (lower == 0) & ~np.isfinite(upper)
    # covariance factors (and a Gaussian residual SD) start in the data's units (start.py)
    x0, natural, bounds = _search_space(natural_start(fns.map, spec, spec.nat0), lower, upper, logged)

    calls = itertools.count(1)

    def negative(z):
        x = natural(z)
        progress_update(f"optimising the marginal likelihood: evaluation {next(calls)}")
        with np.errstate(all="ignore"):
            f, g = fns.value(x)
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            return 1e300, np.zeros_like(z)
        return -f, -np.where(logged, g * x, g)

    # warm start from a distant default: first the likelihood's own parameters (a scale that
    # fits the data), then with the fixed effects (a GLM), the random-effect parameters held.
    # Where the fixed effects' GLM (random effects at 0) is concave, Newton's method on it
    # replaces the second stage: cheap per-observation sums instead of Laplace evaluations.
    psi = np.isin(np.arange(x0.size), spec.psi_index)
    stages = [psi, ~np.isin(np.arange(x0.size), spec.variance_index)]
    glm = fns.glm_start(natural(x0)) if hasattr(fns, "glm_start") else None
    if glm is not None:
        x0 = np.where(np.isin(np.arange(x0.size), spec.fixed_index), glm, x0)
        stages = [psi]
    d = np.ones(x0.size)
    if any(free0.any() for free0 in stages[1:]):
        # the fixed effects' stage runs on coordinates in units of the curvature (start.py)
        with np.errstate(all="ignore"):
            try:
                d = curvature_scales(fns.information(natural(x0))["observed"], natural(x0), logged)
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                pass
    for free0 in stages:
        if not free0.any():
            continue
        ds = d[free0]

        def negative0(w0, free0=free0, x0=x0, ds=ds):
            z = x0.copy()
            z[free0] = w0 * ds
            f, g = negative(z)
            return f, g[free0] * ds

        res0 = minimize(
            negative0,
            x0[free0] / ds,
            jac=True,
            method="L-BFGS-B",
            bounds=[
                (None if a is None else a / s, None if b is None else b / s)
                for (a, b), s in zip([b for b, k in zip(bounds, free0, strict=True) if k], ds, strict=True)
            ],
            options={"maxiter": 2000, "ftol": 1e-10, "gtol": 1e-6},
        )
        x0 = x0.copy()
        x0[free0] = res0.x * ds
    return _trust_region(fns, spec, natural(x0), 0, warn=warn)


def _trust_region(fns, spec, start, iterations, warn: bool = True) -> OptimResult:
    """A trust-region Newton method with the exact Hessian, then Newton steps.

    Robust in the curved valleys of variance parameters that L-BFGS crawls along. It runs in
    unbounded coordinates ``x = T(z)``: ``a + exp(z)`` for a lower bound ``a``, ``b - exp(z)`` for an
    upper bound, ``a + (b - a) expit(z)`` for both; with ``T'`` and ``T''`` the gradient is
    ``g_z = T' g_x`` and the Hessian ``T' H_x T' + diag(T'' g_x)``, exactly.
    """
    from scipy.special import expit, logit

    lower, upper = spec.lower, spec.upper
    lo, hi = np.isfinite(lower), np.isfinite(upper)
    both, only_lo, only_hi = lo & hi, lo & ~hi, hi & ~lo
    span = np.where(both, upper - lower, 1.0)
    eps = 1e-9 * span
    x_start = np.clip(start, np.where(lo, lower + eps, -np.inf), np.where(hi, upper - eps, np.inf))
    z0 = np.where(only_lo, np.log(np.where(only_lo, x_start - lower, 1.0)), x_start)
    z0 = np.where(only_hi, np.log(np.where(only_hi, upper - x_start, 1.0)), z0)
    z0 = np.where(both, logit(np.where(both, (x_start - lower) / span, 0.5)), z0)

    def transform(z):
        e = np.exp(np.where(only_lo | only_hi, z, 0.0))
        s_ = expit(np.where(both, z, 0.0))
        x = np.where(only_lo, lower + e, np.where(only_hi, upper - e, np.where(both, lower + span * s_, z)))
        d1 = np.where(only_lo, e, np.where(only_hi, -e, np.where(both, span * s_ * (1 - s_), 1.0)))
        d2 = np.where(only_lo, e, np.where(only_hi, -e, np.where(both, span * s_ * (1 - s_) * (1 - 2 * s_), 0.0)))
        return x, d1, d2

    calls = itertools.count(1)

    def pieces(z):
        x, d1, d2 = transform(z)
        progress_update(f"trust-region Newton steps with the exact Hessian: step {next(calls)}")
        with np.errstate(all="ignore"):
            try:
                info = fns.information(x)
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                info = None
        if info is None or not np.isfinite(info["loglik"]):
            return np.inf, np.zeros_like(z), np.eye(z.size)
        g, A = info["grad"], info["observed"]
        H = d1[:, None] * A * d1[None, :] - np.diag(d2 * g)
        return -info["loglik"], -g * d1, H

    cheap = getattr(fns, "loglik", None)

    def value(z):
        if cheap is None:  # no cheaper route to the value alone
            return pieces(z)[0]
        with np.errstate(all="ignore"):
            try:
                f = cheap(transform(z)[0])
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                return np.inf
        return -f if np.isfinite(f) else np.inf

    def close_enough(_f, g, H):
        # hand over to the Newton steps once in their quadratic region: a positive definite
        # Hessian (a maximum is near, not a saddle) and a Newton decrement below 1e-8
        try:
            L = np.linalg.cholesky(H)
        except np.linalg.LinAlgError:
            return False
        w = np.linalg.solve(L, g)
        return bool(w @ w < 1e-8)

    # coordinates in units of the curvature at the start, so that the trust region's radius does
    # not depend on the parameters' units (start.py); the start's pieces are computed once. The
    # initial radius, 100 such units, lets the first steps be full Newton steps where they succeed
    first = pieces(z0)
    hd = np.diag(first[2])
    d = np.where(np.isfinite(hd) & (hd > 0), 1.0 / np.sqrt(np.where(hd > 0, hd, 1.0)), 1.0)

    def pieces_scaled(w):
        f, g, H = first if np.array_equal(w, z0 / d) else pieces(w * d)
        return f, g * d, d[:, None] * H * d[None, :]

    res = trust_region_newton(pieces_scaled, lambda w: value(w * d), z0 / d, done=close_enough, radius=100.0)
    return _newton(fns, spec, transform(res.z * d)[0], iterations + res.iterations, warn=warn)


def _warn_not_converged(message: str) -> None:
    import warnings

    from ..errors import ConvergenceWarning

    warnings.warn(
        f"the optimiser did not converge ({message}); estimates and covariances may be unreliable",
        ConvergenceWarning,
        stacklevel=4,
    )


def _near_bound(spec, nat: np.ndarray) -> np.ndarray:
    """Whether any variance parameter is within ``1e-6`` (relative) of a finite bound of its support."""
    vi = spec.variance_index
    x, lo, up = nat[vi], spec.lower[vi], spec.upper[vi]
    lo_f, up_f = np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(up), up, 0.0)
    tol = 1e-6 * np.maximum(1.0, np.abs(x))
    return bool(np.any((np.isfinite(lo) & (x <= lo_f + tol)) | (np.isfinite(up) & (x >= up_f - tol))))


def _newton(fns, spec, nat, iterations, warn: bool = True, info: dict | None = None) -> OptimResult:
    """Newton steps with the exact Hessian from ``nat`` until the Newton decrement is below 1e-12
    (``info``: the information at ``nat``, when known)."""
    lower, upper = spec.lower, spec.upper
    vi = spec.variance_index
    # parameters the criterion involves: all (ML) or the variance parameters (REML)
    active = np.ones(spec.n_params, bool) if fns.method == "ML" else np.isin(np.arange(spec.n_params), vi)
    info = fns.information(nat) if info is None else info
    # a trial point costs only the criterion where the engine has a cheaper route to it; the
    # information is computed once a step is accepted
    cheap = getattr(fns, "loglik", None)
    decrement = np.inf
    for step in range(20):
        progress_update(f"Newton steps with the exact Hessian: step {step + 1}")
        g, A = info["grad"], info["observed"]
        held = (np.isfinite(lower) & (nat <= lower) & (g <= 0)) | (np.isfinite(upper) & (nat >= upper) & (g >= 0))
        free = active & ~held
        step = np.zeros_like(nat)
        try:
            L = np.linalg.cholesky(A[np.ix_(free, free)])
        except np.linalg.LinAlgError:
            break
        step[free] = np.linalg.solve(L.T, np.linalg.solve(L, g[free]))
        decrement = float(g[free] @ step[free])
        if decrement < 1e-12:
            break
        # a step may lower the criterion by its rounding error (about 1e-13 of its size) near the optimum
        slack = 1e-12 + 1e-13 * abs(info["loglik"])
        t = 1.0
        while t > 1e-6:
            trial = np.clip(nat + t * step, lower, upper)
            if cheap is not None:
                with np.errstate(all="ignore"):
                    try:
                        value = cheap(trial)
                    except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                        value = -np.inf
                new = fns.information(trial) if value >= info["loglik"] - slack else None
            else:
                new = fns.information(trial)
            if new is not None and new["loglik"] >= info["loglik"] - slack:
                nat, info = trial, new
                iterations += 1
                break
            t *= 0.5
        else:
            break
    g = info["grad"]
    held = (np.isfinite(lower) & (nat <= lower) & (g <= 0)) | (np.isfinite(upper) & (nat >= upper) & (g >= 0))
    free = active & ~held
    gnorm = float(np.max(np.abs(g[free]))) if free.any() else 0.0
    converged = bool(decrement < 1e-6)
    message = (
        f"converged: Newton decrement {decrement:.2g} < 1e-6"
        if converged
        else f"not converged: Newton decrement {decrement:.3g} after {iterations} iterations"
    )
    if not converged and warn:
        _warn_not_converged(message)
    return OptimResult(nat, info, converged, iterations, gnorm, held, message)
