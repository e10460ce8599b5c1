"""A trust-region Newton method with the exact Hessian for a handful of parameters.

Minimises ``f`` given two callables: ``full(z) -> (f, g, H)`` and ``value(z) -> f``. Each
iteration solves the trust-region subproblem exactly (Moré and Sorensen, 1983), from an
eigendecomposition of ``H`` (the parameters are few), and evaluates only ``f`` at the trial
point; the gradient and Hessian are computed once the step is accepted. For the Laplace
likelihood of a GLMM the Hessian costs several times the value, and scipy's ``trust-exact``,
which computes it at every trial point, would spend it on rejected steps as well.

The radius rules are those of Nocedal and Wright (2006), Algorithm 4.1, with scipy's
``trust-exact`` constants (initial radius 1, maximum 1000, acceptance ratio 0.15).

References
----------
Moré, J. J. and Sorensen, D. C. (1983). Computing a trust region step. SIAM Journal on
Scientific and Statistical Computing 4(3), 553-572.
Nocedal, J. and Wright, S. J. (2006). Numerical Optimization, 2nd ed., chapters 4.1-4.3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["TrustResult", "subproblem_step", "trust_region_newton"]


@dataclass
class TrustResult:
    """Where the iterations stopped: the point, its ``(f, g, H)``, the iterations and why."""

    z: np.ndarray
    f: float
    g: np.ndarray
    H: np.ndarray
    iterations: int
    message: str


def subproblem_step(g: np.ndarray, H: np.ndarray, radius: float) -> np.ndarray:
    """The minimiser of ``g^T p + p^T H p / 2`` over ``||p|| <= radius``.

    With ``H = Q diag(lam) Q^T`` the solution is ``p(mu) = -Q diag(1 / (lam + mu)) Q^T g`` for the
    smallest ``mu >= max(0, -lam_min)`` with ``||p(mu)|| <= radius``; ``mu`` solves the secular
    equation ``||p(mu)|| = radius`` (bracketed, then bisected on ``1/||p||``, which is nearly
    linear in ``mu``). In the hard case (``g`` orthogonal to the eigenvectors of ``lam_min``) the
    step is completed along such an eigenvector to the boundary.
    """
    lam, Q = np.linalg.eigh(0.5 * (H + H.T))
    gt = Q.T @ g
    lo = max(0.0, -lam[0])
    scale = 1e-12 * max(1.0, float(np.max(np.abs(lam))))

    def norm_at(mu):
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.sqrt(np.sum((gt / (lam + mu)) ** 2)))

    if lam[0] > scale and norm_at(0.0) <= radius:
        return -Q @ (gt / lam)
    mu_lo = lo
    if norm_at(mu_lo + scale) <= radius:
        # hard case: even next to the pole the step stays inside; go to the boundary along the
        # eigenvector(s) of the smallest eigenvalue
        mu = lo + scale
        with np.errstate(divide="ignore", invalid="ignore"):
            coef = np.where(lam + mu > 0, -gt / (lam + mu), 0.0)
        coef[lam <= lam[0] + scale] = 0.0
        rest = radius**2 - float(coef @ coef)
        coef[0] += np.sqrt(max(rest, 0.0))
        return Q @ coef
    mu_hi = max(mu_lo, 1e-12) * 2.0 + float(np.linalg.norm(g)) / radius
    while norm_at(mu_hi) > radius:
        mu_hi *= 2.0
    for _ in range(100):
        mu = 0.5 * (mu_lo + mu_hi)
        if norm_at(mu) > radius:
            mu_lo = mu
        else:
            mu_hi = mu
        if mu_hi - mu_lo <= 1e-12 * max(1.0, mu_hi):
            break
    return -Q @ (gt / (lam + mu_hi))


def trust_region_newton(
    full: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]],
    value: Callable[[np.ndarray], float],
    z0: np.ndarray,
    *,
    done: Callable[[float, np.ndarray, np.ndarray], bool],
    max_iter: int = 200,
    radius: float = 1.0,
    max_radius: float = 1000.0,
    accept: float = 0.15,
) -> TrustResult:
    """Minimise from ``z0`` until ``done(f, g, H)`` holds at an accepted point.

    ``full`` and ``value`` return ``inf`` (or a non-finite value) where the criterion is not
    defined; such a trial point is rejected and the radius shrinks.
    """
    z = np.asarray(z0, float).copy()
    f, g, H = full(z)
    if not np.isfinite(f):
        return TrustResult(z, f, g, H, 0, "the criterion is not finite at the start")
    for it in range(1, max_iter + 1):
        if done(f, g, H):
            return TrustResult(z, f, g, H, it - 1, "converged")
        p = subproblem_step(g, H, radius)
        predicted = -(g @ p + 0.5 * p @ H @ p)
        trial = z + p
        f_trial = value(trial)
        if not np.isfinite(f_trial) or predicted <= 0:
            rho = -1.0
        else:
            rho = (f - f_trial) / predicted
        step = float(np.linalg.norm(p))
        if rho < 0.25:
            radius = 0.25 * step
        elif rho > 0.75 and step >= 0.99 * radius:
            radius = min(2.0 * radius, max_radius)
        if rho > accept:
            z = trial
            f, g, H = full(z)
        if radius < 1e-12 * max(1.0, float(np.linalg.norm(z))):
            return TrustResult(z, f, g, H, it, "the trust radius shrank to 0")
    return TrustResult(z, f, g, H, max_iter, f"stopped after {max_iter} iterations")
