"""The cluster engine's pieces of Kenward and Roger's method: ``X^T V^{-1} X`` and its first and second
derivatives on the var scale, in closed form from the cluster statistics.

The var scale ``sigma = (vech G_1, ..., vech G_K, sigma^2)`` (lower triangles column-major) makes
``V`` linear: ``V_i = dV/d sigma_i`` is ``Z E_i Z^T`` (``E_i`` the indicator of entry ``(a, b)`` and
``(b, a)`` of every level's block of term ``k``) or ``I``. With ``N = Lambda M^{-1} Lambda^T`` per
cluster (``M = Lambda^T Z^T Z Lambda + sigma^2 I``), ``V^{-1} = (I - Z N Z^T) / sigma^2`` and, from the
cluster statistics ``A = Z^T Z``, ``B = Z^T X``, ``X^T X``:

* ``S = Z^T V^{-1} Z = (A - A N A)/sigma^2``, ``R = Z^T V^{-1} X = (B - A N B)/sigma^2``,
* ``T = Z^T V^{-2} X = (I - A N) R / sigma^2``,
* ``X^T V^{-2} X = Y / sigma^4`` and ``X^T V^{-3} X = (Y - sigma^4 R^T N R)/sigma^6`` with
  ``Y = X^T X - 2 B^T N B + B^T N A N B``;

``P_i = d(X^T V^{-1} X)/d sigma_i = -X^T V^{-1} V_i V^{-1} X`` is ``-sum_c R^T E_i R`` or
``-X^T V^{-2} X``, and ``H_ij = Q_ij + Q_ji`` with ``Q_ij = X^T V^{-1} V_i V^{-1} V_j V^{-1} X``:
``sum_c R^T E_i S E_j R``, ``sum_c R^T E_i T`` (``V_j = I``) or ``X^T V^{-3} X`` (both).
Observations without random effects add ``X_f^T X_f`` over ``sigma^2``, ``sigma^4``, ``sigma^6``.

References
----------
Kenward, M. G. and Roger, J. H. (1997). Small sample inference for fixed effects from restricted
maximum likelihood. Biometrics 53, 983-997.
"""

from __future__ import annotations

import numpy as np

from .marginal import ClusterStructure, Signature

__all__ = ["var_scale_pieces"]


def var_scale_pieces(
    st: ClusterStructure, sig: Signature, theta: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``X^T V^{-1} X``, ``P_i`` (``(k, p, p)``) and ``H_ij`` (``(k, k, p, p)``) on the var scale at the
    core parameters ``(theta, sigma)``, from the cluster statistics (module docstring)."""
    p, s2 = sig.p, sigma**2
    pos = sig.theta_positions()
    flat = np.zeros(sig.lam_size + 1)
    flat[pos] = theta
    # the var-scale parameters as index pairs into the flat factor layout
    pairs, off = [], 0
    for r in sig.r:
        for j in range(r):
            for i in range(j, r):
                pairs.append((off + i * r + j, off + j * r + i))
        off += r * r
    k = len(pairs) + 1
    XX_f = np.asarray(st.free[0], float)
    XtVX, X2, X3 = XX_f / s2, XX_f / s2**2, XX_f / s2**3
    PG = np.zeros((k - 1, p, p))
    QGG = np.zeros((k - 1, k - 1, p, p))
    QGs = np.zeros((k - 1, p, p))
    for bt in st.batches:
        Lam = flat[bt.lam_idx]
        A, B = bt.A, bt.B
        M = np.einsum("cvu,cvw,cwx->cux", Lam, A, Lam) + s2 * np.eye(bt.s)
        N = Lam @ np.linalg.solve(M, np.swapaxes(Lam, 1, 2))
        AN = A @ N
        NB = N @ B
        S = (A - AN @ A) / s2
        R = (B - A @ NB) / s2
        T = (R - AN @ R) / s2
        Y = bt.XX - 2 * np.einsum("cup,cuq->cpq", B, NB) + np.einsum("cup,cuv,cvq->cpq", NB, A, NB)
        XtVX = XtVX + np.sum(bt.XX - np.einsum("cup,cuq->cpq", B, NB), axis=0) / s2
        X2 = X2 + np.sum(Y, axis=0) / s2**2
        X3 = X3 + np.sum(Y - s2**2 * np.einsum("cup,cuv,cvq->cpq", R, N, R), axis=0) / s2**3
        E = np.stack([(bt.lam_idx == a) | (bt.lam_idx == b) for a, b in pairs]).astype(float)  # (k-1, C, s, s)
        ER = np.einsum("icuv,cvp->icup", E, R)
        PG -= np.einsum("cup,icuq->ipq", R, ER)
        QGG += np.einsum("icup,cuv,jcvq->ijpq", ER, S, ER)
        QGs += np.einsum("icup,cuq->ipq", ER, T)
    P = np.concatenate([PG, -X2[None]])
    Q = np.zeros((k, k, p, p))
    Q[:-1, :-1], Q[:-1, -1], Q[-1, :-1], Q[-1, -1] = QGG, QGs, np.swapaxes(QGs, 1, 2), X3
    return XtVX, P, Q + np.swapaxes(Q, 0, 1)
