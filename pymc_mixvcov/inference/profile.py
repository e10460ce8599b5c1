"""Profile-likelihood confidence intervals on the sd scale (lme4's ``confint(method = "profile")``).

For a parameter ``t = s_k(nat)`` of the ``"sd"`` scale (a fixed effect, an SD, a correlation, the
residual SD ``sigma``, or a likelihood's own parameter; :mod:`pymc_mixvcov.inference.scales`), the
profile log-likelihood is the constrained maximum

    l_p(t) = max { l(nat) : s_k(nat) = t },

``l`` the fit's criterion (the ML log-likelihood, or the Laplace/quadrature one of a GLMM), and its
signed square root deviance (Bates et al. 2015, section 5.1)

    zeta(t) = sign(t - t_hat) sqrt(2 (l(nat_hat) - l_p(t))).

``zeta`` is the likelihood-ratio statistic with the sign of the departure: where the model is
close to a linear one in ``t`` it is close to ``(t - t_hat) / se``. The ``level`` interval is
``{t : |zeta(t)| <= z}``, ``z = Phi^{-1}((1 + level) / 2)``, and its bounds are the two roots of
``zeta(t) = -z`` and ``zeta(t) = +z`` (Venzon and Moolgavkar 1988 find the same points as the
solutions of one system of equations).

How the roots are found, exactly and with few evaluations:

* **The constrained maximum** at a value ``t`` is found by Newton's method on the Lagrangian
  ``l(nat) - lambda (s_k(nat) - t)`` (sequential quadratic programming) with the exact
  gradient and Hessian of ``l`` (the engine's observed information) and of ``s_k`` (the exact
  Jacobian ``J`` and second derivatives ``T`` of the model map ``nat -> phi`` of
  :class:`~pymc_mixvcov.compilation.derivatives.ModelMap`, chained with those of the sd-scale map
  ``phi -> s`` in closed form, :func:`~pymc_mixvcov.inference.scales.sd_scale_second`:
  ``grad s_k = J^T grad_phi s_k``, ``hess s_k = J^T hess_phi s_k J + sum_m (grad_phi s_k)_m T_m``).
  Each step is a Newton step in the null space of ``a = grad s_k`` (``Z`` an orthonormal basis
  of ``{dx : a . dx = 0}``): with the multiplier ``lambda = (a . g) / (a . a)`` and the Lagrangian's
  Hessian ``W = hess l - lambda hess s_k``, ``dx = -Z (Z^T W Z)^{-1} Z^T g``, the reduced
  Hessian's positive eigenvalues mirrored (so that every step ascends), followed by a projection
  back onto ``s_k = t`` (a second-order correction) and a step-halving on ``l``. This is the KKT
  system ``[W a; a^T 0] [dx; -dlambda] = [-(g - lambda a); t - s_k]`` solved on a feasible point.
  Parameters at a bound of their support that the Lagrangian gradient pushes outward are held
  there; one at a bound where that gradient vanishes and ``W`` curves upward into the interior
  (an SD held at 0 becomes such a saddle when, say, a fixed effect is held away from its
  estimate) is moved inside once and left to the iteration. It stops when the predicted gain
  ``|dx^T g|`` is below ``1e-12`` (log-likelihood units), where the free gradient is ``lambda a``
  to rounding. Each solve starts from the first-order predictor ``nat_q + (t - t_q) dnat/dt`` at
  the nearest point ``q`` already solved on the same side (``dnat/dt`` from
  ``[W a; a^T 0] [dx; y] = [0; 1]``); where it fails, it halves the distance (continuation).
* **The root of zeta.** By the envelope theorem ``d l_p / dt = lambda`` (the multiplier at the
  solution), so ``d zeta / dt = -lambda / zeta``, exactly. The roots are found by Newton's
  method on ``zeta(u) = -+z`` in ``u = t`` (fixed effects, unbounded parameters), ``u = log t``
  (SDs, ``sigma``) or ``u = atanh t`` (correlations), where ``zeta`` is close to linear; the
  first trial is the Wald bound on that scale, ``u_hat -+ z se_u``. Once a point beyond the root
  is known, Newton steps that leave the bracket are replaced by regula falsi (Illinois). It
  stops at ``|zeta - (-+z)| < 1e-9``, i.e. the profile deviance ``2 (l_hat - l_p)`` equals ``z^2``
  to about ``4e-9``.
* **Boundaries.** An SD whose profile stays within ``-z`` down to ``10^-8`` of its estimate (where
  ``l_p`` equals its value at 0 to rounding, as it is even in the SD) gets the lower bound 0, and a
  correlation whose profile stays within ``-+z`` up to ``-+(1 - 10^-8)`` gets ``-+1``: lme4 reports
  the same limits there. An SD estimated at 0 gets the lower bound 0, a correlation estimated at
  ``+-1`` the bound ``+-1`` on that side. A correlation's constrained maximum can run to one of its
  SDs being 0 (the constraint's gradient then grows without bound; the solve stops when it has
  grown a thousandfold): there every value of the correlation has the same likelihood ``l_b``, so
  ``|zeta| <= sqrt(2 (l_hat - l_b))`` everywhere, with ``l_b`` from the SDs' profiles at 0. Below
  ``z`` that makes the interval ``[-1, 1]``; otherwise such a point lies beyond the root.

The criterion's value, gradient and Hessian come from the fit's engine; a Gaussian fit whose
largest cluster is large (crossed factors) is profiled with the blocked engine's functions, the
same criterion at a fraction of the cost (:func:`~pymc_mixvcov.engines.select.repeat_engine`).

ML fits profile the ML log-likelihood. REML fits, by default, profile the ML log-likelihood of
the same model refitted by ML, as lme4 does (its ``profile.merMod`` calls ``refitML``): the REML
criterion does not involve the fixed effects. ``criterion="REML"`` profiles the REML criterion
instead, for the variance parameters only (the restricted likelihood is a likelihood of the
variance parameters; Harville 1977). GLMMs profile the Laplace (or quadrature) log-likelihood
over all parameters, fixed effects included, as lme4 profiles ``glmer`` fits.

Wald intervals (``method="wald"``) are ``t_hat -+ z se`` with ``se`` from :meth:`MixedFit.vcov`
on the sd scale (the observed information and the exact Jacobian): lme4's Wald intervals for
the fixed effects, extended to the variance parameters (lme4 reports ``NA`` for those; the
log-scale and Fisher-scale Wald intervals of :meth:`MixedFit.summary` stay within the supports).

References
----------
Bates, D., Maechler, M., Bolker, B. and Walker, S. (2015). Fitting linear mixed-effects models
using lme4. Journal of Statistical Software 67(1), section 5 (profiling).

Venzon, D. J. and Moolgavkar, S. H. (1988). A method for computing profile-likelihood-based
confidence intervals. Journal of the Royal Statistical Society C 37(1), 87-94.

Harville, D. A. (1977). Maximum likelihood approaches to variance component estimation and to
related problems. Journal of the American Statistical Association 72(358), 320-338.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import pandas as pd

from ..errors import MixVcovError, MixVcovWarning
from .scales import sd_scale_second

if TYPE_CHECKING:
    from .results import MixedFit

__all__ = ["IntervalMethod", "Criterion", "ProfilePoint", "ProfileLikelihood", "confint"]

#: The interval methods of :func:`confint`.
IntervalMethod = Literal["profile", "wald"]
INTERVAL_METHODS: tuple[str, ...] = get_args(IntervalMethod)
#: The criterion a profile maximises: the ML log-likelihood or the REML criterion.
Criterion = Literal["ML", "REML"]
CRITERIA: tuple[str, ...] = get_args(Criterion)

#: Stopping rule of the root finder: ``|zeta - target|``.
ZETA_TOL = 1e-9
#: Stopping rule of the constrained maximisation: predicted gain of the Newton step (log-likelihood units).
GAIN_TOL = 1e-12
#: Relative distance to a boundary (an SD of 0, a correlation of +-1) at which a profile that has
#: not reached the critical value is taken to stay within it up to the boundary.
BOUNDARY_REL = 1e-8
#: A profile log-likelihood this much above the fit's maximum means the fit had not converged.
HIGHER_TOL = 1e-6
#: Halvings of the distance to a value whose constrained maximisation fails (continuation).
MAX_HALVINGS = 8
#: A constrained maximisation whose constraint gradient grows this many times is running to a
#: point where the constraint degenerates (a correlation whose SD goes to 0): it is stopped.
DEGENERATE_GROWTH = 1e3


@dataclass(frozen=True)
class ProfilePoint:
    """The constrained maximum of the criterion at one value of one parameter.

    Attributes
    ----------
    value : float
        The parameter's value ``t`` on the sd scale.
    loglik : float
        ``l_p(t)``, the criterion maximised over the other parameters.
    zeta : float
        ``sign(t - t_hat) sqrt(2 (l_hat - l_p(t)))``.
    multiplier : float
        The Lagrange multiplier ``lambda = d l_p / dt``.
    nat : numpy.ndarray
        The natural parameters at the constrained maximum.
    grad : numpy.ndarray
        The criterion's gradient there (natural scale).
    constraint_grad : numpy.ndarray
        The gradient ``a`` of the constrained parameter in the natural parameters.
    free : numpy.ndarray
        The natural parameters that were free (not held at a bound or left out by the criterion).
    iterations : int
        Newton steps taken.
    tangent : numpy.ndarray
        ``d nat / dt`` along the profile path (from the KKT system ``W dx = a dlambda``,
        ``a . dx = 1``): the first-order predictor of the solution at a nearby value.
    """

    value: float
    loglik: float
    zeta: float
    multiplier: float
    nat: np.ndarray
    grad: np.ndarray
    constraint_grad: np.ndarray
    free: np.ndarray
    iterations: int
    tangent: np.ndarray

    @property
    def dzeta(self) -> float:
        """``d zeta / dt = -lambda / zeta`` (envelope theorem); ``nan`` at ``zeta = 0``."""
        return -self.multiplier / self.zeta if self.zeta != 0 else np.nan


class _NotSolved(Exception):
    """The constrained maximisation failed from the given start."""


class _Degenerate(_NotSolved):
    """The constrained maximisation runs to a point where the constraint degenerates."""


class _DegenerateProfile(MixVcovError):
    """A correlation's constrained maximum runs to one of its SDs being 0 (see :meth:`ProfileLikelihood.at`)."""


class ProfileLikelihood:
    """The profile log-likelihood of every parameter of a fit on the sd scale.

    Parameters
    ----------
    fit : MixedFit
        An ML or REML fit (MAP fits are refused: a profile likelihood needs a likelihood).
    criterion : {"ML", "REML"}, optional
        ``"ML"`` (the default for every fit; a REML fit is first refitted by ML, as lme4 does) or
        ``"REML"`` (REML fits only: the REML criterion, variance parameters only). See the module
        docstring.

    Attributes
    ----------
    labels : list of str
        The sd-scale labels (:meth:`MixedFit.labels`).
    estimates : numpy.ndarray
        The criterion's maximiser on the sd scale (the ML estimates when a REML fit is refitted).
    loglik : float
        The criterion's maximum.
    """

    def __init__(self, fit: MixedFit, criterion: Criterion | None = None):
        self.fit = fit
        self.criterion = _check_criterion(fit, criterion)
        spec = fit.spec
        self.labels = fit.labels("sd")
        self.kinds = fit._scales.kinds("sd")
        fns, nat, at_bound = _functions_for(fit, self.criterion)
        self._fns, self._spec = fns, spec
        self._p = fns.sig.p
        self._r_terms = tuple(fns.sig.r)
        self._lower, self._upper = spec.lower, spec.upper
        P = spec.n_params
        self._free = np.ones(P, bool) if self.criterion == "ML" else np.isin(np.arange(P), spec.variance_index)
        self.nat_hat = np.asarray(nat, float)
        self._at_bound = np.asarray(at_bound, bool)
        info = self._criterion(self.nat_hat)
        self.loglik = float(info[0])
        self._info_hat = info
        self.estimates = np.array([self._entry(k, self.nat_hat, second=False)[0] for k in range(len(self.labels))])
        self._se = self._wald_se()
        self._depends = self._dependence()
        self._points: dict[int, list[ProfilePoint]] = {}
        self._degenerate: dict[int, float] = {}
        self._cor_sds = _correlation_sds(spec, self._p)
        # how far inside a bound a saddle parameter is moved: a hundredth of the largest variance parameter
        self._inside_step = 1e-2 * max(float(np.max(np.abs(self.nat_hat[spec.variance_index]), initial=0.0)), 1e-8)

    # -- the pieces --------------------------------------------------------------------------------
    def _criterion(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """``(l, grad l, hess l)`` at ``x`` (natural scale), exact."""
        with np.errstate(all="ignore"):
            info = self._fns.information(x)
        return float(info["loglik"]), np.asarray(info["grad"], float), -np.asarray(info["observed"], float)

    def _entry(self, k: int, x: np.ndarray, second: bool = True):
        """``(s_k(x), grad s_k, hess s_k)`` on the natural scale (``hess`` ``None`` unless ``second``)."""
        p, P = self._p, x.size
        if k < p:
            a = np.zeros(P)
            a[self._spec.fixed_index[k]] = 1.0
            return float(x[self._spec.fixed_index[k]]), a, (np.zeros((P, P)) if second else None)
        phi, J, T = self._fns.map(x, second=second)
        with np.errstate(all="ignore"):
            s, Js, Hs = sd_scale_second(np.asarray(phi[p:], float), self._r_terms)
        v = k - p
        Jv = J[p:]
        a = np.asarray(Js[v]) @ Jv
        if not second:
            return float(s[v]), a, None
        C = Jv.T @ np.asarray(Hs[v]) @ Jv + np.einsum("m,mij->ij", np.asarray(Js[v]), T[p:])
        return float(s[v]), a, C

    def _wald_se(self) -> np.ndarray:
        """Standard errors on the sd scale from the criterion's observed information at its maximum."""
        _, _, H = self._info_hat
        keep = self._free & ~self._at_bound
        out = np.full(len(self.labels), np.nan)
        try:
            V = np.linalg.inv(-H[np.ix_(keep, keep)])
        except np.linalg.LinAlgError:
            return out
        for k in range(len(self.labels)):
            a = self._entry(k, self.nat_hat, second=False)[1]
            if np.all(a[~keep] == 0):
                out[k] = np.sqrt(max(a[keep] @ V @ a[keep], 0.0))
        return out

    def _dependence(self) -> np.ndarray:
        """Whether each sd-scale entry depends on a free natural parameter (its Jacobian row off the
        boundary is not 0): entries the model fixes (a correlation of an uncorrelated term written
        as one ``MvNormal``) have no profile."""
        x = self.nat_hat.copy()
        lo = self._lower
        bump = 0.1 * (1.0 + np.nanmean(np.abs(x)))
        x = np.where(np.isfinite(lo) & (x <= lo + 1e-12), lo + bump, x)
        x = x + 1e-3 * bump * np.random.default_rng(0).uniform(size=x.size)
        return np.array(
            [bool(np.any(np.abs(self._entry(k, x, second=False)[1][self._free]) > 0)) for k in range(len(self.labels))]
        )

    def index(self, label: str) -> int:
        """Position of ``label`` among :attr:`labels`; unknown labels raise :class:`MixVcovError`."""
        if label not in self.labels:
            import difflib

            close = difflib.get_close_matches(str(label), self.labels, n=3)
            hint = f" (closest: {', '.join(map(repr, close))})" if close else ""
            raise MixVcovError(
                f"unknown parameter {label!r}{hint}; the sd-scale parameters are: {', '.join(map(repr, self.labels))}"
            )
        k = self.labels.index(label)
        if k < self._p and self.criterion == "REML":
            raise MixVcovError(
                f"{label!r} is a fixed effect, which the REML criterion does not involve (it is integrated "
                "out): profile it with criterion='ML' (the REML fit is then refitted by ML, as lme4 does)"
            )
        return k

    # -- the constrained maximum ---------------------------------------------------------------------
    def _project(self, k: int, t: float, x: np.ndarray, free: np.ndarray) -> np.ndarray:
        """``x`` moved onto ``s_k = t`` along the constraint's gradient (free coordinates only)."""
        for _ in range(30):
            s, a, _ = self._entry(k, x, second=False)
            r = t - s
            if not np.isfinite(r):
                raise _NotSolved("the constraint is not finite")
            if abs(r) <= 1e-14 * (1.0 + abs(t)):
                return x
            af = np.where(free, a, 0.0)
            nrm = af @ af
            if not nrm > 0:
                raise _NotSolved("the constraint does not depend on the free parameters here")
            x = x + af * (r / nrm)
        s = self._entry(k, x, second=False)[0]
        if abs(t - s) > 1e-10 * (1.0 + abs(t)):
            raise _NotSolved("the projection onto the constraint did not converge")
        return x

    def _held(self, x: np.ndarray, rd: np.ndarray) -> np.ndarray:
        lo, up = self._lower, self._upper
        return (np.isfinite(lo) & (x <= lo) & (rd <= 0)) | (np.isfinite(up) & (x >= up) & (rd >= 0))

    def _solve(self, k: int, t: float, x0: np.ndarray) -> ProfilePoint:
        """Maximise the criterion subject to ``s_k = t`` from ``x0`` (see the module docstring)."""
        lo, up = self._lower, self._upper
        x = self._project(k, t, np.clip(x0, lo, up), self._free)
        crit = self._criterion(x)
        if not np.isfinite(crit[0]):
            raise _NotSolved("the criterion is not finite at the start")
        a_start = None
        released = False
        for it in range(40):
            ll, g, H = crit
            s, a, C = self._entry(k, x)
            a_norm = np.linalg.norm(a[self._free])
            a_start = a_norm if a_start is None else a_start
            if a_start > 0 and a_norm > DEGENERATE_GROWTH * a_start:
                raise _Degenerate("the constraint degenerates along the path (a correlation whose SD goes to 0)")
            if not (np.all(np.isfinite(g)) and np.all(np.isfinite(H)) and np.all(np.isfinite(C))):
                raise _NotSolved("non-finite derivatives")
            lam = _multiplier(g, a, self._free)
            held = self._held(x, g - lam * a)
            if not released and held.any():
                # a bound where the criterion is flat to first order and curves upward into the
                # interior (the likelihood is even in an SD, so an SD held at 0 can become a saddle
                # along the profile): step inside once and let the iteration decide
                rd = g - lam * a
                w_diag = np.diag(H) - lam * np.diag(C)
                saddle = held & (np.abs(rd) <= 1e-10 * (1.0 + np.max(np.abs(g)))) & (w_diag > 0)
                if saddle.any():
                    released = True
                    lo_, up_, step_ = self._lower, self._upper, self._inside_step
                    x = np.where(saddle, np.where(np.isfinite(lo_), lo_ + step_, up_ - step_), x)
                    x = self._project(k, t, x, self._free)
                    crit = self._criterion(x)
                    continue
            free = self._free & ~held
            f = np.flatnonzero(free)
            lam = _multiplier(g, a, free)
            # null-space Newton step: dx = Z p with Z an orthonormal basis of {dx : a . dx = 0}
            Z = _null_space(a[f])
            W = H[np.ix_(f, f)] - lam * C[np.ix_(f, f)]
            r = Z.T @ g[f]
            R = Z.T @ W @ Z
            e, V = np.linalg.eigh(0.5 * (R + R.T))
            # a maximum needs R negative definite; elsewhere its eigenvalues are mirrored (saddle-free Newton)
            big = np.max(np.abs(e)) if e.size else 1.0
            e_mod = -np.maximum(np.abs(e), 1e-10 * big + 1e-300)
            p_ = -(V @ ((V.T @ r) / e_mod))
            gain = abs(r @ p_)
            if gain < GAIN_TOL and np.all(e < 0):
                return self._point(k, t, x, ll, g, a, free, lam, it, W)
            dx = np.zeros_like(x)
            dx[f] = Z @ p_
            step = 1.0
            while step > 1e-6:
                try:
                    trial = self._project(k, t, np.clip(x + step * dx, lo, up), free)
                    new = self._criterion(trial)
                except (_NotSolved, np.linalg.LinAlgError, FloatingPointError, ValueError):
                    new = None
                if new is not None and np.isfinite(new[0]) and new[0] >= ll - 1e-12 * (1.0 + abs(ll)):
                    break
                step *= 0.5
            else:
                if gain < 1e3 * GAIN_TOL and np.all(e < 0):  # rounding: no step can gain this little
                    return self._point(k, t, x, ll, g, a, free, lam, it, W)
                raise _NotSolved("no step increases the criterion")
            x, crit = trial, new
        raise _NotSolved("the constrained maximisation did not converge in 40 Newton steps")

    def _point(self, k, t, x, ll, g, a, free, lam, iterations, W) -> ProfilePoint:
        dev = 2.0 * (self.loglik - ll)
        if dev < -2.0 * HIGHER_TOL:
            raise MixVcovError(
                f"profiling {self.labels[k]!r} found a higher {self.criterion} criterion at {self.labels[k]} = {t:.6g} "
                f"({ll:.8f} against the fit's {self.loglik:.8f}): the fit had not reached its maximum. Refit the "
                "model (check fit.converged and fit.message) before computing profile intervals"
            )
        zeta = float(np.sign(t - self.estimates[k]) * np.sqrt(max(dev, 0.0)))
        tangent = _tangent(W, a, free)
        return ProfilePoint(
            float(t), float(ll), zeta, float(lam), x.copy(), g.copy(), a.copy(), free.copy(), iterations, tangent
        )

    def _hat_point(self, k: int) -> ProfilePoint:
        """The profile at the estimate: ``zeta = 0``, ``lambda = 0``, the tangent from the information."""
        _, g, H = self._info_hat
        a = self._entry(k, self.nat_hat, second=False)[1]
        free = self._free & ~self._at_bound
        W = H[np.ix_(free, free)]
        return ProfilePoint(
            float(self.estimates[k]),
            self.loglik,
            0.0,
            0.0,
            self.nat_hat.copy(),
            g.copy(),
            a,
            free,
            0,
            _tangent(W, a, free),
        )

    def _base(self, k: int, t: float) -> ProfilePoint:
        """The point to start from for ``s_k = t``: the nearest one solved on the same side of the
        estimate, else the estimate itself; for a parameter that does not move with the free
        parameters at the estimate (an SD estimated at 0), the estimates with the parameters at a
        bound moved inside by ``|t|`` and no tangent."""
        t_hat = self.estimates[k]
        side = np.sign(t - t_hat)
        near = [q for q in self._points.get(k, []) if np.sign(q.value - t_hat) == side]
        if near:
            return min(near, key=lambda q: abs(q.value - t))
        q = self._hat_point(k)
        if np.any(np.abs(q.constraint_grad[q.free]) > 0):
            return q
        lo = self._lower
        x = np.where(self._at_bound & np.isfinite(lo), lo + (abs(t) if t != 0 else 1e-3), self.nat_hat)
        return ProfilePoint(q.value, q.loglik, 0.0, 0.0, x, q.grad, q.constraint_grad, q.free, 0, np.zeros(x.size))

    def at(self, label: str | int, value: float, *, give_up_degenerate: bool = False) -> ProfilePoint:
        """The constrained maximum of the criterion with parameter ``label`` held at ``value``.

        Starts from the first-order predictor ``nat_q + (t - t_q) dnat/dt`` at the nearest point
        ``q`` solved before on the same side of the estimate (or the estimate); where the Newton
        solve fails, it halves the way from ``q`` (continuation), up to :data:`MAX_HALVINGS` times.
        ``give_up_degenerate``: raise at once (no continuation) when the solve runs to a point
        where the constraint degenerates (a correlation whose SD goes to 0).
        """
        k = self.index(label) if isinstance(label, str) else int(label)
        t = float(value)
        if t == self.estimates[k]:
            return self._hat_point(k)
        base = self._base(k, t)
        target, halvings = t, 0
        while True:
            x0 = base.nat + (target - base.value) * base.tangent
            try:
                point = self._solve(k, target, x0)
            except _NotSolved as err:
                if give_up_degenerate and isinstance(err, _Degenerate):
                    raise _DegenerateProfile(str(err)) from err
                halvings += 1
                if halvings > MAX_HALVINGS:
                    break
                target = 0.5 * (base.value + target)
                continue
            self._points.setdefault(k, []).append(point)
            if target == t:
                return point
            base, target = point, t
        raise MixVcovError(
            f"the profile of {self.labels[k]!r} could not be computed at {value:.6g}: the constrained "
            "maximisation did not converge (the model may be poorly identified along this parameter)"
        )

    def _degenerate_zeta(self, k: int) -> float:
        """For a correlation: ``|zeta|`` where either of its two SDs is 0, a bound on ``|zeta|``.

        As an SD tends to 0, every value of a correlation it enters gives the same likelihood, so
        ``l_p(t) >= l_b``, the larger of the two SDs' profiles at 0, for every ``t``; and where the
        constrained maximum is not attained (it runs to that boundary) ``l_p(t) = l_b``. Returns
        ``sqrt(2 (l_hat - l_b))``.
        """
        if k not in self._degenerate:
            best = -np.inf
            for j in self._cor_sds[k]:
                try:
                    best = max(best, self.at(j, float(self.estimates[j]) * BOUNDARY_REL).loglik)
                except MixVcovError:
                    continue
            if not np.isfinite(best):
                raise MixVcovError(
                    f"the profile of {self.labels[k]!r} could not be computed: the constrained maximisation "
                    "does not converge and neither SD of the correlation could be profiled to 0"
                )
            self._degenerate[k] = float(np.sqrt(max(2.0 * (self.loglik - best), 0.0)))
        return self._degenerate[k]

    # -- the interval ------------------------------------------------------------------------------
    def _transform(self, k: int):
        """``(u(t), t(u), dt/du)``: the scale of the root finder, on which zeta is close to linear."""
        kind = self.kinds[k]
        t_hat = self.estimates[k]
        if kind == "positive" and t_hat > 0:
            return np.log, np.exp, np.exp
        if kind == "correlation":
            return np.arctanh, np.tanh, lambda u: 1.0 - np.tanh(u) ** 2
        return _IDENTITY

    def bound(self, label: str | int, side: int, level: float = 0.95) -> tuple[float, ProfilePoint | None]:
        """The root of ``zeta(t) = side * z`` (``side`` -1: lower bound, +1: upper bound).

        Returns the bound and the profile point there (``None`` where the bound is the boundary of
        the parameter space: an SD of 0, a correlation of -+1).
        """
        from scipy.special import ndtri

        k = self.index(label) if isinstance(label, str) else int(label)
        if side not in (-1, 1):
            raise MixVcovError(f"side must be -1 (lower) or +1 (upper), got {side!r}")
        z = float(ndtri(0.5 + level / 2))
        kind, t_hat, se = self.kinds[k], self.estimates[k], self._se[k]
        if not self._depends[k]:
            return np.nan, None
        if kind == "correlation" and not np.isfinite(t_hat):
            return np.nan, None
        if kind == "positive" and t_hat <= 0:
            return self._bound_from_zero(k, side, z)
        at_one = kind == "correlation" and abs(t_hat) >= 1.0 - BOUNDARY_REL
        if at_one and side == np.sign(t_hat):
            return float(np.sign(t_hat)), None  # a correlation estimated at +-1
        U, T, dT = self._transform(k) if not at_one else _IDENTITY
        u_hat = U(t_hat)
        # the limit of the parameter space on u's scale, where a profile that has not reached the
        # critical value stays within it
        edge = None
        if kind == "positive" and side < 0:
            edge = (U(t_hat * BOUNDARY_REL), 0.0)
        elif kind == "correlation":
            edge = (U(side * (1.0 - BOUNDARY_REL)), float(side))
        se_u = se * _du_dt(U, t_hat)
        if np.isfinite(se_u) and se_u > 0:
            step0 = z * se_u
        else:  # no Wald interval (a parameter held at a bound): a first step of the parameter's size
            step0 = 0.5 if kind == "correlation" else 0.5 * (1.0 + abs(u_hat))
        return self._root(k, side, z, (U, T, dT), u_hat, u_hat + side * step0, step0, edge)

    def _bound_from_zero(self, k: int, side: int, z: float) -> tuple[float, ProfilePoint | None]:
        """Bounds of an SD estimated at 0: the lower one is 0; the upper one is found on ``log t``
        from ``z se`` (or a hundredth of ``sigma``), growing or shrinking ``t`` fourfold until the
        root is bracketed."""
        if side < 0:
            return 0.0, None
        se = self._se[k]
        t0 = z * se if np.isfinite(se) and se > 0 else 1e-2 * _typical_scale(self)
        return self._root(k, side, z, (np.log, np.exp, np.exp), None, float(np.log(t0)), float(np.log(4.0)), None)

    def _root(self, k, side, z, transform, u_in, u, step0, edge) -> tuple[float, ProfilePoint | None]:
        """The root of ``zeta(t(u)) = side z`` by Newton's method on ``u`` with ``d zeta / du`` exact.

        ``u_in``: a point known to be within the interval (the estimate), or ``None``; ``u``: the
        first trial; ``step0``: the size of the first step; ``edge``: ``(u_edge, t_edge)``, the limit
        of the parameter space on this side, returned when the profile there has not reached the
        critical value. Until the root is bracketed, steps go outward (at most four times the
        distance covered so far) or, with no point inside yet, inward by ``step0``; once it is,
        Newton steps that leave the bracket or do not halve it give way to regula falsi with the
        Illinois modification (the value kept twice is halved).
        """
        U, T, dT = transform
        target = side * z
        inside = None if u_in is None else (u_in, -target)  # (u, zeta - target)
        outside, last = None, None
        for _ in range(80):
            if edge is not None and side * (u - edge[0]) >= 0:
                u = edge[0]
            try:
                q = self.at(k, float(T(u)), give_up_degenerate=True)
                zeta = q.zeta
            except MixVcovError as err:
                if self.kinds[k] != "correlation":
                    raise
                # the constrained maximum runs to an SD of 0, where every correlation has the
                # same likelihood: if that level is within z, so is the whole profile
                zb = self._degenerate_zeta(k)
                if zb < z:
                    return float(side), None
                try:  # otherwise look harder for a maximum inside, else the point is beyond the root
                    if not isinstance(err, _DegenerateProfile):
                        raise err
                    q = self.at(k, float(T(u)))
                    zeta = q.zeta
                except MixVcovError:
                    q, zeta = None, side * zb
            f = zeta - target
            if q is not None and abs(f) < ZETA_TOL:
                return q.value, q
            beyond = side * zeta > z
            if not beyond and edge is not None and u == edge[0]:
                return edge[1], None
            if beyond:
                if last == "out" and inside is not None:
                    inside = (inside[0], 0.5 * inside[1])
                outside, last = (u, f), "out"
            else:
                if last == "in" and outside is not None:
                    outside = (outside[0], 0.5 * outside[1])
                inside, last = (u, f), "in"
            dz = q.dzeta * dT(u) if q is not None else np.nan
            newton = u - f / dz if np.isfinite(dz) and dz > 0 else None
            if outside is None:
                reach = max(abs(u - u_in) if u_in is not None else 0.0, step0)
                if newton is None or side * (newton - u) <= 0:
                    newton = u + side * 2.0 * reach
                u = u + side * min(side * (newton - u), 4.0 * reach)
                continue
            if inside is None:
                u = u - side * step0
                continue
            (ui, fi), (uo, fo) = inside, outside
            lo_, hi_ = min(ui, uo), max(ui, uo)
            if hi_ - lo_ <= 1e-13 * (1.0 + abs(u)) and q is not None:
                return float(T(u)), q
            if newton is not None and lo_ < newton < hi_ and abs(newton - u) < 0.5 * (hi_ - lo_):
                u = newton
            else:
                u = (ui * fo - uo * fi) / (fo - fi) if fo != fi else 0.5 * (ui + uo)
                if not lo_ < u < hi_:
                    u = 0.5 * (ui + uo)
        raise MixVcovError(
            f"the {'upper' if side > 0 else 'lower'} profile bound of {self.labels[k]!r} was not found in 80 "
            "evaluations (the profile may not be monotone)"
        )

    def interval(self, label: str | int, level: float = 0.95) -> tuple[float, float]:
        """The profile interval ``{t : |zeta(t)| <= z}`` of one parameter."""
        return self.bound(label, -1, level)[0], self.bound(label, +1, level)[0]


def _correlation_sds(spec, p: int) -> dict[int, tuple[int, int]]:
    """For each correlation row of the sd scale, the rows of its two SDs (lower-triangle order of
    :mod:`pymc_mixvcov.inference.scales`)."""
    out, off = {}, p
    for t in spec.terms:
        pairs = [(i, j) for j in range(t.r) for i in range(j, t.r)]
        row = {pair: off + n for n, pair in enumerate(pairs)}
        for (i, j), r in row.items():
            if i != j:
                out[r] = (row[i, i], row[j, j])
        off += len(pairs)
    return out


def _identity(t):
    return t


def _one(_u):
    return 1.0


_IDENTITY = (_identity, _identity, _one)


def _tangent(W: np.ndarray, a: np.ndarray, free: np.ndarray) -> np.ndarray:
    """``d nat / dt`` of the constrained maximum: ``[W a; a^T 0] [dx; y] = [0; 1]`` over the free
    parameters (``W`` their block of the Lagrangian's Hessian); the minimal-norm direction
    ``a / |a|^2`` where that system is singular."""
    f = np.flatnonzero(free)
    n = f.size
    out = np.zeros(a.size)
    af = a[f]
    K = np.zeros((n + 1, n + 1))
    K[:n, :n] = W
    K[:n, n] = K[n, :n] = af
    rhs = np.zeros(n + 1)
    rhs[n] = 1.0
    try:
        sol = np.linalg.solve(K, rhs)
        ok = np.all(np.isfinite(sol))
    except np.linalg.LinAlgError:
        ok = False
    nrm = af @ af
    if ok:
        out[f] = sol[:n]
    elif nrm > 0:
        out[f] = af / nrm
    return out


def _multiplier(g: np.ndarray, a: np.ndarray, free: np.ndarray) -> float:
    """Least-squares Lagrange multiplier ``lambda = (a . g) / (a . a)`` over the free parameters: the
    first-order estimate of ``d l_p / dt``, exact where the free gradient is parallel to ``a``."""
    af, gf = a[free], g[free]
    nrm = af @ af
    return float(af @ gf / nrm) if nrm > 0 else 0.0


def _null_space(a: np.ndarray) -> np.ndarray:
    """Orthonormal basis (columns) of the vectors orthogonal to ``a`` (Householder reflection)."""
    n = a.size
    nrm = np.linalg.norm(a)
    if n == 0 or nrm == 0:
        return np.eye(n)
    v = a / nrm
    v = v.copy()
    v[0] += np.copysign(1.0, v[0]) if v[0] != 0 else 1.0
    Q = np.eye(n) - 2.0 * np.outer(v, v) / (v @ v)
    return Q[:, 1:]


def _du_dt(U, t: float) -> float:
    """``du/dt`` at ``t`` for the transforms of :meth:`ProfileLikelihood._transform`."""
    if U is np.log:
        return 1.0 / t
    if U is np.arctanh:
        return 1.0 / (1.0 - t * t)
    return 1.0


def _typical_scale(prof: ProfileLikelihood) -> float:
    """A size for the first trial of an SD estimated at 0: ``sigma`` for a Gaussian model, else 1."""
    if prof._spec.gaussian:
        return float(prof.estimates[-1])
    return 1.0


def _check_criterion(fit: MixedFit, criterion: str | None) -> str:
    if fit.method == "MAP":
        raise MixVcovError(
            "profile intervals need a likelihood, but this fit maximises a posterior (method='MAP'); refit with "
            "method='ML' (or 'REML'), or use method='wald' for the Laplace approximation of the posterior"
        )
    if criterion is None:
        return "ML"
    if criterion not in CRITERIA:
        raise MixVcovError(f"unknown criterion {criterion!r}; valid values are: {', '.join(map(repr, CRITERIA))}")
    if criterion == "REML" and fit.method != "REML":
        raise MixVcovError(
            f"criterion='REML' profiles the REML criterion of a REML fit; this is an {fit.method} fit: refit it "
            "with method='REML', or use criterion='ML'"
        )
    return criterion


def _functions_for(fit: MixedFit, criterion: str):
    """The engine functions, maximiser and held parameters of ``criterion`` for ``fit``.

    The fit's own, or new ones when the engine that evaluates repeatedly is another
    (:func:`~pymc_mixvcov.engines.select.repeat_engine`) or when a REML fit is profiled by ML (an
    ML refit on the same spec and cluster structure); new ones are cached on the fit.
    """
    from ..engines.select import build_functions, engine_structure, repeat_engine

    engine = repeat_engine(fit.spec, fit.structure, fit.engine)
    if fit.method == criterion and engine == fit.engine:
        return fit._functions, fit._opt["nat"], fit.at_bound
    key = f"profile_functions_{criterion}"
    cached = fit._cache.get(key)
    if cached is None:
        fns, _ = build_functions(fit.spec, engine_structure(fit.spec, fit.structure, engine), engine, criterion)
        if fit.method == criterion:
            cached = (fns, fit._opt["nat"], fit.at_bound)
        else:
            from ..optimise.fit import optimise

            opt = optimise(fns, fit.spec)
            if not opt.converged:
                warnings.warn(
                    f"the ML refit of this REML fit, whose likelihood is profiled, did not converge ({opt.message})",
                    MixVcovWarning,
                    stacklevel=4,
                )
            cached = (fns, opt.nat, opt.at_bound)
        fit._cache[key] = cached
    return cached


def _rows(labels: list[str], parm) -> list[int]:
    if parm is None:
        return list(range(len(labels)))
    items = [parm] if isinstance(parm, str) else list(parm)
    out = []
    for item in items:
        if not isinstance(item, str) or item not in labels:
            import difflib

            close = difflib.get_close_matches(str(item), labels, n=3)
            hint = f" (closest: {', '.join(map(repr, close))})" if close else ""
            raise MixVcovError(
                f"unknown parameter {item!r}{hint}; parm takes sd-scale labels: {', '.join(map(repr, labels))}"
            )
        out.append(labels.index(item))
    return out


def confint(
    fit: MixedFit,
    method: IntervalMethod = "profile",
    level: float = 0.95,
    parm: str | list[str] | None = None,
    *,
    criterion: Criterion | None = None,
) -> pd.DataFrame:
    """Profile-likelihood (or Wald) confidence intervals on the sd scale; see :meth:`MixedFit.confint`."""
    from scipy.special import ndtri

    if method not in INTERVAL_METHODS:
        raise MixVcovError(f"unknown method {method!r}; valid values are: {', '.join(map(repr, INTERVAL_METHODS))}")
    if isinstance(level, bool) or not isinstance(level, int | float | np.floating) or not 0 < level < 1:
        raise MixVcovError(f"level must be a number between 0 and 1, got {level!r}")
    level = float(level)
    labels = fit.labels("sd")
    if method == "wald":
        if criterion is not None:
            raise MixVcovError("criterion applies to profile intervals; Wald intervals use the fit's own information")
        rows = _rows(labels, parm)
        est = fit.params("sd").to_numpy()
        se = np.sqrt(np.diag(fit.vcov("sd").to_numpy()))
        z = float(ndtri(0.5 + level / 2))
        out = pd.DataFrame(
            {"estimate": est, "lower": est - z * se, "upper": est + z * se}, index=pd.Index(labels)
        ).iloc[rows]
        out.attrs = {"method": "wald", "level": level, "criterion": fit.method}
        return out
    prof = ProfileLikelihood(fit, criterion)
    if parm is None and prof.criterion == "REML":
        rows = list(range(prof._p, len(labels)))
    else:
        rows = _rows(labels, parm)
        for k in rows:
            prof.index(labels[k])  # refuses fixed effects under the REML criterion
    lower, upper, boundary, missing = [], [], [], []
    for k in rows:
        lo, q_lo = prof.bound(k, -1, level)
        hi, q_hi = prof.bound(k, +1, level)
        lower.append(lo)
        upper.append(hi)
        if not prof._depends[k] or not np.isfinite(prof.estimates[k]):
            missing.append(labels[k])
        elif q_lo is None or q_hi is None:
            boundary.append(labels[k])
    out = pd.DataFrame(
        {"estimate": prof.estimates[rows], "lower": lower, "upper": upper}, index=pd.Index([labels[k] for k in rows])
    )
    refitted = fit.method == "REML" and prof.criterion == "ML"
    out.attrs = {
        "method": "profile",
        "level": level,
        "criterion": prof.criterion + (" (REML fit refitted by ML)" if refitted else ""),
        "loglik": prof.loglik,
        "at_boundary": boundary,
        "not_profiled": missing,
    }
    return out
