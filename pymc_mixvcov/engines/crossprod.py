"""Weighted cross products ``G^T diag(w_o) G`` of a sparse matrix, as dense symmetric matrices.

The Schur complement of the blocked factor and the traces of its derivatives need, for a
sparse ``G`` (``rows x m``, CSR) and a few weight vectors ``w_o`` over its rows,

.. math::

    A_o = G^T \\operatorname{diag}(w_o) G = \\sum_i w_{o,i}\\, g_i g_i^T,

dense ``m x m`` matrices (``g_i`` the ``i``-th row). The work is ``sum_i nnz_i^2`` multiply-adds
per output. SciPy's sparse product is used where that is small; above
:data:`COMPILED_MIN_WORK` a compiled kernel (numba, a dependency of pytensor, imported only then)
adds each row's outer product into the lower triangle of dense outputs, tile by tile of output
rows so that the scattered additions stay in cache: on a MovieLens-sized design (6,040 rows,
1,000,209 nonzeros, ``m = 3,706``) about 0.4 s per output against 1.5 s for SciPy's product and
its conversion to a dense matrix.
Both give the same sums up to the order of the additions.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["COMPILED_MIN_WORK", "DENSE_MAX_FLOPS", "fill_upper", "weighted_crossprods"]

#: Above this many multiply-adds per output (``sum_i nnz_i^2 / 2``), the compiled kernel is used.
COMPILED_MIN_WORK = 5e5


def work(G: sp.csr_matrix) -> float:
    """Multiply-adds per output of :func:`weighted_crossprods` on ``G``."""
    nnz = np.diff(G.indptr).astype(float)
    return float(np.sum(nnz * (nnz + 1.0)) / 2.0)


#: Below this many multiply-adds of the dense product (``rows m^2``), a dense copy of a small ``G``
#: is multiplied by BLAS instead (SciPy's sparse product costs milliseconds of overhead).
DENSE_MAX_FLOPS = 2e7


def weighted_crossprods(
    G: sp.csr_matrix, weights: np.ndarray, compiled: bool | None = None, dense: np.ndarray | None = None
) -> list[np.ndarray]:
    """``[G^T diag(w_o) G for w_o in weights]`` as dense symmetric ``m x m`` arrays.

    Parameters
    ----------
    G : scipy.sparse.csr_matrix
        ``rows x m``.
    weights : ndarray
        ``(n_out, rows)``.
    compiled : bool, optional
        Force (``True``) or forbid (``False``) the compiled kernel; by default it is used when the
        work exceeds :data:`COMPILED_MIN_WORK`.
    dense : ndarray, optional
        ``G`` as a dense array, used (BLAS) when given and ``compiled`` is not forced.
    """
    weights = np.atleast_2d(np.asarray(weights, float))
    m = G.shape[1]
    if dense is not None and compiled is None:
        out = []
        for w in weights:
            prod = (dense * w[:, None]).T @ dense
            out.append(0.5 * (prod + prod.T))
        return out
    if compiled is None:
        compiled = work(G) > COMPILED_MIN_WORK
    if not compiled:
        out = []
        for w in weights:
            prod = (G.T @ sp.diags_array(w) @ G).toarray()
            out.append(0.5 * (prod + prod.T))
        return out
    from ._crossprod_kernel import lower_crossprods

    G = G.tocsr()
    if not G.has_sorted_indices:
        G = G.copy()
        G.sort_indices()
    outs = np.zeros((weights.shape[0], m, m))
    tile = max(16, min(256, 2**18 // max(m, 1)))  # about 2 MB of output rows per tile
    lower_crossprods(
        G.indptr.astype(np.int64), G.indices.astype(np.int64), np.asarray(G.data, float), weights, outs, tile
    )
    result = []
    for o in range(weights.shape[0]):
        fill_upper(outs[o])
        result.append(outs[o])
    return result


def fill_upper(a: np.ndarray, block: int = 128) -> np.ndarray:
    """Copy the strict lower triangle of the square ``a`` onto its upper triangle, in place."""
    n = a.shape[0]
    for i in range(0, n, block):
        j = min(i + block, n)
        if j < n:
            a[i:j, j:] = a[j:, i:j].T
        d = a[i:j, i:j]
        iu = np.triu_indices(j - i, 1)
        d[iu] = d.T[iu]
    return a
