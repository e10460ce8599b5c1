"""The blocked engine: exact Gaussian marginal likelihood of crossed designs, in closed form.

The cluster engine (:mod:`pymc_mixvcov.engines.marginal`) factorises every connected component of the
random effects densely inside a pytensor graph; a crossed design is one component of all its
``q`` effects (InstEval: 4,128), which that path cannot afford. This engine works on the whole
model at once with sparse matrices and the block structure of MixedModels.jl (Bates et al.):

Model ``y = X beta + Z u + e``, ``u ~ N(0, G)``, ``G = Lambda Lambda^T`` block diagonal with one
``r_k x r_k`` block ``L_k`` per level of term ``k`` (``theta``: the lower triangles of the
*absolute* factors ``L_k``, as in :mod:`pymc_mixvcov.engines.marginal`), ``e ~ N(0, sigma^2 I)``,
``V = Z G Z^T + sigma^2 I``. With ``C = Z^T Z`` and

.. math::

    M = \\Lambda^T C \\Lambda + \\sigma^2 I, \\qquad
    \\ell = -\\tfrac n2 \\log 2\\pi - \\tfrac{n-q}{2}\\log\\sigma^2 - \\tfrac12\\log|M|
            - \\frac{r^T r - w^T M^{-1} w}{2\\sigma^2},\\quad w = \\Lambda^T Z^T r,

(Woodbury and the determinant lemma). Only ``C``, ``Z^T X``, ``Z^T y``, ``X^T X``, ``X^T y``,
``y^T y`` enter. Terms are ordered by number of levels, most first; an observation uses one
level of a term, so the first term's block ``M_11`` is block diagonal (``r_1 x r_1`` blocks) and
is eliminated in ``O(q_1 r_1^3)``; the rest is the dense Schur complement
``S = M_22 - M_21 M_11^{-1} M_12`` (InstEval: 1,156 x 1,156 instead of 4,128 x 4,128), and
``log|M| = log|M_11| + log|S|``. ``T = M_11^{-1} M_12`` keeps the sparsity of ``M_12``, and

.. math::

    M^{-1} = \\begin{pmatrix} M_{11}^{-1} + T S^{-1} T^T & -T S^{-1} \\\\ -S^{-1} T^T & S^{-1}\\end{pmatrix},

whose entries on the pattern of ``M`` (diagonal blocks of the first term, the rest dense) cost a
sparse-times-dense product: the *selected inverse* that the gradient needs.

**Derivatives** (all exact; Searle, Casella and McCulloch 1992, ch. 6; the REML forms as in
merDeriv). Write every variance parameter ``a`` of ``psi = (theta, sigma)`` as
``V_a = Z Gamma_a Z^T + c_a I``: for ``theta_a`` (entry ``(i, j)`` of ``L_k``)
``Gamma_a = I (x) (E_ij L_k^T + L_k E_ji)`` on term ``k`` and ``c_a = 0``; for ``sigma``
``Gamma = 0``, ``c = 2 sigma``; second derivatives ``V_ab = Z (I (x) (E_a E_b^T + E_b E_a^T)) Z^T``
within a term and ``V_{sigma sigma} = 2 I``. With ``e = V^{-1} r``,

.. math::

    \\partial_\\beta \\ell = X^T e, \\quad
    \\partial_a \\ell = -\\tfrac12 \\mathrm{tr}(V^{-1}V_a) + \\tfrac12 e^T V_a e, \\\\
    -\\partial^2_{\\beta\\beta}\\ell = X^T V^{-1} X, \\quad
    \\partial^2_{\\beta a}\\ell = -X^T V^{-1} V_a e, \\\\
    \\partial^2_{ab}\\ell = \\tfrac12\\mathrm{tr}(V^{-1}V_aV^{-1}V_b) - \\tfrac12\\mathrm{tr}(V^{-1}V_{ab})
        - e^T V_a V^{-1} V_b e + \\tfrac12 e^T V_{ab} e,

and the expected information ``X^T V^{-1} X`` and ``1/2 tr(V^{-1} V_a V^{-1} V_b)``. REML
replaces ``V^{-1}`` by ``P = V^{-1} - V^{-1} X (X^T V^{-1} X)^{-1} X^T V^{-1}`` in the traces and
quadratic forms (``e = P y``). All of it reduces to ``q``-dimensional quantities:
``W = Z^T V^{-1} Z = (C - C Lambda M^{-1} Lambda^T C) / sigma^2``, ``U = Lambda^T W = M^{-1} Lambda^T C``,
``Z^T V^{-2} Z = (W - U^T U) / sigma^2``, ``tr V^{-1} = (n - tr(PC)) / sigma^2`` with
``tr(PC) = q - sigma^2 tr(M^{-1})``, ``tr V^{-2} = (n - 2 tr(PC) + tr(PCPC)) / sigma^4`` with
``PC = Lambda U``, and ``V^{-1} Z = Z Q``, ``Q = (I - Lambda U) / sigma^2``. Since ``Gamma_a`` is block
diagonal, ``tr(W Gamma_a W Gamma_b) = sum gamma_a[i,j] gamma_b[s,t] F[j,s,i,t]`` with
``F[j,s,i,t] = sum_{l,m} W[(l,j),(m,s)] W[(l,i),(m,t)]`` over the levels ``l`` of one term and
``m`` of the other. The gradient of the profiled criterion needs only
``tr(W Gamma_a) = 2 sum_l U[(l,j),(l,i)]``, entries of ``M^{-1}`` on the pattern of ``M``; the
information uses the dense ``M^{-1}`` (``q x q``).

References
----------
Bates, D., Maechler, M., Bolker, B., Walker, S. (2015). Fitting linear mixed-effects models
using lme4. JSS 67(1). MixedModels.jl (Bates et al.), blocked Cholesky factor.
Searle, S. R., Casella, G., McCulloch, C. E. (1992). Variance Components. Wiley.
Wang, T. and Merkle, E. C. (2018). merDeriv. JSS 87, Code Snippet 1.
"""

from __future__ import annotations

import numpy as np

from ..errors import MixVcovError
from .blocked_factor import BlockedFactor
from .blocked_layout import BlockedData, blocked_data
from .blocked_traces import dense_u, traces
from .marginal import LOG2PI, ClusterStructure, Signature

__all__ = ["BlockedData", "BlockedFactor", "BlockedLMMFunctions", "blocked_data", "ml_derivatives", "profile"]


def _gamma(L: np.ndarray, i: int, j: int) -> np.ndarray:
    """``dG/dL_ij`` for ``G = L L^T``: ``E_ij L^T + L E_ji``."""
    E = np.zeros_like(L)
    E[i, j] = 1.0
    return E @ L.T + L @ E.T


class _Params:
    """The variance parameters ``psi = (theta, sigma)`` as ``V_a = Z Gamma_a Z^T + c_a I``."""

    def __init__(self, d: BlockedData, theta: np.ndarray, sigma: float):
        self.d = d
        self.L = d.factors(theta)
        self.owner = [None] * d.n_theta  # per theta entry: (layout term index, i, j)
        for k, bt in enumerate(d.terms):
            for a, (i, j) in enumerate(bt.lower()):
                self.owner[bt.theta_off + a] = (k, i, j)
        self.gam = [_gamma(self.L[k], i, j) for (k, i, j) in self.owner]
        self.sigma = sigma

    def apply(self, a: int, v: np.ndarray) -> np.ndarray:
        """``Gamma_a v`` for ``v`` of shape ``(q,)`` or ``(q, m)``."""
        k = self.owner[a][0]
        bt = self.d.terms[k]
        out = np.zeros_like(v)
        blk = v[bt.sl].reshape(bt.n_levels, bt.r, -1)
        out[bt.sl] = np.einsum("ij,ljm->lim", self.gam[a], blk).reshape(out[bt.sl].shape)
        return out

    def second(self, a: int, b: int) -> np.ndarray | None:
        """``gamma_ab``: ``d2 G / d theta_a d theta_b`` (same term) or ``None``."""
        ka, ia, ja = self.owner[a]
        kb, ib, jb = self.owner[b]
        if ka != kb:
            return None
        r = self.d.terms[ka].r
        Ea, Eb = np.zeros((r, r)), np.zeros((r, r))
        Ea[ia, ja] = 1.0
        Eb[ib, jb] = 1.0
        return Ea @ Eb.T + Eb @ Ea.T


def factor_at(d: BlockedData, theta, sigma: float, level: int) -> BlockedFactor:
    """The factor at ``(theta, sigma)``: the last one built when it is at the same point (an optimiser
    asks for the criterion at a trial point, then for its derivatives there), else a new one."""
    key = (np.asarray(theta, float).tobytes(), float(sigma))
    last = d.cache.get("factor")
    if last is not None and last[0] == key:
        return last[1]
    F = BlockedFactor(d, theta, sigma, level=level)
    d.cache["factor"] = (key, F)
    return F


class _State:
    """Everything the formulas need at ``phi = (beta, theta, sigma)`` (``beta`` may be ``None``: GLS).

    ``level``: 0 the log-likelihood, 1 also the traces of a gradient, 2 those of a Hessian
    (:mod:`pymc_mixvcov.engines.blocked_traces`; ``how`` picks their route).
    """

    def __init__(self, d: BlockedData, beta, theta, sigma, level: int = 2, how: str = "auto", factor_level=None):
        self.d = d
        self.F = F = factor_at(d, theta, sigma, level if factor_level is None else factor_level)
        self.s2 = s2 = F.s2
        self.pp = _Params(d, theta, F.sigma)
        # GLS pieces
        self.Hx = F.P(d.ZX)  # Lambda M^{-1} Lambda^T Z^T X
        self.XVX = (d.XX - d.ZX.T @ self.Hx) / s2  # X^T V^{-1} X
        self.XVX = 0.5 * (self.XVX + self.XVX.T)
        # the statistics are those of y - X b0 (blocked_layout): the formulas take beta - b0
        b0 = np.zeros(d.p) if d.b0 is None else d.b0
        if beta is None:
            XVy = (d.Xy - self.Hx.T @ d.Zy) / s2
            bc = np.linalg.solve(self.XVX, XVy) if d.p else np.zeros(0)
            beta = bc + b0
        else:
            bc = np.asarray(beta, float) - b0
        self.beta = np.asarray(beta, float)
        self.bc = bc
        self.zr = d.Zy - d.ZX @ bc
        self.rr = d.yy - 2.0 * bc @ d.Xy + bc @ d.XX @ bc
        w = F.lamT(self.zr)
        Mw = F.solve(w)
        self.h = F.lam(Mw)  # P Z^T r
        self.loglik = (
            -0.5 * d.n * LOG2PI - 0.5 * (d.n - d.q) * np.log(s2) - 0.5 * F.logdet - (self.rr - w @ Mw) / (2.0 * s2)
        )
        self.loglik += d.half_logw  # prior weights (0 without)
        if level == 0:
            return
        self.ze = (self.zr - d.C @ self.h) / s2  # Z^T e
        Xr = d.Xy - d.XX @ bc
        self.Xe = (Xr - d.ZX.T @ self.h) / s2  # X^T e
        self.ee = (self.rr - 2.0 * self.h @ self.zr + self.h @ (d.C @ self.h)) / s2**2  # e^T e
        self.ZVX = (d.ZX - d.C @ self.Hx) / s2  # Z^T V^{-1} X
        self.tr = traces(F, second=level >= 2, how=how)
        self.trPC = self.tr.trPC
        self.trVinv = (d.n - self.trPC) / s2

    # -- first order --------------------------------------------------------------------------------
    def tr_ViVa(self) -> np.ndarray:
        """``tr(V^{-1} V_a)`` for ``psi = (theta, sigma)``: ``2 bar U_k[j, i]`` for entry ``(i, j)`` of ``L_k``
        (``tr(W Gamma_a) = 2 tr(U D_a)``, ``D_a = dLambda / dtheta_a``) and ``2 sigma tr(V^{-1})``."""
        pp, usum = self.pp, self.tr.usum
        th = [2.0 * usum[k][j, i] for (k, i, j) in pp.owner]
        return np.array([*th, 2.0 * pp.sigma * self.trVinv])

    def quad_e(self) -> np.ndarray:
        """``e^T V_a e`` for ``psi``."""
        pp = self.pp
        th = [self.ze @ pp.apply(a, self.ze) for a in range(self.d.n_theta)]
        return np.array([*th, 2.0 * pp.sigma * self.ee])

    def XVaVX(self) -> list[np.ndarray]:
        """``X^T V^{-1} V_a V^{-1} X`` for ``psi``."""
        pp, d = self.pp, self.d
        out = [self.ZVX.T @ pp.apply(a, self.ZVX) for a in range(d.n_theta)]
        out.append(2.0 * pp.sigma * self.XV2X)
        return out

    @property
    def XV2X(self) -> np.ndarray:
        """``X^T V^{-2} X``."""
        C = self.d.C
        return (self.d.XX - 2.0 * self.d.ZX.T @ self.Hx + self.Hx.T @ (C @ self.Hx)) / self.s2**2

    def W(self, v: np.ndarray) -> np.ndarray:
        """``W v = Z^T V^{-1} Z v = (C v - C P C v) / sigma^2`` (``P = Lambda M^{-1} Lambda^T``)."""
        Cv = self.d.C @ v
        return (Cv - self.d.C @ self.F.P(Cv)) / self.s2

    def Qt(self, v: np.ndarray) -> np.ndarray:
        """``Q^T v = (v - C P v) / sigma^2`` (so that ``Z^T V^{-2} Z v``-type products stay in q-space)."""
        return (v - self.d.C @ self.F.P(v)) / self.s2

    # -- second order -------------------------------------------------------------------------------
    def trace_pairs(self) -> np.ndarray:
        """``tr(V^{-1} V_a V^{-1} V_b)`` for all pairs of ``psi``."""
        d, pp, tr = self.d, self.pp, self.tr
        s2 = self.s2
        nt = d.n_theta
        out = np.zeros((nt + 1, nt + 1))
        bdW2 = [(w - uu) / s2 for w, uu in zip(tr.bdW, tr.bdUU, strict=True)]  # sum_l (Z^T V^-2 Z)_ll
        for a in range(nt):
            ka = pp.owner[a][0]
            for b in range(a, nt):
                kb = pp.owner[b][0]
                if ka <= kb:
                    v = np.einsum("ij,st,jsit->", pp.gam[a], pp.gam[b], tr.F[ka, kb])
                else:
                    v = np.einsum("ij,st,jsit->", pp.gam[b], pp.gam[a], tr.F[kb, ka])
                out[a, b] = out[b, a] = v
            # theta-sigma: 2 sigma tr(Gamma_a Z^T V^-2 Z)
            out[a, nt] = out[nt, a] = 2.0 * pp.sigma * np.sum(pp.gam[a] * bdW2[ka].T)
        trV2 = (d.n - 2.0 * self.trPC + tr.trPCPC) / s2**2
        out[nt, nt] = 4.0 * pp.sigma**2 * trV2
        return out

    def tr_Vab(self) -> np.ndarray:
        """``tr(V^{-1} V_ab)``."""
        d, pp = self.d, self.pp
        nt = d.n_theta
        out = np.zeros((nt + 1, nt + 1))
        for a in range(nt):
            for b in range(nt):
                g = pp.second(a, b)
                if g is not None:
                    out[a, b] = np.sum(g * self.tr.bdW[pp.owner[a][0]].T)
        out[nt, nt] = 2.0 * self.trVinv
        return out

    def e_Vab_e(self) -> np.ndarray:
        d, pp = self.d, self.pp
        nt = d.n_theta
        out = np.zeros((nt + 1, nt + 1))
        for a in range(nt):
            for b in range(nt):
                g = pp.second(a, b)
                if g is not None:
                    bt = d.terms[pp.owner[a][0]]
                    zb = self.ze[bt.sl].reshape(bt.n_levels, bt.r)
                    out[a, b] = np.einsum("li,ij,lj->", zb, g, zb)
        out[nt, nt] = 2.0 * self.ee
        return out

    def Va_e(self):
        """``g_a = Gamma_a Z^T e`` (theta) and the pieces of ``(V_a e)^T V^{-1} (V_b e)``."""
        d, pp = self.d, self.pp
        nt = d.n_theta
        G = np.stack([pp.apply(a, self.ze) for a in range(nt)], axis=1) if nt else np.zeros((d.q, 0))
        Qze = self.Qt(self.ze)  # Z^T V^{-2} r
        eVe = (self.ee - self.ze @ self.F.P(self.ze)) / self.s2
        out = np.zeros((nt + 1, nt + 1))
        out[:nt, :nt] = G.T @ self.W(G)
        out[:nt, nt] = out[nt, :nt] = 2.0 * pp.sigma * (G.T @ Qze)
        out[nt, nt] = 4.0 * pp.sigma**2 * eVe
        # X^T V^{-1} V_a e
        XVe = (self.Xe - self.d.ZX.T @ self.F.P(self.ze)) / self.s2
        XVae = np.concatenate([self.ZVX.T @ G, (2.0 * pp.sigma * XVe)[:, None]], axis=1)  # (p, nt + 1)
        return out, XVae

    def K2(self) -> np.ndarray:
        """``X^T V^{-1} V_a V^{-1} V_b V^{-1} X``, shape ``(nt+1, nt+1, p, p)``."""
        d, pp = self.d, self.pp
        nt, p = d.n_theta, d.p
        GX = [pp.apply(a, self.ZVX) for a in range(nt)]  # (q, p) each
        QZVX = self.Qt(self.ZVX)  # Z^T V^{-2} X
        out = np.zeros((nt + 1, nt + 1, p, p))
        WG = self.W(np.concatenate(GX, axis=1)) if nt else np.zeros((d.q, 0))
        for a in range(nt):
            WGa = WG[:, a * p : (a + 1) * p]
            for b in range(nt):
                out[a, b] = WGa.T @ GX[b]
            out[a, nt] = 2.0 * pp.sigma * GX[a].T @ QZVX
            out[nt, a] = out[a, nt].T
        XV3X = (self.XV2X - self.ZVX.T @ self.F.P(self.ZVX)) / self.s2
        out[nt, nt] = 4.0 * pp.sigma**2 * XV3X
        return out

    def XVabVX(self) -> np.ndarray:
        """``X^T V^{-1} V_ab V^{-1} X``."""
        d, pp = self.d, self.pp
        nt, p = d.n_theta, d.p
        out = np.zeros((nt + 1, nt + 1, p, p))
        for a in range(nt):
            for b in range(nt):
                g = pp.second(a, b)
                if g is not None:
                    bt = d.terms[pp.owner[a][0]]
                    zb = self.ZVX[bt.sl].reshape(bt.n_levels, bt.r, p)
                    out[a, b] = np.einsum("lip,ij,ljs->ps", zb, g, zb)
        out[nt, nt] = 2.0 * self.XV2X
        return out

    def observation_scores(self) -> np.ndarray:
        """merDeriv's casewise scores (see :mod:`pymc_mixvcov.inference.scores`) in ``phi``, shape ``(n, dim)``.

        ``s_{i,beta} = r_i [V^{-1} X]_i``, ``s_{i,a} = -1/2 [V^{-1} V_a]_ii + 1/2 r_i [V^{-1} V_a e]_i``
        with ``V^{-1} Z = Z Q``, ``Q = (I - Lambda U) / sigma^2``: for ``theta_a``
        ``[V^{-1} V_a]_ii = z_i^T Q Gamma_a z_i`` and ``[V^{-1} V_a e]_i = z_i^T Q Gamma_a Z^T e``; for
        ``sigma`` ``2 sigma [V^{-1}]_ii`` and ``2 sigma [V^{-1} e]_i``, ``[V^{-1}]_ii = (1 - z_i^T P z_i) / sigma^2``.
        """
        d, F, s2, pp = self.d, self.F, self.s2, self.pp
        Z = d.Z
        r = d.y - d.X @ self.bc
        e = (r - Z @ self.h) / s2
        ViX = (d.X - Z @ self.Hx) / s2
        n, p, nt = d.n, d.p, d.n_theta
        out = np.zeros((n, p + nt + 1))
        out[:, :p] = ViX * r[:, None]
        Minv = F.inverse()
        Pd = np.asarray(F.Lam @ np.asarray((F.Lam @ Minv).T)).T  # Lambda M^{-1} Lambda^T (symmetric)
        LU = np.asarray(F.Lam @ dense_u(F))  # P C = Lambda M^{-1} Lambda^T C
        # the nonzeros of each row of Z: positions and values, (n, R)
        R = int(np.diff(Z.indptr).max()) if n else 0
        pos = np.zeros((n, R), int)
        val = np.zeros((n, R))
        counts = np.diff(Z.indptr)
        for k in range(R):
            has = counts > k
            idx = Z.indptr[:-1][has] + k
            pos[has, k] = Z.indices[idx]
            val[has, k] = Z.data[idx]
        zPz = np.einsum("ia,ib,iab->i", val, val, Pd[pos[:, :, None], pos[:, None, :]])
        vinv = (1.0 - zPz) / s2
        Vie = (e - Z @ (Pd @ self.ze)) / s2
        out[:, -1] = pp.sigma * (r * Vie - vinv)
        filled = np.arange(R)[None, :] < counts[:, None]  # the slots that hold a nonzero of Z
        for a in range(nt):
            k = pp.owner[a][0]
            bt = d.terms[k]
            # obs i's block of term k: its level and its r values (an empty slot's position 0 is no level)
            in_k = filled & (pos >= bt.off) & (pos < bt.off + bt.q)
            lev = np.where(in_k, (pos - bt.off) // bt.r, -1).max(axis=1)
            zk = np.zeros((n, bt.r))
            rows, cols = np.nonzero(in_k)
            zk[rows, (pos[rows, cols] - bt.off) % bt.r] = val[rows, cols]
            gz = zk @ pp.gam[a].T  # gamma_a z_k
            used = lev >= 0
            wpos = bt.off + np.maximum(lev, 0)[:, None] * bt.r + np.arange(bt.r)[None, :]  # (n, r)
            zGz = np.sum(zk * gz, axis=1)
            zLUGz = np.einsum("ib,ibs,is->i", val, LU[pos[:, :, None], wpos[:, None, :]], gz)
            diag = np.where(used, zGz - zLUGz, 0.0) / s2
            Gze = pp.apply(a, self.ze)
            quad = (Z @ Gze - Z @ (LU @ Gze)) / s2
            out[:, p + a] = -0.5 * diag + 0.5 * r * quad
        return out


# -- the criteria and their derivatives in phi --------------------------------------------------------
def criterion(d: BlockedData, phi: np.ndarray, method: str) -> float:
    """The ML log-likelihood at ``phi = (beta, theta, sigma)``, or the REML criterion at its ``(theta, sigma)``:
    the value alone (no traces)."""
    p, nt = d.p, d.n_theta
    # the factor is built with the Hessian's cross products in the same pass (level 2): an optimiser
    # asks for the criterion at a trial point and, once it accepts it (usually), for the derivatives
    # there, which then reuse this factor (factor_at)
    if method == "REML":
        st = _State(d, None, phi[p : p + nt], phi[p + nt], level=0, factor_level=2)
        return float(st.loglik + 0.5 * d.p * LOG2PI - 0.5 * np.linalg.slogdet(st.XVX)[1])
    return float(_State(d, phi[:p], phi[p : p + nt], phi[p + nt], level=0, factor_level=2).loglik)


def profile(d: BlockedData, ts: np.ndarray, method: str, how: str = "auto") -> tuple[float, np.ndarray, np.ndarray]:
    """Profiled criterion (``beta`` at its GLS value), its gradient in ``psi = (theta, sigma)``, ``beta``."""
    st = _State(d, None, ts[:-1], ts[-1], level=1, how=how)
    g = -0.5 * st.tr_ViVa() + 0.5 * st.quad_e()
    f = st.loglik
    if method == "REML":
        A_inv = np.linalg.inv(st.XVX)
        f = f + 0.5 * d.p * LOG2PI - 0.5 * np.linalg.slogdet(st.XVX)[1]
        g = g + 0.5 * np.array([np.sum(A_inv * B) for B in st.XVaVX()])
    return float(f), g, st.beta


def ml_derivatives(d: BlockedData, phi: np.ndarray, expected: bool = False, how: str = "auto") -> dict:
    """ML log-likelihood, gradient and Hessian in ``phi`` (and the expected information)."""
    p, nt = d.p, d.n_theta
    st = _State(d, phi[:p], phi[p : p + nt], phi[p + nt], level=2, how=how)
    dim = p + nt + 1
    g = np.concatenate([st.Xe, -0.5 * st.tr_ViVa() + 0.5 * st.quad_e()])
    T2 = st.trace_pairs()
    quad, XVae = st.Va_e()
    H = np.zeros((dim, dim))
    H[:p, :p] = -st.XVX
    H[:p, p:] = -XVae
    H[p:, :p] = -XVae.T
    H[p:, p:] = 0.5 * T2 - 0.5 * st.tr_Vab() - quad + 0.5 * st.e_Vab_e()
    out = {"loglik": float(st.loglik), "grad": g, "hess": 0.5 * (H + H.T)}
    if expected:
        E = np.zeros((dim, dim))
        E[:p, :p] = st.XVX
        E[p:, p:] = 0.5 * T2
        out["expected"] = E
    return out


def reml_derivatives(d: BlockedData, ts: np.ndarray, expected: bool = False, how: str = "auto") -> dict:
    """REML criterion, gradient and Hessian in ``psi = (theta, sigma)``, ``X^T V^{-1} X`` (and the
    expected information of the error contrasts, ``1/2 tr(P V_a P V_b)``)."""
    st = _State(d, None, ts[:-1], ts[-1], level=2, how=how)
    A_inv = np.linalg.inv(st.XVX)
    Ba = st.XVaVX()
    ll = st.loglik + 0.5 * d.p * LOG2PI - 0.5 * np.linalg.slogdet(st.XVX)[1]
    g = -0.5 * st.tr_ViVa() + 0.5 * st.quad_e() + 0.5 * np.array([np.sum(A_inv * B) for B in Ba])
    T2 = st.trace_pairs()
    K2 = st.K2()
    m = len(Ba)
    AB = [A_inv @ B for B in Ba]
    trPP = np.array(
        [[T2[a, b] - 2.0 * np.sum(A_inv * K2[a, b]) + np.sum(AB[a] * AB[b].T) for b in range(m)] for a in range(m)]
    )
    XVab = st.XVabVX()
    trPVab = st.tr_Vab() - np.einsum("pq,abqp->ab", A_inv, XVab)
    quad, XVae = st.Va_e()
    quadP = quad - XVae.T @ A_inv @ XVae
    H = 0.5 * trPP - 0.5 * trPVab - quadP + 0.5 * st.e_Vab_e()
    out = {"loglik": float(ll), "grad": g, "hess": 0.5 * (H + H.T), "XtVX": st.XVX}
    if expected:
        out["expected"] = 0.5 * (trPP + trPP.T) / 2.0
    return out


# -- the engine's functions on the natural parameters ----------------------------------------------------
class BlockedLMMFunctions:
    """Criterion, derivatives and information of a Gaussian LMM on its natural parameters, by the
    blocked engine (same interface as :class:`pymc_mixvcov.compilation.derivatives.LMMFunctions`).

    ``beta`` is profiled out of the optimiser's criterion. The engine sees the whole model at
    once; per-cluster pieces are the totals where the model is one cluster (a crossed design),
    else each cluster's sub-model's (:mod:`pymc_mixvcov.engines.blocked_clusters`).
    """

    profiled = True
    engine = "blocked"
    #: the information costs a few evaluations of the profiled criterion (not one per cluster):
    #: the optimiser starts with Newton's method (:func:`pymc_mixvcov.optimise.fit.optimise`)
    newton_start = True

    def __init__(self, spec, structure: ClusterStructure, method: str):
        from ..compilation.derivatives import ModelMap

        self.spec, self.structure, self.method = spec, structure, method
        self.data = blocked_data(spec)
        r = tuple(t.r for t in spec.terms)
        self.sig = Signature(self.data.p, r, ())
        self.map = ModelMap(spec, self.sig)
        self.P = spec.n_params
        self.vi = spec.variance_index
        self.fi = spec.fixed_index
        self._profiles: list = []
        self._per_cluster = None  # per-cluster pieces of a model of several clusters, built on first use

    def profile(self, vv: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Profiled criterion (``beta`` at its GLS value), its gradient in ``vv`` and the full ``nat``.

        The last few results are kept: the optimiser asks again at points it has seen (its start,
        its result).
        """
        vv = np.asarray(vv, float)
        key = vv.tobytes()
        for k, res in self._profiles:
            if k == key:
                return res[0], res[1].copy(), res[2].copy()
        nat = np.zeros(self.P)
        nat[self.vi] = vv
        phi, J, _ = self.map(nat, second=False)
        p = self.sig.p
        f, g, beta = profile(self.data, phi[p:], self.method)
        nat[self.fi] = beta
        out = (f, J[p:, self.vi].T @ g, nat)
        self._profiles = [(key, out), *self._profiles[:3]]
        return out[0], out[1].copy(), out[2].copy()

    def loglik(self, nat: np.ndarray) -> float:
        """The criterion alone at ``nat`` (ML log-likelihood or REML criterion): no traces."""
        phi, _, _ = self.map(np.asarray(nat, float), second=False)
        return criterion(self.data, phi, self.method)

    def information(self, nat: np.ndarray, expected: bool = False) -> dict[str, np.ndarray]:
        """Criterion, gradient and observed (optionally expected) information on the natural scale
        (see :meth:`pymc_mixvcov.compilation.derivatives.LMMFunctions.information`)."""
        nat = np.asarray(nat, float)
        phi, J, T = self.map(nat)
        if self.method == "ML":
            res = self._ml(nat, phi, J, T, expected)
            out = {k: res[k] for k in ("loglik", "grad", "observed")}
            if expected:
                out["expected"] = res["expected"]
            return out
        p = self.sig.p
        res = reml_derivatives(self.data, phi[p:], expected)
        Jv = J[p:][:, self.vi]
        Tv = T[p:][:, self.vi][:, :, self.vi]
        g, H = res["grad"], res["hess"]
        out = {
            "loglik": res["loglik"],
            "grad": self._embed(Jv.T @ g),
            "observed": self._blockdiag(res["XtVX"], -(Jv.T @ H @ Jv) - np.einsum("k,kij->ij", g, Tv)),
        }
        if expected:
            out["expected"] = self._blockdiag(res["XtVX"], Jv.T @ res["expected"] @ Jv)
        return out

    def _ml(self, nat, phi, J, T, expected: bool) -> dict:
        key = (np.asarray(nat, float).tobytes(), expected)
        last = getattr(self, "_last_ml", None)
        if last is not None and (last[0] == key or (last[0][0] == key[0] and last[0][1])):
            return last[1]
        res = ml_derivatives(self.data, phi, expected)
        out = {
            "loglik": res["loglik"],
            "grad": J.T @ res["grad"],
            "observed": -(J.T @ res["hess"] @ J + np.einsum("k,kij->ij", res["grad"], T)),
            "grad_phi": res["grad"],
            "hess_phi": res["hess"],
        }
        if expected:
            out["expected"] = J.T @ res["expected"] @ J
        self._last_ml = (key, out)
        return out

    def reml_observed_ml_cross(self, nat: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """The REML observed information with merDeriv's fixed/variance cross block (see
        :meth:`pymc_mixvcov.compilation.derivatives.LMMFunctions.reml_observed_ml_cross`)."""
        nat = np.asarray(nat, float)
        phi, J, T = self.map(nat)
        ml = self._ml(nat, phi, J, T, False)["observed"]
        out = np.array(observed, float, copy=True)
        fv, vf = np.ix_(self.fi, self.vi), np.ix_(self.vi, self.fi)
        out[fv], out[vf] = ml[fv], ml[vf]
        return out

    def _one_cluster(self) -> bool:
        """Whether the model is one cluster holding every observation (a crossed design), whose pieces
        are the totals."""
        return self.structure.n_clusters == 1 and int(self.structure.free[3]) == 0

    def _cluster_pieces(self):
        """Every cluster's pieces in ``phi`` (:mod:`pymc_mixvcov.engines.blocked_clusters`), built once."""
        pc = self._per_cluster
        if pc is None or pc.spec is not self.spec:  # a new response (engines/response.py) has a new spec
            from .blocked_clusters import GaussianClusterPieces

            self._per_cluster = GaussianClusterPieces(self.spec, self.structure, self.sig)
        return self._per_cluster

    def clusters(self, nat: np.ndarray, phi=None) -> dict[str, np.ndarray]:
        """Per-cluster log-likelihoods, scores and observed information on the natural scale (ML), with
        their totals (see :meth:`pymc_mixvcov.compilation.derivatives.LMMFunctions.clusters`).

        One cluster holding every observation: the totals. Several: each cluster's sub-model
        (:mod:`pymc_mixvcov.engines.blocked_clusters`); ``loglik_free`` is the log-likelihood of the
        observations that use no random effect.
        """
        nat = np.asarray(nat, float)
        phi, J, T = self.map(nat)
        res = self._ml(nat, phi, J, T, False)
        if self._one_cluster():
            return {
                "loglik_total": res["loglik"],
                "loglik": np.array([res["loglik"]]),
                "loglik_free": 0.0,
                "scores": res["grad"][None, :],
                "observed_clusters": res["observed"][None],
                "grad": res["grad"],
                "observed": res["observed"],
            }
        pc = self._cluster_pieces()
        per = pc(phi)
        S = per["grad"]
        return {
            "loglik_total": res["loglik"],
            "loglik": per["loglik"],
            "loglik_free": pc.free_loglik(phi),
            "scores": S @ J,
            "observed_clusters": -(np.einsum("ki,ckl,lj->cij", J, per["hess"], J) + np.einsum("ck,kij->cij", S, T)),
            "grad": res["grad"],
            "observed": res["observed"],
        }

    def clusters_expected(self, nat: np.ndarray, phi=None) -> dict[str, np.ndarray]:
        """Per-cluster expected information and its total on the natural scale (ML)."""
        nat = np.asarray(nat, float)
        phi, J, T = self.map(nat)
        E = self._ml(nat, phi, J, T, True)["expected"]
        if self._one_cluster():
            return {"expected_clusters": E[None], "expected": E}
        per = self._cluster_pieces()(phi)
        return {"expected_clusters": np.einsum("ki,ckl,lj->cij", J, per["expected"], J), "expected": E}

    def observation_scores(self, nat: np.ndarray) -> np.ndarray:
        """Scores of every observation on the natural scale, ``(n, P)`` (merDeriv's casewise
        decomposition; :meth:`_State.observation_scores`)."""
        if self.method != "ML":
            raise MixVcovError("observation-level scores are defined for ML fits")
        phi, J, _ = self.map(np.asarray(nat, float), second=False)
        p, nt = self.sig.p, self.data.n_theta
        st = _State(self.data, phi[:p], phi[p : p + nt], phi[p + nt], level=1)
        return st.observation_scores() @ J

    def scales(self, nat: np.ndarray) -> dict[str, np.ndarray]:
        """Values and Jacobians (with respect to the natural parameters) of every scale (closed form,
        :mod:`pymc_mixvcov.engines.blocked_scales`)."""
        from ..compilation.derivatives import _scales
        from .blocked_scales import closed_form_scales

        sig = self.sig
        return _scales(self.map, lambda phi: closed_form_scales(phi, sig.p, sig.r), nat)

    def xtvx(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``X^T V^{-1} X`` at the core parameters ``phi = (beta, theta, sigma)`` and its derivatives in
        ``(theta, sigma)``, ``(n_theta + 1, p, p)``, in closed form
        (:func:`pymc_mixvcov.engines.blocked_ddf.xtvx`)."""
        from .blocked_ddf import xtvx

        return xtvx(self.data, np.asarray(phi, float)[self.sig.p :])

    def var_scale_pieces(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``X^T V^{-1} X``, ``P_i`` and ``H_ij = Q_ij + Q_ji`` on the var scale at ``phi = (beta, theta,
        sigma)``, in closed form (:func:`pymc_mixvcov.engines.blocked_ddf.var_scale_pieces`)."""
        from .blocked_ddf import var_scale_pieces

        return var_scale_pieces(self.data, np.asarray(phi, float)[self.sig.p :])

    def _embed(self, gv: np.ndarray) -> np.ndarray:
        from ..compilation.derivatives import reml_gradient

        return reml_gradient(self.P, self.vi, gv)

    def _blockdiag(self, XtVX: np.ndarray, Hv: np.ndarray) -> np.ndarray:
        from ..compilation.derivatives import reml_information

        return reml_information(self.P, self.fi, self.vi, XtVX, Hv)
