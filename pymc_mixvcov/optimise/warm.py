"""A warm-started refit: the same model, new data, started at a nearby estimate.

A parametric bootstrap refits the fitted model to responses simulated from it; each replicate's
estimate is within a few standard errors of the fit's, where the log-likelihood is close to its
quadratic approximation. So the refit starts at the fit's estimate with Newton steps on the exact
Hessian, which converge quadratically there: a few evaluations of the information instead of the
whole search of :func:`pymc_mixvcov.optimise.fit.fit` (starting values, L-BFGS-B, boundary
restarts). :func:`newton_lockstep` takes these steps for many data sets at once, so that an engine
that evaluates many responses in one call (:class:`pymc_mixvcov.engines.response.StackedResponses`)
pays its per-call cost once per step, not once per data set; its iterates stay inside the
parameters' supports. Where Newton's method does not converge (an indefinite Hessian on the way,
a replicate whose estimate is far off or on a boundary), :func:`warm_refit` falls back to the
exact-Hessian trust region from the same start, and then to the full search from the model's own
starting values, whose result it then keeps. Convergence means what it means for a fit: a Newton
decrement below ``1e-6``, no saddle on a boundary, and for non-Gaussian likelihoods no sign of
separation or of conditional modes that do not exist (:meth:`LaplaceFunctions.diagnose`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .fit import OptimResult, _boundary_saddles, _newton, _optimise_all, _trust_region, optimise

__all__ = ["warm_refit", "newton_lockstep"]


def warm_refit(fns, spec, start: np.ndarray, first: OptimResult | None = None, cold: bool = False) -> OptimResult:
    """Maximise the criterion of ``fns`` (a model with a new response) from ``start``.

    Parameters
    ----------
    fns : LMMFunctions, BlockedLMMFunctions, LaplaceFunctions or MAPFunctions
        The engine's functions for the new data (:class:`pymc_mixvcov.engines.response.ResponseSwap`).
    spec : GaussianSpec
        The model with the new response.
    start : numpy.ndarray
        Natural parameters to start from (the fit's estimate).
    first : OptimResult, optional
        The outcome of Newton steps already taken from ``start`` (:func:`newton_lockstep`); the
        fallbacks follow where it did not converge.
    cold : bool
        Skip the warm start: the full search of a fit (for a start on a bound of the parameter
        space, where Newton steps can stall at a saddle).

    Returns
    -------
    OptimResult
        As :func:`pymc_mixvcov.optimise.fit.optimise`; ``info["loglik"]`` is the criterion
        (log-likelihood, REML criterion, or log posterior for MAP with ``info["loglik_only"]`` the
        log-likelihood). Emits no warning: non-convergence is in ``converged`` and ``message``.

    Notes
    -----
    A result with a variance parameter held at a bound where the criterion increases into the
    interior (:func:`pymc_mixvcov.optimise.fit._boundary_saddles`: a covariance factor's diagonal
    entry at 0, where the criterion is even in it) is a saddle, not a maximum: the full search
    (with its boundary restarts) is then run as well, and the better of the two kept.
    """
    start = np.clip(np.asarray(start, float), spec.lower, spec.upper)
    search = optimise if fns.profiled else _optimise_all
    if cold:
        out = search(fns, spec, warn=False)
    else:
        out = _newton(fns, spec, start, 0, warn=False) if first is None else first
        if not out.converged and fns.profiled and fns.method == "ML":
            out = _trust_region(fns, spec, start, out.iterations, warn=False)
        elif not out.converged and not fns.profiled:
            out = _trust_region(fns, spec, start, out.iterations, warn=False)
        if not out.converged or (np.any(out.at_bound) and np.any(_boundary_saddles(fns, spec, out.nat))):
            full = search(fns, spec, warn=False)
            if not out.converged or full.info["loglik"] > out.info["loglik"]:
                out = full
    if fns.profiled and fns.method == "REML":
        # the REML criterion does not involve beta: its GLS value at the final variance parameters
        _, _, nat = fns.profile(out.nat[spec.variance_index])
        out = replace(out, nat=nat)
    if not spec.gaussian and type(fns).__name__ != "MAPFunctions":
        problems = fns.diagnose(out.nat, [str(k) for k in range(spec.fixed_index.size)])
        if problems:
            out = replace(out, converged=False, message=f"not converged: {problems[0].split(':')[0]}")
    return out


def newton_lockstep(
    evaluate, spec, method: str, starts: np.ndarray, fallback: np.ndarray | None = None, max_iter: int = 20
) -> list[OptimResult]:
    """Newton steps for ``K`` data sets of one model at once, as :func:`pymc_mixvcov.optimise.fit._newton`.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(rows, nats)`` returns, for data set ``rows[i]`` at natural parameters ``nats[i]``,
        a dict with the criterion ``"loglik"``, its gradient ``"grad"`` and the observed information
        ``"observed"`` (what ``functions.information`` returns); all rows in one call.
    spec : GaussianSpec
        The model (bounds, which parameters are variance parameters).
    method : {"ML", "REML"}
        REML criteria do not involve the fixed effects: they are not stepped.
    starts : numpy.ndarray
        ``(K, P)`` starting points.
    fallback : numpy.ndarray, optional
        A positive definite information used for a step where the data set's own is not
        (typically the fit's, at its estimate): the step then still ascends, and the point is not
        taken as converged.
    max_iter : int
        Most steps per data set.

    Returns
    -------
    list of OptimResult
        Per data set; converged where the last Newton decrement ``g^T A^{-1} g`` is below ``1e-6``
        (iterations stop below ``1e-12``). Each step halves until the criterion does not decrease.
        Iterates stay strictly inside the supports (``starts`` must be inside): a data set whose
        maximum is on a bound is left unconverged, for the full search.
    """
    lower, upper = spec.lower, spec.upper
    K, P = starts.shape
    active = np.ones(P, bool) if method == "ML" else np.isin(np.arange(P), spec.variance_index)
    nat = np.asarray(starts, float).copy()
    if np.any((nat <= lower) | (nat >= upper)):
        raise ValueError("newton_lockstep needs starting points inside the supports")
    info = evaluate(np.arange(K), nat)
    decrement = np.full(K, np.inf)
    done = np.zeros(K, bool)
    iterations = np.zeros(K, int)

    def held_of(x, g):
        return (np.isfinite(lower) & (x <= lower) & (g <= 0)) | (np.isfinite(upper) & (x >= upper) & (g >= 0))

    for _ in range(max_iter):
        steps = np.zeros((K, P))
        for i in np.flatnonzero(~done):
            g, A = info[i]["grad"], info[i]["observed"]
            free = active & ~held_of(nat[i], g)
            blocks = [A] if fallback is None else [A, fallback]
            for k, M in enumerate(blocks):
                try:
                    L = np.linalg.cholesky(M[np.ix_(free, free)])
                except np.linalg.LinAlgError:
                    continue
                steps[i, free] = np.linalg.solve(L.T, np.linalg.solve(L, g[free]))
                # a step with the fallback information is no Newton step: never a sign of convergence
                decrement[i] = float(g[free] @ steps[i, free]) if k == 0 else np.inf
                break
            else:
                done[i] = True  # no positive definite information: stop here, as _newton does
                continue
            if decrement[i] < 1e-12 or not np.all(np.isfinite(steps[i])):
                done[i] = True
        pending = np.flatnonzero(~done)
        if not pending.size:
            break
        # a step stays inside the supports (a fraction of the way to a bound it would cross): a
        # bound reached by clipping can be a saddle (a covariance factor's diagonal entry at 0); a
        # data set whose maximum is on a bound does not converge here and goes to the full search
        t = np.ones(K)
        for i in pending:
            with np.errstate(divide="ignore", invalid="ignore"):
                room = np.where(
                    steps[i] < 0,
                    (lower - nat[i]) / steps[i],
                    np.where(steps[i] > 0, (upper - nat[i]) / steps[i], np.inf),
                )
            r = float(np.min(room[np.isfinite(room)], initial=np.inf))
            t[i] = 1.0 if r > 1.0 else 0.9 * r
        while pending.size:
            trial = nat[pending] + t[pending, None] * steps[pending]
            new = evaluate(pending, trial)
            retry = []
            for j, i in enumerate(pending):
                ll_new = new[j]["loglik"]
                if np.isfinite(ll_new) and ll_new >= info[i]["loglik"] - 1e-12:
                    nat[i], info[i] = trial[j], new[j]
                    iterations[i] += 1
                elif t[i] * 0.5 > 1e-6:
                    t[i] *= 0.5
                    retry.append(i)
                else:
                    done[i] = True  # no step increases the criterion
            pending = np.asarray(retry, int)
    out = []
    for i in range(K):
        g = info[i]["grad"]
        held = held_of(nat[i], g)
        free = active & ~held
        gnorm = float(np.max(np.abs(g[free]))) if free.any() else 0.0
        converged = bool(decrement[i] < 1e-6)
        message = (
            f"converged: Newton decrement {decrement[i]:.2g} < 1e-6"
            if converged
            else f"not converged: Newton decrement {decrement[i]:.3g} after {iterations[i]} iterations"
        )
        out.append(OptimResult(nat[i].copy(), info[i], converged, int(iterations[i]), gnorm, held, message))
    return out
