"""The compiled kernel of :mod:`pymc_mixvcov.engines.crossprod` (imported only for large products)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def lower_crossprods(indptr, indices, data, weights, out, tile):  # pragma: no cover - compiled
    """``out[o] += sum_i weights[o, i] g_i g_i^T`` on the lower triangle (``g_i`` row ``i`` of a CSR
    matrix with sorted column indices).

    The output rows are visited in tiles of ``tile`` rows, every row of the matrix once per tile:
    the scattered additions then stay within a block of the output small enough for the cache.
    """
    n_out = weights.shape[0]
    m = out.shape[1]
    nrow = indptr.size - 1
    for r0 in range(0, m, tile):
        r1 = min(r0 + tile, m)
        for i in range(nrow):
            a0 = indptr[i]
            a1 = indptr[i + 1]
            lo = np.searchsorted(indices[a0:a1], r0) + a0
            if lo >= a1 or indices[lo] >= r1:
                continue
            hi = np.searchsorted(indices[a0:a1], r1) + a0
            for o in range(n_out):
                w = weights[o, i]
                if w == 0.0:
                    continue
                dst = out[o]
                for a in range(lo, hi):
                    va = w * data[a]
                    row = dst[indices[a]]
                    for b in range(a0, a + 1):
                        row[indices[b]] += va * data[b]
