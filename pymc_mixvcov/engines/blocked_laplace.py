"""The blocked Laplace engine: GLMMs with crossed random effects, exact derivatives, no dense ``q x q``.

The Laplace engine of :mod:`pymc_mixvcov.engines.jets` evaluates every cluster (connected component of
the random effects) with a dense ``s x s`` matrix ``H``; a crossed design is one cluster of all its
``q`` effects (InstEval binary, ``(1 | s) + (1 | d)``: 4,100), whose dense factorisation and
inverse per inner Newton step and per derivative are out of reach. This engine evaluates the
same Laplace approximation (lme4's ``glmer``, ``nAGQ = 1``) on the whole model at once, with the
blocked factor of MixedModels.jl (Bates et al.) for

.. math::

    H = -\\nabla_v^2 h = I + \\Lambda^T Z^T W Z \\Lambda, \\qquad W = \\operatorname{diag}(-\\ell_i''),

``h(\\phi, v) = \\sum_i \\ell_i(\\eta_i, \\psi) - \\tfrac12 v^T v``, ``\\eta = o + X\\beta + Z\\Lambda v``,
and ``F(\\phi) = h(\\phi, \\hat v) - \\tfrac12\\log|H(\\hat v)|``.

**Layout and factor.** Terms are ordered by number of random effects, most first; positions are
``off_k + level * r_k + j``. An observation uses one level of a term, so ``H_11`` (the first term)
is block diagonal with ``r_1 x r_1`` blocks; ``H_12`` has the pattern of the *edges* (pairs of a
first-term level and a later position that share observations), and the rest is the dense Schur
complement

.. math::

    T = H_{11}^{-1} H_{12}, \\quad S = H_{22} - H_{12}^T T, \\quad
    \\log|H| = \\log|H_{11}| + \\log|S|, \\quad
    H^{-1} = N + \\begin{pmatrix} -T \\\\ I \\end{pmatrix} S^{-1} \\begin{pmatrix} -T^T & I\\end{pmatrix},

``N = \\operatorname{diag}(H_{11}^{-1}, 0)``. ``H_{12}^T T`` sums, over first-term levels, products of
pairs of that level's edges: its cost is ``sum_l c_l^2`` for ``c_l`` edges of level ``l`` (InstEval:
2.5 million), not ``q_1 q_2^2``.

**Selected inverse.** The gradient needs ``H^{-1}`` on the pattern of ``H``: ``S^{-1}`` (LAPACK
``potri``), ``(H^{-1})_{12} = -T S^{-1}`` on the edges, ``-Q T`` with ``Q`` the block-diagonal matrix of
``S^{-1}``'s entries between pairs of edges of one level, and the diagonal blocks
``H_{11}^{-1} + T S^{-1} T^T`` of the first term, from the same products.

**Value, gradient and Hessian** are those of :mod:`pymc_mixvcov.engines.jets` (implicit
differentiation of the mode: ``v' = H^{-1} h_{v\\phi}``, ``c = H^{-1} L_v``, the third and fourth
derivatives of ``ell`` in ``eta``, Faa di Bruno through the bilinear ``eta``), with the cluster's
dense ``H^{-1}`` replaced by solves with the factor and the selected inverse, except in the one
term that needs all of ``H^{-1}``:

.. math::

    \\tfrac12\\operatorname{tr}(H^{-1} R_a H^{-1} R_b), \\qquad
    R_a = \\sum_i y_{3,ia}\\, t_i t_i^T + \\ell''_i (\\mu_{ia} t_i^T + t_i \\mu_{ia}^T)

(``R_a`` has the pattern of ``H``). With the block form of ``H^{-1}`` above,
``Y_a = R_{a,12} - R_{a,11} T`` (the edges' pattern) and ``G_a = R_{a,22} - R_{a,21} T - T^T Y_a``
(``q_2 x q_2``),

.. math::

    \\operatorname{tr}(H^{-1} R_a H^{-1} R_b) =
        \\operatorname{tr}(H_{11}^{-1} R_{a,11} H_{11}^{-1} R_{b,11})
        + \\langle H_{11}^{-1} Y_a S^{-1}, Y_b\\rangle + \\langle H_{11}^{-1} Y_b S^{-1}, Y_a\\rangle
        + \\operatorname{tr}(S^{-1} G_a S^{-1} G_b),

where the inner products need ``Y_a S^{-1}`` on the edges only (``Q Y_a``). The cost of a Hessian
is ``P`` dense ``q_2^3`` products plus ``O(P sum_l c_l^2)``; no ``q x q`` matrix is formed.

**Observation scores.** The Laplace gradient splits into a sum over observations in the way
merDeriv (Wang and Merkle 2018) splits a linear mixed model's. At the mode the model is a
working linear mixed model with weights ``w_i = -ell''_i`` and marginal working residuals
``rho_i = t_i^T v_hat + ell'_i / w_i`` (``V_w^{-1} rho = ell'``); for a Gaussian likelihood
``rho_i = y_i - x_i^T beta``, ``V^{-1} X`` has rows ``w_i d eta_i / d beta`` and
``V^{-1} V_a V^{-1} r`` entries ``w_i d eta_i / d theta_a`` (total derivatives of ``eta`` along the
mode). merDeriv's ``s_{i,beta} = r_i [V^{-1} X]_i`` and ``1/2 r_i [V^{-1} V_a e]_i`` become

.. math::

    s_{i,\\beta} = \\rho_i w_i \\frac{d\\eta_i}{d\\beta}, \\qquad
    s_{i,\\theta} = \\tfrac12 \\rho_i w_i \\frac{d\\eta_i}{d\\theta}
        + \\ell''_i\\, \\mu_i^T H^{-1} t_i, \\qquad
    s_{i,\\psi} = \\ell_{i,\\psi},

each plus the observation's share ``1/2 (t_i^T H^{-1} t_i) y_{3,i}`` of ``-1/2 d log|H| / d phi``
(``rho_i w_i = ell'_i + w_i t_i^T v_hat`` needs no division). They sum exactly to the gradient
(by the mode equation ``v_hat = sum_i ell'_i t_i`` and ``H v' = h_{v phi}``), within the clusters
of a nested model to its cluster scores, and for a Gaussian likelihood with scalar terms their
``beta`` and ``theta`` columns are merDeriv's casewise scores (the ``sigma`` column is the
conditional ``ell_sigma``'s split instead). As in merDeriv's, an observation's ``beta`` score is
its own (working) residual times a weight, which multi-way (Cameron-Gelbach-Miller) sandwiches
clustered by the crossed factors need; the conditional split ``ell'_i x_i`` would not do (its
sums over a factor's levels are the shrunken modes: on InstEval's binary response it gives the
intercept a negative two-way variance).

References
----------
Bates, D., Maechler, M., Bolker, B., Walker, S. (2015). Fitting linear mixed-effects models
using lme4. JSS 67(1). MixedModels.jl (Bates et al.), blocked Cholesky factor and PIRLS.
Wang, T. and Merkle, E. C. (2018). merDeriv. JSS 87, Code Snippet 1.
Skaug, H. J. and Fournier, D. A. (2006). Automatic approximation of the marginal likelihood in
non-Gaussian hierarchical models. CSDA 51(2), 699-709.
Kristensen, K., Nielsen, A., Berg, C. W., Skaug, H., Bell, B. M. (2016). TMB: automatic
differentiation and Laplace approximation. JSS 70(5).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from ..errors import MixVcovError

__all__ = ["BlockedLaplaceLayout", "SchurFactor", "BlockedJetLaplace", "BlockedLaplaceFunctions"]

#: Most pairs of edges of one first-term level (``sum_l c_l^2``) for which the selected inverse is
#: gathered through them (:meth:`SchurFactor.selected`); beyond, from the dense ``T S^{-1}``.
PAIRS_MAX = 50_000_000


@dataclass(frozen=True)
class _LTerm:
    """A random-effect term in the blocked layout: positions ``off + level * r + j``."""

    spec_index: int
    r: int
    n_levels: int
    off: int
    theta_off: int  # start of its lower triangle in theta (spec order)

    @property
    def q(self) -> int:
        return self.r * self.n_levels


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without a loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    off = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - off + np.repeat(starts, counts)


class BlockedLaplaceLayout:
    """The random effects of a model in the blocked layout, and the index maps of ``H``'s blocks.

    Everything here depends on the design only (computed once per model):

    - slots: observation ``i`` uses ``R = sum_k r_k`` random effects, slot ``a`` of term
      ``slot_term[a]``, component ``slot_comp[a]``, at position ``pos[i, a]`` with design value
      ``val[i, a]`` (``used[i, a]`` false where the observation has no level of that term);
    - ``lidx[a, b]``: the entry of ``theta`` (``n_theta`` for a structural zero) that is
      ``Lambda[pos_a, pos_b]``, so ``t_i = Lambda^T z_i`` is ``val_i @ theta_ext[lidx]``, and
      ``mu[i, b, k] = d t[i, b] / d theta_k``;
    - the *edges*: distinct pairs (first-term level, later position) that share observations,
      sorted by level; ``H_12`` is an ``(E, r_1)`` array on them;
    - the *edge pairs*: every ordered pair of edges of one level (the products of ``H_12^T T``
      and of the selected inverse).
    """

    def __init__(self, spec):
        terms_spec = spec.terms
        if not terms_spec:
            raise MixVcovError("the blocked Laplace engine needs at least one random-effect term")
        self.n = spec.n
        theta_off, off_t = [], 0
        for t in terms_spec:
            theta_off.append(off_t)
            off_t += t.r * (t.r + 1) // 2
        self.n_theta = off_t
        order = sorted(range(len(terms_spec)), key=lambda k: -len(terms_spec[k].levels) * terms_spec[k].r)
        terms, off = [], 0
        for k in order:
            t = terms_spec[k]
            terms.append(_LTerm(k, t.r, len(t.levels), off, theta_off[k]))
            off += t.r * len(t.levels)
        self.terms = terms
        self.q = off
        self.r1 = terms[0].r
        self.L1 = terms[0].n_levels
        self.q1 = terms[0].q
        self.q2 = self.q - self.q1
        n = self.n
        R = sum(bt.r for bt in terms)
        self.R = R
        pos = np.zeros((n, R), np.int64)
        val = np.zeros((n, R))
        used = np.zeros((n, R), bool)
        slot_term = np.zeros(R, np.int64)
        slot_comp = np.zeros(R, np.int64)
        lidx = np.full((R, R), self.n_theta, np.int64)
        a = 0
        for kk, bt in enumerate(terms):
            t = terms_spec[bt.spec_index]
            ok = t.codes >= 0
            lower = [(i, j) for j in range(bt.r) for i in range(j, bt.r)]
            for j in range(bt.r):
                pos[:, a + j] = np.where(ok, bt.off + np.maximum(t.codes, 0) * bt.r + j, 0)
                val[:, a + j] = np.where(ok, np.asarray(t.z[:, j], float), 0.0)
                used[:, a + j] = ok
                slot_term[a + j] = kk
                slot_comp[a + j] = j
            for i in range(bt.r):
                for j in range(i + 1):
                    # Lambda[pos of component i, pos of component j] = L_k[i, j]
                    lidx[a + i, a + j] = bt.theta_off + lower.index((i, j))
            a += bt.r
        val[~used] = 0.0
        self.pos, self.val, self.used = pos, val, used
        self.slot_term, self.slot_comp, self.lidx = slot_term, slot_comp, lidx
        onehot = (lidx[..., None] == np.arange(self.n_theta)).astype(float)  # (R, R, nt)
        self.mu = np.einsum("na,abk->nbk", val, onehot)  # d t / d theta, theta-free
        r1 = self.r1
        B0, B1 = np.arange(r1), np.arange(r1, R)
        self.B0, self.B1 = B0, B1
        lev = np.where(used[:, 0], pos[:, 0] // r1, 0)  # the first term's level (its offset is 0)
        self.lev = lev
        u0 = used[:, 0]
        # H_11: (L1, r1, r1) cells
        self.idx11 = (lev[:, None, None] * r1 + slot_comp[B0][None, :, None]) * r1 + slot_comp[B0][None, None, :]
        self.ok11 = u0[:, None, None] & used[:, B0][:, :, None] & used[:, B0][:, None, :]
        # edges: (level of term 1, later position) pairs used together by an observation
        q1, q2 = self.q1, self.q2
        if q2:
            both = u0[:, None] & used[:, B1]  # (n, R - r1)
            code = lev[:, None] * q2 + (pos[:, B1] - q1)
            keys, inv = np.unique(code[both], return_inverse=True)
            self.E = keys.size
            self.edge_lev = keys // q2
            self.edge_col = keys % q2
            eidx = np.full(both.shape, -1, np.int64)
            eidx[both] = inv
            self.eidx = eidx  # (n, R - r1)
            counts = np.bincount(self.edge_lev, minlength=self.L1)
            starts = np.cumsum(counts) - counts
            itype = np.int32 if max(self.E, q1, q2) < 2**31 - 1 else np.int64
            # edge pairs of one level, row-major (the CSR pattern of Q in SchurFactor.selected), unless
            # there are too many of them (levels of the first term that meet many later levels): then
            # the selected inverse is gathered from the dense q1 x q2 block T S^{-1}
            self.n_pairs = int(np.sum(counts.astype(np.int64) ** 2))
            self.use_pairs = self.n_pairs <= PAIRS_MAX
            if self.use_pairs:
                per_edge = counts[self.edge_lev]
                self.pb = _ranges(starts[self.edge_lev], per_edge).astype(itype)
                self.pair_indptr = np.concatenate([[0], np.cumsum(per_edge)]).astype(np.int64)
                self.pair_flat = np.repeat(self.edge_col * q2, per_edge) + self.edge_col[self.pb]
            # H_12 cells: (edge, component of the first term)
            ok12 = both[:, None, :] & used[:, B0][:, :, None]  # (n, r1, R - r1)
            self.idx12 = eidx[:, None, :] * r1 + slot_comp[B0][None, :, None]
            self.ok12 = ok12
            # H_22 cells (dense)
            p1 = pos[:, B1] - q1
            self.idx22 = p1[:, :, None] * q2 + p1[:, None, :]
            self.ok22 = used[:, B1][:, :, None] & used[:, B1][:, None, :]
            # the first term's rows of H_12 as a CSR matrix: row (l, j) holds level l's edges
            rows = np.repeat(self.edge_lev * r1, r1) + np.tile(np.arange(r1), self.E)
            data_index = np.arange(self.E * r1)  # (edge, j) flattened
            order_rc = np.lexsort((np.repeat(self.edge_col, r1), rows))
            self.csr_perm = data_index[order_rc]
            self.csr_indices = np.repeat(self.edge_col, r1)[order_rc].astype(itype)
            self.csr_indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=q1))]).astype(np.int64)
            # and its transpose (q2 x q1), also in CSR
            cols = np.repeat(self.edge_col, r1)
            order_cr = np.lexsort((rows, cols))
            self.csrT_perm = data_index[order_cr]
            self.csrT_indices = rows[order_cr].astype(itype)
            self.csrT_indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=q2))]).astype(np.int64)
        else:
            self.E = 0
        self.free = ~used.any(axis=1)

    def edge_matrix(self, D: np.ndarray) -> sp.csr_matrix:
        """The ``q1 x q2`` sparse matrix whose entries on the edges are ``D`` (``(E, r1)``)."""
        return sp.csr_matrix((D.ravel()[self.csr_perm], self.csr_indices, self.csr_indptr), shape=(self.q1, self.q2))

    def on_edges(self, M: np.ndarray) -> np.ndarray:
        """The entries of a dense ``q1 x q2`` matrix on the edges, ``(E, r1)``."""
        rows = self.edge_lev[:, None] * self.r1 + np.arange(self.r1)
        return M[rows, self.edge_col[:, None]]

    def edge_matrix_t(self, D: np.ndarray) -> sp.csr_matrix:
        """The transpose of :meth:`edge_matrix` (``q2 x q1``), built directly in CSR."""
        return sp.csr_matrix((D.ravel()[self.csrT_perm], self.csrT_indices, self.csrT_indptr), shape=(self.q2, self.q1))

    # -- scatter helpers ---------------------------------------------------------------------------
    def scatter_q(self, w: np.ndarray) -> np.ndarray:
        """``sum_i sum_a w[i, a, ...] e_{pos[i, a]}``: per-slot values summed into ``(q, ...)``."""
        extra = w.shape[2:]
        m = int(np.prod(extra)) if extra else 1
        wm = np.where(self.used.reshape(*self.used.shape, *([1] * len(extra))), w, 0.0).reshape(self.n, self.R, m)
        idx = self.pos[:, :, None] * m + np.arange(m)
        out = np.bincount(idx.ravel(), weights=wm.ravel(), minlength=self.q * m)
        return out.reshape(self.q, *extra)

    def gather_q(self, v: np.ndarray) -> np.ndarray:
        """``v[pos[i, a]]`` per slot (0 where unused), shape ``(n, R, ...)``."""
        out = v[self.pos]
        mask = self.used.reshape(*self.used.shape, *([1] * (v.ndim - 1)))
        return np.where(mask, out, 0.0)

    def blocks(self, Wi: np.ndarray):
        """``(B11, B12, B22)`` of ``sum_i sum_{ab} Wi[i, a, b, ...] e_{pos_ia} e_{pos_ib}^T``, a matrix on
        ``H``'s pattern: ``(L1, r1, r1, m)``, ``(E, r1, m)``, ``(m, q2, q2)`` (``m`` trailing values of
        ``Wi``; the dense block leads with them, one contiguous matrix per value)."""
        extra = Wi.shape[3:]
        m = int(np.prod(extra)) if extra else 1
        W = Wi.reshape(self.n, self.R, self.R, m)
        B0, B1 = self.B0, self.B1
        r1, q2 = self.r1, self.q2

        def acc(idx, ok, vals, size, lead=False):
            v = np.where(ok[..., None], vals, 0.0)
            at = np.where(ok, idx, 0)[..., None]
            flat = np.arange(m) * size + at if lead else at * m + np.arange(m)
            out = np.bincount(flat.ravel(), weights=v.ravel(), minlength=size * m)
            return out.reshape(m, size) if lead else out.reshape(size, m)

        b11 = acc(self.idx11, self.ok11, W[:, B0][:, :, B0], self.L1 * r1 * r1).reshape(self.L1, r1, r1, m)
        if q2:
            b12 = acc(self.idx12, self.ok12, W[:, B0][:, :, B1], self.E * r1).reshape(self.E, r1, m)
            b22 = acc(self.idx22, self.ok22, W[:, B1][:, :, B1], q2 * q2, lead=True).reshape(m, q2, q2)
        else:
            b12, b22 = np.zeros((0, r1, m)), np.zeros((m, 0, 0))
        return b11, b12, b22


class SchurFactor:
    """``H`` given by its blocks (``H_11`` block diagonal, ``H_12`` on the edges, ``H_22`` dense),
    factorised by eliminating ``H_11``: ``T = H_11^{-1} H_12``, ``S = H_22 - H_12^T T`` (LAPACK Cholesky).

    Raises ``numpy.linalg.LinAlgError`` where ``H`` is not numerically positive definite.
    """

    def __init__(self, lay: BlockedLaplaceLayout, H11: np.ndarray, H12: np.ndarray, H22: np.ndarray):
        self.lay = lay
        if lay.r1 == 1:  # scalar first term: H_11 is diagonal
            d11 = H11[:, 0, 0]
            if not np.all(d11 > 0):
                raise np.linalg.LinAlgError("H_11 is not positive definite")
            self.inv11 = (1.0 / d11)[:, None, None]
            logdet = float(np.sum(np.log(d11)))
        else:
            L11 = np.linalg.cholesky(H11)  # raises LinAlgError
            inv = np.linalg.inv(H11)
            self.inv11 = 0.5 * (inv + np.swapaxes(inv, 1, 2))  # (L1, r1, r1)
            logdet = 2.0 * float(np.sum(np.log(np.diagonal(L11, axis1=1, axis2=2))))
        self.q2 = lay.q2
        if self.q2:
            self.T = np.einsum("ejk,ek->ej", self.inv11[lay.edge_lev], H12)  # (E, r1)
            self.Tcsr = lay.edge_matrix(self.T)
            S = H22 - (lay.edge_matrix_t(H12) @ self.Tcsr).toarray()
            S = 0.5 * (S + S.T)
            self.cS = sla.cho_factor(S, lower=True, check_finite=False)
            d = np.diag(self.cS[0])
            if not np.all(d > 0) or not np.all(np.isfinite(d)):
                raise np.linalg.LinAlgError("the Schur complement is not positive definite")
            logdet += 2.0 * float(np.sum(np.log(d)))
        self.logdet = logdet
        self._sel = None

    # -- solves -----------------------------------------------------------------------------------------
    def solve(self, b: np.ndarray) -> np.ndarray:
        """``H^{-1} b`` by block elimination (``b``: ``(q,)`` or ``(q, m)``)."""
        lay = self.lay
        q1, r1 = lay.q1, lay.r1
        shape = b.shape
        bm = b.reshape(lay.q, -1)
        b1 = bm[:q1].reshape(lay.L1, r1, -1)
        x1 = np.matmul(self.inv11, b1).reshape(q1, -1)
        if not self.q2:
            return x1.reshape(shape)
        x2 = sla.cho_solve(self.cS, bm[q1:] - self.Tcsr.T @ bm[:q1], check_finite=False)
        return np.concatenate([x1 - self.Tcsr @ x2, x2], axis=0).reshape(shape)

    # -- selected inverse ---------------------------------------------------------------------------------
    def selected(self):
        """``(D11, Z12, Z22)``: the diagonal blocks of ``H^{-1}`` of the first term ``(L1, r1, r1)``,
        ``H^{-1}`` on the edges ``(E, r1)`` and the dense ``S^{-1}`` ``(q2, q2)``."""
        if self._sel is None:
            lay = self.lay
            if not self.q2:
                self._sel = (self.inv11, np.zeros((0, lay.r1)), np.zeros((0, 0)))
                return self._sel
            inv, info = sla.lapack.dpotri(self.cS[0], lower=1)
            if info != 0:
                raise np.linalg.LinAlgError(f"potri failed ({info})")
            Z22 = np.tril(inv) + np.tril(inv, -1).T
            if lay.use_pairs:
                # Q: S^{-1} between pairs of edges of one level (block diagonal over levels)
                self.Q = sp.csr_matrix((Z22.ravel()[lay.pair_flat], lay.pb, lay.pair_indptr), shape=(lay.E, lay.E))
                Z12 = -np.asarray(self.Q @ self.T)  # (E, r1): H^{-1}[(l, j), col_e]
            else:
                Z12 = -lay.on_edges(np.asarray(self.Tcsr @ Z22))
            r1 = lay.r1
            corr = np.einsum("ej,ek->ejk", self.T, Z12).reshape(lay.E, r1 * r1)
            blocks = np.stack(
                [np.bincount(lay.edge_lev, weights=corr[:, k], minlength=lay.L1) for k in range(r1 * r1)], axis=1
            ).reshape(lay.L1, r1, r1)
            D11 = self.inv11 - blocks
            self.Z22 = Z22
            self._sel = (0.5 * (D11 + np.swapaxes(D11, 1, 2)), Z12, Z22)
        return self._sel

    def gather(self) -> np.ndarray:
        """``H^{-1}[pos_ia, pos_ib]`` for every observation and pair of its slots, ``(n, R, R)``."""
        lay = self.lay
        D11, Z12, Z22 = self.selected()
        n, R, r1 = lay.n, lay.R, lay.r1
        out = np.zeros((n, R, R))
        B0, B1 = lay.B0, lay.B1
        out[:, :r1, :r1] = np.where(lay.ok11, D11[lay.lev][:, lay.slot_comp[B0]][:, :, lay.slot_comp[B0]], 0.0)
        if self.q2:
            e = np.maximum(lay.eidx, 0)  # (n, R - r1)
            z = Z12[e][:, :, lay.slot_comp[B0]]  # (n, R - r1, r1)
            z = np.where(np.swapaxes(lay.ok12, 1, 2), z, 0.0)
            out[:, r1:, :r1] = z
            out[:, :r1, r1:] = np.swapaxes(z, 1, 2)
            p1 = np.where(lay.used[:, B1], lay.pos[:, B1] - lay.q1, 0)  # (unused slots: any index in range)
            out[:, r1:, r1:] = np.where(lay.ok22, Z22[p1[:, :, None], p1[:, None, :]], 0.0)
        return out

    # -- tr(H^{-1} R_a H^{-1} R_b) ---------------------------------------------------------------------------
    def trace_pairs(self, R11: np.ndarray, R12: np.ndarray, R22: np.ndarray) -> np.ndarray:
        """``tr(H^{-1} R_a H^{-1} R_b)`` for matrices ``R_a`` on ``H``'s pattern, given by their blocks
        ``(L1, r1, r1, P)``, ``(E, r1, P)``, ``(P, q2, q2)`` (module docstring)."""
        P = R11.shape[-1]
        # first term: sum_l tr(H11^-1 R_a,l H11^-1 R_b,l)
        K1 = np.einsum("ljk,lkmp->pljm", self.inv11, R11)  # (P, L1, r1, r1)
        out = np.einsum("aljm,blmj->ab", K1, K1)
        if not self.q2:
            return out
        self.selected()
        lay = self.lay
        # Y_a = R_a,12 - R_a,11 T on the edges; H11^-1 Y_a
        RT = np.einsum("ejkp,ek->ejp", R11[lay.edge_lev], self.T)  # R_a,11 T, (E, r1, P)
        Y = R12 - RT
        HY = np.einsum("ejk,ekp->ejp", self.inv11[lay.edge_lev], Y)
        # <H11^-1 Y_a S^-1, Y_b>: S^-1 Y_b^T on the edges is Q Y_b
        if lay.use_pairs:
            QY = np.asarray(self.Q @ Y.reshape(lay.E, -1)).reshape(Y.shape)
        else:
            QY = np.stack([lay.on_edges(np.asarray(lay.edge_matrix(Y[:, :, b]) @ self.Z22)) for b in range(P)], axis=2)
        t2 = np.einsum("ejp,ejs->ps", HY, QY)
        out += t2 + t2.T
        # G_a = R_a,22 - R_a,21 T - T^T Y_a = R_a,22 - X_a - X_a^T, X_a = (R_a,12 - R_a,11 T / 2)^T T;
        # tr(S^-1 G_a S^-1 G_b) = tr(M_a M_b) with M_a = G_a S^-1, all a in one product
        q2 = lay.q2
        G = np.empty((P, q2, q2))
        A = R12 - 0.5 * RT
        for a in range(P):
            X = (lay.edge_matrix_t(A[:, :, a]) @ self.Tcsr).toarray()
            np.subtract(R22[a], X, out=G[a])
            G[a] -= X.T
        M = (G.reshape(P * q2, q2) @ self.Z22).reshape(P, q2, q2)
        out += M.reshape(P, -1) @ np.swapaxes(M, 1, 2).reshape(P, -1).T
        return out


class BlockedJetLaplace:
    """Laplace value, gradient, Hessian and observation scores of a whole model (blocked factor).

    The same quantities as :class:`pymc_mixvcov.engines.jets.JetLaplace` for a model of one
    cluster, computed without a dense ``q x q`` matrix (module docstring).

    Parameters
    ----------
    spec : GaussianSpec
        The model (non-Gaussian likelihood; ``spec.logp`` is the per-observation log-density).
    sig : LaplaceSignature
        Sizes; ``phi = (beta, theta, psi)``.
    jets : callable
        ``jets(order)`` returns the compiled :func:`pymc_mixvcov.engines.jets.observation_jets`.
    """

    def __init__(self, spec, sig, jets):
        self.sig, self._jets = sig, jets
        self.p, self.nt, self.m = sig.p, sig.n_theta, sig.n_psi
        self.P = sig.dim
        self.X = np.asarray(spec.X, float)
        self.o = np.asarray(spec.offset, float)
        self.y = np.asarray(spec.y, float)
        self.lay = BlockedLaplaceLayout(spec)
        self._psi_index = spec.psi_index
        self._n_params = spec.n_params
        self.last_vprime = None
        self._mode_factor = None
        self.psi_rows = np.zeros((self.m, self.P))
        self.psi_rows[:, self.p + self.nt :] = np.eye(self.m)

    # -- pieces ------------------------------------------------------------------------------------------
    def _split(self, phi):
        p, nt = self.p, self.nt
        return phi[:p], phi[p : p + nt], phi[p + nt :]

    def _t(self, theta) -> np.ndarray:
        """``t_i = Lambda^T z_i`` in slots, ``(n, R)``."""
        ext = np.concatenate([np.asarray(theta, float), [0.0]])
        return self.lay.val @ ext[self.lay.lidx]

    def _eta(self, beta, t, v):
        return self.o + self.X @ beta + np.sum(t * self.lay.gather_q(v), axis=1)

    def _jet(self, order, eta, phi):
        nat = np.zeros(self._n_params)
        # the per-observation graph takes the model's natural parameters; only psi is read
        nat[self._psi_index] = self._split(phi)[2]
        return [np.asarray(a) for a in self._jets(order)(eta, self.y, nat)]

    def _factor(self, t, w, shift: float = 0.0) -> SchurFactor:
        """The factor of ``H = I + sum_i w_i t_i t_i^T`` (plus ``shift I``)."""
        lay = self.lay
        b11, b12, b22 = lay.blocks((w[:, None, None] * t[:, :, None] * t[:, None, :])[..., None])
        H11 = b11[..., 0] + (1.0 + shift) * np.eye(lay.r1)
        H22 = b22[0] + (1.0 + shift) * np.eye(lay.q2)
        return SchurFactor(lay, H11, b12[..., 0], H22)

    def _factor_at(self, phi, v, t, w) -> SchurFactor:
        """The factor at ``(phi, v)``: the one the mode search ended with, else computed."""
        last = self._mode_factor
        if last is not None and last[0] == np.asarray(phi, float).tobytes() and last[1] == v.tobytes():
            return last[2]
        return self._factor(t, w)

    # -- the inner problem ---------------------------------------------------------------------------------
    def modes(self, phi, v0, tol: float = 1e-10, iterations: int = 100):
        """The mode of ``h`` by damped Newton (penalised IRLS) from ``v0``; returns ``(v, converged)``.

        Each step solves ``H s = h_v`` with the blocked factor; a step is halved until ``h`` does
        not decrease. Converged when the largest step is below ``tol (1 + max |v|)``. Where ``H`` is
        not positive definite (a likelihood that is not log-concave in ``eta``, away from the mode)
        the step is a Levenberg step with ``H + lambda I``, ``lambda = 1, 10, ..., 1e6``.
        """
        beta, theta, _ = self._split(phi)
        t = self._t(theta)
        lay = self.lay
        v = np.array(v0, float, copy=True)

        def value(vv):
            return float(np.sum(self._jet(0, self._eta(beta, t, vv), phi)[0]) - 0.5 * vv @ vv)

        with np.errstate(all="ignore"):
            for _ in range(iterations):
                raw = self._jet(2, self._eta(beta, t, v), phi)
                ll, l1, l2 = raw[0], raw[1], raw[2 + self.m]
                h = float(np.sum(ll) - 0.5 * v @ v)
                if not np.isfinite(h):
                    return v, False
                g = lay.scatter_q(l1[:, None] * t) - v
                F = None
                for shift in (0.0, 1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6):
                    try:
                        F = self._factor(t, -l2, shift)
                        break
                    except (np.linalg.LinAlgError, ValueError):
                        continue
                if F is None:
                    return v, False
                step = F.solve(g)
                biggest = float(np.max(np.abs(step))) if step.size else 0.0
                if not np.isfinite(biggest):
                    return v, False
                if shift == 0.0 and biggest < tol * (1.0 + (float(np.max(np.abs(v))) if v.size else 0.0)):
                    # the factor at the mode, for the evaluation that follows
                    self._mode_factor = (np.asarray(phi, float).tobytes(), v.tobytes(), F)
                    return v, True
                s = 1.0
                for _ in range(30):
                    trial = v + s * step
                    if value(trial) >= h - 1e-12 * (1.0 + abs(h)):
                        break
                    s *= 0.5
                v = trial
        return v, False

    def boundary_rows(self, phi, v) -> np.ndarray:
        """Observations fitted at the edge of the response's support (see
        :meth:`pymc_mixvcov.engines.jets.JetLaplace.boundary_rows`)."""
        beta, theta, _ = self._split(phi)
        raw = self._jet(2, self._eta(beta, self._t(theta), v), phi)
        ll, l2 = raw[0], raw[2 + self.m]
        return np.flatnonzero((ll > -1e-8) & (l2 > -1e-10))

    # -- value, gradient, Hessian --------------------------------------------------------------------------
    def evaluate(self, phi, v, order: int = 2, scores: bool = False) -> dict:
        """The Laplace log-likelihood at the mode ``v`` and, for ``order >= 1``, its gradient in ``phi``
        (``order == 2``: and Hessian; ``scores``: and the observation scores ``(n, P)``).

        The formulas are those of :meth:`pymc_mixvcov.engines.jets.JetLaplace.evaluate` with the whole
        model as one cluster. Where ``H`` is not positive definite the log-likelihood is ``-inf``.
        """
        from .jets import _sym

        lay = self.lay
        beta, theta, _ = self._split(phi)
        t = self._t(theta)
        eta = self._eta(beta, t, v)
        m1 = self.m + 1
        raw = self._jet(4 if order >= 1 else 2, eta, phi)
        ll = raw[0]
        l1 = np.stack(raw[1 : 1 + m1], axis=1)  # (n, m1)
        npair = m1 * (m1 + 1) // 2
        l2 = _sym(raw[1 + m1 : 1 + m1 + npair], m1)  # (n, m1, m1)
        e_eta, e_ee = l1[:, 0], l2[:, 0, 0]
        try:
            F = self._factor_at(phi, v, t, -e_ee)
        except (np.linalg.LinAlgError, ValueError):
            P = self.P
            return {"loglik": -np.inf, "grad": np.full(P, np.nan), "hess": np.full((P, P), np.nan)}
        out = {"loglik": float(np.sum(ll) - 0.5 * v @ v - 0.5 * F.logdet)}
        if order == 0:
            return out
        l3 = _sym(raw[1 + m1 + npair : 1 + m1 + 2 * npair], m1)  # ell_{eta q r}
        l4 = _sym(raw[1 + m1 + 2 * npair :], m1)  # ell_{eta eta q r}
        P, p, nt = self.P, self.p, self.nt
        th = slice(p, p + nt)
        mu = lay.mu  # (n, R, nt)
        vg = lay.gather_q(v)  # (n, R)
        deta = np.zeros((lay.n, P))
        deta[:, :p] = self.X
        deta[:, th] = np.einsum("nrk,nr->nk", mu, vg)
        # h_{v phi} and v' = H^{-1} h_{v phi}
        a = e_ee[:, None] * deta + l2[:, 0, 1:] @ self.psi_rows
        lmu = np.zeros((lay.n, lay.R, P))
        lmu[:, :, th] = e_eta[:, None, None] * mu
        hvp = lay.scatter_q(t[:, :, None] * a[:, None, :] + lmu)  # (q, P)
        Hg = F.gather()  # (n, R, R)
        Ht = np.einsum("nab,nb->na", Hg, t)
        qd = np.einsum("na,na->n", t, Ht)  # t_i^T H^{-1} t_i
        gth = np.einsum("nak,na->nk", mu, Ht)  # mu_i^T H^{-1} t_i
        e3 = l3[:, 0, 0]
        if order >= 2:
            # v' = H^{-1} h_{v phi} and c = H^{-1} L_v, L_v = 1/2 sum_i ell_eee t_i^T H^{-1} t_i t_i, in one solve
            Lv = 0.5 * lay.scatter_q((e3 * qd)[:, None] * t)
            both = F.solve(np.concatenate([hvp, Lv[:, None]], axis=1))
            vp, cvec = both[:, :P], both[:, P]
        else:
            vp = F.solve(hvp)
        vpg = lay.gather_q(vp)  # (n, R, P)
        z = np.empty((lay.n, m1, P))
        tv = np.einsum("nr,nrp->np", t, vpg)  # t_i^T v'
        z[:, 0] = deta + tv
        z[:, 1:] = self.psi_rows
        y3 = np.einsum("nr,nrp->np", l3[:, 0, :], z)  # sum_r ell_{eta eta r} zeta~^r
        s = np.einsum("nq,nqp->np", l1, z) + 0.5 * qd[:, None] * y3
        s[:, th] += e_ee[:, None] * gth
        out["grad"] = s.sum(axis=0) - v @ vp
        if scores:
            out["scores"] = self._observation_scores(z[:, 0], l1, e_eta, e_ee, np.sum(t * vg, axis=1), qd, y3, gth)
        if order < 2:
            self._remember(phi, v, vp)
            return out
        # -- Hessian ---------------------------------------------------------------------------------------
        cg = lay.gather_q(cvec)
        gam = np.einsum("nr,nr->n", cg, t)
        nu = np.zeros((lay.n, P))
        nu[:, th] = np.einsum("nrk,nr->nk", mu, cg)
        gv = np.zeros((lay.n, P))
        gv[:, th] = gth
        y2 = np.einsum("nq,nqp->np", l2[:, 0, :], z)
        W = l2 + 0.5 * qd[:, None, None] * l4 + gam[:, None, None] * l3
        hess = np.einsum("nqp,nqs->ps", z, np.matmul(W, z))
        hess += gv.T @ y3 + y3.T @ gv + nu.T @ y2 + y2.T @ nu
        hess -= vp.T @ vp
        w2 = e_eta + 0.5 * e3 * qd + e_ee * gam
        cm = np.einsum("n,nrk,nrp->kp", w2, mu, vpg)
        hess[th, :] += cm
        hess[:, th] += cm.T
        hess[th, th] += np.einsum("n,nak,nab,nbl->kl", e_ee, mu, Hg, mu)
        # 1/2 tr(H^{-1} R_a H^{-1} R_b), R_a = sum_i y3_ia t t^T + ell_ee (mu_a t^T + t mu_a^T)
        Ri = (t[:, :, None] * t[:, None, :])[..., None] * y3[:, None, None, :]  # (n, R, R, P)
        et = e_ee[:, None, None] * t[:, None, :]
        cross = mu[:, :, None, :] * et[..., None]  # (n, R, R, nt): mu_ra t_r'
        Ri[..., th] += cross + np.swapaxes(cross, 1, 2)
        hess += 0.5 * F.trace_pairs(*lay.blocks(Ri))
        out["hess"] = 0.5 * (hess + hess.T)
        self._remember(phi, v, vp)
        return out

    def _observation_scores(self, eta_t, l1, e_eta, e_ee, tv, qd, y3, gth) -> np.ndarray:
        """Observation scores in ``phi``, ``(n, P)`` (module docstring): merDeriv's casewise split of
        the working linear mixed model's data terms for ``beta`` (``rho_i w_i deta_i/dbeta``) and
        ``theta`` (half of it), ``ell_psi`` for the likelihood's own parameters, and each
        observation's share of ``-1/2 d log|H| / d phi``.

        ``eta_t``: total derivatives ``d eta_i / d phi`` along the mode; ``tv``: ``t_i^T v``.
        """
        p, nt = self.p, self.nt
        th = slice(p, p + nt)
        rw = e_eta - e_ee * tv  # rho_i w_i = ell'_i + w_i t_i^T v, w_i = -ell''_i
        out = np.zeros_like(eta_t)
        out[:, :p] = rw[:, None] * eta_t[:, :p]
        out[:, th] = 0.5 * rw[:, None] * eta_t[:, th]
        out[:, p + nt :] = l1[:, 1:]
        out += 0.5 * qd[:, None] * y3
        out[:, th] += e_ee[:, None] * gth
        return out

    def _remember(self, phi, v, vp) -> None:
        # d v_hat / d phi: a first-order prediction of the modes at the next point
        self.last_vprime = (np.asarray(phi, float).copy(), v.copy(), vp)


# -- the engine's functions on the natural parameters ----------------------------------------------------
class BlockedLaplaceFunctions:
    """Criterion, derivatives and observation scores of a non-Gaussian mixed model by the blocked
    Laplace engine (same interface as :class:`pymc_mixvcov.compilation.derivatives.LaplaceFunctions`).

    ``beta`` is optimised with the other parameters (``profiled = False``). Per-cluster pieces are
    the totals where the model is one cluster (a crossed design), else each cluster's sub-model's
    (:mod:`pymc_mixvcov.engines.blocked_clusters`); observation scores always (module docstring).
    """

    profiled = False
    engine = "blocked"

    def __init__(self, spec, structure, method: str = "ML"):
        from ..compilation.derivatives import ModelMap, _cached_function
        from .jets import observation_jets
        from .laplace import laplace_signature

        self.spec, self.structure, self.method = spec, structure, method
        # the engine's graphs (the scales) do not depend on the clusters' sizes
        self.sig = replace(laplace_signature(spec, structure), sizes=())
        self.map = ModelMap(spec, self.sig)
        self.P = spec.n_params
        self.vi = spec.variance_index
        self.fi = spec.fixed_index

        def jets(order: int):
            return _cached_function(f"jets{order}-{self.sig.likelihood}", lambda: observation_jets(spec, order))

        self.jet = BlockedJetLaplace(spec, self.sig, jets)
        self._jet_pieces = self.jet
        self._modes = np.zeros(self.jet.lay.q)
        self._modes_at = None
        self.modes_converged = True
        self._last = None
        self._per_cluster = None  # per-cluster pieces of a model of several clusters, built on first use

    def modes(self, phi: np.ndarray) -> np.ndarray:
        """The modes of the (standardised) random effects at ``phi``, warm-started from the last ones
        (first-order prediction ``v_hat + v' (phi - phi_0)`` from the last gradient)."""
        phi = np.asarray(phi, float)
        key = phi.tobytes()
        if self._modes_at == key:
            return self._modes
        start = self._modes
        last = self.jet.last_vprime
        if last is not None:
            pred = last[1] + last[2] @ (phi - last[0])
            if np.all(np.isfinite(pred)):
                start = pred
        v, ok = self.jet.modes(phi, start)
        if not ok and start is not self._modes:
            v, ok = self.jet.modes(phi, self._modes)
        if not ok:
            v, ok = self.jet.modes(phi, np.zeros_like(v))
        self.modes_converged = ok
        self._modes_at = None
        if np.all(np.isfinite(v)):
            self._modes = v
            self._modes_at = key if ok else None
        return v

    def _pieces(self, phi: np.ndarray, order: int, scores: bool = False) -> dict:
        """Value (and gradient, Hessian, observation scores) in ``phi``; the last result is kept."""
        key = np.asarray(phi, float).tobytes()
        last = self._last
        if last is not None and last[0] == key and last[1] >= order and (last[2] or not scores):
            return last[3]
        v = self.modes(phi)
        out = self.jet.evaluate(phi, v, order, scores=scores)
        self._last = (key, order, scores, out)
        return out

    def loglik(self, nat: np.ndarray) -> float:
        """The Laplace log-likelihood alone at ``nat``: the modes, no derivatives."""
        phi, _, _ = self.map(np.asarray(nat, float), second=False)
        return self._pieces(phi, 0)["loglik"]

    def value(self, nat: np.ndarray) -> tuple[float, np.ndarray]:
        """Laplace log-likelihood and its gradient in ``nat``."""
        phi, J, _ = self.map(np.asarray(nat, float), second=False)
        out = self._pieces(phi, 1)
        return out["loglik"], J.T @ out["grad"]

    def information(self, nat: np.ndarray, expected: bool = False) -> dict[str, np.ndarray]:
        """Laplace log-likelihood, gradient and observed information (exact Hessian) at ``nat``."""
        nat = np.asarray(nat, float)
        phi, J, T = self.map(nat)
        out = self._pieces(phi, 2)
        res = {
            "loglik": out["loglik"],
            "grad": J.T @ out["grad"],
            "observed": -(J.T @ out["hess"] @ J + np.einsum("k,kij->ij", out["grad"], T)),
        }
        if expected:
            res["expected"] = None
        return res

    def _one_cluster(self) -> bool:
        """Whether the model is one cluster holding every observation (a crossed design), whose pieces
        are the totals."""
        return self.structure.n_clusters == 1 and int(self.structure.free[3]) == 0

    def _cluster_pieces(self, phi: np.ndarray, order: int) -> dict:
        """Every cluster's pieces in ``phi`` at the whole model's modes
        (:mod:`pymc_mixvcov.engines.blocked_clusters`; the design work is done once)."""
        pc = self._per_cluster
        if pc is None or pc.spec is not self.spec:  # a new response (engines/response.py) has a new spec
            from .blocked_clusters import LaplaceClusterPieces

            self._per_cluster = LaplaceClusterPieces(self.spec, self.structure, self.sig, self.jet)
        return self._per_cluster(phi, self.modes(phi), order)

    def clusters(self, nat: np.ndarray) -> dict[str, np.ndarray]:
        """Per-cluster log-likelihoods and scores, and the total gradient (natural scale).

        One cluster holding every observation: the totals. Several: each cluster's sub-model at the
        whole model's modes (:mod:`pymc_mixvcov.engines.blocked_clusters`); ``loglik_free`` is the
        log-likelihood of the observations that use no random effect.
        """
        nat = np.asarray(nat, float)
        phi, J, _ = self.map(nat, second=False)
        out = self._pieces(phi, 1)
        g = J.T @ out["grad"]
        if self._one_cluster():
            return {"loglik_total": out["loglik"], "loglik": np.array([out["loglik"]]), "scores": g[None], "grad": g}
        per = self._cluster_pieces(phi, 1)
        return {
            "loglik_total": out["loglik"],
            "loglik": per["loglik"],
            "loglik_free": per["loglik_free"],
            "scores": per["grad"] @ J,
            "grad": g,
        }

    def cluster_observed(self, nat: np.ndarray) -> np.ndarray:
        """Each cluster's observed information contribution on the natural scale, ``(C, P, P)``."""
        nat = np.asarray(nat, float)
        if self._one_cluster():
            return self.information(nat)["observed"][None]
        phi, J, T = self.map(nat)
        per = self._cluster_pieces(phi, 2)
        S = per["grad"]
        return -(np.einsum("ki,ckl,lj->cij", J, per["hess"], J) + np.einsum("ck,kij->cij", S, T))

    def observation_scores(self, nat: np.ndarray) -> np.ndarray:
        """Scores of every observation on the natural scale, ``(n, P)`` (module docstring): they sum
        to the gradient of the Laplace log-likelihood."""
        phi, J, _ = self.map(np.asarray(nat, float), second=False)
        return self._pieces(phi, 1, scores=True)["scores"] @ J

    def scales(self, nat: np.ndarray) -> dict[str, np.ndarray]:
        """Values and Jacobians (with respect to the natural parameters) of every scale."""
        from ..compilation.derivatives import _scales, core_function

        return _scales(self.map, core_function("scales_laplace", self.sig), nat)

    def glm_start(self, nat: np.ndarray) -> np.ndarray | None:
        """The fixed effects' GLM start (see
        :meth:`pymc_mixvcov.compilation.derivatives.LaplaceFunctions.glm_start`, which needs only
        ``jet.X``, ``jet.o``, ``jet.m`` and ``jet._jet``)."""
        from ..compilation.derivatives import LaplaceFunctions

        return LaplaceFunctions.glm_start(self, nat)

    def diagnose(self, nat: np.ndarray, labels: list[str]) -> list[str]:
        """Problems of the fit at ``nat`` (see
        :meth:`pymc_mixvcov.compilation.derivatives.LaplaceFunctions.diagnose`)."""
        from ..compilation.derivatives import LaplaceFunctions

        return LaplaceFunctions.diagnose(self, nat, labels)
