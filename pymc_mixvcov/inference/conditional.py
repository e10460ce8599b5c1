"""Conditional modes of the random effects and scaled residuals of Gaussian mixed models.

For ``y = offset + X beta + Z b + e`` with ``b ~ N(0, sigma^2 Lambda Lambda^T)`` and
``e ~ N(0, sigma^2 I)`` (``Lambda`` block diagonal: each term's relative Cholesky factor, lme4's
``theta``, once per level), the conditional mode (BLUP) of ``b`` given ``y`` at the estimates is

    ``b = Lambda u``,  ``(Lambda^T Z^T Z Lambda + I) u = Lambda^T Z^T (y - offset - X beta)``,

which holds whether ``Lambda`` is singular or not (a variance at 0 gives ``b = 0`` for that
effect). The system is sparse, ``q x q`` for ``q`` random effects in all, and is solved by a
sparse LU factorisation, so crossed designs cost no dense ``q x q`` or ``n x n`` matrix. The
scaled residuals are ``(y - offset - X beta - Z b) / sigma``, lme4's
``residuals(fit, type = "pearson", scaled = TRUE)``, which ``summary(lmer)`` prints as
"Scaled residuals".

References
----------
Bates, D., Maechler, M., Bolker, B. and Walker, S. (2015). Fitting linear mixed-effects models
using lme4. *Journal of Statistical Software* 67(1), sections 3.2-3.4 (equations 15-18).
"""

from __future__ import annotations

import numpy as np

from ..errors import MixVcovError

__all__ = ["conditional_modes", "scaled_residuals"]


def _gaussian_only(fit, what: str) -> None:
    if not fit.spec.gaussian:
        raise MixVcovError(
            f"{what} are computed for Gaussian models; this model has a {fit.spec.family} likelihood, whose "
            "conditional modes come from the Laplace approximation"
        )


def _relative_factors(fit) -> list[np.ndarray]:
    """Each term's lower-triangular ``Lambda_t`` (relative to ``sigma``) from the cholesky scale."""
    values = np.asarray(fit.params("cholesky"), float)
    k = fit.spec.fixed_index.size
    out = []
    for t in fit.spec.terms:
        L = np.zeros((t.r, t.r))
        for col in range(t.r):
            for row in range(col, t.r):
                L[row, col] = values[k]
                k += 1
        out.append(L)
    return out


def conditional_modes(fit) -> list[np.ndarray]:
    """Conditional modes ``b`` of every random-effect term, one ``(levels, effects)`` array per term.

    Terms and their levels and effects are those of ``fit.spec.terms`` (for formula models,
    lme4's terms in lme4's order); see the module docstring for the formula.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    _gaussian_only(fit, "conditional modes")
    spec = fit.spec
    n = spec.n
    nat = np.asarray(fit.params("natural"), float)
    beta = nat[spec.fixed_index]
    r = np.asarray(spec.y, float) - np.asarray(spec.offset, float).reshape(-1) - spec.X @ beta
    z_blocks, lam_blocks, sizes = [], [], []
    for t, L in zip(spec.terms, _relative_factors(fit), strict=True):
        levels = len(t.levels)
        used = t.codes >= 0
        rows = np.repeat(np.flatnonzero(used), t.r)
        cols = (t.codes[used][:, None] * t.r + np.arange(t.r)[None, :]).reshape(-1)
        vals = np.asarray(t.z, float)[used].reshape(-1)
        z_blocks.append(sp.csc_matrix((vals, (rows, cols)), shape=(n, levels * t.r)))
        lam_blocks.append(sp.kron(sp.identity(levels, format="csc"), sp.csc_matrix(L), format="csc"))
        sizes.append((levels, t.r))
    Z = sp.hstack(z_blocks, format="csc")
    Lam = sp.block_diag(lam_blocks, format="csc")
    ZL = (Z @ Lam).tocsc()
    system = (ZL.T @ ZL + sp.identity(ZL.shape[1], format="csc")).tocsc()
    u = splu(system).solve(np.asarray(ZL.T @ r).reshape(-1))
    b = Lam @ u
    out, start = [], 0
    for levels, size in sizes:
        out.append(np.asarray(b[start : start + levels * size]).reshape(levels, size))
        start += levels * size
    return out


def scaled_residuals(fit) -> np.ndarray:
    """``(y - offset - X beta - Z b) / sigma`` at the estimates (lme4's scaled Pearson residuals)."""
    _gaussian_only(fit, "scaled residuals")
    spec = fit.spec
    nat = np.asarray(fit.params("natural"), float)
    fitted = np.asarray(spec.offset, float).reshape(-1) + spec.X @ nat[spec.fixed_index]
    for t, b in zip(spec.terms, conditional_modes(fit), strict=True):
        used = t.codes >= 0
        fitted[used] += np.sum(np.asarray(t.z, float)[used] * b[t.codes[used]], axis=1)
    sigma = float(np.asarray(fit.params("sd"), float)[-1])
    return (np.asarray(spec.y, float) - fitted) / sigma
