"""The blocked factor of ``M = Lambda^T C Lambda + sigma^2 I`` and the pieces of its inverse.

With the layout of :mod:`pymc_mixvcov.engines.blocked_layout` (block 1: the first term, block 2: the
rest), ``M_11`` is block diagonal with one ``r_1 x r_1`` block per level,
``m_l = L_1^T C_l L_1 + sigma^2 I``, factorised level by level (``m_l = R_l R_l^T``). Eliminating it,

.. math::

    S = M_{22} - M_{21} M_{11}^{-1} M_{12} = \\Lambda_2^T R \\Lambda_2 + \\sigma^2 I, \\qquad
    R = C_{22} - C_{21}\\, \\Omega\\, C_{12}, \\quad \\Omega = \\operatorname{blockdiag}_l(L_1 m_l^{-1} L_1^T),

``log|M| = sum_l log|m_l| + log|S|``, and ``T = M_11^{-1} M_12 = blockdiag(m_l^{-1} L_1^T) N`` with
``N = C_12 Lambda_2`` keeps the sparsity of ``C_12``. ``R`` is a weighted cross product of the
*data* block ``C_12`` (:mod:`pymc_mixvcov.engines.crossprod`), so ``Lambda_2`` is applied to dense
``q_2 x q_2`` matrices and nothing divides by a covariance factor. ``S`` is dense and factorised by
LAPACK; solves are block eliminations. The inverse is

.. math::

    M^{-1} = \\begin{pmatrix} M_{11}^{-1} + T \\Sigma T^T & -T \\Sigma \\\\ -\\Sigma T^T & \\Sigma \\end{pmatrix},
    \\qquad \\Sigma = S^{-1}.

**The gradient's traces.** ``tr(V^{-1} V_a)`` for entry ``(i, j)`` of ``L_k`` is ``2 bar U_k[j, i]`` with
``bar U_k = sum_{l in k} U_ll`` and ``U = M^{-1} Lambda^T C`` (:mod:`pymc_mixvcov.engines.blocked`). From the
blocks of ``M^{-1}`` and of ``Lambda^T C``, with ``c_l`` the first term's blocks of ``C``:

.. math::

    \\bar U_1[j, i] = \\textstyle\\sum_l (m_l^{-1} L_1^T c_l)_{ji} - \\operatorname{tr}(\\Sigma B_{ij}),
        \\quad B_{ij} = \\sum_l \\tilde N_{(l,i)}^T T_{(l,j)},\\ \\tilde N_l = E_l^T N_l,\\
        E_l = I - L_1 m_l^{-1} L_1^T c_l, \\\\
    \\bar U_k[j, i] = \\textstyle\\sum_{l \\in k} (\\Sigma \\Lambda_2^T R)_{(l,j),(l,i)} \\quad (k \\ge 2),

(the first from ``U_ll = m_l^{-1} L_1^T c_l - T_l \\Sigma N_l^T E_l``, the second from
``Lambda_2^T C_22 - T^T Lambda_1^T C_12 = Lambda_2^T R``): ``q_2``-dimensional traces, exact at a
variance of 0 as anywhere else. For a scalar first term every cross product is
``C_21 diag(w) C_12`` for a weight per level: ``R`` with ``lambda_1^2 / m_l``, ``B`` (and
``A_11 = T^T T``) with ``1 / m_l^2``, all in one pass.

**The Hessian's pieces** (:mod:`pymc_mixvcov.engines.blocked_traces`): ``Sigma``,
``A_ij = T_i^T T_j`` for the rows ``T_i`` of ``T`` that hold effect ``i`` of every level of the first
term, and for a scalar first term ``T^T diag(1 - sigma^2 / m_l) T`` (weights ``c_l / m_l^3``).

References
----------
Bates, D., Maechler, M., Bolker, B., Walker, S. (2015). Fitting linear mixed-effects models using
lme4. JSS 67(1). MixedModels.jl (Bates et al.): the blocked Cholesky factor, terms ordered by size.
Golub, G. H. and Van Loan, C. F. (2013). Matrix Computations, 4th ed., section 3.2 (block
elimination and the Schur complement).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from .blocked_layout import BlockedData
from .crossprod import fill_upper, weighted_crossprods

__all__ = ["BlockedFactor"]


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """``sum_ij a_ij b_ij`` without a temporary (``a``, ``b`` may be strided views)."""
    return float(np.einsum("ij,ij->", a, b))


def trace_product(a: np.ndarray, b: np.ndarray, block: int = 256) -> float:
    """``tr(a b) = sum_ij a_ij b_ji`` for square ``a``, ``b``, tile by tile (cache-friendly)."""
    n = a.shape[0]
    return float(
        sum(
            np.einsum("ij,ji->", a[i : i + block, j : j + block], b[j : j + block, i : i + block])
            for i in range(0, n, block)
            for j in range(0, n, block)
        )
    )


def _blockdiag(blocks: np.ndarray) -> sp.csr_matrix:
    """The block-diagonal sparse matrix of ``blocks`` (``(n, r, r)``)."""
    n, r, _ = blocks.shape
    lev = np.repeat(np.arange(n), r * r)
    ii = np.tile(np.repeat(np.arange(r), r), n)
    jj = np.tile(np.tile(np.arange(r), r), n)
    return sp.csr_matrix((blocks.ravel(), (lev * r + ii, lev * r + jj)), shape=(n * r, n * r))


class BlockedFactor:
    """``M = Lambda^T C Lambda + sigma^2 I`` at ``(theta, sigma)``, factorised blockwise.

    Parameters
    ----------
    data : BlockedData
    theta, sigma :
        Absolute covariance factors (lower triangles, column-major, spec order) and residual SD.
    level : {0, 1, 2}
        What will be asked: 0 the value and solves; 1 also the gradient's traces (:meth:`usum`);
        2 also the Hessian's pieces. The cross products a level needs are computed together,
        in one pass over ``C_12``.
    compiled : bool, optional
        Passed to :func:`pymc_mixvcov.engines.crossprod.weighted_crossprods`.

    Raises ``numpy.linalg.LinAlgError`` where ``M`` is not numerically positive definite.
    """

    def __init__(self, data: BlockedData, theta, sigma: float, level: int = 1, compiled: bool | None = None):
        d = self.d = data
        self.theta, self.sigma = np.asarray(theta, float), float(sigma)
        self.s2 = s2 = self.sigma**2
        self.level = level
        self.L = d.factors(self.theta)
        self._Lam = None
        self.lamv = self.theta[d.lam_index] if d.lam_index is not None else None  # diagonal Lambda
        q1, r1 = d.q1, d.r1
        self.q2 = q2 = d.q2
        L1 = self.L[0]
        m = np.einsum("ji,ljk,kt->lit", L1, d.C11, L1) + s2 * np.eye(r1)
        self.m = 0.5 * (m + np.swapaxes(m, 1, 2))
        self.R = np.linalg.cholesky(self.m)  # raises LinAlgError if not positive definite
        inv = np.linalg.inv(self.m)
        self.minv = 0.5 * (inv + np.swapaxes(inv, 1, 2))
        logdet11 = 2.0 * float(np.sum(np.log(np.diagonal(self.R, axis1=1, axis2=2))))
        self._Sigma = None
        self._RL = None
        self._TSigma = None
        self._dense = None
        self._A = {}
        self._B = {}
        self._AD = None
        self._Praw, self._Pl = {}, {}
        if not q2:
            self.T = self.TT = sp.csr_matrix((q1, 0))
            self.cS, self.logdet = None, logdet11
            return
        self.Lam2 = self.Lam[q1:, q1:].tocsr() if d.lam_index is None else None
        # Lambda_2 is diagonal when every term of block 2 is scalar: products become scalings
        if d.lam_index is not None:
            self.lam2 = self.lamv[q1:]
        else:
            self.lam2 = self.Lam2.diagonal() if all(bt.r == 1 for bt in d.terms[1:]) else None
        # scalar terms of block 2: their positions there and their lambda
        self.scalar_blocks = [
            (slice(bt.off - q1, bt.off - q1 + bt.q), float(L[0, 0]))
            for bt, L in zip(d.terms[1:], self.L[1:], strict=True)
            if bt.r == 1
        ]
        if self.lam2 is not None:  # N = C_12 Lambda_2: a scaling of C_12's columns
            N = sp.csr_matrix((d.C12.data * self.lam2[d.C12.indices], d.C12.indices, d.C12.indptr), shape=d.C12.shape)
        else:
            N = (d.C12 @ self.Lam2).tocsr()
        Rm = d.C22.copy()
        if r1 == 1:
            lam1, mm, c = L1[0, 0], self.m[:, 0, 0], d.C11[:, 0, 0]
            weights = [lam1 * lam1 / mm]
            if level >= 1:
                weights.append(1.0 / (mm * mm))
            if level >= 2:
                weights.append(c / (mm * mm * mm))
            prods = weighted_crossprods(d.C12, np.array(weights), compiled, d.C12_dense)
            Rm -= prods[0]
            self._Praw = dict(enumerate(prods[1:]))  # C_21 diag(1 / m^2) C_12, C_21 diag(c / m^3) C_12
            # N's rows: C_12's where Lambda_2 is diagonal (same pattern); a product with a vector term's
            # factor has its own pattern (zero products dropped, e.g. at a zero covariance)
            rows = d.C12_rows if self.lam2 is not None else np.repeat(np.arange(q1), np.diff(N.indptr))
            Tdata = N.data * (lam1 / mm)[rows]
            self.T = sp.csr_matrix((Tdata, N.indices, N.indptr), shape=N.shape)
        else:
            Rinv = np.linalg.inv(self.R)
            Y = (_blockdiag(np.einsum("lij,kj->lik", Rinv, L1)) @ d.C12).tocsr()  # R_l^{-1} L_1^T C_12
            Rm -= (Y.T @ Y).toarray()
            self.T = (_blockdiag(np.einsum("lij,kj->lik", self.minv, L1)) @ N).tocsr()
            E = np.eye(r1) - np.einsum("ij,ljk,kt,lts->lis", L1, self.minv, L1.T, d.C11)
            self._Nt = (_blockdiag(np.swapaxes(E, 1, 2)) @ N).tocsr()  # E_l^T N_l
        if r1 == 1 and self.lam2 is not None:  # T^T with the transpose's structure kept by the data
            self.TT = sp.csr_matrix((Tdata[d.C21_perm], d.C21.indices, d.C21.indptr), shape=d.C21.shape)
        else:
            self.TT = self.T.T.tocsr()
        self.Rm = Rm
        S = self.sandwich(Rm)
        S[np.diag_indices(q2)] += s2
        # S is symmetric: its transpose is the Fortran-ordered array LAPACK factorises in place
        cS, info = sla.lapack.dpotrf(S.T, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"the Schur complement is not positive definite (potrf info {info})")
        self.cS = cS
        self.logdet = logdet11 + 2.0 * float(np.sum(np.log(np.diagonal(cS))))

    def sandwich(self, X: np.ndarray) -> np.ndarray:
        """``Lambda_2^T X Lambda_2`` for a dense symmetric ``q_2 x q_2`` matrix ``X`` (a new array)."""
        if self.lam2 is not None:  # scalar terms: one scaling per pair of terms' blocks
            out = X.copy()
            for sk, lk in self.scalar_blocks:
                for sm, lm in self.scalar_blocks:
                    out[sk, sm] *= lk * lm
            return out
        LX = np.asarray(self.Lam2.T @ X)  # Lambda_2^T X
        return np.asarray(self.Lam2.T @ LX.T)  # Lambda_2^T (X Lambda_2) (X symmetric)

    # -- solves ---------------------------------------------------------------------------------
    def apply_m11inv(self, b1: np.ndarray) -> np.ndarray:
        """``M_11^{-1} b_1`` level by level (``b_1``: ``(q_1,)`` or ``(q_1, k)``)."""
        r1, n1 = self.d.r1, self.d.n1
        shp = b1.shape
        blk = b1.reshape(n1, r1, -1)
        return np.einsum("lij,ljk->lik", self.minv, blk).reshape(shp)

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``M^{-1} b`` by block elimination (``b``: ``(q,)`` or ``(q, k)``)."""
        q1 = self.d.q1
        b = np.asarray(b, float)
        x1 = self.apply_m11inv(b[:q1])
        if not self.q2:
            return x1
        x2 = sla.cho_solve((self.cS, True), b[q1:] - self.TT @ b[:q1], check_finite=False)
        return np.concatenate([x1 - self.T @ x2, x2], axis=0)

    @property
    def Lam(self) -> sp.csr_matrix:
        """``Lambda`` as a sparse ``q x q`` matrix."""
        if self._Lam is None:
            self._Lam = self.d.lam(self.theta)
        return self._Lam

    def lam(self, v: np.ndarray) -> np.ndarray:
        """``Lambda v`` (``v``: ``(q,)`` or ``(q, k)``)."""
        if self.lamv is not None:
            return self.lamv * v if v.ndim == 1 else self.lamv[:, None] * v
        return np.asarray(self.Lam @ v)

    def lamT(self, v: np.ndarray) -> np.ndarray:
        """``Lambda^T v``."""
        if self.lamv is not None:
            return self.lam(v)
        return np.asarray(self.Lam.T @ v)

    def P(self, v: np.ndarray) -> np.ndarray:
        """``Lambda M^{-1} Lambda^T v``."""
        return self.lam(self.solve(self.lamT(v)))

    # -- the pieces of the inverse -----------------------------------------------------------------
    @property
    def Sigma(self) -> np.ndarray:
        """``Sigma = S^{-1}`` (``q_2 x q_2``, symmetric), from the factor (LAPACK ``potri``)."""
        if self._Sigma is None:
            if self.q2:
                inv, info = sla.lapack.dpotri(self.cS, lower=1)
                if info != 0:
                    raise np.linalg.LinAlgError(f"potri failed ({info})")
                self._Sigma = fill_upper(inv)
            else:
                self._Sigma = np.zeros((0, 0))
        return self._Sigma

    def _raw_P(self, k: int) -> np.ndarray:
        """``C_21 diag(w_k) C_12`` of a scalar first term: ``w_0 = 1 / m^2``, ``w_1 = c / m^3`` (kept;
        computed now where the factor's level did not include it)."""
        if k not in self._Praw:
            mm, c = self.m[:, 0, 0], self.d.C11[:, 0, 0]
            w = 1.0 / (mm * mm) if k == 0 else c / (mm * mm * mm)
            (self._Praw[k],) = weighted_crossprods(self.d.C12, w[None], dense=self.d.C12_dense)
        return self._Praw[k]

    def _scalar_P(self, k: int) -> np.ndarray:
        """``Lambda_2^T C_21 diag(w_k) C_12 Lambda_2`` (see :meth:`_raw_P`)."""
        if k not in self._Pl:
            self._Pl[k] = self.sandwich(self._raw_P(k))
        return self._Pl[k]

    def A(self, i: int, j: int) -> np.ndarray:
        """``A_ij = T_i^T T_j`` (``q_2 x q_2``; ``A_ji = A_ij^T``)."""
        key = (i, j)
        if key not in self._A:
            if (j, i) in self._A:
                return self._A[j, i].T
            r1 = self.d.r1
            if r1 == 1:
                self._A[key] = self.L[0][0, 0] ** 2 * self._scalar_P(0)
            else:
                self._A[key] = (self.T[i::r1].T @ self.T[j::r1]).toarray()
        return self._A[key]

    @property
    def AD(self) -> np.ndarray:
        """``T^T diag(1 - sigma^2 / m_l) T`` for a scalar first term:
        ``lambda_1^4 Lambda_2^T C_21 diag(c / m^3) C_12 Lambda_2``."""
        if self._AD is None:
            self._AD = self.L[0][0, 0] ** 4 * self._scalar_P(1)
        return self._AD

    def usum(self) -> list[np.ndarray]:
        """``bar U_k = sum_{l in k} U_ll`` for every term (module docstring), ``r_k x r_k`` each."""
        d, s2 = self.d, self.s2
        r1, q1 = d.r1, d.q1
        L1 = self.L[0]
        u1 = np.einsum("lji,lik->jk", self.minv, np.einsum("ai,lak->lik", L1, d.C11))  # sum_l m_l^-1 L1^T c_l
        out = [u1]
        if not self.q2:
            return out
        Sig = self.Sigma
        if r1 == 1:
            lam1 = L1[0, 0]
            if lam1 != 0.0:
                # B = sigma^2 lambda_1 Lambda_2^T C_21 diag(1 / m^2) C_12 Lambda_2
                if self.lam2 is not None:
                    P0 = self._raw_P(0)
                    tr = sum(
                        lk * lm * _dot(Sig[sk, sm], P0[sk, sm])
                        for sk, lk in self.scalar_blocks
                        for sm, lm in self.scalar_blocks
                    )
                else:
                    tr = _dot(Sig, self._scalar_P(0))
                out[0] = u1 - s2 * lam1 * tr
        else:
            Z = np.zeros((r1, r1))  # Z[j, i] = tr(Sigma B_ij)
            for i in range(r1):
                for j in range(r1):
                    Z[j, i] = _dot(Sig, (self._Nt[i::r1].T @ self.T[j::r1]).toarray())
            out[0] = u1 - Z
        if self.lam2 is not None:  # scalar terms: sum_{i in k} ((Sigma o R) lambda_2)_i
            Rm = self.Rm
            for sk, _ in self.scalar_blocks:
                out.append(np.array([[sum(lm * _dot(Sig[sk, sm], Rm[sk, sm]) for sm, lm in self.scalar_blocks)]]))
            return out
        RL = self.RL
        for bt in d.terms[1:]:
            o = bt.off - q1
            uk = np.zeros((bt.r, bt.r))
            for j in range(bt.r):
                rj = slice(o + j, o + bt.q, bt.r)
                for i in range(bt.r):
                    uk[j, i] = _dot(Sig[rj], RL[o + i : o + bt.q : bt.r])
            out.append(uk)
        return out

    @property
    def RL(self) -> np.ndarray:
        """``R Lambda_2`` (dense ``q_2 x q_2``)."""
        if self._RL is None:
            if self.lam2 is not None:
                self._RL = self.Rm * self.lam2[None, :]
            else:
                self._RL = np.asarray(self.Lam2.T @ self.Rm).T  # (Lambda_2^T R)^T = R Lambda_2
        return self._RL

    @property
    def TSigma(self) -> np.ndarray:
        """``T Sigma`` (dense ``q_1 x q_2``)."""
        if self._TSigma is None:
            self._TSigma = np.asarray(self.T @ self.Sigma) if self.q2 else np.zeros((self.d.q1, 0))
        return self._TSigma

    def level_blocks(self) -> np.ndarray:
        """``T_l Sigma T_l^T`` for every level ``l`` of the first term, ``(n_1, r_1, r_1)``."""
        r1, n1 = self.d.r1, self.d.n1
        out = np.zeros((n1, r1, r1))
        if not self.q2:
            return out
        TS = self.TSigma
        for i in range(r1):
            for j in range(r1):
                out[:, i, j] = np.asarray(self.T[j::r1].multiply(TS[i::r1]).sum(axis=1)).ravel()
        return out

    def inverse(self) -> np.ndarray:
        """The dense ``M^{-1}`` (``q x q``)."""
        if self._dense is None:
            q1, q = self.d.q1, self.d.q
            out = np.empty((q, q))
            out[:q1, :q1] = _blockdiag(self.minv).toarray()
            if self.q2:
                TS = self.TSigma
                out[:q1, :q1] += np.asarray(self.T @ TS.T)
                out[:q1, q1:] = -TS
                out[q1:, :q1] = -TS.T
                out[q1:, q1:] = self.Sigma
            self._dense = out
        return self._dense
