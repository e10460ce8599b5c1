"""Laplace approximation of the per-cluster marginal log-likelihood, with exact derivatives.

Model: ``y_i ~ p(y_i | eta_i, psi)`` with linear predictor
``eta = offset + X beta + Z u``, random effects ``u_c = Lambda_c v_c`` per cluster ``c`` and
``v_c ~ N(0, I)``. With ``h_c(v) = sum_{i in c} log p(y_i | eta_i) - |v|^2 / 2`` and its mode
``v_hat``,

.. math::

    \\ell_c \\approx h_c(\\hat v) - \\tfrac12 \\log \\det H_c(\\hat v), \\qquad
    H_c = -\\nabla_v^2 h_c = I + \\Lambda_c^T Z_c^T W_c Z_c \\Lambda_c,

(Laplace; the ``(2 pi)^{s/2}`` of the integral cancels the normal density's constant). This is
lme4's ``glmer`` Laplace log-likelihood.

Exact derivatives through the mode. The mode is found numerically (batched Newton in NumPy,
:func:`find_modes`) and enters the graph as an input ``v0``; the graph then takes **two Newton
steps** from it, ``v_{k+1} = v_k + H(v_k)^{-1} g(v_k)``, and evaluates the Laplace formula at
``v_2``. At the parameters where ``v0`` is the exact mode, ``v_2(theta) - v_hat(theta) =
O(|theta - theta_0|^4)`` (Newton's error squares at each step), so the value, gradient and
Hessian of the graph equal those of the Laplace approximation with the mode differentiated
implicitly, symbolically, with no finite differences.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import grad
from pytensor.graph.replace import graph_replace, vectorize_graph
from pytensor.tensor import TensorVariable

from .linalg import BatchedCholesky, bmv
from .marginal import ClusterStructure, Signature

__all__ = [
    "LaplaceSignature",
    "LaplaceGraph",
    "laplace_signature",
    "laplace_data",
    "find_modes",
    "damped_newton",
    "gauss_hermite_grid",
]


@dataclass(frozen=True)
class LaplaceSignature(Signature):
    """What fixes the Laplace graphs: sizes as for the Gaussian engine plus the likelihood.

    ``phi = (beta, theta, psi)``: fixed effects, lower triangles of the absolute covariance
    factors, and the likelihood's other parameters (e.g. a Student-t scale, a negative binomial
    dispersion) on the model's natural scale.
    """

    n_psi: int = 0
    n_params: int = 0
    likelihood: str = ""  # hash of the per-observation log-density graph
    nagq: int = 1  # quadrature points per random effect; 1 is the Laplace approximation

    @property
    def dim(self) -> int:
        return self.p + self.n_theta + self.n_psi

    def key(self) -> str:
        agq = f"-agq{self.nagq}" if self.nagq > 1 else ""
        return f"lap-{super().key()}-q{self.n_psi}-{self.likelihood}{agq}"


def laplace_signature(spec, structure: ClusterStructure, nagq: int = 1) -> LaplaceSignature:
    from ..compilation.cache import dumps_graph

    eta, y, lp = spec.logp
    blob = dumps_graph([eta, y, spec.nat], [lp])
    digest = hashlib.sha256(blob + spec.psi_index.tobytes()).hexdigest()[:16]
    r = tuple(int(round(np.sqrt(k))) for k in structure.lam_sizes)
    return LaplaceSignature(
        structure.p, r, tuple(bt.s for bt in structure.batches), spec.psi_index.size, spec.n_params, digest, nagq
    )


def laplace_data(spec, structure: ClusterStructure) -> list[np.ndarray]:
    """The data inputs of :class:`LaplaceGraph`, in its order."""
    out: list[np.ndarray] = [np.asarray(spec.X, float), np.asarray(spec.offset, float), np.asarray(spec.y, float)]
    batch_of, row_of = structure.locate()
    oc = structure.obs_cluster
    for k, bt in enumerate(structure.batches):
        obs = np.flatnonzero((oc >= 0) & (batch_of[np.maximum(oc, 0)] == k))
        pos = structure.obs_pos[obs]
        out += [
            obs.astype(np.int64),
            row_of[oc[obs]].astype(np.int64),
            np.where(pos >= 0, pos, 0).astype(np.int64),
            np.where(pos >= 0, structure.obs_val[obs], 0.0),
            bt.lam_idx.astype(np.int64),
        ]
    return out


class LaplaceGraph:
    """Symbolic pieces of the Laplace approximation, with data and modes as inputs."""

    def __init__(self, sig: LaplaceSignature, spec):
        self.sig = sig
        p = sig.p
        self.X = pt.matrix("X", shape=(None, p))
        self.offset = pt.vector("offset")
        self.y = pt.vector("y")
        self.batches = []
        for k, s in enumerate(sig.sizes):
            self.batches.append(
                {
                    "s": s,
                    "obs": pt.vector(f"obs{k}", dtype="int64"),
                    "row": pt.vector(f"row{k}", dtype="int64"),
                    "pos": pt.matrix(f"pos{k}", dtype="int64"),
                    "val": pt.matrix(f"val{k}"),
                    "idx": pt.tensor3(f"idx{k}", shape=(None, s, s), dtype="int64"),
                }
            )
        self._pos = sig.theta_positions()
        self._logp = spec.logp
        self._nat = spec.nat
        self._psi_index = spec.psi_index
        self._fixed_index = spec.fixed_index

    @property
    def data_inputs(self) -> list[TensorVariable]:
        out = [self.X, self.offset, self.y]
        for b in self.batches:
            out += [b["obs"], b["row"], b["pos"], b["val"], b["idx"]]
        return out

    def mode_inputs(self) -> list[TensorVariable]:
        return [pt.matrix(f"v0_{k}", shape=(None, b["s"])) for k, b in enumerate(self.batches)]

    def split(self, phi):
        p, nt = self.sig.p, self.sig.n_theta
        return phi[:p], phi[p : p + nt], phi[p + nt :]

    def _factors(self, b, theta):
        flat = pt.zeros((self.sig.lam_size + 1,))
        flat = pt.set_subtensor(flat[self._pos], theta)
        return flat[b["idx"]]

    def eta(self, beta, theta, vs):
        eta = self.offset + pt.dot(self.X, beta)
        for b, v in zip(self.batches, vs, strict=True):
            u = bmv(self._factors(b, theta), v)  # (C, s): u_c = Lambda_c v_c
            contrib = pt.sum(b["val"] * u[b["row"][:, None], b["pos"]], axis=1)
            eta = pt.inc_subtensor(eta[b["obs"]], contrib)
        return eta

    def logp(self, eta, psi):
        eta_in, y_in, lp = self._logp
        nat = pt.zeros((self.sig.n_params,))
        if self._psi_index.size:
            nat = pt.set_subtensor(nat[self._psi_index], psi)
        return graph_replace(lp, {eta_in: eta, y_in: self.y, self._nat: nat}, strict=False)

    def h(self, beta, theta, psi, vs):
        """Per-cluster ``h_c(v)`` for every batch."""
        lp = self.logp(self.eta(beta, theta, vs), psi)
        out = []
        for b, v in zip(self.batches, vs, strict=True):
            hc = pt.zeros((v.shape[0],))
            hc = pt.inc_subtensor(hc[b["row"]], lp[b["obs"]])
            out.append(hc - 0.5 * pt.sum(v**2, axis=1))
        return out

    def grad_hess(self, beta, theta, psi, vs):
        """``h_c``, its gradient ``g_c`` and ``H_c = -d2 h_c / dv2`` for every batch."""
        hs = self.h(beta, theta, psi, vs)
        total = sum(pt.sum(hc) for hc in hs)
        gs = grad(total, vs)
        Hs = []
        for b, v, g in zip(self.batches, vs, gs, strict=True):
            rows = [grad(pt.sum(g[:, k]), v) for k in range(b["s"])]
            Hs.append(-pt.stack(rows, axis=1))
        return hs, gs, Hs

    def newton(self, beta, theta, psi, vs):
        _, gs, Hs = self.grad_hess(beta, theta, psi, vs)
        out = []
        for b, v, g, H in zip(self.batches, vs, gs, Hs, strict=True):
            ch = BatchedCholesky(H, b["s"])
            step = ch.solve_upper(ch.solve_lower(g[:, :, None]))[:, :, 0]
            out.append(v + step)
        return out

    def cluster_loglik(self, phi, v0s):
        """Log-likelihood of every cluster (list over batches), at ``phi``, from modes ``v0s``.

        Laplace for ``nagq == 1``, adaptive Gauss-Hermite quadrature otherwise (see :meth:`_agq`).
        """
        beta, theta, psi = self.split(phi)
        v2 = self.newton(beta, theta, psi, self.newton(beta, theta, psi, v0s))
        hs, _, Hs = self.grad_hess(beta, theta, psi, v2)
        out = []
        for b, v, hc, H in zip(self.batches, v2, hs, Hs, strict=True):
            ch = BatchedCholesky(H, b["s"])
            ll = hc - 0.5 * ch.logdet()
            if self.sig.nagq > 1:
                ll = ll + self._agq(b, beta, theta, psi, v, hc, ch)
            out.append(ll)
        return out

    def _agq(self, b, beta, theta, psi, v, hc, ch):
        """Log of the adaptive Gauss-Hermite correction to the Laplace value of each cluster.

        With the mode ``v_hat``, ``H = L L^T`` the negative Hessian of ``h`` there and the
        product grid of ``nagq`` Gauss-Hermite nodes ``t_k`` and weights ``w_k`` per dimension
        (``int e^{-t^2} f(t) dt ~ sum_k w_k f(t_k)``), the substitution
        ``v = v_hat + sqrt(2) L^{-T} t`` gives (Liu and Pierce, 1994; Pinheiro and Bates, 1995)

        .. math::

            \\ell_c = \\log (2\\pi)^{-s/2} \\int e^{h_c(v)} dv
                   \\approx h_c(\\hat v) - \\tfrac12 \\log|H|
                   + \\log \\sum_k \\pi^{-s/2} w_k e^{|t_k|^2 + h_c(v_k) - h_c(\\hat v)},

        where the last term is the correction returned here (``0`` for one node: Laplace).
        Every term is a smooth function of ``phi`` through ``v_hat`` and ``L``, so the value,
        gradient and Hessian are exact for the quadrature rule, as for Laplace.
        """
        nodes, logw = gauss_hermite_grid(self.sig.nagq, b["s"])
        K = nodes.shape[0]
        shift = ch.solve_upper(pt.broadcast_to(pt.constant(np.sqrt(2.0) * nodes.T), (v.shape[0], b["s"], K)))
        vk = v[:, :, None] + shift  # (C, s, K)
        F = self._factors(b, theta)  # (C, s, s)
        u = pt.sum(F[:, :, :, None] * vk[:, None, :, :], axis=2)  # (C, s, K): u_c = Lambda_c v_ck
        contrib = pt.sum(b["val"][:, :, None] * u[b["row"][:, None], b["pos"]], axis=1)  # (n_b, K)
        eta = pt.zeros((self.y.shape[0], K)) + (self.offset + pt.dot(self.X, beta))[:, None]
        eta = pt.inc_subtensor(eta[b["obs"]], contrib)
        eta_in, _, _ = self._logp
        lp = vectorize_graph(self.logp(eta_in, psi), {eta_in: eta.T}).T  # (n, K)
        hk = pt.zeros((v.shape[0], K))
        hk = pt.inc_subtensor(hk[b["row"]], lp[b["obs"]]) - 0.5 * pt.sum(vk**2, axis=1)
        terms = pt.constant(logw)[None, :] + hk - hc[:, None]
        return pt.log(pt.sum(pt.exp(terms), axis=1))


def gauss_hermite_grid(n: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Product Gauss-Hermite grid in ``s`` dimensions with ``n`` nodes per dimension.

    Returns
    -------
    nodes : ndarray, shape (n**s, s)
        The nodes ``t_k``.
    logw : ndarray, shape (n**s,)
        ``log(pi^{-s/2} prod_d w_{k_d}) + |t_k|^2``: ``exp(logw)`` integrates functions against
        the density of ``N(0, I/2)``, divided by that density (see :meth:`LaplaceGraph._agq`).
        For ``n = 1`` the single node is ``0`` with ``logw = 0`` (Laplace).
    """
    t, w = np.polynomial.hermite.hermgauss(n)
    grids = np.meshgrid(*([np.arange(n)] * s), indexing="ij")
    idx = np.stack([g.ravel() for g in grids], axis=1)
    nodes = t[idx]
    logw = np.sum(np.log(w)[idx], axis=1) - 0.5 * s * np.log(np.pi) + np.sum(nodes**2, axis=1)
    return nodes, logw


def damped_newton(pieces, v0s: list[np.ndarray], tol: float = 1e-10, iterations: int = 100):
    """Maximise every cluster's ``h_c`` by damped Newton (NumPy, all clusters at once).

    ``pieces(vs)`` returns, per batch, ``(h, g, H)``: the values, gradients and negative
    Hessians at ``vs``. Each cluster halves its own step until ``h_c`` does not decrease.

    Returns
    -------
    vs : list of ndarray
        The modes.
    converged : bool
        Whether every cluster's Newton step fell below ``tol`` (relative) within ``iterations``;
        ``False`` at once where ``h`` is not finite (e.g. a probability rounded to 0 or 1 far
        from the estimates: no mode to find, the caller treats the point as invalid).
    """
    vs = [v.copy() for v in v0s]
    cur = pieces(vs)
    for _ in range(iterations):
        if not all(np.all(np.isfinite(h)) for h, _, _ in cur):
            return vs, False
        steps = [np.linalg.solve(H, g[:, :, None])[:, :, 0] for _, g, H in cur]
        biggest = max((np.max(np.abs(st)) for st in steps if st.size), default=0.0)
        if not np.isfinite(biggest):
            return vs, False
        if biggest < tol * (1.0 + max((np.max(np.abs(v)) for v in vs if v.size), default=0.0)):
            return vs, True
        t = [np.ones(v.shape[0]) for v in vs]
        for _ in range(30):
            trial = [v + tk[:, None] * st for v, tk, st in zip(vs, t, steps, strict=True)]
            new = pieces(trial)
            bad = [~(hn >= ho - 1e-12 * (1 + np.abs(ho))) for (hn, _, _), (ho, _, _) in zip(new, cur, strict=True)]
            if not any(b.any() for b in bad):
                break
            t = [np.where(b, tk * 0.5, tk) for b, tk in zip(bad, t, strict=True)]
        vs, cur = trial, new
    return vs, False


def find_modes(gh, phi: np.ndarray, v0s: list[np.ndarray], data: list[np.ndarray], tol: float = 1e-10):
    """Modes of every cluster's ``h_c`` (:func:`damped_newton`) from the compiled graph ``gh``.

    ``gh(phi, *vs, *data)`` returns ``h`` per batch, then ``g`` per batch, then ``H`` per batch.
    Returns ``(vs, converged)``.
    """
    nb = len(v0s)

    def pieces(vs):
        res = gh(phi, *vs, *data)
        return list(zip(res[:nb], res[nb : 2 * nb], res[2 * nb :], strict=True))

    return damped_newton(pieces, v0s, tol)
