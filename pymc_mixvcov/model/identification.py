r"""Random-effect terms whose variances the data cannot tell apart (checked before fitting).

Two terms ``k`` and ``m`` contribute ``Z_k G_k Z_k^T + Z_m G_m Z_m^T`` to the marginal covariance
``V``. When their grouping factors split the observations into the same groups (each level of one
is exactly one level of the other: the same factor relabelled, a term written twice, or a nested
factor ``a:b`` with one ``b`` per ``a``) and an effect column of one is proportional to an effect
column of the other (``z_m = c z_k``, the intercepts of both say), the two random effects enter
``V`` through the same column of ``Z`` and the likelihood depends on their variances only through
``sigma_k^2 + c^2 sigma_m^2``. The information matrix is then singular along the difference, at
the exact optimum; at the optimiser's (within its tolerance of the optimum) it is merely
ill-conditioned, and the standard errors of both variances come out huge but finite. Nothing in
the fit shows the cause, so it is named before fitting.
"""

from __future__ import annotations

import numpy as np

__all__ = ["unidentified_terms"]


def _n_groups(codes: np.ndarray) -> int:
    """How many levels of ``codes`` (``-1``: not used) the observations use (a linear count)."""
    used = codes[codes >= 0]
    return int(np.count_nonzero(np.bincount(used))) if used.size else 0


def _same_partition(a: np.ndarray, b: np.ndarray, groups: int) -> bool:
    """Whether level codes ``a`` and ``b`` (``-1``: not used), both using ``groups`` levels, split
    the observations alike: they do when their distinct pairs are no more than ``groups``."""
    used = a >= 0
    if not np.array_equal(used, b >= 0) or not used.any():
        return False
    pairs = np.unique(np.stack([a[used], b[used]], axis=1), axis=0).shape[0]
    return pairs == groups


def _proportional(x: np.ndarray, y: np.ndarray, tol: float = 1e-10) -> bool:
    """Whether ``y = c x`` for a constant ``c != 0`` (Cauchy-Schwarz with equality)."""
    xx, yy, xy = float(x @ x), float(y @ y), float(x @ y)
    return xx > 0 and yy > 0 and xy * xy >= (1.0 - tol) * xx * yy


def unidentified_terms(spec, sd_labels: list[str]) -> list[str]:
    """Messages naming the pairs of random-effect terms whose variances are not separately
    identified (see the module docstring); empty when there are none.

    ``sd_labels``: the labels of the sd scale (fixed effects first, then each term's lower
    triangle column-major: SDs on the diagonal), used to name the variances.
    """
    terms = list(spec.terms)
    start = spec.fixed_index.size
    sd_index, off = [], start
    for t in terms:
        lower = [(i, j) for j in range(t.r) for i in range(j, t.r)]
        sd_index.append([off + lower.index((j, j)) for j in range(t.r)])
        off += len(lower)
    groups = [_n_groups(np.asarray(t.codes)) for t in terms]
    out = []
    for k in range(len(terms)):
        for m in range(k + 1, len(terms)):
            a, b = terms[k], terms[m]
            if groups[k] != groups[m] or not _same_partition(np.asarray(a.codes), np.asarray(b.codes), groups[k]):
                continue
            used = np.asarray(a.codes) >= 0
            za, zb = np.asarray(a.z, float)[used], np.asarray(b.z, float)[used]
            shared = [(i, j) for i in range(a.r) for j in range(b.r) if _proportional(za[:, i], zb[:, j])]
            if not shared:
                continue
            names = ", ".join(f"{sd_labels[sd_index[k][i]]} and {sd_labels[sd_index[m][j]]}" for i, j in shared)
            same = (
                f"both terms group the observations by {a.group!r}"
                if a.group == b.group
                else f"{a.group!r} and {b.group!r} group the observations identically (each level of one is one "
                "level of the other)"
            )
            out.append(
                f"random effects {names} are not separately identified: {same} and the effects have "
                "proportional design columns, so the likelihood depends only on a sum of their variances. Their "
                "estimates are arbitrary and their standard errors meaningless; drop one of the terms"
            )
    return out
