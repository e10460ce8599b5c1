"""Per-cluster pieces of a model of several clusters on the blocked engines.

The blocked engines (:mod:`pymc_mixvcov.engines.blocked`, :mod:`pymc_mixvcov.engines.blocked_laplace`)
evaluate a model as a whole. Its clusters (connected components of the random effects; Pastes'
``(1 | batch/cask)`` has 10, a nested design at scale thousands, a partially crossed design a few)
are independent: the marginal covariance ``V`` (Gaussian) and the Laplace matrix ``H`` (GLMMs) are
block diagonal over them, so the log-likelihood is the sum of the clusters' and

    the log-likelihood, score and information of cluster ``c`` are those of the model restricted to
    its rows, at the same parameters,

exactly (``V_c``, ``H_c`` are the blocks; a GLMM's inner modes separate too, so the restricted
model's modes are the restriction of the whole model's). This module evaluates those restricted
models (*sub-models*: :func:`restrict`), which gives every piece from one code path and exactly,
with no finite differences. Grouped by size:

- clusters of at most :data:`DENSE_MAX` random effects (the size up to which ``engine="auto"``
  itself prefers dense per-cluster factors, :data:`~pymc_mixvcov.engines.select.BLOCKED_MIN_EFFECTS`)
  are evaluated together, batched by size with dense ``s x s`` matrices in NumPy: Gaussian models
  by :func:`pymc_mixvcov.engines.dense_clusters.gaussian_cluster_derivatives`, GLMMs by
  :class:`pymc_mixvcov.engines.jets.JetLaplace` (the cluster Laplace engine's closed forms), at the
  restriction of the whole model's modes; one sub-model per chunk of at most
  :data:`CHUNK_BUDGET` doubles of work arrays, nothing compiled;
- larger clusters (a crossed component) one by one, each by the blocked engine on its sub-model
  (:func:`pymc_mixvcov.engines.blocked.ml_derivatives`,
  :class:`pymc_mixvcov.engines.blocked_laplace.BlockedJetLaplace`), without the terms none of its
  rows use (:func:`without_empty_terms`).

The design work (sub-models, their statistics and layouts, index maps) is done once and kept. The
per-observation derivatives of a GLMM's log-density are evaluated once, on the whole model's
linear predictor at its modes, and shared by the sub-models (:class:`_SharedJets`). 1,000 clusters
of 3 effects beside a crossed component of 400 (``benchmarks/blocked_clusters.py``) then cost
0.02 s (Gaussian) and 0.05 s (binomial) from scratch with one BLAS thread, a tenth of one
evaluation of the whole model's information; one blocked sub-model per cluster took 1.3-1.6 s.

Rows that use no random effect belong to no cluster (``structure.free``): their log-likelihood
is returned apart (``loglik_free``), as the cluster engine does; they are in no cluster's pieces.
REML fits get the ML pieces at their estimates, as from the cluster engine (their scores and
sandwiches are refused upstream).

Why not split one evaluation of the whole model: the log-likelihood would split (the factor of a
matrix that is block diagonal up to a permutation has no fill between components, so ``log|M|``
splits by the factor's rows; the penalised residual sum of squares by rows and effects) and so
would the score (merDeriv's casewise scores sum within a cluster to its score; checked in the
tests), but the information does not: the blocked engine's traces are sums over all levels of a
term, and splitting them by cluster needs every cluster's own blocks of ``M^{-1}``, which is what a
sub-model's evaluation computes anyway.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..model.weights import half_log_weights, whitened
from .marginal import LOG2PI, build_structure
from .select import BLOCKED_MIN_EFFECTS

__all__ = [
    "CHUNK_BUDGET",
    "DENSE_MAX",
    "ClusterGroups",
    "GaussianClusterPieces",
    "LaplaceClusterPieces",
    "restrict",
    "without_empty_terms",
]

#: Clusters with at most this many random effects are evaluated batched with dense matrices; larger
#: ones by the blocked engine, one sub-model each.
DENSE_MAX = BLOCKED_MIN_EFFECTS

#: Doubles of work arrays per batched evaluation of small clusters (about ``P s^2`` per cluster of
#: ``s`` effects and ``P`` parameters plus ``P R^2`` per observation using ``R`` effects): 16 MB.
CHUNK_BUDGET = 1 << 21


def restrict(spec, rows: np.ndarray):
    """The model ``spec`` on the observations ``rows`` (sorted): the same parameters and terms, each
    term with the levels those rows use (renumbered in their order)."""
    rows = np.asarray(rows)
    terms = []
    for t in spec.terms:
        c = t.codes[rows]
        ok = c >= 0
        used, inv = np.unique(c[ok], return_inverse=True)
        codes = np.full(rows.size, -1)
        codes[ok] = inv
        terms.append(replace(t, codes=codes, z=t.z[rows], levels=[t.levels[k] for k in used]))
    w = getattr(spec, "weights", None)
    return replace(
        spec,
        X=np.asarray(spec.X)[rows],
        y=np.asarray(spec.y)[rows],
        offset=np.asarray(spec.offset)[rows],
        weights=None if w is None else np.asarray(w)[rows],
        terms=terms,
    )


def without_empty_terms(sub, sig) -> tuple[object, object, np.ndarray, list[int]]:
    """A sub-model without the terms none of its rows use (a component of a partially crossed
    design that meets only some factors), for the blocked engines, which expect every term to have
    levels: ``(sub, sig, keep, terms)`` with ``keep`` the entries of ``phi = (beta, theta, tail)`` it
    has and ``terms`` the model's terms it keeps. The dropped terms' ``theta`` enter none of its
    pieces (their derivatives are 0)."""
    p, nt = sig.p, sig.n_theta
    keep_t = [k for k, t in enumerate(sub.terms) if t.levels]
    if len(keep_t) == len(sub.terms):
        return sub, sig, np.arange(sig.dim), keep_t
    off = np.concatenate([[0], np.cumsum([t.r * (t.r + 1) // 2 for t in sub.terms])])
    theta = np.concatenate([np.arange(off[k], off[k + 1]) for k in keep_t]).astype(int)
    keep = np.concatenate([np.arange(p), p + theta, np.arange(p + nt, sig.dim)])
    sub = replace(sub, terms=[sub.terms[k] for k in keep_t])
    return sub, replace(sig, r=tuple(t.r for t in sub.terms)), keep, keep_t


class ClusterGroups:
    """The clusters of ``structure`` in the groups they are evaluated in: chunks of small clusters and
    the large ones alone, each with the rows it holds (clusters without rows hold no likelihood:
    their pieces are 0)."""

    def __init__(self, spec, structure, dim: int, dense_max: int | None = None):
        dense_max = DENSE_MAX if dense_max is None else dense_max
        oc = np.asarray(structure.obs_cluster)
        C = structure.n_clusters
        sizes = np.asarray(structure.sizes)
        order = np.argsort(oc, kind="stable")  # rows cluster by cluster, in data order within; free first
        counts = np.bincount(oc[oc >= 0], minlength=C)
        starts = int(np.sum(oc < 0)) + np.concatenate([[0], np.cumsum(counts)])
        self.rows = [order[starts[c] : starts[c + 1]] for c in range(C)]
        self.free = order[: starts[0]]
        R = sum(t.r for t in spec.terms)
        small = np.flatnonzero((sizes <= dense_max) & (counts > 0))
        small = small[np.argsort(sizes[small], kind="stable")]  # few sizes per chunk
        self.chunks: list[np.ndarray] = []
        cost = dim * (sizes[small].astype(float) ** 2 + counts[small] * R * R)
        start, acc = 0, 0.0
        for k, ck in enumerate(cost):
            if k > start and acc + ck > CHUNK_BUDGET:
                self.chunks.append(small[start:k])
                start, acc = k, 0.0
            acc += ck
        if start < small.size:
            self.chunks.append(small[start:])
        self.large = np.flatnonzero((sizes > dense_max) & (counts > 0))
        self.n_clusters = C
        self.obs_cluster = oc

    def rows_of(self, clusters: np.ndarray) -> np.ndarray:
        """The rows of ``clusters``, sorted."""
        return np.sort(np.concatenate([self.rows[c] for c in clusters]))

    def sub_structure(self, sub_spec, rows: np.ndarray):
        """The cluster structure of a sub-model of whole clusters, and the model's cluster of each of
        its clusters."""
        st = build_structure(sub_spec)
        orig = np.empty(st.n_clusters, int)
        orig[st.obs_cluster] = self.obs_cluster[rows]  # every sub-model cluster has rows
        return st, orig


def _key(phi: np.ndarray) -> bytes:
    return np.asarray(phi, float).tobytes()


# -- Gaussian models -----------------------------------------------------------------------------------
class GaussianClusterPieces:
    """Every cluster's ML log-likelihood, gradient, Hessian and expected information in
    ``phi = (beta, theta, sigma)`` for the blocked Gaussian engine (module docstring).

    Parameters
    ----------
    spec, structure :
        The model and its clusters (``structure.sizes``, ``obs_cluster``).
    sig : Signature
        ``p`` and the terms' sizes (``phi``'s layout).
    """

    def __init__(self, spec, structure, sig):
        self.spec, self.structure, self.sig = spec, structure, sig
        self.groups = ClusterGroups(spec, structure, sig.dim)
        self._chunks = None
        self._large = None
        self._last = None

    def _build(self) -> None:
        from .blocked import blocked_data

        g = self.groups
        self._chunks = []
        for ids in g.chunks:
            rows = g.rows_of(ids)
            st, orig = g.sub_structure(restrict(self.spec, rows), rows)
            half = np.zeros(st.n_clusters) if st.half_logw is None else np.asarray(st.half_logw, float)
            self._chunks.append((st, orig, half))
        self._large = []
        for c in g.large:
            sub, _, keep, _ = without_empty_terms(restrict(self.spec, g.rows[c]), self.sig)
            self._large.append((c, blocked_data(sub), keep))

    def __call__(self, phi: np.ndarray) -> dict[str, np.ndarray]:
        """``loglik`` ``(C,)`` (with each cluster's share of the prior weights' constant), ``grad``
        ``(C, dim)``, ``hess`` and ``expected`` ``(C, dim, dim)``, in the model's cluster order."""
        from .blocked import ml_derivatives
        from .dense_clusters import gaussian_cluster_derivatives

        key = _key(phi)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        if self._chunks is None:
            self._build()
        C, dim = self.groups.n_clusters, self.sig.dim
        out = {
            "loglik": np.zeros(C),
            "grad": np.zeros((C, dim)),
            "hess": np.zeros((C, dim, dim)),
            "expected": np.zeros((C, dim, dim)),
        }
        for st, orig, half in self._chunks:
            for bt in st.batches:
                res = gaussian_cluster_derivatives(bt, self.sig, phi, st.b0)
                ids = orig[bt.clusters]
                out["loglik"][ids] = res["loglik"] + half[bt.clusters]
                for k in ("grad", "hess", "expected"):
                    out[k][ids] = res[k]
        for c, d, keep in self._large:
            res = ml_derivatives(d, phi[keep], expected=True)  # the sub-model's loglik has its weights' constant
            out["loglik"][c] = res["loglik"]
            out["grad"][c, keep] = res["grad"]
            for k in ("hess", "expected"):
                out[k][c][np.ix_(keep, keep)] = res[k]
        self._last = (key, out)
        return out

    def free_loglik(self, phi: np.ndarray) -> float:
        """The log-likelihood of the rows that use no random effect (0 without such rows):
        ``-n_f/2 log(2 pi sigma^2) - r^T r / (2 sigma^2)`` (rows scaled by ``sqrt(w)``) plus their
        weights' constant ``sum log(w) / 2``."""
        rows = self.groups.free
        if not rows.size:
            return 0.0
        X, y, _ = whitened(self.spec)
        hl = half_log_weights(self.spec)
        p = self.sig.p
        r = y[rows] - X[rows] @ np.asarray(phi[:p], float)
        s2 = float(phi[-1]) ** 2
        const = 0.0 if hl is None else float(np.sum(hl[rows]))
        return float(-0.5 * rows.size * (LOG2PI + np.log(s2)) - (r @ r) / (2.0 * s2) + const)


# -- GLMMs (Laplace) -------------------------------------------------------------------------------------
class _SharedJets:
    """The per-observation derivatives of the log-density, evaluated once on the whole model's linear
    predictor and handed to the sub-models by rows (``jets(order)(eta, y, nat)`` as they call it).

    A sub-model asks at the restriction of the whole model's modes, where its ``eta`` is the whole
    model's on its rows; at any other ``eta`` its rows are evaluated afresh (within the whole
    model's arrays, which the compiled function's per-observation constants need).
    """

    def __init__(self, jet):
        self.jet = jet  # the whole model's BlockedJetLaplace
        self.eta = None
        self._raw: dict = {}

    def at(self, eta: np.ndarray) -> None:
        self.eta = np.asarray(eta, float)
        self._raw = {}

    def _full(self, order: int, nat: np.ndarray, eta: np.ndarray | None = None) -> list[np.ndarray]:
        if eta is not None:
            return [np.asarray(a) for a in self.jet._jets(order)(eta, self.jet.y, nat)]
        key = (order, nat.tobytes())
        if key not in self._raw:
            self._raw[key] = self._full(order, nat, self.eta)
        return self._raw[key]

    def rows(self, rows: np.ndarray):
        """A ``jets`` function for the sub-model of ``rows``."""

        def jets(order: int):
            def call(eta, y, nat):
                nat = np.asarray(nat, float)
                eta = np.asarray(eta, float)
                mine = self.eta[rows]
                if np.all(np.abs(eta - mine) <= 1e-10 * (1.0 + np.abs(mine))):
                    raw = self._full(order, nat)
                else:
                    full = self.eta.copy()
                    full[rows] = eta
                    raw = self._full(order, nat, full)
                return [a[rows] for a in raw]

            return call

        return jets


class LaplaceClusterPieces:
    """Every cluster's Laplace log-likelihood, gradient and (``order 2``) Hessian in
    ``phi = (beta, theta, psi)`` for the blocked Laplace engine (module docstring), at the whole
    model's modes ``v`` (in its blocked layout).

    Parameters
    ----------
    spec, structure, sig :
        The model, its clusters, and its Laplace signature (``phi``'s layout).
    jet : BlockedJetLaplace
        The whole model's evaluator (its layout and compiled per-observation derivatives).
    """

    def __init__(self, spec, structure, sig, jet):
        self.spec, self.structure, self.sig, self.jet = spec, structure, sig, jet
        self.groups = ClusterGroups(spec, structure, sig.dim)
        self.shared = _SharedJets(jet)
        self._chunks = None
        self._large = None
        self._last = None
        lay = jet.lay
        self._full_off = {bt.spec_index: bt.off for bt in lay.terms}

    def _full_positions(self, rows: np.ndarray, k: int, j: int) -> np.ndarray:
        """Positions in the whole model's layout of effect ``j`` of term ``k`` for ``rows`` (-1 unused)."""
        t = self.spec.terms[k]
        c = t.codes[rows]
        return np.where(c >= 0, self._full_off[k] + np.maximum(c, 0) * t.r + j, -1)

    def _build(self) -> None:
        from .blocked_laplace import BlockedJetLaplace
        from .jets import JetLaplace

        g, spec = self.groups, self.spec
        slot_off = np.concatenate([[0], np.cumsum([t.r for t in spec.terms])])
        self._chunks = []
        for ids in g.chunks:
            rows = g.rows_of(ids)
            sub = restrict(spec, rows)
            st, orig = g.sub_structure(sub, rows)
            jl = JetLaplace(sub, st, self.sig, self.shared.rows(rows))
            # each batch's modes as positions of the whole model's: idx[b][row, local] = position
            batch_of, row_of = st.locate()
            idx = [np.zeros((bt.clusters.size, bt.s), int) for bt in st.batches]
            soc = st.obs_cluster
            for k, t in enumerate(spec.terms):
                for j in range(t.r):
                    local = st.obs_pos[:, slot_off[k] + j]
                    full = self._full_positions(rows, k, j)
                    ok = local >= 0
                    for b, ix in enumerate(idx):
                        sel = ok & (batch_of[np.maximum(soc, 0)] == b)
                        ix[row_of[soc[sel]], local[sel]] = full[sel]
            self._chunks.append((jl, st, orig, idx))
        self._large = []
        for c in g.large:
            rows = g.rows[c]
            sub, sub_sig, keep, kept = without_empty_terms(restrict(spec, rows), self.sig)
            bj = BlockedJetLaplace(sub, sub_sig, self.shared.rows(rows))
            idx = np.zeros(bj.lay.q, int)
            off = {bt.spec_index: bt.off for bt in bj.lay.terms}
            for ks, (k, t) in enumerate(zip(kept, sub.terms, strict=True)):
                ok = t.codes >= 0
                for j in range(t.r):
                    idx[off[ks] + t.codes[ok] * t.r + j] = self._full_positions(rows, k, j)[ok]
            self._large.append((c, bj, idx, keep))

    def __call__(self, phi: np.ndarray, v: np.ndarray, order: int) -> dict[str, np.ndarray]:
        """``loglik`` ``(C,)``, ``loglik_free`` (the rows without random effects), ``grad``
        ``(C, dim)`` for ``order >= 1`` and ``hess`` ``(C, dim, dim)`` for ``order 2``."""
        key = _key(phi) + np.asarray(v, float).tobytes()
        last = self._last
        if last is not None and last[0] == key and last[1] >= order:
            return last[2]
        if self._chunks is None:
            self._build()
        jet = self.jet
        beta, theta, _ = jet._split(phi)
        eta = jet._eta(beta, jet._t(theta), v)
        self.shared.at(eta)
        C, dim = self.groups.n_clusters, self.sig.dim
        out = {"loglik": np.zeros(C)}
        if order >= 1:
            out["grad"] = np.zeros((C, dim))
        if order >= 2:
            out["hess"] = np.zeros((C, dim, dim))
        for jl, st, orig, idx in self._chunks:
            res = jl.evaluate(phi, [v[ix] for ix in idx], order)
            for b, bt in enumerate(st.batches):
                ids = orig[bt.clusters]
                for k in out:
                    out[k][ids] = res[k][b]
        for c, bj, idx, keep in self._large:
            res = bj.evaluate(phi[keep], v[idx], order)
            out["loglik"][c] = res["loglik"]
            if order >= 1:
                out["grad"][c, keep] = res["grad"]
            if order >= 2:
                out["hess"][c][np.ix_(keep, keep)] = res["hess"]
        free = self.groups.free
        out["loglik_free"] = float(np.sum(jet._jet(2, eta, phi)[0][free])) if free.size else 0.0
        self._last = (key, order, out)
        return out
