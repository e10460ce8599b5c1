"""Cluster-robust (sandwich) covariance matrices, in R's ``sandwich`` vocabulary. Pure NumPy.

Nothing here knows about mixed models: every function takes arrays (scores, information
matrices, cluster labels) and returns arrays, so the same code serves any model that yields
per-observation or per-cluster scores and an information matrix.

Conventions (unscaled, unlike R's ``bread``/``meat``, which carry factors ``n`` and ``1/n`` that
cancel):

* :func:`estfun` -- the scores ``s_i = d log L_i / d theta``, one row per unit, summed within
  clusters when labels are given;
* :func:`bread` -- the inverse information ``A^{-1}``;
* :func:`meat` -- ``B = sum_g s_g s_g^T`` over clusters ``g``;
* :func:`sandwich` -- ``A^{-1} B A^{-1}``.

Small-sample adjustments (``adjust``):

``"CR0"``
    ``A^{-1} B A^{-1}`` (Liang and Zeger, 1986).
``"CR1"``
    ``G / (G - 1)`` times CR0, ``G`` the number of clusters (Stata's and ``sandwich::vcovCL``'s
    cluster adjustment without the ``(n - 1)/(n - k)`` regression factor).
``"CR3"``
    the one-step leave-one-cluster-out jackknife (MacKinnon, Nielsen and Webb, 2023, "CV3"):
    removing cluster ``g`` moves the estimate by one Newton step,
    ``delta_g = -(A - A_g)^{-1} s_g``, with ``A_g`` cluster ``g``'s own information contribution,
    and ``V = (G - 1)/G sum_g delta_g delta_g^T``.

Multi-way clustering (Cameron, Gelbach and Miller, 2011) sums, over every non-empty subset
``S`` of the clustering variables, ``(-1)^{|S|+1}`` times the one-way sandwich clustered on the
intersection of the variables in ``S`` (each with its own CR1 factor ``G_S/(G_S - 1)``).

Centred scores (``centre=True``): at a maximum-likelihood estimate the cluster scores sum to
zero. At an estimate that maximises something else, e.g. the log-likelihood plus a log prior
(a posterior mode), they sum to ``-grad log p(theta)``, not zero, and ``sum_g s_g s_g^T`` would
count that constant offset as variability. With ``centre=True`` every clustering's cluster
scores are replaced by ``s_g - s_bar``, ``s_bar = G^{-1} sum_g s_g``, before the meat (and
before CR3's steps), so that the meat is ``G`` times the empirical covariance of the cluster
scores (Szpiro, Rice and Lumley, 2010; Mueller, 2013). Where the scores sum to zero centring
changes nothing.

References
----------
Liang, K.-Y. and Zeger, S. L. (1986). Longitudinal data analysis using generalized linear
models. Biometrika 73, 13-22.
Cameron, A. C., Gelbach, J. B. and Miller, D. L. (2011). Robust inference with multiway
clustering. Journal of Business & Economic Statistics 29, 238-249.
MacKinnon, J. G., Nielsen, M. O. and Webb, M. D. (2023). Cluster-robust inference: a guide to
empirical practice. Journal of Econometrics 232, 272-299.
Mueller, U. K. (2013). Risk of Bayesian inference in misspecified models, and the sandwich
covariance matrix. Econometrica 81(5), 1805-1849.
Szpiro, A. A., Rice, K. M. and Lumley, T. (2010). Model-robust regression and a Bayesian
"sandwich" estimator. Annals of Applied Statistics 4(4), 2099-2113.
Zeileis, A., Koell, S. and Graham, N. (2020). Various versatile variances: an object-oriented
implementation of clustered covariances in R. Journal of Statistical Software 95(1).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

from ..errors import MixVcovError, MixVcovWarning

__all__ = [
    "Adjust",
    "ADJUSTS",
    "estfun",
    "bread",
    "meat",
    "sandwich",
    "vcov_cluster",
    "vcov_multiway",
    "check_adjust",
    "centred",
]

Adjust = Literal["CR0", "CR1", "CR3"]
ADJUSTS: tuple[str, ...] = get_args(Adjust)


def check_adjust(adjust: str) -> str:
    """Return ``adjust`` if valid, else raise an error listing the valid values."""
    if adjust not in ADJUSTS:
        raise MixVcovError(f"unknown adjust {adjust!r}; valid values are: {', '.join(map(repr, ADJUSTS))}")
    return adjust


def estfun(scores: np.ndarray, cluster: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores summed within clusters: ``(G x P`` array, the cluster codes of its rows)``.

    Parameters
    ----------
    scores : ndarray, shape (n, P)
        Per-unit scores.
    cluster : ndarray of int, shape (n,), optional
        Cluster code of every unit (``0 .. G-1``); ``None`` keeps the units as they are.
    """
    scores = np.asarray(scores, float)
    if cluster is None:
        return scores, None
    codes, inv = np.unique(np.asarray(cluster), return_inverse=True)
    out = np.zeros((codes.size, scores.shape[1]))
    np.add.at(out, inv, scores)
    return out, codes


def centred(cluster_scores: np.ndarray) -> np.ndarray:
    """Cluster scores minus their mean over clusters, ``s_g - G^{-1} sum_h s_h`` (columnwise)."""
    S = np.asarray(cluster_scores, float)
    return S - S.mean(axis=0)


def bread(information: np.ndarray) -> np.ndarray:
    """``A^{-1}``: the inverse of a symmetric positive definite information matrix (Cholesky).

    Raises
    ------
    MixVcovError
        If ``A`` is not positive definite (no pseudo-inverse is taken).
    """
    A = np.asarray(information, float)
    d = np.sqrt(np.abs(np.diag(A)))
    d[d == 0] = 1.0
    try:
        L = np.linalg.cholesky(A / np.outer(d, d))
    except np.linalg.LinAlgError as err:
        raise MixVcovError("the information matrix is not positive definite; the bread does not exist") from err
    inv = np.linalg.solve(L.T, np.linalg.solve(L, np.eye(A.shape[0])))
    out = inv / np.outer(d, d)
    return 0.5 * (out + out.T)


def meat(cluster_scores: np.ndarray) -> np.ndarray:
    """``B = sum_g s_g s_g^T`` from the ``G x P`` matrix of cluster scores."""
    S = np.asarray(cluster_scores, float)
    return S.T @ S


def sandwich(bread_: np.ndarray, meat_: np.ndarray) -> np.ndarray:
    """``A^{-1} B A^{-1}``."""
    out = bread_ @ meat_ @ bread_
    return 0.5 * (out + out.T)


def _warn_rank(G: int, P: int, adjust: str, multiway: bool = False) -> None:
    """Warn where there are too few clusters for the sandwich to have full rank ``P``.

    At the estimate the ``G`` cluster scores sum to zero (the score equations), so the meat
    ``B = sum_g s_g s_g^T`` has rank at most ``G - 1``: CR0 and CR1 are singular for ``G <= P``.
    CR3's leave-one-cluster-out steps ``delta_g`` do not sum to zero, so its rank is at most
    ``G``: singular for ``G < P``. Multi-way clustering is judged by its clustering variable with
    the fewest clusters, whose inclusion-exclusion term has rank at most ``G - 1``.
    """
    rank = G if adjust == "CR3" else G - 1
    if rank >= P:
        return
    if multiway:
        what = (
            f"only {G} clusters for {P} parameters in the clustering variable with the fewest clusters: its "
            f"cluster scores sum to zero at the estimate, so its term of the multi-way sum has rank at most "
            f"{rank} < {P}, and the multi-way covariance is unreliable or singular."
        )
    elif adjust == "CR3":
        what = (
            f"only {G} clusters for {P} parameters: CR3 is a sum of {G} outer products of leave-one-cluster-out "
            f"steps, of rank at most {G} < {P}, so the sandwich covariance is singular and some linear "
            "combinations of the parameters get a variance of zero."
        )
    else:
        what = (
            f"only {G} clusters for {P} parameters: the {G} cluster scores sum to zero at the estimate, so the "
            f"meat (a sum of {G} outer products) has rank at most {rank} < {P}, the sandwich covariance is "
            "singular and some linear combinations of the parameters get a variance of zero."
        )
    warnings.warn(
        f"{what} Cluster-robust inference needs many more clusters than parameters.",
        MixVcovWarning,
        stacklevel=3,
    )


def _smallest_scaled_eigenvalue(A: np.ndarray) -> float:
    d = np.sqrt(np.abs(np.diag(A)))
    d[d == 0] = 1.0
    scaled = A / np.outer(d, d)
    return float(np.linalg.eigvalsh(0.5 * (scaled + scaled.T))[0])


def vcov_cluster(
    information: np.ndarray,
    cluster_scores: np.ndarray,
    adjust: Adjust = "CR1",
    cluster_information: np.ndarray | None = None,
    labels: Sequence[object] | None = None,
    *,
    centre: bool = False,
) -> np.ndarray:
    """One-way cluster-robust covariance.

    Parameters
    ----------
    information : ndarray, shape (P, P)
        ``A``, the (observed or expected) information of the whole sample.
    cluster_scores : ndarray, shape (G, P)
        Scores summed within each cluster.
    adjust : {"CR0", "CR1", "CR3"}
        Small-sample adjustment (see the module docstring).
    cluster_information : ndarray, shape (G, P, P), optional
        Each cluster's own information contribution ``A_g``; needed for ``"CR3"``.
    labels : sequence, optional
        Name of each cluster (row of ``cluster_scores``), used in error messages.
    centre : bool
        Replace the cluster scores by :func:`centred` ones, ``s_g - s_bar``, in the meat and in
        CR3's steps ``delta_g = -(A - A_g)^{-1} (s_g - s_bar)`` (see the module docstring): for
        estimates at which the scores do not sum to zero, such as a posterior mode.

    Warns
    -----
    MixVcovWarning
        When the covariance is singular for want of clusters: ``G <= P`` for CR0 and CR1 (the
        scores sum to zero at the estimate, so the meat has rank at most ``G - 1``), ``G < P``
        for CR3.

    Raises
    ------
    MixVcovError
        For fewer than 2 clusters, an information that is not positive definite, and (CR3) a
        leave-one-cluster-out information ``A - A_g`` that is not positive definite: without
        cluster ``g`` some parameter is not identified, and its Newton step does not exist.
    """
    check_adjust(adjust)
    S = np.asarray(cluster_scores, float)
    G, P = S.shape
    if G < 2:
        raise MixVcovError(f"a cluster-robust covariance needs at least 2 clusters, got {G}")
    if centre:
        S = centred(S)
    _warn_rank(G, P, adjust)
    if adjust == "CR3":
        if cluster_information is None:
            raise MixVcovError("CR3 needs each cluster's information contribution")
        A = np.asarray(information, float)
        bread(A)  # the full-sample information itself must be positive definite
        deltas = np.empty_like(S)
        for g in range(G):
            try:
                B_g = bread(A - cluster_information[g])
            except MixVcovError:
                name = f"cluster {labels[g]!r}" if labels is not None else f"cluster {g} (0-based row of the scores)"
                raise MixVcovError(
                    f"CR3: the leave-one-cluster-out information A - A_g without {name} is not positive "
                    f"definite (smallest eigenvalue of its correlation-scaled form "
                    f"{_smallest_scaled_eigenvalue(A - cluster_information[g]):.3g}), although the information "
                    "of the whole sample is: without that cluster some parameter is not identified (e.g. a "
                    "covariate or factor level present in that cluster only), so the one-step jackknife has no "
                    "Newton step for it. Use 'CR0' or 'CR1'."
                ) from None
            deltas[g] = -B_g @ S[g]
        out = (G - 1) / G * deltas.T @ deltas
        return 0.5 * (out + out.T)
    V = sandwich(bread(information), meat(S))
    return V * (G / (G - 1)) if adjust == "CR1" else V


def vcov_multiway(
    information: np.ndarray,
    scores: np.ndarray,
    clusters: list[np.ndarray],
    adjust: Adjust = "CR1",
    *,
    centre: bool = False,
) -> np.ndarray:
    """Multi-way cluster-robust covariance by inclusion-exclusion (Cameron, Gelbach and Miller).

    Parameters
    ----------
    information : ndarray, shape (P, P)
    scores : ndarray, shape (n, P)
        Observation-level scores.
    clusters : list of ndarray of int, each shape (n,)
        Cluster codes of every observation, one array per clustering variable.
    adjust : {"CR0", "CR1"}
        CR1 applies ``G_S / (G_S - 1)`` to each term. CR3 is not defined here.
    centre : bool
        Centre the cluster scores of every term's clustering (the intersection of the variables
        in ``S``) at their mean over that clustering's clusters before its meat, as
        :func:`vcov_cluster` does with ``centre=True``.

    Warns
    -----
    MixVcovWarning
        When the clustering variable with the fewest clusters has ``G <= P`` of them (its term
        has rank at most ``G - 1``), and when the sum has a negative variance.
    """
    check_adjust(adjust)
    if adjust == "CR3":
        raise MixVcovError(
            "CR3 is not available for multi-way clustering (it needs each cluster's information "
            "contribution); use 'CR0' or 'CR1'"
        )
    B = bread(information)
    P = scores.shape[1]
    total = np.zeros((P, P))
    k = len(clusters)
    smallest = None
    for size in range(1, k + 1):
        for subset in itertools.combinations(range(k), size):
            codes = _intersect([clusters[i] for i in subset])
            S, labels = estfun(scores, codes)
            G = labels.size
            if centre:
                S = centred(S)
            smallest = G if smallest is None else min(smallest, G)
            V = sandwich(B, meat(S))
            if adjust == "CR1":
                V = V * (G / (G - 1))
            total += (-1) ** (size + 1) * V
    _warn_rank(int(smallest), P, adjust, multiway=True)
    if np.any(np.diag(total) < 0):
        warnings.warn(
            "the multi-way sandwich has a negative variance (inclusion-exclusion does not guarantee "
            "a positive semi-definite matrix); its standard errors are NaN",
            MixVcovWarning,
            stacklevel=2,
        )
    return 0.5 * (total + total.T)


def _intersect(codes: list[np.ndarray]) -> np.ndarray:
    """Codes of the intersection of several clusterings."""
    if len(codes) == 1:
        return np.asarray(codes[0])
    stacked = np.stack([np.asarray(c) for c in codes], axis=1)
    _, inv = np.unique(stacked, axis=0, return_inverse=True)
    return inv.reshape(-1)
