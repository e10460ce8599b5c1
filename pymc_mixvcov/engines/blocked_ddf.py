r"""The blocked engine's pieces of small-sample tests: ``X^T V^{-1} X`` and its derivatives, in closed form.

Satterthwaite's and Kenward and Roger's degrees of freedom (:mod:`pymc_mixvcov.inference.ddf`) need
``X^T V^{-1} X`` as a function of the variance parameters: its first derivatives in the core
parameters ``psi = (theta, sigma)`` (:func:`xtvx`), and its first and second derivatives on the var
scale ``s = (vech G_1, ..., vech G_K, sigma^2)`` (:func:`var_scale_pieces`). Everything reduces to
``q``-dimensional solves with the blocked factor of ``M = Lambda^T C Lambda + sigma^2 I``
(:class:`~pymc_mixvcov.engines.blocked_factor.BlockedFactor`; ``C = Z^T Z``,
``P v = Lambda M^{-1} Lambda^T v``, ``V^{-1} = (I - Z P Z^T)/sigma^2``):

.. math::

    R = Z^T V^{-1} X = (Z^T X - C P Z^T X)/\sigma^2, \qquad
    X^T V^{-1} X = (X^T X - X^T Z P Z^T X)/\sigma^2, \\
    X^T V^{-2} X = (X^T X - 2 X^T Z P Z^T X + X^T Z P C P Z^T X)/\sigma^4, \qquad
    X^T V^{-3} X = (X^T V^{-2} X - R^T P R)/\sigma^2, \\
    T = Z^T V^{-2} X = (R - C P R)/\sigma^2, \qquad
    S v = Z^T V^{-1} Z v = (C v - C P C v)/\sigma^2 .

``R`` costs ``p`` solves with ``M``. Observations that use no random effect have zero rows in ``Z``:
they enter through ``X^T X`` alone, as ``X_f^T X_f / sigma^2`` (and ``/sigma^4``, ``/sigma^6``).

**Core parameters.** ``V_a = Z Gamma_a Z^T`` with ``Gamma_a = I (x) gamma_a``,
``gamma_a = E_ij L_k^T + L_k E_ji`` for entry ``(i, j)`` of the absolute factor ``L_k`` of term ``k``,
and ``V_sigma = 2 sigma I``, so

.. math::

    \frac{\partial X^T V^{-1} X}{\partial \theta_a} = -R^T \Gamma_a R
        = -\sum_{u,v} \gamma_a[u, v]\, O_k[u, v], \qquad
    O_k[u, v] = \sum_{l \in k} R_{(l,u)}^T R_{(l,v)}, \qquad
    \frac{\partial X^T V^{-1} X}{\partial \sigma} = -2 \sigma X^T V^{-2} X,

``R_{(l,u)}`` the row of ``R`` of effect ``u`` of level ``l``: ``O_k`` (``r_k x r_k`` blocks of
``p x p``) sums outer products of ``R``'s rows over the term's levels.

**Var scale.** ``V_i = Z E_i Z^T`` with ``E_i = I (x) e_i``, ``e_i`` the indicator of entries
``(a, b)`` and ``(b, a)`` of term ``k``'s block, or ``V_i = I`` for ``sigma^2``; ``V`` is linear, and

.. math::

    P_i = -X^T V^{-1} V_i V^{-1} X = -(O_k[a, b] + O_k[b, a]) \ \ (a \ne b), \quad -O_k[a, a], \quad
        -X^T V^{-2} X \ (\sigma^2), \\
    H_{ij} = Q_{ij} + Q_{ji}, \qquad Q_{ij} = X^T V^{-1} V_i V^{-1} V_j V^{-1} X
        = (E_i R)^T S (E_j R), \quad (E_i R)^T T \ (V_j = I), \quad X^T V^{-3} X \ (\text{both}).

``E_i R`` swaps rows ``a`` and ``b`` of every level's block of ``R`` (and zeroes the others); the
products ``S (E_j R)`` for all ``j`` are one batched application of ``S``: one solve with ``M``
for ``p`` columns per var-scale parameter. The var-scale parameters come in the order of
``theta`` (terms in the model's order, lower triangles column-major) and ``sigma^2`` last, as the
cluster engine's (:func:`pymc_mixvcov.engines.cluster_ddf.var_scale_pieces`).

References
----------
Searle, S. R., Casella, G., McCulloch, C. E. (1992). Variance Components. Wiley, ch. 6.
Kenward, M. G. and Roger, J. H. (1997). Small sample inference for fixed effects from restricted
maximum likelihood. Biometrics 53, 983-997.
"""

from __future__ import annotations

import numpy as np

from .blocked_factor import BlockedFactor
from .blocked_layout import BlockedData

__all__ = ["xtvx", "var_scale_pieces"]


class _GLS:
    """``X^T V^{-1} X``, ``R = Z^T V^{-1} X`` and ``X^T V^{-2} X`` at ``(theta, sigma)``."""

    def __init__(self, d: BlockedData, ts: np.ndarray):
        from .blocked import factor_at

        ts = np.asarray(ts, float)
        theta, sigma = ts[:-1], float(ts[-1])
        self.d = d
        self.F: BlockedFactor = factor_at(d, theta, sigma, 0)
        self.s2 = s2 = self.F.s2
        self.sigma = self.F.sigma
        self.L = d.factors(theta)
        Hx = self.F.P(d.ZX)  # P Z^T X
        ZHx = d.ZX.T @ Hx
        XVX = (d.XX - ZHx) / s2
        self.XVX = 0.5 * (XVX + XVX.T)
        self.R = (d.ZX - d.C @ Hx) / s2
        XV2X = (d.XX - ZHx - ZHx.T + Hx.T @ (d.C @ Hx)) / s2**2
        self.XV2X = 0.5 * (XV2X + XV2X.T)

    def outer(self) -> list[np.ndarray]:
        """``O_k[u, v] = sum_l R_(l,u)^T R_(l,v)`` per term (layout order), ``(r_k, r_k, p, p)`` each."""
        p = self.d.p
        out = []
        for bt in self.d.terms:
            Rk = self.R[bt.sl].reshape(bt.n_levels, bt.r, p)
            out.append(np.einsum("lup,lvq->uvpq", Rk, Rk))
        return out


def xtvx(d: BlockedData, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``X^T V^{-1} X`` and its derivatives in ``psi = ts = (theta, sigma)``, ``(n_theta + 1, p, p)``
    (module docstring)."""
    g = _GLS(d, ts)
    D = np.zeros((d.n_theta + 1, d.p, d.p))
    for k, (bt, Ok) in enumerate(zip(d.terms, g.outer(), strict=True)):
        L = g.L[k]
        for a, (i, j) in enumerate(bt.lower()):
            E = np.zeros((bt.r, bt.r))
            E[i, j] = 1.0
            gam = E @ L.T + L @ E.T
            D[bt.theta_off + a] = -np.einsum("uv,uvpq->pq", gam, Ok)
    D[-1] = -2.0 * g.sigma * g.XV2X
    return g.XVX, D


def var_scale_pieces(d: BlockedData, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``X^T V^{-1} X``, ``P_i`` (``(k, p, p)``) and ``H_ij = Q_ij + Q_ji`` (``(k, k, p, p)``) on the var
    scale at ``ts = (theta, sigma)`` (module docstring; ``k = n_theta + 1``)."""
    g = _GLS(d, ts)
    F, s2, R, p, q = g.F, g.s2, g.R, d.p, d.q
    nv = d.n_theta
    P = np.zeros((nv + 1, p, p))
    ER = np.zeros((nv, q, p))  # E_i R
    for bt, Ok in zip(d.terms, g.outer(), strict=True):
        Rk = R[bt.sl].reshape(bt.n_levels, bt.r, p)
        for a, (i, j) in enumerate(bt.lower()):
            v = bt.theta_off + a
            blk = ER[v, bt.sl].reshape(bt.n_levels, bt.r, p)  # a view
            blk[:, i] = Rk[:, j]
            blk[:, j] = Rk[:, i]
            P[v] = -Ok[i, i] if i == j else -(Ok[i, j] + Ok[j, i])
    P[-1] = -g.XV2X
    PR = F.P(R)
    T = (R - d.C @ PR) / s2  # Z^T V^{-2} X
    XV3X = (g.XV2X - R.T @ PR) / s2
    Q = np.zeros((nv + 1, nv + 1, p, p))
    if nv:
        flat = np.moveaxis(ER, 0, 1).reshape(q, nv * p)  # columns: (parameter, fixed effect)
        Cv = d.C @ flat
        SER = ((Cv - d.C @ F.P(Cv)) / s2).reshape(q, nv, p)  # S E_j R
        Q[:nv, :nv] = np.einsum("iup,ujq->ijpq", ER, SER)
        Q[:nv, nv] = np.einsum("iup,uq->ipq", ER, T)
        Q[nv, :nv] = np.swapaxes(Q[:nv, nv], 1, 2)
    Q[nv, nv] = 0.5 * (XV3X + XV3X.T)
    return g.XVX, P, Q + np.swapaxes(Q, 0, 1)
