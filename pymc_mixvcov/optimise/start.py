"""Starting values and optimiser scaling matched to the data, so that units do not matter.

A model's own initial point (PyMC's, from its priors) knows nothing of the data's units: an
``LKJCholeskyCov`` factor starts at the identity whether the response is in milliseconds or in
hours, and a slope's random-effect SD starts at the same value whether the predictor is in days
or in seconds. An optimiser started there, on coordinates whose scales differ by many orders of
magnitude, can stop far from the optimum (at a false boundary fit) or not at all. Two steps make
the fit equivariant under a change of units of the response or of any predictor:

1. **A start in the data's units** (:func:`core_start`). With ``sigma_0`` the residual SD of
   the least-squares fit of ``y`` on ``X`` (Gaussian models) and ``rms_j`` the root mean square of
   random-effect design column ``j`` over the observations that use the term, each covariance
   factor starts at ``Lambda_k = diag(sigma_0 / rms_j)``: lme4's start (``theta = I`` relative to
   ``sigma``) on standardised design columns. Non-Gaussian models have no residual scale on the
   linear predictor's scale: ``Lambda_k = diag(1 / rms_j)``. Under ``y -> c y`` and
   ``z_j -> c_j z_j`` this start changes exactly as the estimates do.
   The model's natural parameters are then fitted to these core values
   (:func:`natural_start`): a bounded least-squares problem in the model map
   ``nat -> phi`` with its exact Jacobian, which is exact where the map is onto (a Cholesky factor,
   SDs, a covariance matrix) and the nearest point where it is not (a hand-written model with a
   shared SD).
2. **Coordinates in units of the curvature** (:func:`curvature_scales`). The optimiser works on
   ``z_i = x_i / d_i`` with ``d_i = 1 / sqrt(|I_ii|)``, ``I`` the observed information at the
   start (the expected one for a Gaussian model where the observed one has a zero on its diagonal).
   Gradients in ``z`` are then dimensionless (in units of standard errors), so that the
   optimiser's tolerances mean the same in every unit system.

References
----------
Bates, D., Maechler, M., Bolker, B. and Walker, S. (2015). Fitting linear mixed-effects models
using lme4. Journal of Statistical Software 67(1), section 3.7 (starting values of ``theta``).
Nocedal, J. and Wright, S. J. (2006). Numerical Optimization, 2nd ed., section 2.2 (scaling).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "boundary_restarts",
    "check_not_exact",
    "core_start",
    "natural_for",
    "curvature_scales",
    "moment_start",
    "natural_start",
    "rms_columns",
]


def rms_columns(z: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Root mean square of each design column over the observations that use the term.

    A column that is zero everywhere gets 1 (it carries no scale).
    """
    used = np.asarray(codes) >= 0
    zz = np.asarray(z, float)[used]
    if zz.shape[0] == 0:
        return np.ones(zz.shape[1])
    rms = np.sqrt(np.mean(zz**2, axis=0))
    return np.where(np.isfinite(rms) & (rms > 0), rms, 1.0)


def residual_scale(X: np.ndarray, y: np.ndarray) -> float:
    """The residual SD of the least-squares fit of ``y`` on ``X`` (``sqrt(RSS / (n - rank X))``).

    Falls back to the SD of ``y`` and then to ``max |y|`` where the fit is exact, and to 1 for a
    response that is zero everywhere.
    """
    y = np.asarray(y, float)
    n = y.size
    if X.shape[1]:
        coef, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ coef
    else:
        rank, resid = 0, y
    dof = max(n - int(rank), 1)
    for s in (np.sqrt(resid @ resid / dof), np.std(y), np.max(np.abs(y)) if n else 0.0):
        if np.isfinite(s) and s > 0:
            return float(s)
    return 1.0


def check_not_exact(spec) -> None:
    """Refuse a Gaussian response that the fixed effects fit exactly (or a constant one).

    Then every residual of the least-squares fit is 0 to rounding, and the likelihood grows
    without bound as ``sigma -> 0``: there is no maximum likelihood estimate.
    """
    from ..errors import MixVcovError

    y = np.asarray(spec.y - spec.offset, float)
    X = np.asarray(spec.X, float)
    resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0] if X.shape[1] else y
    if float(resid @ resid) <= 1e-24 * max(float(y @ y), np.finfo(float).tiny):
        what = "constant" if np.ptp(y) == 0 else "an exact linear function of the fixed effects"
        raise MixVcovError(
            f"the response {spec.observed_name!r} is {what}: the residual SD has no maximum likelihood "
            "estimate (the likelihood grows without bound as it goes to 0). Check the response column, or "
            "remove the fixed effects that reproduce it"
        )


def core_start(spec) -> tuple[np.ndarray, np.ndarray]:
    """Target values of the core variance parameters and the scale of each, in the data's units.

    Returns ``(target, unit)`` for ``phi[p:]`` restricted to the covariance factors' entries
    (lower triangles, column-major, term by term) followed, for Gaussian models, by ``sigma``:
    ``target`` as in the module docstring and ``unit`` the size of each entry's natural unit
    (``sigma_0 / rms_i`` for entry ``(i, j)`` of a factor, ``sigma_0`` for ``sigma``), used to
    weigh the least-squares fit of :func:`natural_start`.
    """
    s0 = residual_scale(spec.X, spec.y - spec.offset) if spec.gaussian else 1.0
    target, unit = [], []
    for t in spec.terms:
        rms = rms_columns(t.z, t.codes)
        for j in range(t.r):  # column-major lower triangle
            for i in range(j, t.r):
                target.append(s0 / rms[i] if i == j else 0.0)
                unit.append(s0 / rms[i])
    if spec.gaussian:
        target.append(s0)
        unit.append(s0)
    return np.asarray(target, float), np.asarray(unit, float)


def moment_start(spec) -> np.ndarray | None:
    """Moment estimates of the SDs of a Gaussian model whose random-effect terms are all scalar, and
    of its residual SD; ``None`` for other models.

    With ``r`` the least-squares residuals, ``w_l = sum_{i in l} z_i^2`` and ``s_l = sum_{i in l} z_i r_i / w_l``
    for the levels ``l`` of term ``k``, the weighted mean square of the ``s_l`` estimates
    ``sigma_k^2 + (sum_{m != k} sigma_m^2 mean(z_m^2) + sigma^2) n_k / sum_l w_l`` (the other terms and the
    residual averaged over a level's observations, as if they were independent there), and
    ``mean(r^2)`` estimates ``sum_k sigma_k^2 mean(z_k^2) + sigma^2``: a linear system in the
    variances (``K + 1`` equations), solved once; each SD is kept at least ``0.05`` of the residual
    SD in its term's units. Exact for no design, but within a few per cent of the maximum
    likelihood estimates on crossed designs with many levels (InstEval, MovieLens-shaped data),
    where it spares Newton's method most of its iterations.
    """
    if not spec.gaussian or not spec.terms or any(t.r != 1 for t in spec.terms):
        return None
    X, y = np.asarray(spec.X, float), np.asarray(spec.y - spec.offset, float)
    r = y - X @ np.linalg.lstsq(X, y, rcond=None)[0] if X.shape[1] else y
    K = len(spec.terms)
    zz = [np.where(t.codes >= 0, np.asarray(t.z[:, 0], float) ** 2, 0.0) for t in spec.terms]
    A, b = np.zeros((K + 1, K + 1)), np.zeros(K + 1)
    for k, t in enumerate(spec.terms):
        used = t.codes >= 0
        w = np.bincount(t.codes[used], weights=zz[k][used], minlength=len(t.levels))
        sz = np.bincount(t.codes[used], weights=np.asarray(t.z[used, 0], float) * r[used], minlength=len(t.levels))
        ok = w > 0
        if not ok.any():
            return None
        c = ok.sum() / np.sum(w[ok])
        A[k] = [c * np.mean(zz[m]) if m != k else 1.0 for m in range(K)] + [c]
        b[k] = np.sum(sz[ok] ** 2 / w[ok]) / np.sum(w[ok])
    A[K] = [np.mean(z) for z in zz] + [1.0]
    b[K] = np.mean(r**2)
    try:
        v = np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(v)):
        return None
    s0 = residual_scale(X, y)
    sigma = float(np.sqrt(v[K])) if v[K] > 0 else s0
    floor = np.array([0.05 * sigma / rms_columns(t.z, t.codes)[0] for t in spec.terms])
    return np.concatenate([np.maximum(np.sqrt(np.maximum(v[:K], 0.0)), floor), [sigma]])


def natural_start(model_map, spec, nat0: np.ndarray, moments: bool = False) -> np.ndarray:
    """Natural parameters whose covariance factors (and residual SD) are those of :func:`core_start`
    (or, with ``moments=True`` where it applies, of :func:`moment_start`).

    See :func:`natural_for`; fixed effects and a likelihood's own parameters keep their values
    in ``nat0``.
    """
    target, unit = core_start(spec)
    if moments:
        m = moment_start(spec)
        if m is not None:
            target = m
    return natural_for(model_map, spec, nat0, target, unit)


def natural_for(model_map, spec, nat0: np.ndarray, target: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Natural parameters whose core variance parameters are (nearest to) ``target``.

    ``target`` and ``unit`` are laid out as in :func:`core_start` (the covariance factors' lower
    triangles, then ``sigma`` for Gaussian models). Solves
    ``min sum_k ((phi_k(nat) - target_k) / unit_k)^2`` over the variance parameters within their
    supports (scipy's trust-region reflective least squares with the model map's exact
    Jacobian), from ``nat0`` with entries on or outside a bound moved inside. Returns that
    starting point where the map cannot be evaluated or the fit does not improve on it.
    """
    from scipy.optimize import least_squares

    p = spec.fixed_index.size
    n_theta = sum(t.r * (t.r + 1) // 2 for t in spec.terms)
    rows = np.arange(p, p + n_theta + (1 if spec.gaussian else 0))
    vi = np.asarray(spec.variance_index)
    vi = vi[~np.isin(vi, spec.psi_index)]
    lo, up = spec.lower[vi], spec.upper[vi]
    nat = np.asarray(nat0, float).copy()
    span = np.where(np.isfinite(up - lo), up - lo, 1.0)
    x = nat[vi]
    inside = np.where(
        (x > lo) & (x < up),
        x,
        np.clip(
            x, np.where(np.isfinite(lo), lo + 1e-3 * span, -np.inf), np.where(np.isfinite(up), up - 1e-3 * span, np.inf)
        ),
    )
    nat[vi] = inside
    if vi.size == 0 or rows.size == 0:
        return nat

    def residual(x):
        full = nat.copy()
        full[vi] = x
        phi, J, _ = model_map(full, second=False)
        return (phi[rows] - target) / unit, J[rows][:, vi] / unit[:, None]

    with np.errstate(all="ignore"):
        try:
            r0, _ = residual(inside)
        except Exception:  # noqa: BLE001  (a map that cannot be evaluated there: keep the model's start)
            return nat
        if not np.all(np.isfinite(r0)):
            return nat
        res = least_squares(
            lambda x: residual(x)[0],
            inside,
            jac=lambda x: residual(x)[1],
            bounds=(np.where(np.isfinite(lo), lo, -np.inf), np.where(np.isfinite(up), up, np.inf)),
            method="trf",
            x_scale="jac",
            xtol=1e-10,
            ftol=1e-10,
            gtol=1e-10,
            max_nfev=200,
        )
    x = res.x  # the reflective method keeps its iterates strictly inside the bounds
    if np.all(np.isfinite(x)) and np.all((x > lo) & (x < up)) and res.cost < 0.5 * float(r0 @ r0):
        nat[vi] = x
    return nat


def boundary_restarts(model_map, spec, nat: np.ndarray) -> list[np.ndarray]:
    """Points to restart the optimiser from when a covariance factor's diagonal entry is at 0.

    With ``L_jj = 0`` the covariance ``L L^T`` is unchanged by the sign of the column below it
    (``L_ij``, ``i > j``), but the criterion's slope in ``L_jj`` is not: a point where the gradient
    pushes ``L_jj`` out of its support may be one where, with that column's signs flipped, it
    pulls it in (and where the criterion is even in ``L_jj`` the gradient vanishes whatever the
    data). For each such entry two points are returned, ``L_jj`` set back to its start value
    (:func:`core_start`, in the units of the current fit) with the column below kept and with
    it negated; the other core parameters keep their values. "At 0" means
    ``|L_jj| rms(z_j) < 1e-4 s``, ``s`` the residual SD (Gaussian) or 1.
    """
    phi = model_map(nat, second=False)[0]
    p = spec.fixed_index.size
    n_theta = sum(t.r * (t.r + 1) // 2 for t in spec.terms)
    current = phi[p : p + n_theta + (1 if spec.gaussian else 0)].copy()
    s = float(current[-1]) if spec.gaussian else 1.0
    if not (np.isfinite(s) and s > 0):
        return []
    _, unit = core_start(spec)
    out = []
    k = 0
    for t in spec.terms:
        rms = rms_columns(t.z, t.codes)
        index = {}
        for j in range(t.r):
            for i in range(j, t.r):
                index[i, j] = k
                k += 1
        for j in range(t.r):
            if abs(current[index[j, j]]) * rms[j] >= 1e-4 * s:
                continue
            below = [index[i, j] for i in range(j + 1, t.r)]
            for flip in (False, True) if below else (False,):
                target = current.copy()
                target[index[j, j]] = s / rms[j]
                if flip:
                    target[below] = -target[below]
                out.append(natural_for(model_map, spec, nat, target, unit * s / unit[-1] if spec.gaussian else unit))
    return out


def curvature_scales(info: np.ndarray, x: np.ndarray, logged: np.ndarray) -> np.ndarray:
    """Scales ``d_i = 1 / sqrt(|I_ii|)`` of the optimiser's coordinates (module docstring, step 2).

    ``info`` is the information in the natural parameters ``x``; for coordinates optimised on the
    log scale (``logged``) the curvature is that of ``log x``: ``x_i^2 I_ii``. A negative ``I_ii``
    (the start is not in a concave region along ``x_i``) still gives the size of the curvature;
    where ``I_ii`` is 0 or not finite, the scale is ``|x_i|`` (or 1 for ``x_i = 0``).
    """
    diag = np.abs(np.diag(np.asarray(info, float)))
    diag = np.where(logged, diag * np.asarray(x, float) ** 2, diag)
    fallback = np.where(logged, 1.0, np.where(np.abs(x) > 0, np.abs(x), 1.0))
    good = np.isfinite(diag) & (diag > 0)
    return np.where(good, 1.0 / np.sqrt(np.where(good, diag, 1.0)), fallback)
