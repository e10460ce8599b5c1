"""Laplace log-likelihood with its exact gradient and Hessian in closed form.

The same approximation as :mod:`pymc_mixvcov.engines.laplace` (lme4's ``glmer`` Laplace), evaluated
from per-observation derivatives of the log-density instead of differentiating a graph of the
whole model. Per cluster ``c`` (the index is dropped below), with the spherical random effects
``v`` (``u = Lambda v``), the linear predictor ``eta_i = o_i + x_i^T beta + t_i^T v`` with
``t_i = Lambda^T z_i``, and

.. math::

    h(\\phi, v) = \\sum_i \\ell_i(\\eta_i, \\psi) - \\tfrac12 v^T v, \\qquad
    H = -h_{vv}, \\qquad
    L(\\phi, v) = h - \\tfrac12 \\log|H|, \\qquad F(\\phi) = L(\\phi, \\hat v(\\phi)),

the mode satisfies ``h_v = 0``, so ``v' = d v_hat / d phi = H^{-1} h_{v phi}``. With
``E = [I; v']`` (the total derivative of ``a = (phi, v)`` along ``phi``) and
``c = H^{-1} L_v``, differentiating ``h_v(phi, v_hat(phi)) = 0`` twice gives

.. math::

    \\nabla F = E^T L_a, \\qquad
    \\nabla^2 F = E^T \\Big(L_{aa} + \\sum_m c_m h_{v_m aa}\\Big) E,

    L_a = h_a + \\tfrac12 \\operatorname{tr}(H^{-1} h_{vva}), \\qquad
    L_{ab} = h_{ab} + \\tfrac12 \\operatorname{tr}(H^{-1} h_{vvab})
             + \\tfrac12 \\operatorname{tr}(H^{-1} h_{vva} H^{-1} h_{vvb}).

Every derivative of ``h`` is a sum over observations of derivatives of
``ell_i(zeta_i(a))``, ``zeta_i = (eta_i, psi)``, whose map from ``a`` is quadratic: ``eta`` is
linear in ``beta`` and bilinear in ``(theta, v)`` (``Lambda`` is linear in ``theta``), so
Faa di Bruno's formula stops at the second derivative ``M_i = d^2 eta_i / da^2`` (nonzero only in
the ``(theta, v)`` block). The contractions with ``H^{-1}`` and ``E`` are done observation by
observation, on the few random effects each observation uses, so a cluster never needs a tensor
of third or fourth derivatives. The per-observation derivatives of ``ell`` with respect to
``eta`` (up to the fourth) and ``psi`` come from pytensor, symbolically: the Hessian is exact.
Cost per evaluation: ``O(n R^2 P^2)`` for ``n`` observations using ``R`` random effects each and
``P`` parameters, plus ``O(sum_c s_c^3 P)`` for the clusters' ``s_c x s_c`` matrices.

Checked against the graph-differentiated :class:`pymc_mixvcov.engines.laplace.LaplaceGraph` (which
takes two symbolic Newton steps from the mode) in ``tests/test_jets.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import grad, pushforward
from pytensor.graph.rewriting.utils import rewrite_graph

from .laplace import damped_newton

__all__ = ["JetLaplace", "observation_jets"]

#: Largest cluster block summed through the design moments, ``Lambda^T (sum_i w_i z_i z_i^T) Lambda``;
#: larger blocks (crossed factors) are summed from the slots, where ``s x s`` products would cost
#: more than the observations.
MOMENT_BLOCK_MAX = 8


def observation_jets(spec, order: int):
    """Graph of the per-observation log-density and its derivatives (see :class:`JetLaplace`).

    Returns ``inputs = [eta, y, nat]`` and outputs: ``ell``, then for ``order >= 1`` the first
    derivatives ``ell_p`` (``p`` over ``zeta = (eta, psi_1, ..., psi_m)``), for ``order >= 2``
    the second ``ell_pq`` (``p <= q``), for ``order >= 4`` the third ``ell_{eta q r}`` and the
    fourth ``ell_{eta eta q r}`` (``q <= r``); each of shape ``(n,)``. Derivatives in ``eta``
    are elementwise gradients; in ``psi`` push-forwards along the parameter's unit vector.
    """
    eta, y, lp = spec.logp
    # numerically stable forms before differentiating: log(sigmoid(eta)) -> -softplus(-eta) and
    # the like; the derivative graphs of the stable forms are a third of the size
    lp = rewrite_graph(lp, include=("canonicalize", "stabilize"), exclude=("inplace",))
    nat = spec.nat
    m = spec.psi_index.size
    units = [np.eye(spec.n_params)[k] for k in spec.psi_index]

    def d(f, p):
        if p == 0:
            return grad(pt.sum(f), eta)
        return pushforward(f, nat, pt.constant(units[p - 1]), disconnected_outputs="ignore")

    cache: dict[tuple[int, ...], object] = {(): lp}

    def jet(key: tuple[int, ...]):
        key = tuple(sorted(key))
        if key not in cache:
            cache[key] = d(jet(key[1:]), key[0])
        return cache[key]

    idx = range(m + 1)
    pairs = [(q, r) for q in idx for r in idx if q <= r]
    outs = [jet(())]
    if order >= 1:
        outs += [jet((p,)) for p in idx]
    if order >= 2:
        outs += [jet(pr) for pr in pairs]
    if order >= 4:
        outs += [jet((0, *pr)) for pr in pairs]
        outs += [jet((0, 0, *pr)) for pr in pairs]
    outs = [pt.broadcast_to(o, (spec.n,)) if o.ndim == 0 else o for o in outs]
    return [eta, y, nat], outs


def _frobenius(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``out[c, a, b] = sum_uw A[c, a, u, w] B[c, b, u, w]`` (``tr(A_a^T B_b)``) for stacks of
    square matrices ``(C, P, s, s)``, as one matrix product of the flattened matrices."""
    C, P, s, _ = A.shape
    return np.matmul(
        np.ascontiguousarray(A).reshape(C, P, s * s), np.ascontiguousarray(B).reshape(C, -1, s * s).swapaxes(1, 2)
    )


def _trace_products(A: np.ndarray) -> np.ndarray:
    """``out[c, a, b] = tr(A[c, a] A[c, b])``: ``tr(A_a A_b) = tr((A_a^T)^T A_b)``."""
    return _frobenius(np.swapaxes(A, 2, 3), A)


def _sym(flat: list[np.ndarray], m1: int) -> np.ndarray:
    """``(n, m1, m1)`` symmetric array from its upper triangle listed row by row."""
    out = np.empty((flat[0].shape[0], m1, m1))
    k = 0
    for q in range(m1):
        for r in range(q, m1):
            out[:, q, r] = out[:, r, q] = flat[k]
            k += 1
    return out


@dataclass
class _Batch:
    """One batch of equally sized clusters, in the per-observation slot layout."""

    s: int
    C: int
    obs: np.ndarray  # (nb,) observation index
    row: np.ndarray  # (nb,) cluster row in the batch
    pos: np.ndarray  # (nb, R) position in the cluster block (0 where unused)
    val: np.ndarray  # (nb, R) design value z (0 where unused)
    used: np.ndarray  # (nb, R) bool
    idx: np.ndarray  # (C, s, s) index into the flat Lambda vector


@dataclass
class _TermBlock:
    start: int  # first position of the term in the cluster
    r: int  # effects per level
    L: int  # levels
    index: np.ndarray  # flat (a, level, j, j') cell of every within-term slot pair, (nb, pairs, P)
    pairs: tuple[np.ndarray, np.ndarray]  # slot pairs (r, r') of the term


class _TermBlocks:
    """``R_a H^{-1}`` of one large cluster (crossed factors) from ``R_a``'s blocks by term.

    Positions of a cluster are ordered term by term, so ``R_a`` (``s x s``) has a block per pair
    of terms: within a term, entries only between effects of one level (a diagonal for a scalar
    term, ``r x r`` blocks for a vector one: an observation uses one level of each term); between
    two terms, the (dense) pairs of levels that share observations. ``R_a U`` (``U = H^{-1}``) is
    then a scaling for the first and a product with an ``s_k x s_l`` block for the second: for
    VerbAgg's 316 subjects and 24 items, 8 times fewer operations than the ``s x s`` product.
    """

    def __init__(self, b: _Batch, slot_term: np.ndarray, slot_comp: np.ndarray, P: int):
        self.s, self.P = b.s, P
        n_terms = int(slot_term.max()) + 1
        self.terms: list[_TermBlock] = []
        for k in range(n_terms):
            slots = np.flatnonzero(slot_term == k)
            r = slots.size
            pos = np.where(b.used[:, slots], b.pos[:, slots], -1)
            start = int(pos[pos >= 0].min())
            level = (pos[:, 0] - start) // r
            L = int(level.max()) + 1
            j = slot_comp[slots]
            ok = b.used[:, slots]
            if np.any(ok & (pos != start + level[:, None] * r + j)):
                raise ValueError("term positions are not level-major")
            rr, cc = np.meshgrid(slots, slots, indexing="ij")
            jr, jc = np.meshgrid(j, j, indexing="ij")
            cell = (level[:, None] * r + jr.ravel()) * r + jc.ravel()  # (nb, r*r)
            both = ok[:, :, None] & ok[:, None, :]
            cell = np.where(both.reshape(cell.shape), cell, 0)
            index = cell[:, :, None] + np.arange(P) * (L * r * r)
            self.terms.append(_TermBlock(start, r, L, index, (rr.ravel(), cc.ravel())))
        order = sorted(range(n_terms), key=lambda k: self.terms[k].start)
        end = 0
        for k in order:
            t = self.terms[k]
            if t.start != end:
                raise ValueError("terms do not tile the cluster")
            end = t.start + t.L * t.r
        if end != b.s:
            raise ValueError("terms do not tile the cluster")
        # between-term blocks (k < l): cell (a, u - start_k, w - start_l) of every slot pair
        self.cross: list[tuple[int, int, tuple[np.ndarray, np.ndarray], np.ndarray]] = []
        for k in range(n_terms):
            for l_ in range(k + 1, n_terms):
                tk, tl = self.terms[k], self.terms[l_]
                sk, sl = tk.L * tk.r, tl.L * tl.r
                rs, cs = np.flatnonzero(slot_term == k), np.flatnonzero(slot_term == l_)
                rr, cc = (a.ravel() for a in np.meshgrid(rs, cs, indexing="ij"))
                u = b.pos[:, rr] - tk.start
                w = b.pos[:, cc] - tl.start
                both = b.used[:, rr] & b.used[:, cc]
                cell = np.where(both, u * sl + w, 0)
                self.cross.append((k, l_, (rr, cc), cell[:, :, None] + np.arange(P) * (sk * sl)))

    @classmethod
    def of(cls, b: _Batch, slot_term: np.ndarray, slot_comp: np.ndarray, P: int) -> _TermBlocks | None:
        """The blocks of batch ``b``'s cluster, or ``None`` (several clusters, another layout)."""
        if b.C != 1:
            return None
        try:
            return cls(b, slot_term, slot_comp, P)
        except ValueError:
            return None

    def r_times_u(self, U: np.ndarray, Ri: np.ndarray) -> np.ndarray:
        """``R_a U`` for every ``a``, ``(1, P, s, s)``, from the slot terms ``Ri`` ``(nb, R, R, P)``
        of ``R_a = sum_i sum_{r r'} Ri[i, r, r', a] e_{pos_ir} e_{pos_ir'}^T``.

        ``R_a U = (U R_a)^T`` (both symmetric), so ``tr(R_a U R_b U) = tr(U R_a U R_b)``; built
        by row blocks of terms, each written once and contiguously.
        """
        s, P = self.s, self.P
        out = np.empty((P, s, s))
        for t in self.terms:
            rows = slice(t.start, t.start + t.L * t.r)
            vals = Ri[:, t.pairs[0], t.pairs[1], :]  # (nb, pairs, P)
            Rw = np.bincount(t.index.ravel(), weights=vals.ravel(), minlength=P * t.L * t.r * t.r)
            if t.r == 1:
                np.multiply(Rw.reshape(P, t.L, 1), U[rows][None], out=out[:, rows])
            else:
                blk = Rw.reshape(P, t.L, t.r, t.r)
                out[:, rows] = np.matmul(blk, U[rows].reshape(t.L, t.r, s)).reshape(P, -1, s)
        for k, l_, (rr, cc), index in self.cross:
            tk, tl = self.terms[k], self.terms[l_]
            sk, sl = tk.L * tk.r, tl.L * tl.r
            rk, rl = slice(tk.start, tk.start + sk), slice(tl.start, tl.start + sl)
            B = np.bincount(index.ravel(), weights=Ri[:, rr, cc, :].ravel(), minlength=P * sk * sl)
            B = B.reshape(P, sk, sl)  # R_a[block k, block l]
            out[:, rk] += np.matmul(B, U[rl])
            out[:, rl] += np.matmul(np.ascontiguousarray(np.swapaxes(B, 1, 2)), U[rk])
        return out[None]


class JetLaplace:
    """Laplace value, per-cluster gradients and Hessians from per-observation derivatives.

    Parameters
    ----------
    spec : GaussianSpec
        The model (non-Gaussian likelihood; ``spec.logp`` is the per-observation log-density).
    structure : ClusterStructure
        Clusters, blocks and the slot layout of ``Z``.
    sig : LaplaceSignature
        Sizes; ``phi = (beta, theta, psi)``.
    jets : callable
        ``jets(order)`` returns the compiled :func:`observation_jets` function of that order.
    """

    def __init__(self, spec, structure, sig, jets):
        self.sig, self._jets = sig, jets
        self.p, self.nt, self.m = sig.p, sig.n_theta, sig.n_psi
        self.P = sig.dim
        self.X = np.asarray(spec.X, float)
        self.o = np.asarray(spec.offset, float)
        self.y = np.asarray(spec.y, float)
        self.n = self.y.size
        self.thpos = sig.theta_positions()
        self.lam_size = sig.lam_size
        batch_of, row_of = structure.locate()
        oc = structure.obs_cluster
        self.batches: list[_Batch] = []
        for k, bt in enumerate(structure.batches):
            obs = np.flatnonzero((oc >= 0) & (batch_of[np.maximum(oc, 0)] == k))
            pos = structure.obs_pos[obs]
            used = pos >= 0
            self.batches.append(
                _Batch(
                    bt.s,
                    bt.clusters.size,
                    obs,
                    row_of[oc[obs]],
                    np.where(used, pos, 0),
                    np.where(used, structure.obs_val[obs], 0.0),
                    used,
                    bt.lam_idx,
                )
            )
        self.free = np.flatnonzero(oc < 0)
        # theta-independent pieces of the slot layout: the flat Lambda index of each slot pair,
        # mu_i (Lambda is linear in theta), and the cluster-sum operator of each batch
        from scipy.sparse import csr_matrix

        self._lam_idx, self._mu, self._sum = [], [], []
        self._z1, self._zz, self._E, self._E_diag, self._r_cells, self._blocks = [], [], [], [], [], []
        # slot r holds effect slot_comp[r] of term slot_term[r] (the order of the cluster statistics)
        slot_term = np.repeat(np.arange(len(spec.terms)), [t.r for t in spec.terms])
        slot_comp = np.concatenate([np.arange(t.r) for t in spec.terms])
        for b in self.batches:
            lam_idx = b.idx[b.row[:, None, None], b.pos[:, :, None], b.pos[:, None, :]]  # (nb, R, R)
            self._lam_idx.append(lam_idx)
            mu = np.einsum("na,nabk->nbk", b.val, (lam_idx[..., None] == self.thpos).astype(float))
            self._mu.append(mu * b.used[:, :, None])
            nb, R = b.pos.shape
            obs = np.arange(nb)
            self._sum.append(csr_matrix((np.ones(nb), (b.row, obs)), shape=(b.C, nb)))
            # cluster moments of the design, sum_i w_i z_i and sum_i w_i z_i z_i^T, as sparse maps
            # of the weights w: (C s, nb) and (C s s, nb)
            cell = b.row[:, None] * b.s + b.pos
            self._z1.append(csr_matrix((b.val.ravel(), (cell.ravel(), np.repeat(obs, R))), shape=(b.C * b.s, nb)))
            pair = cell[:, :, None] * b.s + b.pos[:, None, :]
            zz = (b.val[:, :, None] * b.val[:, None, :]).ravel()
            self._zz.append(csr_matrix((zz, (pair.ravel(), np.repeat(obs, R * R))), shape=(b.C * b.s * b.s, nb)))
            # E_k = d Lambda_c / d theta_k of every cluster, (C, nt, s, s)
            E = np.moveaxis(b.idx[..., None] == self.thpos, 3, 1).astype(float)
            self._E.append(E)
            # its diagonal when every E_k is diagonal (scalar random-effect terms), else None
            diag = np.diagonal(E, axis1=2, axis2=3)
            self._E_diag.append(diag.copy() if np.array_equal(E, diag[..., None] * np.eye(b.s)) else None)
            # large blocks: R_a by blocks of terms (one cluster), else scattered into (C, P, s, s)
            blocks = _TermBlocks.of(b, slot_term, slot_comp, self.P) if b.s > MOMENT_BLOCK_MAX else None
            self._blocks.append(blocks)
            if b.s > MOMENT_BLOCK_MAX and blocks is None:
                uw = b.row[:, None, None] * (self.P * b.s * b.s) + b.pos[:, :, None] * b.s + b.pos[:, None, :]
                self._r_cells.append(uw[..., None] + np.arange(self.P) * (b.s * b.s))  # (nb, R, R, P)
            else:
                self._r_cells.append(None)
        self._psi_index = spec.psi_index
        self.last_vprime = None
        self._n_params = spec.n_params

    # -- pieces --------------------------------------------------------------------------------
    def _split(self, phi):
        p, nt = self.p, self.nt
        return phi[:p], phi[p : p + nt], phi[p + nt :]

    def _lam(self, theta):
        flat = np.zeros(self.lam_size + 1)
        flat[self.thpos] = theta
        return flat

    def _slots(self, k: int, flat):
        """``t_i`` and ``mu_i`` of batch ``k`` in slots: ``t[i, r] = (Lambda^T z_i)_{pos_r}`` and
        ``mu[i, r, j] = (Lambda_j^T z_i)_{pos_r}`` with ``Lambda_j = d Lambda / d theta_j``."""
        b = self.batches[k]
        t = np.einsum("na,nab->nb", b.val, flat[self._lam_idx[k]]) * b.used
        return t, self._mu[k]

    def _at(self, phi):
        """``beta``, the flat ``Lambda`` vector and every batch's slots at ``phi``."""
        beta, theta, _ = self._split(phi)
        flat = self._lam(theta)
        return beta, flat, [self._slots(k, flat) for k in range(len(self.batches))]

    def _eta(self, beta, flat, vs, slots):
        eta = self.o + self.X @ beta
        for b, v, (t, _) in zip(self.batches, vs, slots, strict=True):
            eta[b.obs] += np.sum(t * v[b.row[:, None], b.pos], axis=1)
        return eta

    def _jet(self, order, eta, phi):
        nat = np.zeros(self._n_params)
        # the per-observation graph takes the model's natural parameters; only psi is read
        nat[self._psi_index] = self._split(phi)[2]
        return [np.asarray(a) for a in self._jets(order)(eta, self.y, nat)]

    @staticmethod
    def _scatter(values: np.ndarray, shape: tuple[int, ...], index: np.ndarray) -> np.ndarray:
        """Sum ``values`` into an array of ``shape`` at flat positions ``index``."""
        size = int(np.prod(shape))
        return np.bincount(index.ravel(), weights=values.ravel(), minlength=size)[:size].reshape(shape)

    def _grad_hess_v(self, k: int, flat, v, t, l1, l2):
        """``h_v`` and ``H = -h_vv`` of every cluster of batch ``k``.

        Small blocks from the design moments, ``Lambda^T sum_i l1_i z_i - v`` and
        ``I - Lambda^T (sum_i l2_i z_i z_i^T) Lambda``; large blocks summed from the slots.
        """
        b = self.batches[k]
        s, C = b.s, b.C
        if s <= MOMENT_BLOCK_MAX:
            lam = flat[b.idx]  # (C, s, s)
            lamT = np.swapaxes(lam, 1, 2)
            g = np.matmul(lamT, (self._z1[k] @ l1).reshape(C, s, 1))[..., 0] - v
            H = np.matmul(np.matmul(lamT, (self._zz[k] @ -l2).reshape(C, s, s)), lam)
        else:
            g = self._scatter(l1[:, None] * t, (C, s), b.row[:, None] * s + b.pos) - v
            Hi = b.row[:, None, None] * s * s + b.pos[:, :, None] * s + b.pos[:, None, :]
            H = self._scatter(-l2[:, None, None] * t[:, :, None] * t[:, None, :], (C, s, s), Hi)
        H += np.eye(s)
        return g, H

    # -- the inner problem ---------------------------------------------------------------------
    def modes(self, phi, v0s, tol: float = 1e-10, iterations: int = 100):
        """Modes of every cluster's ``h`` (:func:`pymc_mixvcov.engines.laplace.damped_newton`); returns
        ``(vs, converged)``."""
        beta, flat, slots = self._at(phi)

        def pieces(vs):
            eta = self._eta(beta, flat, vs, slots)
            raw = self._jet(2, eta, phi)
            ll, l1, l2 = raw[0], raw[1], raw[2 + self.m]
            out = []
            for k, (b, v, (t, _)) in enumerate(zip(self.batches, vs, slots, strict=True)):
                hc = np.bincount(b.row, weights=ll[b.obs], minlength=b.C) - 0.5 * np.sum(v**2, axis=1)
                g, H = self._grad_hess_v(k, flat, v, t, l1[b.obs], l2[b.obs])
                out.append((hc, g, H))
            return out

        return damped_newton(pieces, v0s, tol, iterations)

    def boundary_rows(self, phi, vs) -> np.ndarray:
        """Observations fitted at the edge of the response's support at ``(phi, vs)``.

        Rows whose log-density is numerically 0 and flat in ``eta`` (``ell_i > -1e-8`` and
        ``ell_i'' > -1e-10``): a fitted probability of 0 or 1, or a Poisson mean of 0 for a zero
        count. Under (quasi-)complete separation the estimates drift until every such row
        is fitted exactly; see :meth:`pymc_mixvcov.compilation.derivatives.LaplaceFunctions.diagnose`.
        """
        beta, flat, slots = self._at(phi)
        eta = self._eta(beta, flat, vs, slots)
        raw = self._jet(2, eta, phi)
        ll, l2 = raw[0], raw[2 + self.m]
        return np.flatnonzero((ll > -1e-8) & (l2 > -1e-10))

    # -- value, gradient, Hessian --------------------------------------------------------------
    def evaluate(self, phi, vs, order: int = 2):
        """Per-cluster Laplace log-likelihoods and, for ``order >= 1``, gradients in ``phi``
        (and for ``order == 2`` Hessians), at modes ``vs``.

        Returns a dict with lists over batches: ``loglik`` (``(C,)``), ``grad`` (``(C, P)``) and
        ``hess`` (``(C, P, P)``). Every observation belongs to a cluster (checked by
        :class:`pymc_mixvcov.compilation.derivatives.LaplaceFunctions`).
        """
        beta, flat, slots = self._at(phi)
        eta = self._eta(beta, flat, vs, slots)
        m1 = self.m + 1
        raw = self._jet(4 if order >= 1 else 2, eta, phi)
        ll = raw[0]
        l1 = np.stack(raw[1 : 1 + m1], axis=1)  # (n, m1)
        npair = m1 * (m1 + 1) // 2
        l2 = _sym(raw[1 + m1 : 1 + m1 + npair], m1)  # (n, m1, m1)
        if order >= 1:
            l3 = _sym(raw[1 + m1 + npair : 1 + m1 + 2 * npair], m1)  # ell_{eta q r}
            l4 = _sym(raw[1 + m1 + 2 * npair :], m1)  # ell_{eta eta q r}
        out = {"loglik": [], "grad": [], "hess": []}
        vprime: list[np.ndarray] = []
        P, p, nt = self.P, self.p, self.nt
        th = slice(p, p + nt)
        psi_rows = np.zeros((self.m, P))
        psi_rows[:, p + nt :] = np.eye(self.m)
        for k, (b, v, (t, mu)) in enumerate(zip(self.batches, vs, slots, strict=True)):
            o = b.obs
            s, C, R = b.s, b.C, b.pos.shape[1]
            e1, e2 = l1[o], l2[o]
            g, H = self._grad_hess_v(k, flat, v, t, e1[:, 0], e2[:, 0, 0])
            Lc = np.linalg.cholesky(H)
            hc = np.bincount(b.row, weights=ll[o], minlength=C) - 0.5 * np.sum(v**2, axis=1)
            out["loglik"].append(hc - np.sum(np.log(np.diagonal(Lc, axis1=1, axis2=2)), axis=1))
            if order == 0:
                continue
            Hinv = np.linalg.inv(H)
            # d eta / d phi at fixed v: (x_i, mu_i^T v, 0)
            vg = v[b.row[:, None], b.pos]  # (nb, R)
            deta = np.zeros((o.size, P))
            deta[:, :p] = self.X[o]
            deta[:, th] = np.einsum("nrk,nr->nk", mu, vg)
            # h_{v phi} and v' = H^{-1} h_{v phi}
            a = e2[:, 0, 0][:, None] * deta + e2[:, 0, 1:] @ psi_rows  # sum_q ell_{eta q} zeta^q_phi
            vi = (b.row[:, None] * s + b.pos)[:, :, None] * P + np.arange(P)
            hvp = self._scatter(t[:, :, None] * a[:, None, :], (C, s, P), vi)
            lmu = np.zeros((o.size, R, P))
            lmu[:, :, th] = e1[:, 0, None, None] * mu
            hvp += self._scatter(lmu, (C, s, P), vi)
            vp = Hinv @ hvp  # (C, s, P)
            vprime.append(vp)
            vpg = vp[b.row[:, None], b.pos]  # (nb, R, P)
            # projected first derivatives zeta~ (nb, m1, P)
            z = np.empty((o.size, m1, P))
            z[:, 0] = deta + np.einsum("nr,nrp->np", t, vpg)
            z[:, 1:] = psi_rows
            Hg = Hinv[b.row[:, None, None], b.pos[:, :, None], b.pos[:, None, :]]  # (nb, R, R)
            Ht = np.einsum("nab,nb->na", Hg, t)
            q = np.einsum("na,na->n", t, Ht)
            gth = np.einsum("nak,na->nk", mu, Ht)  # mu^T H^{-1} t
            y3 = np.einsum("nr,nrp->np", l3[o][:, 0, :], z)  # sum_r ell_{eta eta r} zeta~^r
            grad_c = np.einsum("nq,nqp->np", e1, z) + 0.5 * q[:, None] * y3
            grad_c[:, th] += e2[:, 0, 0, None] * gth
            out["grad"].append(self._rowsum(k, grad_c) - np.einsum("cs,csp->cp", v, vp))
            if order < 2:
                continue
            # -- Hessian --------------------------------------------------------------------------
            l3o, l4o = l3[o], l4[o]
            e_eta, e_etaeta, e3 = e1[:, 0], e2[:, 0, 0], l3o[:, 0, 0]
            # L_v and c = H^{-1} L_v
            Lv = 0.5 * self._scatter((e3 * q)[:, None] * t, (C, s), b.row[:, None] * s + b.pos)
            cvec = np.einsum("cst,ct->cs", Hinv, Lv)
            cg = cvec[b.row[:, None], b.pos]  # (nb, R)
            gam = np.einsum("nr,nr->n", cg, t)
            nu = np.zeros((o.size, P))
            nu[:, th] = np.einsum("nrk,nr->nk", mu, cg)
            gv = np.zeros((o.size, P))
            gv[:, th] = gth
            y2 = np.einsum("nq,nqp->np", e2[:, 0, :], z)  # sum_q ell_{eta q} zeta~^q
            # A + B + D per observation (P x P), then summed by cluster
            W = e2 + 0.5 * q[:, None, None] * l4o + gam[:, None, None] * l3o
            # all rank-one terms at once: left (nb, K, P)^T times right (nb, K, P), both contiguous
            left = np.empty((o.size, m1 + 4, P))
            right = np.empty((o.size, m1 + 4, P))
            left[:, :m1] = np.matmul(W, z)  # W symmetric: (z^T W)^T
            right[:, :m1] = z
            for j, (a, c) in enumerate(((gv, y3), (y3, gv), (nu, y2), (y2, nu))):
                left[:, m1 + j] = a
                right[:, m1 + j] = c
            per = np.matmul(np.swapaxes(left, 1, 2), right)
            hess = self._rowsum(k, per.reshape(o.size, P * P)).reshape(C, P, P)
            hess -= np.einsum("csa,csb->cab", vp, vp)
            # the theta terms through mu_i = E^T z_i, summed by cluster with the design moments:
            # sum_i w_i mu_i^T v' = (sum_i w_i z_i)^T E_k v' and
            # sum_i ell_etaeta mu_i^T H^{-1} mu_i = tr(E_k H^{-1} E_l^T M), M = sum_i ell_etaeta z_i z_i^T
            E, Ed = self._E[k], self._E_diag[k]
            w = (self._z1[k] @ (e_eta + 0.5 * e3 * q + e_etaeta * gam)).reshape(C, s)
            if Ed is not None:  # E_k diagonal (scalar terms): products are row and column scalings
                cm = np.matmul(w[:, None, :] * Ed, vp)
            else:
                cm = np.einsum("cs,ckst,ctp->ckp", w, E, vp)
            hess[:, th, :] += cm
            hess[:, :, th] += np.swapaxes(cm, 1, 2)
            M = (self._zz[k] @ e_etaeta).reshape(C, s, s)
            if Ed is not None:
                ME = M[:, None] * Ed[:, :, None, :]  # M E_k, (C, nt, s, s)
                EH = Ed[:, :, :, None] * Hinv[:, None]  # E_k H^{-1}
            else:
                ME = np.matmul(M[:, None], E)
                EH = np.matmul(E, Hinv[:, None])
            hess[:, th, th] += _frobenius(EH, ME)
            # C: 1/2 tr(H^{-1} R_a H^{-1} R_b), R_a = sum_i y3_ia t t^T + ell_eta_eta (mu_a t^T + t mu_a^T)
            if self._blocks[k] is not None:
                K = self._blocks[k].r_times_u(Hinv[0], self._slot_r(y3, t, mu, e_etaeta))
            else:
                K = np.matmul(Hinv[:, None], self._r_matrices(k, flat, y3, t, mu, e_etaeta, M, ME))
            hess += 0.5 * _trace_products(K)
            out["hess"].append(hess)
        if order >= 1 and len(vprime) == len(vs):
            # d v_hat / d phi: a first-order prediction of the modes at the next point
            self.last_vprime = (np.asarray(phi, float).copy(), [v.copy() for v in vs], vprime)
        return out

    def _r_matrices(self, k, flat, y3, t, mu, e_etaeta, M, ME) -> np.ndarray:
        """``R_a = sum_i y3_ia t_i t_i^T + ell_etaeta,i (mu_ia t_i^T + t_i mu_ia^T)`` of every cluster
        of batch ``k``, ``(C, P, s, s)``.

        Small blocks: from the design moments, ``Lambda^T (sum_i y3_ia z_i z_i^T) Lambda`` and
        ``E_a^T M Lambda`` plus its transpose. Large blocks (crossed factors), where products of
        ``s x s`` matrices cost more than the observations: summed from the slots.
        """
        b = self.batches[k]
        s, C, P = b.s, b.C, self.P
        th = slice(self.p, self.p + self.nt)
        if s <= MOMENT_BLOCK_MAX:
            lam = flat[b.idx]  # (C, s, s)
            My = np.moveaxis((self._zz[k] @ y3).reshape(C, s, s, P), 3, 1)  # (C, P, s, s)
            Rm = np.matmul(np.matmul(np.swapaxes(lam, 1, 2)[:, None], My), lam[:, None])
            cross = np.matmul(np.swapaxes(ME, 2, 3), lam[:, None])  # E_a^T M Lambda, (C, nt, s, s)
            Rm[:, th] += cross + np.swapaxes(cross, 2, 3)
            return Rm
        # R_a summed from the slots, straight into the (C, P, s, s) layout
        return self._scatter(self._slot_r(y3, t, mu, e_etaeta), (C, P, s, s), self._r_cells[k])

    def _slot_r(self, y3, t, mu, e_etaeta) -> np.ndarray:
        """The terms of ``R_a`` per observation and slot pair, ``Ri[i, r, r', a]`` ``(nb, R, R, P)``:
        ``y3_ia t_ir t_ir' + ell_etaeta,i (mu_ira t_ir' + t_ir mu_ir'a)``."""
        th = slice(self.p, self.p + self.nt)
        Ri = (t[:, :, None] * t[:, None, :])[..., None] * y3[:, None, None, :]  # (nb, R, R, P)
        et = e_etaeta[:, None, None] * t[:, None, :]  # ell_etaeta t_r', (nb, 1, R)
        cross = mu[:, :, None, :] * et[..., None]  # mu_ra t_r' (nb, R, R, nt)
        Ri[..., th] += cross + np.swapaxes(cross, 1, 2)
        return Ri

    def _rowsum(self, k: int, values: np.ndarray) -> np.ndarray:
        """Sum the rows of ``values`` (per observation of batch ``k``) by cluster."""
        return np.asarray(self._sum[k] @ values)
