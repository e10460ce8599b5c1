"""Observation-level (casewise) scores of a Gaussian linear mixed model.

The marginal log-likelihood of a cluster does not split into a sum over its observations,
but its gradient does, through the decomposition of Wang and Merkle (2018, eqs. 14 and 16)
used by merDeriv's ``estfun.lmerMod(level = 1)``. With ``V`` the cluster's marginal covariance,
``r = y - X beta`` and ``e = V^{-1} r``, the score of observation ``i`` is

.. math::

    s_{i,\\beta} = r_i\\, [V^{-1} X]_{i\\cdot}, \\qquad
    s_{i,k} = -\\tfrac12 [V^{-1} \\partial_k V]_{ii} + \\tfrac12 r_i [V^{-1} \\partial_k V\\, e]_i

for every variance parameter ``k``. Summed over a cluster these are ``X^T V^{-1} r`` and
``-1/2 tr(V^{-1} dV) + 1/2 r^T V^{-1} dV V^{-1} r``: the cluster's score. The decomposition is
linear in ``dV``, so it is computed here for the core parameters ``(beta, theta, sigma)`` (with
``V = Z L L^T Z^T + sigma^2 I``) and carried to any other parameterisation by the chain rule.

Everything is evaluated from the cluster blocks without forming ``V``: with
``M = sigma^2 I + L^T A L`` (``A = Z^T Z``), ``P = L M^{-1} L^T`` and ``Q = (I - P A)/sigma^2``,
``V^{-1} = (I - Z P Z^T)/sigma^2``, ``V^{-1} Z = Z Q``, ``e_i = (r_i - z_i^T P Z^T r)/sigma^2``,
``[V^{-1} X]_i = (x_i - z_i^T P Z^T X)/sigma^2``, ``[V^{-1}]_{ii} = (1 - z_i^T P z_i)/sigma^2``
and ``Z^T e = Q^T Z^T r``. These are merDeriv's formulas: its first five case-level score rows
of the sleepstudy fit are reproduced in the tests. With precision weights they are evaluated on the
rows scaled by ``sqrt(w_i)``, which leaves each observation's score unchanged
(:mod:`pymc_mixvcov.model.weights`).

References
----------
Wang, T. and Merkle, E. C. (2018). merDeriv: Derivative computations for linear mixed
effects models with application to robust standard errors. JSS 87, Code Snippet 1.
"""

from __future__ import annotations

import numpy as np

from ..engines.marginal import ClusterStructure, Signature, core_phi
from ..model.weights import whitened

__all__ = ["casewise_scores"]


def _factors(sig: Signature, theta: np.ndarray) -> np.ndarray:
    flat = np.zeros(sig.lam_size + 1)
    flat[sig.theta_positions()] = theta
    return flat


def casewise_scores(spec, structure: ClusterStructure, sig: Signature, phi: np.ndarray) -> np.ndarray:
    """Scores of every observation with respect to ``phi = (beta, theta, sigma)``, shape ``(n, dim)``."""
    p, nt = sig.p, sig.n_theta
    theta, sigma = phi[p : p + nt], float(phi[-1])
    s2 = sigma**2
    X, y, _ = whitened(spec)  # precision weights: the rows scaled by sqrt(w), as the statistics are
    # the statistics are of y - X b0 (engines.marginal): r = (y - X b0) - X (beta - b0), Z^T r = b - B (beta - b0)
    beta_c = core_phi(structure, phi)[:p]
    r = (y if structure.b0 is None else y - X @ structure.b0) - X @ beta_c
    n = y.size
    out = np.zeros((n, sig.dim))
    flat = _factors(sig, theta)
    pos_t = sig.theta_positions()
    batch_of, row_of = structure.locate()
    oc = structure.obs_cluster
    free = oc < 0
    # observations without random effects: V = sigma^2 I
    if free.any():
        e = r[free] / s2
        out[free, :p] = X[free] * e[:, None]  # V^{-1} = I / sigma^2
        out[free, -1] = sigma * (e**2 - 1.0 / s2)
    for k, bt in enumerate(structure.batches):
        obs = np.flatnonzero(~free & (batch_of[np.maximum(oc, 0)] == k))
        if obs.size == 0:
            continue
        s = bt.s
        ci = row_of[oc[obs]]
        Lc = flat[bt.lam_idx]  # (C, s, s)
        M = s2 * np.eye(s) + np.swapaxes(Lc, 1, 2) @ bt.A @ Lc
        P = Lc @ np.linalg.solve(M, np.swapaxes(Lc, 1, 2))
        Q = (np.eye(s) - P @ bt.A) / s2
        Ztr = bt.b - bt.B @ beta_c  # (C, s)
        w = np.einsum("cst,ct->cs", P, Ztr)
        Zte = np.einsum("cts,ct->cs", Q, Ztr)  # Q^T Z^T r
        # dense rows z_i of the cluster design (s entries each)
        Zi = np.zeros((obs.size, s))
        pos, val = structure.obs_pos[obs], structure.obs_val[obs]
        for a in range(pos.shape[1]):
            ok = pos[:, a] >= 0
            np.add.at(Zi, (np.flatnonzero(ok), pos[ok, a]), val[ok, a])
        e = (r[obs] - np.sum(Zi * w[ci], axis=1)) / s2
        vinv = (1.0 - np.einsum("is,ist,it->i", Zi, P[ci], Zi)) / s2
        PB = np.einsum("cst,ctp->csp", P, bt.B)  # P Z^T X
        ViX = (X[obs] - np.einsum("is,isp->ip", Zi, PB[ci])) / s2
        out[obs, :p] = ViX * r[obs, None]
        PZte = np.einsum("cst,ct->cs", P, Zte)
        Vie = (e - np.sum(Zi * PZte[ci], axis=1)) / s2  # [V^{-1} e]_i
        out[obs, -1] = sigma * (r[obs] * Vie - vinv)
        a_i = np.einsum("is,ist->it", Zi, Q[ci])  # Q^T z_i
        Lz = np.einsum("ist,is->it", Lc[ci], Zi)  # L^T z_i
        aL = np.einsum("is,ist->it", a_i, Lc[ci])  # L^T a_i
        LZte = np.einsum("cst,cs->ct", Lc, Zte)[ci]  # L^T Z^T e
        for j, fp in enumerate(pos_t):
            D = (bt.lam_idx == fp).astype(float)  # dL / d theta_j, (C, s, s)
            Di = D[ci]
            aD = np.einsum("is,ist->it", a_i, Di)  # D^T a_i
            Dz = np.einsum("ist,is->it", Di, Zi)  # D^T z_i
            DZte = np.einsum("cst,cs->ct", D, Zte)[ci]  # D^T Z^T e
            # dV = Z (D L^T + L D^T) Z^T; [V^{-1} dV]_ii = a_i^T dG z_i, [V^{-1} dV e]_i = a_i^T dG Z^T e
            diag = np.sum(aD * Lz, axis=1) + np.sum(aL * Dz, axis=1)
            quad = r[obs] * (np.sum(aD * LZte, axis=1) + np.sum(aL * DZte, axis=1))
            out[obs, p + j] = -0.5 * diag + 0.5 * quad
    return out
