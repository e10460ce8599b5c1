"""The blocked layout of a Gaussian mixed model and its sufficient statistics (computed once).

The random effects of all terms are laid out term by term, terms ordered by their number of
random effects, most first (MixedModels.jl's order; Bates et al.). Term ``k`` has ``n_k`` levels
of ``r_k`` effects each, at positions ``off_k + level * r_k + j``. The first term forms *block 1*
(``q_1 = n_1 r_1`` effects), all other terms *block 2* (``q_2`` effects). Every observation uses at
most one level of each term, so the block ``C_11`` of ``C = Z^T Z`` is block diagonal with one
``r_1 x r_1`` block per level; ``C_12`` is sparse and ``C_22`` (the other terms among themselves)
is sparse as well. Only these moments enter the likelihood:

.. math::

    C = Z^T Z, \\quad Z^T X, \\quad Z^T y, \\quad X^T X, \\quad X^T y, \\quad y^T y,

with ``y`` net of the offset and of its least-squares fit on ``X``: ``y - X b_0`` with
``b_0 = (X^T X)^{-1} X^T y``. The likelihood of ``y`` at ``beta`` is that of ``y - X b_0`` at
``beta - b_0`` (the residual ``y - X beta`` is the same), so nothing changes but rounding: the
moments ``y^T y``, ``X^T y`` of a response with a large mean (``y`` near ``10^6`` with residual SD
``1``) cancel in ``r^T r = y^T y - 2 beta^T X^T y + beta^T X^T X beta`` and lose about
``2 log10(mean / SD)`` digits, those of ``y - X b_0`` do not. The layout also keeps ``Z``, ``X`` and
``y - X b_0`` for observation-level scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from ..model.weights import half_log_weights, whitened
from .crossprod import DENSE_MAX_FLOPS

__all__ = ["BlockedData", "LayoutTerm", "blocked_data", "centred_response"]


def centred_response(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(b0, y - X b0)`` with ``b0`` the least-squares coefficients of ``y`` on ``X`` (see the module
    docstring); ``X`` without columns: ``b0`` empty and ``y`` as it is."""
    if X.shape[1] == 0:
        return np.zeros(0), y.copy()
    b0 = np.linalg.lstsq(X, y, rcond=None)[0]
    return b0, y - X @ b0


@dataclass(frozen=True)
class LayoutTerm:
    """One random-effect term in the blocked layout: positions ``off + level * r + j``."""

    spec_index: int
    r: int
    n_levels: int
    off: int
    theta_off: int  # start of its entries in theta (spec order)
    # mean over levels of the term's diagonal block of C (r x r): the data's scale per effect
    c_mean: np.ndarray = field(repr=False, compare=False)

    @property
    def q(self) -> int:
        return self.r * self.n_levels

    @property
    def sl(self) -> slice:
        return slice(self.off, self.off + self.q)

    def lower(self) -> list[tuple[int, int]]:
        """Entries ``(i, j)`` of the lower triangle, column-major (the order of ``theta``)."""
        return [(i, j) for j in range(self.r) for i in range(j, self.r)]


@dataclass(frozen=True)
class BlockedData:
    """Sufficient statistics of the whole model in the blocked layout (see the module docstring).

    ``C11`` holds the ``n_1`` diagonal blocks of ``C`` of the first term (``(n_1, r_1, r_1)``);
    ``C12`` (CSR, sorted indices) and ``C22`` (dense) are the other blocks of ``C`` in block
    coordinates, ``C`` the whole matrix (CSR).
    """

    terms: list[LayoutTerm]
    n_theta: int
    n: int
    p: int
    q: int
    q1: int
    C: sp.csr_matrix = field(repr=False)
    C11: np.ndarray = field(repr=False)
    C12: sp.csr_matrix = field(repr=False)
    C22: np.ndarray = field(repr=False)  # dense q2 x q2
    ZX: np.ndarray = field(repr=False)
    Zy: np.ndarray = field(repr=False)
    XX: np.ndarray = field(repr=False)
    Xy: np.ndarray = field(repr=False)
    yy: float
    # Lambda's sparsity: for each nonzero, its row, column and index in theta
    lam_rows: np.ndarray = field(repr=False)
    lam_cols: np.ndarray = field(repr=False)
    lam_theta: np.ndarray = field(repr=False)
    Z: sp.csr_matrix = field(repr=False)  # (n, q)
    X: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)  # net of the offset and of X b0
    # C12's row of each stored entry; C21 = C12^T (CSR) and, for each of its entries, C12's entry
    C12_rows: np.ndarray = field(repr=False)
    C21: sp.csr_matrix = field(repr=False)
    C21_perm: np.ndarray = field(repr=False)
    # all terms scalar: Lambda is diagonal, its diagonal theta[lam_index]
    lam_index: np.ndarray | None = field(repr=False)
    # C12 as a dense array where its dense cross products are cheap (crossprod.DENSE_MAX_FLOPS)
    C12_dense: np.ndarray | None = field(repr=False)
    # the last factor built (blocked.factor_at): a value, then the derivatives at the same point
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    #: prior weights: sum log(w) / 2, added to the log-likelihood of the scaled rows (0 without)
    half_logw: float = 0.0
    #: the least-squares coefficients ``b0`` taken out of the response (module docstring): the
    #: statistics are those of ``y - X b0``, the engine's formulas use ``beta - b0``
    b0: np.ndarray | None = field(default=None, repr=False, compare=False)

    def with_response(self, y: np.ndarray) -> BlockedData:
        """The same layout for another response ``y`` (net of the offset, rows scaled as ``X``):
        its least-squares fit taken out and its moments ``Z^T y``, ``X^T y``, ``y^T y``."""
        b0, yc = centred_response(self.X, np.asarray(y, float))
        return replace(self, Zy=np.asarray(self.Z.T @ yc), Xy=self.X.T @ yc, yy=float(yc @ yc), y=yc, b0=b0)

    @property
    def q2(self) -> int:
        return self.q - self.q1

    @property
    def r1(self) -> int:
        return self.terms[0].r

    @property
    def n1(self) -> int:
        return self.terms[0].n_levels

    def factors(self, theta: np.ndarray) -> list[np.ndarray]:
        """The ``r_k x r_k`` lower-triangular factors ``L_k`` of the terms (layout order) from ``theta``."""
        out = []
        for bt in self.terms:
            L = np.zeros((bt.r, bt.r))
            for a, (i, j) in enumerate(bt.lower()):
                L[i, j] = theta[bt.theta_off + a]
            out.append(L)
        return out

    def lam(self, theta: np.ndarray) -> sp.csr_matrix:
        """``Lambda`` (``q x q``, block diagonal, ``L_k`` on every level of term ``k``)."""
        return sp.csr_matrix(
            (np.asarray(theta, float)[self.lam_theta], (self.lam_rows, self.lam_cols)), shape=(self.q, self.q)
        )


def blocked_data(spec) -> BlockedData:
    """Build the blocked layout and statistics of a Gaussian ``spec`` (NumPy/SciPy, once)."""
    X, y, row_scale = whitened(spec)  # precision weights: rows scaled by sqrt(w_i)
    n, p = X.shape
    b0, y = centred_response(np.asarray(X, float), np.asarray(y, float))
    theta_off, off_t = [], 0
    for t in spec.terms:
        theta_off.append(off_t)
        off_t += t.r * (t.r + 1) // 2
    # most random effects first; ties keep the model's order
    order = sorted(range(len(spec.terms)), key=lambda k: -len(spec.terms[k].levels) * spec.terms[k].r)
    rows, cols, vals, offs = [], [], [], []
    off = 0
    for k in order:
        t = spec.terms[k]
        used = np.flatnonzero(t.codes >= 0)
        for j in range(t.r):
            rows.append(used)
            cols.append(off + t.codes[used] * t.r + j)
            vals.append(np.asarray(t.z[used, j], float) * (1.0 if row_scale is None else row_scale[used]))
        offs.append(off)
        off += t.r * len(t.levels)
    q = off
    Z = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, q))
    Z.sum_duplicates()
    Zt = Z.T.tocsr()
    C = (Zt @ Z).tocsr()
    C.sum_duplicates()
    C.sort_indices()
    terms = []
    for k, o in zip(order, offs, strict=True):
        t = spec.terms[k]
        nl, r = len(t.levels), t.r
        blk = C[o : o + nl * r, o : o + nl * r].tocoo()
        same = blk.row // r == blk.col // r
        diag = np.zeros((nl, r, r))
        np.add.at(diag, (blk.row[same] // r, blk.row[same] % r, blk.col[same] % r), blk.data[same])
        terms.append(LayoutTerm(k, r, nl, o, theta_off[k], diag.mean(axis=0) if nl else np.zeros((r, r))))
    q1 = terms[0].q
    r1, n1 = terms[0].r, terms[0].n_levels
    c11 = C[:q1, :q1].tocoo()
    C11 = np.zeros((n1, r1, r1))
    np.add.at(C11, (c11.row // r1, c11.row % r1, c11.col % r1), c11.data)
    C12 = C[:q1, q1:].tocsr()
    C12.sort_indices()
    C22 = C[q1:, q1:].toarray()
    C12_rows = np.repeat(np.arange(q1), np.diff(C12.indptr))
    # the transpose's structure, with where each entry comes from
    order = sp.csr_matrix((np.arange(C12.nnz, dtype=float) + 1.0, C12.indices, C12.indptr), shape=C12.shape).T.tocsr()
    order.sort_indices()
    C21_perm = order.data.astype(np.int64) - 1
    C21 = sp.csr_matrix((C12.data[C21_perm], order.indices, order.indptr), shape=(C12.shape[1], q1))
    lam_index = None
    if all(bt.r == 1 for bt in terms):
        lam_index = np.zeros(q, np.int64)
        for bt in terms:
            lam_index[bt.sl] = bt.theta_off
    lr, lc, lt = [], [], []
    for bt in terms:
        lev = np.arange(bt.n_levels)
        for a, (i, j) in enumerate(bt.lower()):
            lr.append(bt.off + lev * bt.r + i)
            lc.append(bt.off + lev * bt.r + j)
            lt.append(np.full(bt.n_levels, bt.theta_off + a))
    return BlockedData(
        half_logw=0.0 if row_scale is None else float(np.sum(half_log_weights(spec))),
        b0=b0,
        terms=terms,
        n_theta=off_t,
        n=n,
        p=p,
        q=q,
        q1=q1,
        C=C,
        C11=C11,
        C12=C12,
        C22=C22,
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
        C12_rows=C12_rows,
        C21=C21,
        C21_perm=C21_perm,
        lam_index=lam_index,
        C12_dense=C12.toarray() if q1 * (q - q1) ** 2 <= DENSE_MAX_FLOPS else None,
    )
