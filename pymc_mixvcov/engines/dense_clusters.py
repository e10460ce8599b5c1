"""Per-cluster ML log-likelihood, gradient, Hessian and expected information of a Gaussian LMM, in NumPy.

The blocked engine (:mod:`pymc_mixvcov.engines.blocked`) evaluates a model as a whole; its
per-cluster pieces (:mod:`pymc_mixvcov.engines.blocked_clusters`) need every cluster's own
derivatives. For small clusters these are computed here, batched over the clusters of one size
``s`` of a :class:`~pymc_mixvcov.engines.marginal.Batch` with dense ``s x s`` matrices and nothing
compiled: the closed forms of :mod:`pymc_mixvcov.engines.blocked` with the cluster as the model.

Per cluster (index dropped), with the statistics ``A = Z^T Z``, ``B = Z^T X``, ``b = Z^T y``,
``X^T X``, ``X^T y``, ``y^T y``, ``n`` observations, ``Lambda`` (block diagonal, lower triangular)
and ``r = y - X beta`` (the statistics are those of ``y - X b_0``, the response net of its
least-squares fit, and ``beta`` enters as ``beta - b_0``: the same residual without the cancellation
of ``y^T y`` and ``X^T y`` of a response with a large mean; :mod:`pymc_mixvcov.engines.marginal`):

.. math::

    M = \\Lambda^T A \\Lambda + \\sigma^2 I, \\quad P = \\Lambda M^{-1} \\Lambda^T, \\quad
    \\ell = -\\tfrac n2 \\log 2\\pi - \\tfrac{n - s}{2}\\log\\sigma^2 - \\tfrac12\\log|M|
            - \\frac{r^T r - (Z^T r)^T P\\, Z^T r}{2\\sigma^2},

``V^{-1} = (I - Z P Z^T) / sigma^2``, so with ``Q = (I - P A) / sigma^2`` (``V^{-1} Z = Z Q``):
``W = Z^T V^{-1} Z = A Q``, ``Z^T V^{-2} Z = Q^T A Q``, ``Z^T e = (Z^T r - A P Z^T r) / sigma^2``
(``e = V^{-1} r``), ``X^T V^{-1} X = (X^T X - B^T P B) / sigma^2``, ``Z^T V^{-1} X = (B - A P B) / sigma^2``,
``tr V^{-1} = (n - tr(PA)) / sigma^2``, ``tr V^{-2} = (n - 2 tr(PA) + tr(PAPA)) / sigma^4``. Every
``theta_a`` enters as ``V_a = Z Gamma_a Z^T``, ``Gamma_a = D_a Lambda^T + Lambda D_a^T``
(``D_a = d Lambda / d theta_a``), ``Gamma_ab = D_a D_b^T + D_b D_a^T``; ``sigma`` as ``V_sigma = 2 sigma I``.
The derivatives are the trace formulas of :mod:`pymc_mixvcov.engines.blocked` (Searle, Casella
and McCulloch 1992, ch. 6):

.. math::

    \\partial_\\beta\\ell = X^T e, \\quad
    \\partial_a\\ell = -\\tfrac12\\operatorname{tr}(W\\Gamma_a) + \\tfrac12 (Z^Te)^T\\Gamma_a Z^Te, \\quad
    \\partial_\\sigma\\ell = \\sigma(e^Te - \\operatorname{tr}V^{-1}),

    \\partial^2_{ab}\\ell = \\tfrac12\\operatorname{tr}(W\\Gamma_aW\\Gamma_b)
        - \\tfrac12\\operatorname{tr}(W\\Gamma_{ab}) - g_a^T W g_b + \\tfrac12 (Z^Te)^T\\Gamma_{ab}Z^Te,
        \\quad g_a = \\Gamma_a Z^T e,

    \\partial^2_{a\\sigma}\\ell = \\sigma\\operatorname{tr}(\\Gamma_a Z^TV^{-2}Z) - 2\\sigma\\, g_a^T Q^T Z^T e,
    \\quad
    \\partial^2_{\\sigma\\sigma}\\ell = 2\\sigma^2\\operatorname{tr}V^{-2} - \\operatorname{tr}V^{-1}
        - 4\\sigma^2 e^TV^{-1}e + e^Te,

    \\partial^2_{\\beta\\beta}\\ell = -X^TV^{-1}X, \\quad
    \\partial^2_{\\beta a}\\ell = -(Z^TV^{-1}X)^T g_a, \\quad
    \\partial^2_{\\beta\\sigma}\\ell = -2\\sigma X^TV^{-1}e,

and the expected information ``X^T V^{-1} X``, ``1/2 tr(W Gamma_a W Gamma_b)``,
``sigma tr(Gamma_a Z^T V^{-2} Z)``, ``2 sigma^2 tr V^{-2}`` (zero cross block). ``e^T e``,
``e^T V^{-1} e`` and ``X^T V^{-1} e`` follow from the statistics as in
:mod:`pymc_mixvcov.engines.blocked`. No covariance factor is inverted: exact at a variance of 0.
Cost ``O(C n_theta s^3)`` for ``C`` clusters.

References
----------
Searle, S. R., Casella, G., McCulloch, C. E. (1992). Variance Components. Wiley.
Wang, T. and Merkle, E. C. (2018). merDeriv. JSS 87, Code Snippet 1.
"""

from __future__ import annotations

import numpy as np

from .marginal import LOG2PI, Batch, Signature

__all__ = ["gaussian_cluster_derivatives"]


def _T(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, -1, -2)


def gaussian_cluster_derivatives(
    batch: Batch, sig: Signature, phi: np.ndarray, b0: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """ML log-likelihood, gradient, Hessian and expected information in ``phi = (beta, theta, sigma)``
    of every cluster of ``batch`` (statistics of the rows scaled by ``sqrt(w)`` with prior weights;
    the log-likelihood without their constant ``sum log(w) / 2``).

    ``b0``: the least-squares coefficients taken out of the response of the batch's statistics
    (:attr:`~pymc_mixvcov.engines.marginal.ClusterStructure.b0`); the formulas use ``beta - b0``.

    Returns ``loglik`` ``(C,)``, ``grad`` ``(C, dim)``, ``hess`` and ``expected`` ``(C, dim, dim)``.
    Raises ``numpy.linalg.LinAlgError`` where ``M`` is not positive definite (``sigma = 0``).
    """
    p, nt = sig.p, sig.n_theta
    dim = p + nt + 1
    phi = np.asarray(phi, float)
    beta, theta, sigma = phi[:p], phi[p : p + nt], float(phi[p + nt])
    if b0 is not None and p:  # the statistics are of y - X b0: the residual is that of beta - b0
        beta = beta - b0
    s2 = sigma * sigma
    thpos = sig.theta_positions()
    flat = np.zeros(sig.lam_size + 1)
    flat[thpos] = theta
    lam = flat[batch.lam_idx]  # (C, s, s)
    D = (batch.lam_idx[:, None] == thpos[None, :, None, None]).astype(float)  # d Lambda / d theta_a, (C, nt, s, s)
    A, B = batch.A, batch.B
    C, s = A.shape[0], A.shape[1]
    n = np.asarray(batch.nobs, float)
    eye = np.eye(s)
    lamT = _T(lam)
    M = lamT @ A @ lam + s2 * eye
    M = 0.5 * (M + _T(M))
    logdet = 2.0 * np.sum(np.log(np.diagonal(np.linalg.cholesky(M), axis1=1, axis2=2)), axis=1)
    Minv = np.linalg.inv(M)
    P = lam @ (0.5 * (Minv + _T(Minv))) @ lamT
    P = 0.5 * (P + _T(P))
    # the response's pieces
    Zr = batch.b - B @ beta  # (C, s)
    rr = batch.yy - 2.0 * batch.Xy @ beta + np.einsum("i,cij,j->c", beta, batch.XX, beta)
    Xr = batch.Xy - batch.XX @ beta  # (C, p)
    h = np.einsum("cij,cj->ci", P, Zr)  # P Z^T r
    loglik = -0.5 * n * LOG2PI - 0.5 * (n - s) * np.log(s2) - 0.5 * logdet - (rr - np.sum(Zr * h, axis=1)) / (2.0 * s2)
    Ah = np.einsum("cij,cj->ci", A, h)
    ze = (Zr - Ah) / s2  # Z^T e
    Xe = (Xr - np.einsum("csp,cs->cp", B, h)) / s2  # X^T e
    ee = (rr - 2.0 * np.sum(h * Zr, axis=1) + np.sum(h * Ah, axis=1)) / s2**2  # e^T e
    Pze = np.einsum("cij,cj->ci", P, ze)
    eVe = (ee - np.sum(ze * Pze, axis=1)) / s2  # e^T V^{-1} e
    XVe = (Xe - np.einsum("csp,cs->cp", B, Pze)) / s2  # X^T V^{-1} e
    PA = P @ A
    PB = P @ B
    XVX = (batch.XX - _T(B) @ PB) / s2
    XVX = 0.5 * (XVX + _T(XVX))
    ZVX = (B - A @ PB) / s2  # Z^T V^{-1} X, (C, s, p)
    Q = (eye - PA) / s2  # V^{-1} Z = Z Q
    W = A @ Q
    W = 0.5 * (W + _T(W))  # Z^T V^{-1} Z
    ZV2Z = _T(Q) @ A @ Q  # Z^T V^{-2} Z
    trPA = np.trace(PA, axis1=1, axis2=2)
    trVinv = (n - trPA) / s2
    trV2 = (n - 2.0 * trPA + np.einsum("cij,cji->c", PA, PA)) / s2**2
    Qtze = np.einsum("cji,cj->ci", Q, ze)  # Z^T V^{-1} e = Q^T Z^T e
    # theta: Gamma_a = D_a Lambda^T + Lambda D_a^T
    DL = D @ lamT[:, None]
    G = DL + _T(DL)  # (C, nt, s, s)
    Gze = np.einsum("cast,ct->cas", G, ze)  # g_a = Gamma_a Z^T e
    WG = W[:, None] @ G  # (C, nt, s, s)
    trWG = np.trace(WG, axis1=2, axis2=3)
    T2 = np.einsum("caij,cbji->cab", WG, WG)  # tr(W Gamma_a W Gamma_b)
    WD = W[:, None] @ D
    trWGab = 2.0 * np.einsum("caij,cbij->cab", WD, D)  # tr(W Gamma_ab) = 2 tr(D_b^T W D_a)
    Dze = np.einsum("cais,ci->cas", D, ze)  # D_a^T Z^T e
    zGabz = 2.0 * np.einsum("cas,cbs->cab", Dze, Dze)
    quadW = np.einsum("cas,cst,cbt->cab", Gze, W, Gze)  # g_a^T W g_b
    trGV2 = np.einsum("caij,cji->ca", G, ZV2Z)  # tr(Gamma_a Z^T V^-2 Z)
    th, sg = slice(p, p + nt), p + nt
    grad = np.zeros((C, dim))
    grad[:, :p] = Xe
    grad[:, th] = -0.5 * trWG + 0.5 * np.einsum("cas,cs->ca", Gze, ze)
    grad[:, sg] = sigma * (ee - trVinv)
    hess = np.zeros((C, dim, dim))
    hess[:, :p, :p] = -XVX
    hess[:, :p, th] = -np.einsum("csp,cas->cpa", ZVX, Gze)
    hess[:, :p, sg] = -2.0 * sigma * XVe
    hess[:, th, th] = 0.5 * T2 - 0.5 * trWGab - quadW + 0.5 * zGabz
    hess[:, th, sg] = sigma * trGV2 - 2.0 * sigma * np.einsum("cas,cs->ca", Gze, Qtze)
    hess[:, sg, sg] = 2.0 * s2 * trV2 - trVinv - 4.0 * s2 * eVe + ee
    # the lower triangle from the upper
    iu = np.triu_indices(dim, 1)
    hess[:, iu[1], iu[0]] = hess[:, iu[0], iu[1]]
    expected = np.zeros((C, dim, dim))
    expected[:, :p, :p] = XVX
    expected[:, th, th] = 0.5 * T2
    expected[:, th, sg] = expected[:, sg, th] = sigma * trGV2
    expected[:, sg, sg] = 2.0 * s2 * trV2
    expected = 0.5 * (expected + _T(expected))
    return {"loglik": loglik, "grad": grad, "hess": hess, "expected": expected}
