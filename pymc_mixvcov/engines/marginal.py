"""Per-cluster marginal log-likelihood of a linear mixed model, exactly, from cluster statistics.

Model: ``y = offset + X beta + Z u + e``, ``u ~ N(0, Lambda Lambda^T)`` block diagonal,
``e ~ N(0, sigma^2 I)``. Clusters are the connected components of the random effects (two
effects are connected when an observation uses both, or when they belong to the same level of
the same random variable): one grouping factor gives one cluster per level, nested factors one
per outer level, crossed factors one large cluster. The marginal covariance
``V = Z Lambda Lambda^T Z^T + sigma^2 I`` is block diagonal over clusters, and for cluster ``c``
with ``n_c`` observations and ``s_c`` random effects

.. math::

    M_c = \\sigma^2 I + \\Lambda_c^T Z_c^T Z_c \\Lambda_c, \\qquad
    \\ell_c = -\\tfrac{n_c}{2}\\log 2\\pi - \\tfrac{n_c - s_c}{2}\\log\\sigma^2
              - \\tfrac12 \\log|M_c|
              - \\frac{r_c^T r_c - w_c^T M_c^{-1} w_c}{2\\sigma^2},

with ``r_c = y_c - X_c beta`` and ``w_c = Lambda_c^T Z_c^T r_c`` (Woodbury and the matrix
determinant lemma). This is the Laplace formula, which is exact for a Gaussian likelihood. Only
the cluster statistics ``Z_c^T Z_c``, ``Z_c^T X_c``, ``Z_c^T y_c``, ``X_c^T X_c``, ``X_c^T y_c`` and
``y_c^T y_c`` enter, so an evaluation costs ``O(sum_c s_c^3)``, independent of ``n``; no
``n x n`` matrix is ever formed.

The statistics are those of the response net of its least-squares fit, ``y - X b_0`` with
``b_0 = (X^T X)^{-1} X^T y`` (:func:`pymc_mixvcov.engines.blocked_layout.centred_response`), and
the formulas are evaluated at ``beta - b_0`` (:func:`core_phi`): the residual ``y - X beta`` is the
same, so value and derivatives are unchanged but for rounding, whereas ``y^T y``, ``X^T y`` of a
response with a large mean (``10^8`` with residual SD ``1``) cancel in ``r^T r`` and lose about
``2 log10(mean / SD)`` digits.

REML (Patterson and Thompson, 1971; lme4's criterion) integrates ``beta`` with a flat prior:
``ell_R = ell(beta_hat) + p/2 log 2 pi - 1/2 log|X^T V^{-1} X|``.

Expected information is the Hessian, at ``psi = psi_0``, of the Kullback-Leibler divergence
from the model at ``psi_0`` to the model at ``psi``:
``KL = 1/2 [tr(V^{-1} V_0) + log|V| + (beta - beta_0)^T X^T V^{-1} X (beta - beta_0)] + const``
(for REML, of the error contrasts: ``1/2 [tr(P V_0) + log|V| + log|X^T V^{-1} X|]``). Its Hessian
is ``X^T V^{-1} X`` for ``beta`` and ``1/2 tr(V^{-1} V_a V^{-1} V_b)`` for the variance parameters,
with a zero cross block: the closed forms of merDeriv (Wang and Merkle, 2018), on any scale.

References
----------
Bates, Maechler, Bolker, Walker (2015). Fitting linear mixed-effects models using lme4.
Journal of Statistical Software 67(1).
Wang, T. and Merkle, E. C. (2018). merDeriv: Derivative computations for linear mixed
effects models with application to robust standard errors. JSS 87, Code Snippet 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytensor.tensor as pt
from pytensor.tensor import TensorVariable
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..model.spec import GaussianSpec
from ..model.weights import half_log_weights, whitened
from .blocked_layout import centred_response
from .linalg import UNROLL_MAX, BatchedCholesky, bmm, bmv, bquad, bT, gram, spd_solve

__all__ = [
    "ClusterStructure",
    "Batch",
    "build_structure",
    "core_phi",
    "Signature",
    "signature_of",
    "data_values",
    "CoreGraph",
]

LOG2PI = float(np.log(2 * np.pi))


@dataclass(frozen=True)
class Batch:
    """Clusters that share a block size ``s``, with their statistics stacked on axis 0."""

    s: int
    clusters: np.ndarray  # indices into ClusterStructure.clusters
    A: np.ndarray = field(repr=False)  # (C, s, s)   Z_c^T Z_c
    B: np.ndarray = field(repr=False)  # (C, s, p)   Z_c^T X_c
    b: np.ndarray = field(repr=False)  # (C, s)      Z_c^T y_c
    XX: np.ndarray = field(repr=False)  # (C, p, p)
    Xy: np.ndarray = field(repr=False)  # (C, p)
    yy: np.ndarray = field(repr=False)  # (C,)
    nobs: np.ndarray = field(repr=False)  # (C,)
    lam_idx: np.ndarray = field(repr=False)  # (C, s, s) into the flat Lambda vector


@dataclass(frozen=True)
class ClusterStructure:
    """Clusters of a linear mixed model and their sufficient statistics.

    ``clusters[c]`` lists the ``(term, level)`` blocks of cluster ``c``; ``obs_cluster[i]`` is
    the cluster of observation ``i`` (``-1`` if it uses no random effect). ``free`` holds
    the statistics of those observations: ``(XX, Xy, yy, n)``.
    """

    clusters: list[list[tuple[int, int]]]
    obs_cluster: np.ndarray = field(repr=False)
    batches: list[Batch]
    free: tuple[np.ndarray, np.ndarray, float, int] = field(repr=False)
    lam_sizes: list[int]
    p: int
    obs_pos: np.ndarray = field(repr=False)  # (n, R) position in the cluster's block, -1 if unused
    obs_val: np.ndarray = field(repr=False)  # (n, R) the design value there
    sizes: np.ndarray | None = field(default=None, repr=False)  # (n_clusters,) random effects per cluster
    #: prior weights: ``sum log(w_i) / 2`` over each cluster's observations and over the free ones, the
    #: log-likelihood's term beyond the scaled rows' (:mod:`pymc_mixvcov.model.weights`); 0 without
    half_logw: np.ndarray | None = field(default=None, repr=False)
    half_logw_free: float = 0.0
    #: the least-squares coefficients ``b0`` taken out of the response (module docstring): the
    #: statistics are those of ``y - X b0``, the core functions take ``beta - b0`` (:func:`core_phi`)
    b0: np.ndarray | None = field(default=None, repr=False)

    @property
    def largest(self) -> int:
        """Random effects in the largest cluster."""
        return int(self.sizes.max()) if self.sizes is not None and self.sizes.size else 0

    @property
    def n_clusters(self) -> int:
        return len(self.clusters)

    def locate(self) -> tuple[np.ndarray, np.ndarray]:
        """Batch index and row within the batch of every cluster."""
        b = np.zeros(self.n_clusters, int)
        row = np.zeros(self.n_clusters, int)
        for k, bt in enumerate(self.batches):
            b[bt.clusters] = k
            row[bt.clusters] = np.arange(bt.clusters.size)
        return b, row


def core_phi(structure: ClusterStructure, phi: np.ndarray) -> np.ndarray:
    """``phi = (beta, theta, sigma)`` (last axis) as the core functions of ``structure``'s statistics
    take it: ``beta - b0`` (module docstring); a new array."""
    out = np.array(phi, float, copy=True)
    b0 = structure.b0
    if b0 is not None and b0.size:
        out[..., : b0.size] -= b0
    return out


def _bincount(index: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(index, weights=weights, minlength=size)[:size]


def build_structure(spec: GaussianSpec, statistics: bool = True) -> ClusterStructure:
    """Find the clusters of ``spec`` and compute their sufficient statistics (NumPy, once).

    ``statistics=False`` finds the clusters only (no batches): for an engine that does not work
    cluster by cluster (:mod:`pymc_mixvcov.engines.blocked`). With precision weights every row of
    ``X``, ``y`` and ``Z`` is scaled by ``sqrt(w_i)`` (:func:`pymc_mixvcov.model.weights.whitened`).
    """
    terms, n = spec.terms, spec.n
    X, y, row_scale = whitened(spec)
    p = X.shape[1]
    b0 = None
    if statistics and getattr(spec, "gaussian", True):  # the statistics of y - X b0 (module docstring)
        b0, y = centred_response(np.asarray(X, float), np.asarray(y, float))
    node_off = np.concatenate([[0], np.cumsum([len(t.levels) for t in terms])])
    n_nodes = int(node_off[-1])
    nodes = np.stack([np.where(t.codes >= 0, node_off[k] + t.codes, -1) for k, t in enumerate(terms)], 1)
    # edges: each observation links the blocks it uses
    rows, cols = [], []
    for k in range(1, len(terms)):
        both = (nodes[:, 0] >= 0) & (nodes[:, k] >= 0)
        rows.append(nodes[both, 0])
        cols.append(nodes[both, k])
    # chain blocks when the first term is not used by an observation
    for k in range(len(terms)):
        for j in range(k + 1, len(terms)):
            both = (nodes[:, k] >= 0) & (nodes[:, j] >= 0)
            rows.append(nodes[both, k])
            cols.append(nodes[both, j])
    r_ = np.concatenate(rows) if rows else np.zeros(0, int)
    c_ = np.concatenate(cols) if cols else np.zeros(0, int)
    graph = coo_matrix((np.ones(r_.size), (r_, c_)), shape=(n_nodes, n_nodes))
    _, comp = connected_components(graph, directed=False)
    # order clusters by their first block
    first = np.full(comp.max() + 1, n_nodes)
    np.minimum.at(first, comp, np.arange(n_nodes))
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    comp = rank[comp]
    n_comp = order.size
    node_term = np.repeat(np.arange(len(terms)), np.diff(node_off))
    node_level = np.arange(n_nodes) - node_off[node_term]
    r_of = np.array([t.r for t in terms])
    members = [[] for _ in range(n_comp)]
    for node in range(n_nodes):
        members[comp[node]].append(node)
    clusters = [[(int(node_term[m]), int(node_level[m])) for m in mem] for mem in members]
    # local column position of each node in its cluster and cluster size
    local = np.zeros(n_nodes, int)
    size = np.zeros(n_comp, int)
    for c, mem in enumerate(members):
        pos = 0
        for m in mem:
            local[m] = pos
            pos += r_of[node_term[m]]
        size[c] = pos
    lam_sizes = [t.r * t.r for t in terms]
    lam_off = np.concatenate([[0], np.cumsum(lam_sizes)])
    zero_slot = int(lam_off[-1])

    obs_cluster = np.full(n, -1)
    for k in range(len(terms)):
        used = nodes[:, k] >= 0
        obs_cluster[used] = comp[nodes[used, k]]
    # nonzero entries of each row of Z, in cluster-local positions
    pos_list, val_list = [], []
    for k, t in enumerate(terms):
        used = nodes[:, k] >= 0
        for j in range(t.r):
            pos = np.where(used, local[np.maximum(nodes[:, k], 0)] + j, -1)
            pos_list.append(pos)
            val_list.append(np.where(used, t.z[:, j] if row_scale is None else t.z[:, j] * row_scale, 0.0))
    pos_m = np.stack(pos_list, 1)
    val_m = np.stack(val_list, 1)

    batches = []
    for s in np.unique(size) if statistics else []:
        s = int(s)
        cl = np.flatnonzero(size == s)
        C = cl.size
        bidx = np.full(n_comp, -1)
        bidx[cl] = np.arange(C)
        obs = np.flatnonzero((obs_cluster >= 0) & (bidx[np.maximum(obs_cluster, 0)] >= 0))
        ci = bidx[obs_cluster[obs]]
        pm_, vm_ = pos_m[obs], val_m[obs]
        A = np.zeros(C * s * s)
        B = np.zeros((C * s, p))
        bb = np.zeros(C * s)
        for a in range(pm_.shape[1]):
            ok_a = pm_[:, a] >= 0
            ia = ci * s + np.where(ok_a, pm_[:, a], 0)
            wa = np.where(ok_a, vm_[:, a], 0.0)
            bb += _bincount(ia, wa * y[obs], C * s)
            for j in range(p):
                B[:, j] += _bincount(ia, wa * X[obs, j], C * s)
            for bcol in range(pm_.shape[1]):
                ok_b = pm_[:, bcol] >= 0
                iab = (ci * s + np.where(ok_a, pm_[:, a], 0)) * s + np.where(ok_b, pm_[:, bcol], 0)
                A += _bincount(iab, wa * np.where(ok_b, vm_[:, bcol], 0.0), C * s * s)
        XX = np.zeros((C, p, p))
        for i in range(p):
            for j in range(i, p):
                XX[:, i, j] = XX[:, j, i] = _bincount(ci, X[obs, i] * X[obs, j], C)
        Xy = np.stack([_bincount(ci, X[obs, j] * y[obs], C) for j in range(p)], 1) if p else np.zeros((C, 0))
        yy = _bincount(ci, y[obs] ** 2, C)
        nobs = _bincount(ci, np.ones(obs.size), C)
        lam_idx = np.full((C, s, s), zero_slot)
        for row, c in enumerate(cl):
            for m in members[c]:
                k = node_term[m]
                rk, l0 = r_of[k], local[m]
                blk = lam_off[k] + np.arange(rk * rk).reshape(rk, rk)
                lam_idx[row, l0 : l0 + rk, l0 : l0 + rk] = blk
        batches.append(
            Batch(
                s, cl, A.reshape(C, s, s), B.reshape(C, s, p), bb.reshape(C, s), XX, Xy.reshape(C, p), yy, nobs, lam_idx
            )
        )
    free_obs = obs_cluster < 0
    Xf, yf = X[free_obs], y[free_obs]
    free = (Xf.T @ Xf, Xf.T @ yf, float(yf @ yf), int(free_obs.sum()))
    hl = half_log_weights(spec)
    half_logw = None if hl is None else _bincount(obs_cluster[~free_obs], hl[~free_obs], n_comp)
    hl_free = 0.0 if hl is None else float(hl[free_obs].sum())
    return ClusterStructure(
        clusters, obs_cluster, batches, free, lam_sizes, p, pos_m, val_m, size, half_logw, hl_free, b0
    )


def _logdet_pos(a: TensorVariable) -> TensorVariable:
    """``log det a`` of a small symmetric positive definite matrix (unrolled Cholesky)."""
    p = a.type.shape[-1]
    if p == 0:  # the determinant of an empty matrix is 1
        return pt.constant(0.0)
    if p is not None and p <= UNROLL_MAX:
        return BatchedCholesky(a[None], p).logdet()[0]
    return pt.log(pt.linalg.det(a))


@dataclass(frozen=True)
class Signature:
    """What fixes the shape of the likelihood graph: ``p``, the term sizes and the block sizes.

    Two models with the same signature share every compiled function: data enter as inputs,
    never as constants. ``phi`` is the core parameter vector
    ``(beta, theta, sigma)`` with ``theta`` the lower triangles (column-major, terms in order) of
    the absolute covariance factors ``L_k`` (``G_k = L_k L_k^T``).
    """

    p: int
    r: tuple[int, ...]
    sizes: tuple[int, ...]

    @property
    def n_theta(self) -> int:
        return sum(r * (r + 1) // 2 for r in self.r)

    @property
    def dim(self) -> int:
        return self.p + self.n_theta + 1

    @property
    def lam_size(self) -> int:
        return sum(r * r for r in self.r)

    def theta_positions(self) -> np.ndarray:
        """Positions of ``theta`` in the flat vector of the ``r x r`` factors (row-major blocks)."""
        out, off = [], 0
        for r in self.r:
            out += [off + i * r + j for j in range(r) for i in range(j, r)]
            off += r * r
        return np.array(out, dtype=int)

    def key(self) -> str:
        return f"p{self.p}-r{'.'.join(map(str, self.r))}-s{'.'.join(map(str, self.sizes))}"


def signature_of(structure: ClusterStructure) -> Signature:
    """The :class:`Signature` of a cluster structure."""
    r = tuple(int(round(np.sqrt(k))) for k in structure.lam_sizes)
    return Signature(structure.p, r, tuple(bt.s for bt in structure.batches))


def data_values(structure: ClusterStructure) -> list[np.ndarray]:
    """The data inputs of :class:`CoreGraph`, in its order."""
    out: list[np.ndarray] = []
    for bt in structure.batches:
        out += [bt.A, bt.B, bt.b, bt.XX, bt.Xy, bt.yy, bt.nobs, bt.lam_idx.astype(np.int64)]
    XXf, Xyf, yyf, nf = structure.free
    out += [np.asarray(XXf, float), np.asarray(Xyf, float), np.asarray(yyf, float), np.asarray(float(nf))]
    return out


@dataclass
class _BatchData:
    s: int
    A: TensorVariable
    B: TensorVariable
    b: TensorVariable
    XX: TensorVariable
    Xy: TensorVariable
    yy: TensorVariable
    nobs: TensorVariable
    lam_idx: TensorVariable

    @property
    def inputs(self) -> list[TensorVariable]:
        return [self.A, self.B, self.b, self.XX, self.Xy, self.yy, self.nobs, self.lam_idx]


def _trail(x: TensorVariable, k: int) -> TensorVariable:
    """``x`` with ``k`` trailing broadcast axes when it is per cluster (``ndim >= 1``)."""
    return x if x.ndim == 0 else pt.shape_padright(x, k)


class CoreGraph:
    """Symbolic marginal log-likelihood pieces on the core parameters, with data as inputs.

    Parameters can be shared (``beta`` of shape ``(p,)``, ``theta`` ``(n_theta,)``, ``sigma``
    scalar) or given per cluster (a leading axis of length ``C``): the gradient of the sum of
    cluster terms with respect to per-cluster copies is the matrix of cluster scores.
    """

    def __init__(self, sig: Signature):
        self.sig = sig
        p = sig.p
        self.batches: list[_BatchData] = []
        for k, s in enumerate(sig.sizes):
            self.batches.append(
                _BatchData(
                    s,
                    pt.tensor3(f"A{k}", shape=(None, s, s)),
                    pt.tensor3(f"B{k}", shape=(None, s, p)),
                    pt.matrix(f"b{k}", shape=(None, s)),
                    pt.tensor3(f"XX{k}", shape=(None, p, p)),
                    pt.matrix(f"Xy{k}", shape=(None, p)),
                    pt.vector(f"yy{k}", shape=(None,)),
                    pt.vector(f"n{k}", shape=(None,)),
                    pt.tensor3(f"idx{k}", shape=(None, s, s), dtype="int64"),
                )
            )
        self.XXf = pt.matrix("XXf", shape=(p, p))
        self.Xyf = pt.vector("Xyf", shape=(p,))
        self.yyf = pt.scalar("yyf")
        self.nf = pt.scalar("nf")
        self._pos = sig.theta_positions()

    @property
    def data_inputs(self) -> list[TensorVariable]:
        out = [v for bt in self.batches for v in bt.inputs]
        return out + [self.XXf, self.Xyf, self.yyf, self.nf]

    # -- parameter plumbing --------------------------------------------------------------------
    def split(self, phi: TensorVariable) -> tuple[TensorVariable, TensorVariable, TensorVariable]:
        """``(beta, theta, sigma)`` from ``phi`` (last axis)."""
        p, nt = self.sig.p, self.sig.n_theta
        return phi[..., :p], phi[..., p : p + nt], phi[..., p + nt]

    def _factors(self, bt: _BatchData, theta: TensorVariable) -> TensorVariable:
        """Block-diagonal factor ``Lambda_c`` of every cluster, shape ``(C, s, s)``."""
        lead = theta.shape[:-1]
        flat = pt.zeros((*lead, self.sig.lam_size + 1))
        flat = pt.set_subtensor(flat[..., self._pos], theta)
        if theta.ndim == 1:
            return flat[bt.lam_idx]
        rows = pt.arange(bt.lam_idx.shape[0])[:, None, None]
        return flat[rows, bt.lam_idx]

    def _core(self, bt: _BatchData, theta: TensorVariable, s2: TensorVariable):
        Lc = self._factors(bt, theta)
        LtA = bmm(bT(Lc), bt.A)
        M = bmm(LtA, Lc) + _trail(s2, 2) * pt.eye(bt.s)[None, :, :]
        ch = BatchedCholesky(M, bt.s)
        W = ch.solve_lower(bmm(bT(Lc), bt.B))  # (C, s, p)
        v0 = ch.solve_lower(bmm(bT(Lc), bt.b[:, :, None]))[:, :, 0]  # (C, s)
        return Lc, LtA, ch, W, v0

    # -- log-likelihoods ----------------------------------------------------------------------
    def gls(self, theta: TensorVariable, sigma: TensorVariable) -> tuple[TensorVariable, TensorVariable]:
        """``(beta_hat, X^T V^{-1} X)``: generalised least squares at shared variance parameters."""
        s2 = sigma**2
        XtVX, XtVy = self.XXf, self.Xyf
        for bt in self.batches:
            _, _, _, W, v0 = self._core(bt, theta, s2)
            XtVX = XtVX + pt.sum(bt.XX, axis=0) - gram(W, W)
            XtVy = XtVy + pt.sum(bt.Xy, axis=0) - gram(W, v0)
        return spd_solve(XtVX, XtVy), XtVX / s2

    def cluster_loglik(self, bt: _BatchData, beta, theta, sigma) -> TensorVariable:
        """Marginal log-likelihood of every cluster of a batch, shape ``(C,)``."""
        s2 = sigma**2
        _, _, ch, W, v0 = self._core(bt, theta, s2)
        v = v0 - bmv(W, beta)
        rr = bt.yy - 2.0 * pt.sum(bt.Xy * beta, axis=-1) + bquad(bt.XX, beta)
        return (
            -0.5 * bt.nobs * LOG2PI
            - 0.5 * (bt.nobs - bt.s) * pt.log(s2)
            - 0.5 * ch.logdet()
            - (rr - pt.sum(v**2, axis=1)) / (2.0 * s2)
        )

    def free_loglik(self, beta, sigma) -> TensorVariable:
        """Log-likelihood of the observations that use no random effect."""
        s2 = sigma**2
        rr = self.yyf - 2.0 * pt.dot(self.Xyf, beta) + pt.dot(beta, pt.dot(self.XXf, beta))
        return -0.5 * self.nf * (LOG2PI + pt.log(s2)) - rr / (2.0 * s2)

    def loglik(self, beta, theta, sigma) -> TensorVariable:
        """Marginal (ML) log-likelihood at shared parameters."""
        total = self.free_loglik(beta, sigma)
        for bt in self.batches:
            total = total + pt.sum(self.cluster_loglik(bt, beta, theta, sigma))
        return total

    def reml_loglik(self, theta, sigma) -> TensorVariable:
        """REML log-likelihood (lme4's ``-REMLcrit/2``) with ``beta`` profiled out."""
        beta, XtVX = self.gls(theta, sigma)
        return self.loglik(beta, theta, sigma) + 0.5 * self.sig.p * LOG2PI - 0.5 * _logdet_pos(XtVX)

    def profiled_loglik(self, theta, sigma, method: str) -> TensorVariable:
        """ML or REML log-likelihood with ``beta`` at its GLS value."""
        if method == "REML":
            return self.reml_loglik(theta, sigma)
        beta, _ = self.gls(theta, sigma)
        return self.loglik(beta, theta, sigma)

    # -- expected information -----------------------------------------------------------------
    def _trace_logdet(self, bt, theta, sigma, theta0, sigma0):
        s2, s20 = sigma**2, sigma0**2
        Lc, LtA, ch, W, v0 = self._core(bt, theta, s2)
        Lc0 = self._factors(bt, theta0)
        K = ch.solve_lower(LtA)  # L^{-1} Lambda^T A
        Linv = ch.solve_lower(pt.broadcast_to(pt.eye(bt.s), (bt.lam_idx.shape[0], bt.s, bt.s)))
        trA0 = pt.sum(Lc0 * bmm(bt.A, Lc0), axis=(1, 2))
        trK0 = pt.sum(bmm(K, Lc0) ** 2, axis=(1, 2))
        trMinv = pt.sum(Linv**2, axis=(1, 2))
        tr = (trA0 - trK0) / s2 + s20 * ((bt.nobs - bt.s) / s2 + trMinv)
        logdetV = (bt.nobs - bt.s) * pt.log(s2) + ch.logdet()
        return 0.5 * (tr + logdetV), (Lc0, K, ch, W)

    def cluster_kl(self, bt, beta, theta, sigma, beta0, theta0, sigma0) -> TensorVariable:
        """KL divergence (up to a constant) of every cluster from the model at ``phi0``, ``(C,)``."""
        out, (_, _, _, W) = self._trace_logdet(bt, theta, sigma, theta0, sigma0)
        d = beta - beta0
        quad = bquad(bt.XX, d) - pt.sum(bmv(W, d) ** 2, axis=1)
        return out + 0.5 * quad / sigma**2

    def free_kl(self, beta, sigma, beta0, sigma0) -> TensorVariable:
        """KL divergence of the observations that use no random effect."""
        s2, d = sigma**2, beta - beta0
        return 0.5 * (self.nf * sigma0**2 / s2 + self.nf * pt.log(s2)) + 0.5 * pt.dot(d, pt.dot(self.XXf, d)) / s2

    def reml_kl(self, theta, sigma, theta0, sigma0) -> TensorVariable:
        """KL divergence of the REML error contrasts from the model at ``(theta0, sigma0)``."""
        s2, s20 = sigma**2, sigma0**2
        total = 0.5 * (self.nf * s20 / s2 + self.nf * pt.log(s2))
        XVVX = s20 * self.XXf / s2**2
        for bt in self.batches:
            part, (Lc0, K, ch, W) = self._trace_logdet(bt, theta, sigma, theta0, sigma0)
            total = total + pt.sum(part)
            Q = (bt.B - bmm(bT(K), W)) / s2  # Z^T V^{-1} X
            R = ch.solve_upper(W)
            LQ = bmm(bT(Lc0), Q)
            term1 = gram(LQ, LQ)
            term2 = (pt.sum(bt.XX, axis=0) - gram(W, W) - s2 * gram(R, R)) / s2**2
            XVVX = XVVX + term1 + s20 * term2
        _, XtVX = self.gls(theta, sigma)
        total = total - 0.5 * pt.sum(spd_solve(XtVX, XVVX) * pt.eye(self.sig.p))
        return total + 0.5 * _logdet_pos(XtVX)
