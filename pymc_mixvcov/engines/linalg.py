"""Batched symbolic linear algebra for the small symmetric positive definite blocks.

Every cluster contributes an ``s x s`` block (``s`` = number of random effects in the
cluster). For small ``s`` the Cholesky factorisation and triangular solves are unrolled into
elementwise operations over the batch of clusters: this is exact, differentiable to any
order, compiles fast, and runs far faster than batched LAPACK calls on tiny matrices. Large
blocks (crossed designs) fall back to pytensor's ``cholesky`` and ``solve_triangular``.
"""

from __future__ import annotations

import pytensor.tensor as pt
from pytensor.tensor import TensorVariable

#: Largest block size that is unrolled into elementwise operations.
UNROLL_MAX = 6


class BatchedCholesky:
    """Lower Cholesky factor ``L`` of a batch of SPD matrices ``M`` of shape ``(C, s, s)``.

    Parameters
    ----------
    M : TensorVariable
        Symmetric positive definite matrices, shape ``(C, s, s)``.
    s : int
        Static block size.
    """

    def __init__(self, M: TensorVariable, s: int):
        self.s = s
        if s <= UNROLL_MAX:
            L: list[list[TensorVariable | None]] = [[None] * s for _ in range(s)]
            for j in range(s):
                d = M[:, j, j]
                for k in range(j):
                    d = d - L[j][k] ** 2
                L[j][j] = pt.sqrt(d)
                for i in range(j + 1, s):
                    e = M[:, i, j]
                    for k in range(j):
                        e = e - L[i][k] * L[j][k]
                    L[i][j] = e / L[j][j]
            self._entries = L
            self.diag = pt.stack([L[j][j] for j in range(s)], axis=1)
        else:
            self._entries = None
            self.L = pt.linalg.cholesky(M)
            self.diag = pt.diagonal(self.L, axis1=1, axis2=2)

    def logdet(self) -> TensorVariable:
        """``log det M`` per batch member, shape ``(C,)``."""
        return 2.0 * pt.sum(pt.log(self.diag), axis=1)

    def solve_lower(self, B: TensorVariable) -> TensorVariable:
        """``L^{-1} B`` for ``B`` of shape ``(C, s, m)``."""
        if self._entries is None:
            return pt.linalg.solve_triangular(self.L, B, lower=True, b_ndim=2)
        L, rows = self._entries, []
        for i in range(self.s):
            r = B[:, i, :]
            for k in range(i):
                r = r - L[i][k][:, None] * rows[k]
            rows.append(r / L[i][i][:, None])
        return pt.stack(rows, axis=1)

    def solve_upper(self, B: TensorVariable) -> TensorVariable:
        """``L^{-T} B`` for ``B`` of shape ``(C, s, m)``."""
        if self._entries is None:
            return pt.linalg.solve_triangular(pt.swapaxes(self.L, 1, 2), B, lower=False, b_ndim=2)
        L, rows = self._entries, [None] * self.s
        for i in reversed(range(self.s)):
            r = B[:, i, :]
            for k in range(i + 1, self.s):
                r = r - L[k][i][:, None] * rows[k]
            rows[i] = r / L[i][i][:, None]
        return pt.stack(rows, axis=1)


def bmm(a: TensorVariable, b: TensorVariable) -> TensorVariable:
    """Batched matrix product ``a @ b`` over the leading axis: pytensor's ``matmul``.

    One node, whatever the block sizes; the evaluator computes products of small blocks entry
    by entry over the batch (:func:`pymc_mixvcov.compilation.evaluator.thunk_of`), and ``np.matmul``
    the others. A broadcast product and a sum would take two nodes and, on blocks of 2 to 6,
    5 to 25 times as long, because NumPy's inner loops would run along the short axes.
    """
    return pt.matmul(a, b)


def gram(a: TensorVariable, b: TensorVariable) -> TensorVariable:
    """``sum_c a_c^T b_c`` for batches ``a`` ``(C, s, p)`` and ``b`` ``(C, s, q)`` (or ``(C, s)``)."""
    return pt.tensordot(a, b, axes=[[0, 1], [0, 1]])


def bmv(a: TensorVariable, x: TensorVariable) -> TensorVariable:
    """``a_c x`` (or ``a_c x_c``) for ``a`` ``(C, s, p)`` and ``x`` ``(p,)`` (or ``(C, p)``)."""
    return pt.sum(a * (x if x.ndim == 1 else x[:, None, :]), axis=-1)


def bquad(a: TensorVariable, x: TensorVariable) -> TensorVariable:
    """``x^T a_c x`` (or ``x_c^T a_c x_c``) for ``a`` ``(C, p, p)``, shape ``(C,)``."""
    xx = pt.outer(x, x)[None] if x.ndim == 1 else x[:, :, None] * x[:, None, :]
    return pt.sum(a * xx, axis=(1, 2))


def bT(a: TensorVariable) -> TensorVariable:
    """Batched transpose of the last two axes."""
    return pt.swapaxes(a, -1, -2)


def spd_solve(a: TensorVariable, b: TensorVariable) -> TensorVariable:
    """``a^{-1} b`` for one symmetric positive definite ``a`` (``p x p``) and ``b`` (``p`` or ``p x m``)."""
    p = a.type.shape[-1]
    if p == 0:  # no fixed effects: nothing to solve for
        return b
    vec = b.ndim == 1
    B = b[:, None] if vec else b
    if p is not None and p <= UNROLL_MAX:
        ch = BatchedCholesky(a[None], p)
        x = ch.solve_upper(ch.solve_lower(B[None]))[0]
    else:
        x = pt.linalg.solve(a, B, assume_a="pos", b_ndim=2)
    return x[:, 0] if vec else x
