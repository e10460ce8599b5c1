"""Traces over ``W = Z^T V^{-1} Z`` that the blocked engine's derivatives need, two ways.

For every variance parameter ``a`` of a term ``k``, ``V_a = Z Gamma_a Z^T`` with ``Gamma_a`` equal to
one ``r_k x r_k`` matrix ``gamma_a`` on every level of term ``k``. The gradient and the Hessian then
need, per term and pair of terms,

.. math::

    \\bar W_k = \\sum_{l \\in k} W_{ll}, \\qquad
    F_{km}[j,s,i,t] = \\sum_{l \\in k,\\, l' \\in m} W_{ll'}[j,s]\\, W_{ll'}[i,t], \\qquad
    \\overline{U^T U}_k = \\sum_{l \\in k} (U^T U)_{ll},

(``tr(W Gamma_a) = tr(W_k gamma_a)``, ``tr(W Gamma_a W Gamma_b) = sum gamma_a[i,j] gamma_b[s,t] F[j,s,i,t]``),
with ``U = M^{-1} Lambda^T C`` and ``M = Lambda^T C Lambda + sigma^2 I``, and the traces
``tr(P C) = tr(Lambda U)`` and ``tr((P C)^2)``.

**Through ``K`` (:class:`FactorTraces`).** Where every ``L_k`` is invertible, ``Lambda^T W Lambda = K``
with ``K = I - sigma^2 M^{-1}`` (expand ``W = (C - C Lambda M^{-1} Lambda^T C) / sigma^2`` with
``Lambda^T C Lambda = M - sigma^2 I``), so ``W_{ll'} = L_k^{-T} K_{ll'} L_m^{-1}``, ``U = K Lambda^{-1}`` and
``U^T U = Lambda^{-T} K^2 Lambda^{-1}``. Sums over levels of blocks of ``K`` come from the pieces of
:class:`~pymc_mixvcov.engines.blocked_factor.BlockedFactor` (``Sigma = S^{-1}``, ``A_ij = T_i^T T_j``,
``X_ij = Sigma A_ij``, ``D_l = I - sigma^2 m_l^{-1}``, ``G_l = T_l Sigma T_l^T``):

.. math::

    \\textstyle\\sum_l K_{ll} &= \\textstyle\\sum_l D_l - \\sigma^2 [\\operatorname{tr}(\\Sigma A_{ji})]_{ij}
        \\quad\\text{(first term)}, \\qquad n_k I - \\sigma^2 \\sum_{l\\in k} \\Sigma_{ll} \\quad\\text{(others)},\\\\
    F^K_{11}[j,s,i,t] &= \\textstyle\\sum_l D_l[j,s] D_l[i,t]
        - \\sigma^2 (Q[j,s,i,t] + Q[i,t,j,s]) + \\sigma^4 \\operatorname{tr}(X_{st} X_{ij}),
        \\quad Q[j,s,i,t] = \\sum_l D_l[j,s] G_l[i,t],\\\\
    F^K_{1m}[j,s,i,t] &= \\sigma^4 \\textstyle\\sum_{l' \\in m} (X_{ji} \\Sigma)_{(l',s),(l',t)},
        \\qquad F^K_{km} \\text{ from the blocks of } I - \\sigma^2 \\Sigma \\quad (k, m \\ge 2),

(``K_12 = sigma^2 T Sigma``; ``sum_{l,l'} (T Sigma T^T)_{ll'} (x) (T Sigma T^T)_{ll'}`` is
``tr(Sigma A_st Sigma A_ij)``), and ``F`` is ``F^K`` with ``L_k^{-1}`` applied on each index. Nothing of
size ``q_1`` beyond ``T`` is formed: the cost is that of a few ``q_2 x q_2`` products. Where some
``L_k`` is near singular (a variance at or near 0), dividing by it loses digits, so:

**Densely (:class:`DenseTraces`).** ``M^{-1}`` as a dense ``q x q`` matrix, then ``U`` and ``W`` from
their definitions (two sparse-times-dense products): valid everywhere, ``O(q^3)``.

References
----------
Searle, S. R., Casella, G., McCulloch, C. E. (1992). Variance Components. Wiley, ch. 6.
"""

from __future__ import annotations

import numpy as np

from .blocked_factor import BlockedFactor, _dot, trace_product

__all__ = ["DenseTraces", "FactorTraces", "GradientTraces", "K_MIN_SIGNAL", "dense_u", "traces"]

#: :class:`FactorTraces` is used when, for every term, the smallest eigenvalue of
#: ``L_k^T Cbar_k L_k / sigma^2`` (``Cbar_k`` the mean over levels of the term's block of ``Z^T Z``:
#: the term's signal-to-noise ratio per level) is at least this; dividing by ``L_k`` then costs at
#: most about ``1e-16 / K_MIN_SIGNAL`` in relative precision.
K_MIN_SIGNAL = 1e-6


def _block_sums(A: np.ndarray, n: int, r: int) -> np.ndarray:
    """``sum_l A[(l, i), (l, j)]`` for a square ``A`` of ``n`` levels of ``r``: an ``r x r`` matrix."""
    idx = np.arange(n)
    return A.reshape(n, r, n, r)[idx, :, idx, :].sum(axis=0)


def _pair_tensor(A: np.ndarray, nk: int, rk: int, nm: int, rm: int) -> np.ndarray:
    """``sum_{l, l'} A_{ll'}[j, s] A_{ll'}[i, t]`` for the ``(nk rk) x (nm rm)`` matrix ``A``."""
    Y = A.reshape(nk, rk, nm, rm).transpose(1, 3, 0, 2).reshape(rk * rm, -1)
    return (Y @ Y.T).reshape(rk, rm, rk, rm)


def ill_conditioned(F: BlockedFactor) -> list[int]:
    """The terms (layout order) that :class:`FactorTraces` may not divide by (see :data:`K_MIN_SIGNAL`)."""
    out = []
    for k, (L, bt) in enumerate(zip(F.L, F.d.terms, strict=True)):
        if not np.all(np.isfinite(L)) or np.any(np.diag(L) == 0):
            out.append(k)
            continue
        sig = L.T @ bt.c_mean @ L / F.s2
        if np.linalg.eigvalsh(0.5 * (sig + sig.T))[0] < K_MIN_SIGNAL:
            out.append(k)
    return out


class GradientTraces:
    """``bar U_k`` and ``tr(P C)``: what a gradient needs (valid everywhere;
    :meth:`pymc_mixvcov.engines.blocked_factor.BlockedFactor.usum`)."""

    def __init__(self, F: BlockedFactor):
        self.usum = F.usum()
        self.trPC = float(sum(np.trace(L @ u) for L, u in zip(F.L, self.usum, strict=True)))


class FactorTraces(GradientTraces):
    """The traces of the module docstring through ``K``, the first term's ``L_1`` invertible.

    ``solve``: terms of block 2 whose ``L_k`` is (near) singular; their columns of ``U``, ``K`` and
    ``W`` are computed by ``q_k`` solves with ``M`` instead (``U_k = M^{-1} (Lambda^T C)_k``,
    ``K_k = U_k L_k``, ``W_k = (C_k - C Lambda U_k) / sigma^2``), and every trace that involves them
    from those columns: exact at a variance of 0, at the cost of ``q_k`` solves.
    """

    def __init__(self, F: BlockedFactor, solve: list[int] | tuple = ()):
        super().__init__(F)
        d, s2 = F.d, F.s2
        terms = d.terms
        q1, r1 = d.q1, d.r1
        solve = sorted(k for k in solve if k > 0)
        # (a scalar first term is divided out exactly below, not by inverting L_1)
        Li = [None if k in solve or (k == 0 and r1 == 1) else np.linalg.inv(L) for k, L in enumerate(F.L)]
        Sig = F.Sigma
        L1 = F.L[0]
        # D_l = I - sigma^2 m_l^-1 = m_l^-1 L_1^T c_l L_1, without the cancellation of the first form
        D = np.einsum("lij,jk,lkt,ts->lis", F.minv, L1.T, d.C11, L1)
        D = 0.5 * (D + np.swapaxes(D, 1, 2))
        # sum_l K_ll = bar U_k L_k (K = U Lambda)
        kap = [u @ L for u, L in zip(self.usum, F.L, strict=True)]
        kap = [0.5 * (k + k.T) for k in kap]
        sl2 = [slice(bt.off - q1, bt.off - q1 + bt.q) for bt in terms[1:]]
        self.bdW = [Li[k].T @ kap[k] @ Li[k] if Li[k] is not None else None for k in range(len(terms))]
        nk = len(terms)
        FK = {}
        # first term with itself. A scalar first term's pieces carry its lambda_1 as a factor
        # (D = lambda_1^2 c / m, A = lambda_1^2 A', X = lambda_1^2 X'): computed without it, so that
        # dividing by lambda_1 is exact (and lambda_1 = 0 allowed)
        scalar1 = r1 == 1
        lam1 = float(L1[0, 0]) if scalar1 else 1.0
        if scalar1:
            Dp = (d.C11[:, 0, 0] / F.m[:, 0, 0])[:, None, None]  # D / lambda_1^2
            X = {(0, 0): Sig @ F._scalar_P(0)} if F.q2 else {}  # X / lambda_1^2
        else:
            Dp = D
            X = {(i, j): Sig @ F.A(i, j) for i in range(r1) for j in range(r1)} if F.q2 else {}
        F11 = np.einsum("ljs,lit->jsit", Dp, Dp)
        if F.q2:
            if scalar1:
                Q = np.full((1, 1, 1, 1), _dot(Sig, F._scalar_P(1)))  # tr(Sigma A^D) / lambda_1^4
            else:
                Q = np.einsum("ljs,lit->jsit", D, F.level_blocks())
            F11 = F11 - s2 * (Q + Q.transpose(2, 3, 0, 1))
            tXX = np.zeros((r1, r1, r1, r1))
            for s in range(r1):
                for t in range(r1):
                    for i in range(r1):
                        for j in range(r1):
                            tXX[j, s, i, t] = trace_product(X[s, t], X[i, j])
            F11 = F11 + s2 * s2 * tXX
        FK[0, 0] = F11
        # first term with the others: sum_{l'} (X_ji Sigma)[(l', s), (l', t)]
        for m in range(1, nk):
            bt, sl = terms[m], sl2[m - 1]
            out = np.zeros((r1, bt.r, r1, bt.r))
            for s in range(bt.r):
                rs = slice(sl.start + s, sl.stop, bt.r)
                for t in range(bt.r):
                    Srt = Sig[sl.start + t : sl.stop : bt.r]
                    for j in range(r1):
                        for i in range(r1):
                            out[j, s, i, t] = _dot(X[j, i][rs], Srt)
            FK[0, m] = s2 * s2 * out  # / lambda_1^2 for a scalar first term
        # the other terms among themselves, from the blocks of K_22 = I - sigma^2 Sigma
        for k in range(1, nk):
            bk, sk = terms[k], sl2[k - 1]
            for m in range(k, nk):
                bm, sm = terms[m], sl2[m - 1]
                out = np.zeros((bk.r, bm.r, bk.r, bm.r))
                for j in range(bk.r):
                    for s in range(bm.r):
                        Sjs = Sig[sk.start + j : sk.stop : bk.r, sm.start + s : sm.stop : bm.r]
                        for i in range(bk.r):
                            for t in range(bm.r):
                                Sit = Sig[sk.start + i : sk.stop : bk.r, sm.start + t : sm.stop : bm.r]
                                out[j, s, i, t] = s2 * s2 * _dot(Sjs, Sit)
                if k == m:  # the identity: n delta_js delta_it - sigma^2 (delta_js tr S_it + delta_it tr S_js)
                    tr = np.zeros((bk.r, bk.r))
                    for i in range(bk.r):
                        for t in range(bk.r):
                            tr[i, t] = np.trace(Sig[sk.start + i : sk.stop : bk.r, sk.start + t : sk.stop : bk.r])
                    eye = np.eye(bk.r)
                    out += bk.n_levels * np.einsum("js,it->jsit", eye, eye)
                    out -= s2 * (np.einsum("js,it->jsit", eye, tr) + np.einsum("js,it->jsit", tr, eye))
                FK[k, m] = out
        # the columns of the terms solved for: U_k, K_k = U_k L_k, W_k (q x q_k)
        cols = {}
        if solve:
            B = (F.Lam.T @ d.C).tocsr()  # Lambda^T C
            for k in solve:
                bt = terms[k]
                Bk = B[:, bt.sl].toarray()
                Uk = F.solve(Bk)
                Kk = (Uk.reshape(d.q, bt.n_levels, bt.r) @ F.L[k]).reshape(d.q, bt.q)
                Wk = (d.C[:, bt.sl].toarray() - np.asarray(B.T @ Uk)) / s2
                cols[k] = (Uk, Kk, Wk)
                for m in range(nk):  # F^K with the term, from its columns of K
                    bm = terms[m]
                    G = _pair_tensor(Kk[bm.sl], bm.n_levels, bm.r, bt.n_levels, bt.r)  # pairs (m, k)
                    FK[m, k] = G if m <= k else G.transpose(1, 0, 3, 2)
                    if m > k:
                        FK[k, m] = FK.pop((m, k))
        # F^K with the first term's lambda_1 put back (scalar first term), for the sums over K
        FKu = dict(FK)
        if scalar1:
            FKu[0, 0] = lam1**4 * FK[0, 0]
            for m in range(1, nk):
                if (0, m) in FK and m not in cols:
                    FKu[0, m] = lam1**2 * FK[0, m]
        if scalar1:
            Li[0] = np.ones((1, 1))  # FK[0, .] already carries 1 / lambda_1 per index of the first term
        self.F = {}
        for (k, m), G in FK.items():
            if k in cols or m in cols:
                ks, ms = (k, m) if m in cols else (m, k)  # W columns of ms, rows of ks
                bk, bm = terms[ks], terms[ms]
                G = _pair_tensor(cols[ms][2][bk.sl], bk.n_levels, bk.r, bm.n_levels, bm.r)
                self.F[k, m] = G if (ks, ms) == (k, m) else G.transpose(1, 0, 3, 2)
            else:
                self.F[k, m] = np.einsum("abcd,aj,bs,ci,dt->jsit", G, Li[k], Li[m], Li[k], Li[m])
        kap2 = []
        for k in range(nk):
            acc = np.zeros((terms[k].r, terms[k].r))
            for m in range(nk):
                if m >= k:
                    acc += np.einsum("isjs->ij", FKu[k, m])
                else:
                    acc += np.einsum("sisj->ij", FKu[m, k])
            kap2.append(acc)
        self.bdUU = [Li[k].T @ kap2[k] @ Li[k] if Li[k] is not None else None for k in range(nk)]
        if scalar1:  # bar W_1 = bar U_1 / lambda_1 and (U^T U)-sum = kap2_1 / lambda_1^2, without dividing
            br = np.einsum("l,l->", d.C11[:, 0, 0], 1.0 / F.m[:, 0, 0])
            if F.q2:
                br -= s2 * _dot(Sig, F._scalar_P(0))
            self.bdW[0] = np.array([[br]])
            uu = lam1**2 * np.einsum("isjs->ij", FK[0, 0])
            for m in range(1, nk):
                if m not in cols:
                    uu += np.einsum("isjs->ij", FK[0, m])
                elif lam1 != 0.0:  # (at lambda_1 = 0 this sum multiplies 0 in every trace)
                    uu += np.einsum("isjs->ij", FKu[0, m]) / lam1**2
            self.bdUU[0] = uu
        for k, (Uk, _, Wk) in cols.items():
            bt = terms[k]
            self.bdW[k] = _block_sums(Wk[bt.sl], bt.n_levels, bt.r)
            Ub = Uk.reshape(d.q, bt.n_levels, bt.r)
            self.bdUU[k] = np.einsum("xlj,xli->ji", Ub, Ub)
        self.trPCPC = float(sum(np.trace(k) for k in kap2))


class DenseTraces(GradientTraces):
    """The traces of the module docstring from the dense ``M^{-1}``, ``U`` and ``W`` (valid everywhere)."""

    def __init__(self, F: BlockedFactor):
        super().__init__(F)
        d, s2 = F.d, F.s2
        B = (F.Lam.T @ d.C).tocsr()  # Lambda^T C
        U = dense_u(F)
        W = (d.C.toarray() - np.asarray(B.T @ U)) / s2
        W = 0.5 * (W + W.T)
        self.W, self.U = W, U
        self.bdW = [_block_sums(W[bt.sl, bt.sl], bt.n_levels, bt.r) for bt in d.terms]
        LU = np.asarray(F.Lam @ U)  # P C
        self.trPCPC = float(np.sum(LU * LU.T))
        self.bdUU = []
        for bt in d.terms:
            Ub = U[:, bt.sl].reshape(d.q, bt.n_levels, bt.r)
            self.bdUU.append(np.einsum("xlj,xli->ji", Ub, Ub))
        self.F = {}
        for k, bk in enumerate(d.terms):
            for m in range(k, len(d.terms)):
                bm = d.terms[m]
                self.F[k, m] = _pair_tensor(W[bk.sl, bm.sl], bk.n_levels, bk.r, bm.n_levels, bm.r)


def dense_u(F: BlockedFactor) -> np.ndarray:
    """``U = M^{-1} Lambda^T C`` as a dense ``q x q`` matrix."""
    B = (F.Lam.T @ F.d.C).tocsr()
    return np.ascontiguousarray(np.asarray(B.T @ F.inverse()).T)  # (B^T M^{-1})^T, M^{-1} symmetric


def traces(F: BlockedFactor, second: bool, how: str = "auto"):
    """The traces at the factor ``F``: :class:`GradientTraces` (``second=False``), else
    :class:`FactorTraces` with the terms of :func:`ill_conditioned` solved for (``how="auto"``), or
    :class:`DenseTraces` where the first term is one of them; ``how="factor"`` (no term solved for),
    ``"solve"`` (every term of block 2 solved for) or ``"dense"`` forces a route."""
    if not second:
        return GradientTraces(F)
    if how == "factor":
        return FactorTraces(F)
    if how == "solve":
        return FactorTraces(F, solve=range(1, len(F.d.terms)))
    if how == "dense":
        return DenseTraces(F)
    ill = ill_conditioned(F)
    if 0 in ill and F.d.r1 > 1:
        return DenseTraces(F)
    return FactorTraces(F, solve=ill)
