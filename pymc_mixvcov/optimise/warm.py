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

__all__ = ["warm_refit", "newton_lockstep", "LINE_TRIALS"]

#: Step halvings tried in one evaluation by :func:`newton_lockstep` once a full step has failed.
LINE_TRIALS = 4

#: Below this Newton decrement :func:`newton_lockstep` takes the last step without evaluating its end.
FINAL_STEP = 1e-8


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
    evaluate,
    spec,
    method: str,
    starts: np.ndarray,
    max_iter: int = 20,
    pool: int = 25,
    line_trials: int = LINE_TRIALS,
) -> list[OptimResult]:
    """Newton steps for ``K`` data sets of one model at once, as :func:`pymc_mixvcov.optimise.fit._newton`.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(rows, nats)`` returns, for data set ``rows[i]`` at natural parameters ``nats[i]``,
        a dict with the criterion ``"loglik"``, its gradient ``"grad"`` and the observed information
        ``"observed"`` (what ``functions.information`` returns); all rows in one call (a data set
        may appear in several rows).
    spec : GaussianSpec
        The model (bounds, which parameters are variance parameters).
    method : {"ML", "REML"}
        REML criteria do not involve the fixed effects: they are not stepped.
    starts : numpy.ndarray
        ``(K, P)`` starting points, inside the supports.
    max_iter : int
        Most steps per data set.
    line_trials : int
        Step halvings evaluated at once after a failed step (1 where evaluations are one by one).
    pool : int
        Data sets iterated at a time: one that finishes makes room for the next, so that each
        evaluation holds about ``pool`` of them until the last few (the evaluations' fixed cost is
        shared, and slow data sets do not hold the others back).

    Returns
    -------
    list of OptimResult
        Per data set; converged where the last Newton decrement ``g^T A^{-1} g`` is below ``1e-6`` (iterations
        stop below ``1e-12``; below :data:`FINAL_STEP` the last step is taken without evaluating its end, the
        criterion there reported as ``l + d / 2``, exact to ``O(d^1.5)``, and the gradient and information as
        they were before it). Where the full step does not increase the criterion, the next ``line_trials``
        halvings are evaluated at once and the longest that does is taken (down to ``1e-6``). Where the
        information is not positive definite, the step uses it with its eigenvalues made positive (``|lambda|``,
        floored at ``1e-3`` of the largest, on the correlation scale): an ascent direction that is no Newton
        step, so never taken as convergence. A step is accepted when the criterion does not fall by more than
        its rounding, ``1e-12 (1 + |l|)``; once the decrement is below ``1e-6``, a step that fails ends the
        iterations. Iterates stay strictly inside the supports: a step that would cross a bound goes 99% of the
        way (a bound reached by clipping can be a saddle, a covariance factor's diagonal entry at 0), so a data
        set whose maximum is on a bound is left unconverged here, for the full search.
    """
    from collections import deque

    lower, upper = spec.lower, spec.upper
    starts = np.asarray(starts, float)
    K, P = starts.shape
    if np.any((starts <= lower) | (starts >= upper)):
        raise ValueError("newton_lockstep needs starting points inside the supports")
    active_params = np.ones(P, bool) if method == "ML" else np.isin(np.arange(P), spec.variance_index)
    nat = starts.copy()
    info: list[dict | None] = [None] * K
    decrement = np.full(K, np.inf)
    iterations = np.zeros(K, int)
    steps = np.zeros((K, P))
    t = np.ones(K)

    def held_of(x, g):
        return (np.isfinite(lower) & (x <= lower) & (g <= 0)) | (np.isfinite(upper) & (x >= upper) & (g >= 0))

    def plan(i: int) -> np.ndarray | None:
        """The full Newton step from data set ``i``'s current point (its trial point), or None: done."""
        g, A = info[i]["grad"], info[i]["observed"]
        if iterations[i] >= max_iter:
            return None
        free = active_params & ~held_of(nat[i], g)
        steps[i] = 0.0
        try:
            L = np.linalg.cholesky(A[np.ix_(free, free)])
            steps[i, free] = np.linalg.solve(L.T, np.linalg.solve(L, g[free]))
            decrement[i] = float(g[free] @ steps[i, free])
        except np.linalg.LinAlgError:
            # not positive definite: its eigenvalues made positive (|lambda|, floored at 1e-3 of the
            # largest) on the correlation scale, an ascent direction with the local curvature; no
            # Newton step, so never a sign of convergence
            sub = A[np.ix_(free, free)]
            d = np.sqrt(np.abs(np.diag(sub)))
            d = np.where(np.isfinite(d) & (d > 0), d, 1.0)
            w, V = np.linalg.eigh(sub / np.outer(d, d))
            if not np.all(np.isfinite(w)):
                return None
            w = np.maximum(np.abs(w), 1e-3 * np.max(np.abs(w)))
            steps[i, free] = (V @ ((V.T @ (g[free] / d)) / w)) / d
            decrement[i] = np.inf
        if decrement[i] < 1e-12 or not np.all(np.isfinite(steps[i])):
            return None
        if decrement[i] < FINAL_STEP:
            # the last step, taken without evaluating its end: the quadratic model is exact there to
            # O(d^1.5), so the criterion is reported as l + d / 2 and the derivatives as they were
            trial = nat[i] + steps[i]
            if np.all((trial > lower) & (trial < upper)):
                nat[i] = trial
                info[i] = {**info[i], "loglik": info[i]["loglik"] + 0.5 * decrement[i]}
                iterations[i] += 1
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(
                steps[i] < 0,
                (lower - nat[i]) / steps[i],
                np.where(steps[i] > 0, (upper - nat[i]) / steps[i], np.inf),
            )
        r = float(np.min(room[np.isfinite(room)], initial=np.inf))
        t[i] = 1.0 if r > 1.0 else 0.99 * r
        return (nat[i] + t[i] * steps[i])[None]

    queue = deque(range(K))
    requests: dict[int, np.ndarray] = {}  # data set -> points to evaluate (its start, or trial points)
    while queue or requests:
        while len(requests) < pool and queue:
            i = queue.popleft()
            requests[i] = nat[i][None]
        order = list(requests)
        rows = np.concatenate([np.full(len(requests[i]), i) for i in order])
        results = evaluate(rows, np.concatenate([requests[i] for i in order]))
        at = 0
        for i in order:
            pts = requests.pop(i)
            res = results[at : at + len(pts)]
            at += len(pts)
            if info[i] is None:  # its start
                info[i] = res[0]
                nxt = plan(i)
            else:
                ll_old = info[i]["loglik"]
                for pt, new in zip(pts, res, strict=True):
                    if np.isfinite(new["loglik"]) and new["loglik"] >= ll_old - 1e-12 * (1.0 + abs(ll_old)):
                        nat[i], info[i] = pt, new
                        iterations[i] += 1
                        nxt = plan(i)
                        break
                else:
                    last = float(np.linalg.norm(pts[-1] - nat[i]) / max(np.linalg.norm(steps[i]), 1e-300))
                    nxt = None
                    # below a decrement of 1e-6 (converged) a failed step is rounding in the criterion
                    if last * 0.5 > 1e-6 and decrement[i] >= 1e-6:
                        factors = last * 0.5 ** np.arange(1, line_trials + 1)
                        nxt = nat[i][None] + factors[:, None] * steps[i][None]
            if nxt is not None:
                requests[i] = nxt
    out = []
    for i in range(K):
        g = info[i]["grad"]
        held = held_of(nat[i], g)
        free = active_params & ~held
        gnorm = float(np.max(np.abs(g[free]))) if free.any() else 0.0
        converged = bool(decrement[i] < 1e-6)
        message = (
            f"converged: Newton decrement {decrement[i]:.2g} < 1e-6"
            if converged
            else f"not converged: Newton decrement {decrement[i]:.3g} after {iterations[i]} iterations"
        )
        out.append(OptimResult(nat[i].copy(), info[i], converged, int(iterations[i]), gnorm, held, message))
    return out
