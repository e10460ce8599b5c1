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

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from ..errors import MixVcovError
from ..model.weights import half_log_weights, whitened
from .marginal import LOG2PI, ClusterStructure, Signature

__all__ = ["BlockedData", "BlockedFactor", "BlockedLMMFunctions", "blocked_data"]


@dataclass(frozen=True)
class _Term:
    """One random-effect term in the blocked layout: positions ``off + level * r + j``."""

    spec_index: int
    r: int
    n_levels: int
    off: int
    theta_off: int  # start of its entries in theta (spec order)

    @property
    def q(self) -> int:
        return self.r * self.n_levels

    @property
    def sl(self) -> slice:
        return slice(self.off, self.off + self.q)

    def lower(self) -> list[tuple[int, int]]:
        return [(i, j) for j in range(self.r) for i in range(j, self.r)]


@dataclass(frozen=True)
class BlockedData:
    """Sufficient statistics of the whole model in the blocked layout (computed once).

    ``terms`` are in the layout's order (most levels first); ``C = Z^T Z`` (sparse, CSC),
    ``ZX = Z^T X``, ``Zy = Z^T y`` and the fixed-effect moments.
    """

    terms: list[_Term]
    n_theta: int
    q: int
    q1: int
    n: int
    p: int
    C: sp.csc_matrix = field(repr=False)
    ZX: np.ndarray = field(repr=False)
    Zy: np.ndarray = field(repr=False)
    XX: np.ndarray = field(repr=False)
    Xy: np.ndarray = field(repr=False)
    yy: float
    # Lambda's sparsity: for each nonzero, its row, column and index in theta
    lam_rows: np.ndarray = field(repr=False)
    lam_cols: np.ndarray = field(repr=False)
    lam_theta: np.ndarray = field(repr=False)
    Z: sp.csr_matrix = field(repr=False)  # (n, q), R nonzeros per row
    X: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)  # minus the offset
    half_logw: float = 0.0  # prior weights: sum log(w) / 2, added to the log-likelihood of the scaled rows


def blocked_data(spec) -> BlockedData:
    """Build the blocked layout and statistics of a Gaussian ``spec`` (NumPy/SciPy, once); with
    precision weights, of its rows scaled by ``sqrt(w_i)`` (:mod:`pymc_mixvcov.model.weights`)."""
    X, y, row_scale = whitened(spec)
    n, p = X.shape
    theta_off, off_t = [], 0
    for t in spec.terms:
        theta_off.append(off_t)
        off_t += t.r * (t.r + 1) // 2
    order = sorted(range(len(spec.terms)), key=lambda k: -len(spec.terms[k].levels) * spec.terms[k].r)
    terms, off = [], 0
    for k in order:
        t = spec.terms[k]
        terms.append(_Term(k, t.r, len(t.levels), off, theta_off[k]))
        off += t.r * len(t.levels)
    q = off
    rows, cols, vals = [], [], []
    for bt in terms:
        t = spec.terms[bt.spec_index]
        used = np.flatnonzero(t.codes >= 0)
        for j in range(bt.r):
            rows.append(used)
            cols.append(bt.off + t.codes[used] * bt.r + j)
            vals.append(np.asarray(t.z[used, j], float) * (1.0 if row_scale is None else row_scale[used]))
    Z = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, q))
    Zt = Z.T.tocsr()
    C = (Zt @ Z).tocsc()
    C.sum_duplicates()
    lr, lc, lt = [], [], []
    for bt in terms:
        lev = np.arange(bt.n_levels)
        for a, (i, j) in enumerate(bt.lower()):
            lr.append(bt.off + lev * bt.r + i)
            lc.append(bt.off + lev * bt.r + j)
            lt.append(np.full(bt.n_levels, bt.theta_off + a))
    return BlockedData(
        terms=terms,
        n_theta=off_t,
        q=q,
        q1=terms[0].q,
        n=n,
        p=p,
        C=C,
        ZX=np.asarray(Zt @ X),
        Zy=np.asarray(Zt @ y),
        XX=X.T @ X,
        Xy=X.T @ y,
        yy=float(y @ y),
        lam_rows=np.concatenate(lr),
        lam_cols=np.concatenate(lc),
        lam_theta=np.concatenate(lt),
        Z=Z,
        X=X,
        y=y,
        half_logw=0.0 if row_scale is None else float(np.sum(half_log_weights(spec))),
    )


class BlockedFactor:
    """``M = Lambda^T C Lambda + sigma^2 I`` at ``(theta, sigma)``, factorised blockwise.

    Raises ``numpy.linalg.LinAlgError`` where ``M`` is not numerically positive definite.
    """

    def __init__(self, data: BlockedData, theta: np.ndarray, sigma: float):
        self.d, self.theta, self.sigma = data, np.asarray(theta, float), float(sigma)
        d = data
        s2 = self.sigma**2
        q, q1, r1 = d.q, d.q1, d.terms[0].r
        self.Lam = sp.csr_matrix((self.theta[d.lam_theta], (d.lam_rows, d.lam_cols)), shape=(q, q))
        self.B = (self.Lam.T @ d.C).tocsr()  # Lambda^T C
        M = (self.B @ self.Lam).tocsr() + s2 * sp.identity(q, format="csr")
        # M_11: block diagonal, r1 x r1 blocks
        M11 = M[:q1, :q1].tocoo()
        n1 = q1 // r1
        blocks = np.zeros((n1, r1, r1))
        np.add.at(blocks, (M11.row // r1, M11.row % r1, M11.col % r1), M11.data)
        self.L11 = np.linalg.cholesky(blocks)  # raises LinAlgError if not positive definite
        inv11 = np.linalg.inv(blocks)
        self.inv11 = 0.5 * (inv11 + np.swapaxes(inv11, 1, 2))
        lev = np.repeat(np.arange(n1), r1 * r1)
        ii = np.tile(np.repeat(np.arange(r1), r1), n1)
        jj = np.tile(np.tile(np.arange(r1), r1), n1)
        self.M11inv = sp.csr_matrix((self.inv11.ravel(), (lev * r1 + ii, lev * r1 + jj)), shape=(q1, q1))
        M12 = M[:q1, q1:].tocsc()
        self.T = (self.M11inv @ M12).tocsr()  # M_11^{-1} M_12, sparse
        S = M[q1:, q1:].toarray() - (M12.T @ self.T).toarray()
        self.q2 = q - q1
        if self.q2:
            self.cS = sla.cho_factor(S, lower=True, check_finite=True)
            logdet_S = 2.0 * float(np.sum(np.log(np.diag(self.cS[0]))))
        else:
            self.cS, logdet_S = None, 0.0
        self.logdet = 2.0 * float(np.sum(np.log(np.diagonal(self.L11, axis1=1, axis2=2)))) + logdet_S
        self._Z22 = None
        self._dense = None

    # -- solves ---------------------------------------------------------------------------------
    def solve(self, b: np.ndarray) -> np.ndarray:
        """``M^{-1} b`` by block elimination (``b``: ``(q,)`` or ``(q, m)``)."""
        q1 = self.d.q1
        b1, b2 = b[:q1], b[q1:]
        x1 = self.M11inv @ b1
        if not self.q2:
            return x1
        x2 = sla.cho_solve(self.cS, b2 - self.T.T @ b1)
        return np.concatenate([x1 - self.T @ x2, x2], axis=0)

    def P(self, v: np.ndarray) -> np.ndarray:
        """``Lambda M^{-1} Lambda^T v``."""
        return self.Lam @ self.solve(self.Lam.T @ v)

    # -- inverse ----------------------------------------------------------------------------------
    @property
    def Z22(self) -> np.ndarray:
        if self._Z22 is None:
            if self.q2:
                # S^{-1} from its Cholesky factor (LAPACK potri: a third of the work of q2 solves)
                inv, info = sla.lapack.dpotri(self.cS[0], lower=1)
                if info != 0:
                    raise np.linalg.LinAlgError(f"potri failed ({info})")
                self._Z22 = np.tril(inv) + np.tril(inv, -1).T
            else:
                self._Z22 = np.zeros((0, 0))
            self._Z12 = -np.asarray(self.T @ self._Z22)
        return self._Z22

    def inverse(self) -> np.ndarray:
        """The dense ``M^{-1}`` (``q x q``)."""
        if self._dense is None:
            q1 = self.d.q1
            Z22 = self.Z22
            Z12 = self._Z12
            out = np.empty((self.d.q, self.d.q))
            out[:q1, :q1] = self.M11inv.toarray() - np.asarray(self.T @ Z12.T)
            out[:q1, q1:] = Z12
            out[q1:, :q1] = Z12.T
            out[q1:, q1:] = Z22
            self._dense = out
        return self._dense

    def inverse_at(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Entries ``M^{-1}[x, z]`` on the pattern of ``M`` (the selected inverse), without forming it.

        Pairs inside the first term's block must share a level (its block of ``M`` is block diagonal).
        """
        q1, r1 = self.d.q1, self.d.terms[0].r
        out = np.empty(x.size)
        Z22 = self.Z22
        Z12 = self._Z12
        both1 = (x < q1) & (z < q1)
        if both1.any():
            xs, zs = x[both1], z[both1]
            lev = xs // r1
            if np.any(zs // r1 != lev):
                raise AssertionError("selected inverse asked outside the pattern")
            # diagonal block l of M_11^{-1} + T S^{-1} T^T, with T S^{-1} = -Z12
            extra = np.asarray(self.T[zs].multiply(Z12[xs]).sum(axis=1)).ravel() if self.q2 else 0.0
            out[both1] = self.inv11[lev, xs % r1, zs % r1] - extra
        m12 = (x < q1) & (z >= q1)
        out[m12] = Z12[x[m12], z[m12] - q1]
        m21 = (x >= q1) & (z < q1)
        out[m21] = Z12[z[m21], x[m21] - q1]
        m22 = (x >= q1) & (z >= q1)
        out[m22] = Z22[x[m22] - q1, z[m22] - q1]
        return out

    def trace_inverse(self) -> float:
        """``tr(M^{-1})`` from the diagonal of the selected inverse."""
        idx = np.arange(self.d.q)
        return float(np.sum(self.inverse_at(idx, idx)))


def _gamma(L: np.ndarray, i: int, j: int) -> np.ndarray:
    """``dG/dL_ij`` for ``G = L L^T``: ``E_ij L^T + L E_ji``."""
    E = np.zeros_like(L)
    E[i, j] = 1.0
    return E @ L.T + L @ E.T


class _Params:
    """The variance parameters ``psi = (theta, sigma)`` as ``V_a = Z Gamma_a Z^T + c_a I``."""

    def __init__(self, d: BlockedData, theta: np.ndarray, sigma: float):
        self.d = d
        self.L = []
        for bt in d.terms:
            L = np.zeros((bt.r, bt.r))
            for a, (i, j) in enumerate(bt.lower()):
                L[i, j] = theta[bt.theta_off + a]
            self.L.append(L)
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


def _block_sums(A: np.ndarray, bt: _Term) -> np.ndarray:
    """``sum_l A[(l, i), (l, j)]`` over the levels of term ``bt``: an ``r x r`` matrix."""
    blk = A[bt.sl, bt.sl].reshape(bt.n_levels, bt.r, bt.n_levels, bt.r)
    idx = np.arange(bt.n_levels)
    return blk[idx, :, idx, :].sum(axis=0)


class _State:
    """Everything the formulas need at ``phi = (beta, theta, sigma)`` (``beta`` may be ``None``: GLS)."""

    def __init__(self, d: BlockedData, beta, theta, sigma):
        self.d = d
        self.F = F = BlockedFactor(d, theta, sigma)
        self.s2 = s2 = F.sigma**2
        self.pp = _Params(d, theta, F.sigma)
        # GLS pieces
        LZX = F.Lam.T @ d.ZX
        self.Hx = F.Lam @ F.solve(LZX)  # Lambda M^{-1} Lambda^T Z^T X
        self.XVX = (d.XX - d.ZX.T @ self.Hx) / s2  # X^T V^{-1} X
        self.XVX = 0.5 * (self.XVX + self.XVX.T)
        if beta is None:
            XVy = (d.Xy - self.Hx.T @ d.Zy) / s2
            beta = np.linalg.solve(self.XVX, XVy) if d.p else np.zeros(0)
        self.beta = np.asarray(beta, float)
        self.zr = d.Zy - d.ZX @ self.beta
        self.rr = d.yy - 2.0 * self.beta @ d.Xy + self.beta @ d.XX @ self.beta
        w = F.Lam.T @ self.zr
        Mw = F.solve(w)
        self.h = F.Lam @ Mw  # P Z^T r
        self.loglik = (
            -0.5 * d.n * LOG2PI - 0.5 * (d.n - d.q) * np.log(s2) - 0.5 * F.logdet - (self.rr - w @ Mw) / (2.0 * s2)
        )
        self.loglik += d.half_logw  # prior weights (0 without)
        self.ze = (self.zr - d.C @ self.h) / s2  # Z^T e
        Xr = d.Xy - d.XX @ self.beta
        self.Xe = (Xr - d.ZX.T @ self.h) / s2  # X^T e
        self.ee = (self.rr - 2.0 * self.h @ self.zr + self.h @ (d.C @ self.h)) / s2**2  # e^T e
        self.ZVX = (d.ZX - d.C @ self.Hx) / s2  # Z^T V^{-1} X
        self.trPC = d.q - s2 * F.trace_inverse()
        self.trVinv = (d.n - self.trPC) / s2

    # -- gradient (selected inverse) --------------------------------------------------------------
    def trace_W_gamma(self) -> np.ndarray:
        """``tr(W Gamma_a) = 2 sum_l U[(l, j), (l, i)]`` for every theta entry (selected inverse)."""
        d, F = self.d, self.F
        out = np.zeros(d.n_theta)
        Bc = F.B.tocsc()
        for bt in d.terms:
            # U[(l, j), (l, i)] = sum_z M^{-1}[(l, j), z] B[z, (l, i)]
            Ud = np.zeros((bt.n_levels, bt.r, bt.r))
            sub = Bc[:, bt.sl].tocoo()
            lev, i = sub.col // bt.r, sub.col % bt.r
            for j in range(bt.r):
                x = bt.off + lev * bt.r + j
                vals = F.inverse_at(x, sub.row) * sub.data
                np.add.at(Ud, (lev, np.full(lev.size, j), i), vals)
            Usum = Ud.sum(axis=0)
            for a, (i0, j0) in enumerate(bt.lower()):
                out[bt.theta_off + a] = 2.0 * Usum[j0, i0]
        return out

    def tr_ViVa(self) -> np.ndarray:
        """``tr(V^{-1} V_a)`` for ``psi = (theta, sigma)``."""
        return np.concatenate([self.trace_W_gamma(), [2.0 * self.pp.sigma * self.trVinv]])

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

    # -- second order (dense inverse) ----------------------------------------------------------------
    def dense(self):
        """``W``, ``U`` and the traces that the information needs."""
        if hasattr(self, "_W"):
            return
        d, F, s2 = self.d, self.F, self.s2
        Minv = F.inverse()
        Ut = np.asarray(F.B.T @ Minv)  # (M^{-1} B)^T = B^T M^{-1}
        U = np.ascontiguousarray(Ut.T)
        W = (d.C.toarray() - np.asarray(F.B.T @ U)) / s2
        self._W = 0.5 * (W + W.T)
        self._U = U
        LU = np.asarray(F.Lam @ U)  # P C
        self.trPCPC = float(np.sum(LU * LU.T))
        self.trV2 = (d.n - 2.0 * self.trPC + self.trPCPC) / s2**2
        # block sums of W and of U^T U per term
        self.bdW = [_block_sums(self._W, bt) for bt in d.terms]
        self.bdUU = []
        for bt in d.terms:
            Ub = U[:, bt.sl].reshape(d.q, bt.n_levels, bt.r)
            self.bdUU.append(np.einsum("xlj,xli->ji", Ub, Ub))
        self.bdW2 = [(w - uu) / s2 for w, uu in zip(self.bdW, self.bdUU, strict=True)]
        # F tensors per pair of terms
        self.Ften = {}
        for k, bk in enumerate(d.terms):
            for m, bm in enumerate(d.terms):
                if m < k:
                    continue
                blk = self._W[bk.sl, bm.sl].reshape(bk.n_levels, bk.r, bm.n_levels, bm.r)
                Y = blk.transpose(1, 3, 0, 2).reshape(bk.r * bm.r, -1)
                G = (Y @ Y.T).reshape(bk.r, bm.r, bk.r, bm.r)  # [j, s, i, t]
                self.Ften[k, m] = G

    def observation_scores(self) -> np.ndarray:
        """merDeriv's casewise scores (see :mod:`pymc_mixvcov.inference.scores`) in ``phi``, shape ``(n, dim)``.

        ``s_{i,beta} = r_i [V^{-1} X]_i``, ``s_{i,a} = -1/2 [V^{-1} V_a]_ii + 1/2 r_i [V^{-1} V_a e]_i``
        with ``V^{-1} Z = Z Q``, ``Q = (I - Lambda U) / sigma^2``: for ``theta_a``
        ``[V^{-1} V_a]_ii = z_i^T Q Gamma_a z_i`` and ``[V^{-1} V_a e]_i = z_i^T Q Gamma_a Z^T e``; for
        ``sigma`` ``2 sigma [V^{-1}]_ii`` and ``2 sigma [V^{-1} e]_i``, ``[V^{-1}]_ii = (1 - z_i^T P z_i) / sigma^2``.
        """
        self.dense()
        d, F, s2, pp = self.d, self.F, self.s2, self.pp
        Z = d.Z
        r = d.y - d.X @ self.beta
        e = (r - Z @ self.h) / s2
        ViX = (d.X - Z @ self.Hx) / s2
        n, p, nt = d.n, d.p, d.n_theta
        out = np.zeros((n, p + nt + 1))
        out[:, :p] = ViX * r[:, None]
        Minv = F.inverse()
        Pd = np.asarray(F.Lam @ np.asarray((F.Lam @ Minv).T)).T  # Lambda M^{-1} Lambda^T (symmetric)
        LU = np.asarray(F.Lam @ self._U)  # P C
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
        for a in range(nt):
            k = pp.owner[a][0]
            bt = d.terms[k]
            # obs i's block of term k: its level and its r values
            in_k = (pos >= bt.off) & (pos < bt.off + bt.q)
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

    def Qt(self, v: np.ndarray) -> np.ndarray:
        """``Q^T v = (v - C P v) / sigma^2`` (so that ``Z^T V^{-1} Z v``-type products stay in q-space)."""
        return (v - self.d.C @ self.F.P(v)) / self.s2

    def trace_pairs(self) -> np.ndarray:
        """``tr(V^{-1} V_a V^{-1} V_b)`` for all pairs of ``psi``."""
        self.dense()
        d, pp = self.d, self.pp
        nt = d.n_theta
        out = np.zeros((nt + 1, nt + 1))
        for a in range(nt):
            ka = pp.owner[a][0]
            for b in range(a, nt):
                kb = pp.owner[b][0]
                if ka <= kb:
                    G = self.Ften[ka, kb]
                    v = np.einsum("ij,st,jsit->", pp.gam[a], pp.gam[b], G)
                else:
                    G = self.Ften[kb, ka]
                    v = np.einsum("ij,st,jsit->", pp.gam[b], pp.gam[a], G)
                out[a, b] = out[b, a] = v
            # theta-sigma: 2 sigma tr(Gamma_a Z^T V^-2 Z)
            out[a, nt] = out[nt, a] = 2.0 * pp.sigma * np.sum(pp.gam[a] * self.bdW2[ka].T)
        out[nt, nt] = 4.0 * pp.sigma**2 * self.trV2
        return out

    def tr_Vab(self) -> np.ndarray:
        """``tr(V^{-1} V_ab)``."""
        self.dense()
        d, pp = self.d, self.pp
        nt = d.n_theta
        out = np.zeros((nt + 1, nt + 1))
        for a in range(nt):
            for b in range(nt):
                g = pp.second(a, b)
                if g is not None:
                    out[a, b] = np.sum(g * self.bdW[pp.owner[a][0]].T)
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
        self.dense()
        out = np.zeros((nt + 1, nt + 1))
        out[:nt, :nt] = G.T @ self._W @ G
        out[:nt, nt] = out[nt, :nt] = 2.0 * pp.sigma * (G.T @ Qze)
        out[nt, nt] = 4.0 * pp.sigma**2 * eVe
        # X^T V^{-1} V_a e
        XVe = (self.Xe - self.d.ZX.T @ self.F.P(self.ze)) / self.s2
        XVae = np.concatenate([self.ZVX.T @ G, (2.0 * pp.sigma * XVe)[:, None]], axis=1)  # (p, nt + 1)
        return out, XVae

    def K2(self) -> np.ndarray:
        """``X^T V^{-1} V_a V^{-1} V_b V^{-1} X``, shape ``(nt+1, nt+1, p, p)``."""
        self.dense()
        d, pp = self.d, self.pp
        nt, p = d.n_theta, d.p
        GX = [pp.apply(a, self.ZVX) for a in range(nt)]  # (q, p) each
        QZVX = self.Qt(self.ZVX)  # Z^T V^{-2} X
        out = np.zeros((nt + 1, nt + 1, p, p))
        for a in range(nt):
            WGa = self._W @ GX[a]
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


# -- the criteria and their derivatives in phi --------------------------------------------------------
def profile(d: BlockedData, ts: np.ndarray, method: str) -> tuple[float, np.ndarray, np.ndarray]:
    """Profiled criterion (``beta`` at its GLS value), its gradient in ``psi = (theta, sigma)``, ``beta``."""
    st = _State(d, None, ts[:-1], ts[-1])
    g = -0.5 * st.tr_ViVa() + 0.5 * st.quad_e()
    f = st.loglik
    if method == "REML":
        A_inv = np.linalg.inv(st.XVX)
        f = f + 0.5 * d.p * LOG2PI - 0.5 * np.linalg.slogdet(st.XVX)[1]
        g = g + 0.5 * np.array([np.sum(A_inv * B) for B in st.XVaVX()])
    return float(f), g, st.beta


def ml_derivatives(d: BlockedData, phi: np.ndarray, expected: bool = False) -> dict:
    """ML log-likelihood, gradient and Hessian in ``phi`` (and the expected information)."""
    p, nt = d.p, d.n_theta
    st = _State(d, phi[:p], phi[p : p + nt], phi[p + nt])
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


def reml_derivatives(d: BlockedData, ts: np.ndarray, expected: bool = False) -> dict:
    """REML criterion, gradient and Hessian in ``psi = (theta, sigma)``, ``X^T V^{-1} X`` (and the
    expected information of the error contrasts, ``1/2 tr(P V_a P V_b)``)."""
    st = _State(d, None, ts[:-1], ts[-1])
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
    once: per-cluster pieces exist only when the model is one cluster (a crossed design), where
    they are the totals.
    """

    profiled = True
    engine = "blocked"

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

    def profile(self, vv: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Profiled criterion (``beta`` at its GLS value), its gradient in ``vv`` and the full ``nat``."""
        nat = np.zeros(self.P)
        nat[self.vi] = vv
        phi, J, _ = self.map(nat, second=False)
        p = self.sig.p
        f, g, beta = profile(self.data, phi[p:], self.method)
        nat[self.fi] = beta
        return f, J[p:, self.vi].T @ g, nat

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

    def _one_cluster(self, what: str) -> None:
        if self.structure.n_clusters != 1 or self.structure.free[3] > 0:
            raise MixVcovError(
                f"{what} per cluster are not yet available on the blocked engine (used for large crossed or "
                f"nested designs), which evaluates the {self.structure.n_clusters} clusters of this model "
                "together; use the model-based covariance (vcov), or fit with engine='clusters'"
            )

    def clusters(self, nat: np.ndarray, phi=None) -> dict[str, np.ndarray]:
        """The model's log-likelihood, score and observed information as those of its one cluster (ML)."""
        self._one_cluster("log-likelihoods, scores and information contributions")
        nat = np.asarray(nat, float)
        phi, J, T = self.map(nat)
        res = self._ml(nat, phi, J, T, False)
        return {
            "loglik_total": res["loglik"],
            "loglik": np.array([res["loglik"]]),
            "loglik_free": 0.0,
            "scores": res["grad"][None, :],
            "observed_clusters": res["observed"][None],
            "grad": res["grad"],
            "observed": res["observed"],
        }

    def clusters_expected(self, nat: np.ndarray, phi=None) -> dict[str, np.ndarray]:
        """The expected information as that of the model's one cluster (ML)."""
        self._one_cluster("expected information contributions")
        nat = np.asarray(nat, float)
        phi, J, T = self.map(nat)
        E = self._ml(nat, phi, J, T, True)["expected"]
        return {"expected_clusters": E[None], "expected": E}

    def observation_scores(self, nat: np.ndarray) -> np.ndarray:
        """Scores of every observation on the natural scale, ``(n, P)`` (merDeriv's casewise
        decomposition; :meth:`_State.observation_scores`)."""
        if self.method != "ML":
            raise MixVcovError("observation-level scores are defined for ML fits")
        phi, J, _ = self.map(np.asarray(nat, float), second=False)
        p, nt = self.sig.p, self.data.n_theta
        st = _State(self.data, phi[:p], phi[p : p + nt], phi[p + nt])
        return st.observation_scores() @ J

    def scales(self, nat: np.ndarray) -> dict[str, np.ndarray]:
        """Values and Jacobians (with respect to the natural parameters) of every scale."""
        from ..compilation.derivatives import _scales, core_function

        return _scales(self.map, core_function("scales", self.sig), nat)

    def _embed(self, gv: np.ndarray) -> np.ndarray:
        from ..compilation.derivatives import reml_gradient

        return reml_gradient(self.P, self.vi, gv)

    def _blockdiag(self, XtVX: np.ndarray, Hv: np.ndarray) -> np.ndarray:
        from ..compilation.derivatives import reml_information

        return reml_information(self.P, self.fi, self.vi, XtVX, Hv)
