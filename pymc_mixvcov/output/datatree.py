"""ArviZ output: a fit as an ``xarray.DataTree``, and draws from its normal approximation.

:func:`to_datatree` writes everything a fit knows in ArviZ 1.x's layout (one ``Dataset`` per
group, labelled dimensions, attributes on every group), so that it can sit next to the
posterior of the same PyMC model in one tree::

    idata = pm.sample(model=model.model)
    idata.update(fit.to_datatree())

:func:`sample_normal` draws from ``N(estimate, V)`` on any scale and returns the draws as a
``posterior`` group with ``(chain, draw)`` dimensions, so that ``az.summary`` and ArviZ's plots
work on them as on MCMC draws.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..errors import MixVcovError
from ..inference.sandwich import ADJUSTS, check_adjust
from ..inference.scales import SCALES, check_scale

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["to_datatree", "sample_normal", "param_dim", "variable_name", "GROUPS"]

#: Groups written by :func:`to_datatree`, in order.
GROUPS: tuple[str, ...] = (
    "estimates",
    *(f"vcov_{s}" for s in SCALES),
    "scores",
    "optimizer_stats",
    "observed_data",
)

Vcov = Literal["model", "CR0", "CR1", "CR3"]


def param_dim(scale: str) -> str:
    """Name of the parameter dimension of ``scale`` (``"param_sd"``, ``"param_var"``, ...)."""
    return f"param_{scale}"


def variable_name(label: str) -> str:
    """A parameter label as a DataTree variable name: ``/`` (a path separator there) becomes ``∕``."""
    return label.replace("/", "\u2215")


def _check_information(information: str) -> str:
    from ..inference.results import INFORMATIONS

    if information not in INFORMATIONS:
        raise MixVcovError(
            f"unknown information {information!r}; valid values are: {', '.join(map(repr, INFORMATIONS))}"
        )
    return information


def _attrs(fit, **extra) -> dict:
    """Attributes written on every group: ArviZ's standard ones plus what identifies the fit."""
    from arviz_base import make_attrs

    from .. import __version__

    attrs = {
        "inference_library": "pymc_mixvcov",
        "inference_library_version": __version__,
        "pymc_mixvcov_version": __version__,
        "method": fit.method,
        "nAGQ": int(fit.nagq),
        "engine": str(fit.engine),
        "family": str(fit.spec.family),
        "nobs": int(fit.nobs),
        "n_clusters": int(fit.n_clusters),
        "loglik": float(fit.loglik),
    }
    attrs.update(extra)
    return make_attrs(attrs)


def _smallest_eigenvalue(fit, information: str) -> float:
    """Smallest eigenvalue of the natural-scale information over the parameters not held at a bound."""
    try:
        A = fit._information(information)
    except MixVcovError:
        return np.nan
    if A is None:
        return np.nan
    keep = ~np.asarray(fit.at_bound, bool)
    if not keep.any():
        return np.nan
    sub = np.asarray(A, float)[np.ix_(keep, keep)]
    return float(np.linalg.eigvalsh(0.5 * (sub + sub.T))[0])


def _observed_data(fit) -> xr.Dataset:
    """The observed variable as PyMC writes it in ``pm.sample``'s ``observed_data`` group."""
    from arviz_base import dict_to_dataset

    model = fit.spec.model
    try:
        from pymc.backends.arviz import coords_and_dims_for_inferencedata, find_observations

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            observed = find_observations(model)
        coords, dims = coords_and_dims_for_inferencedata(model)
    except Exception:  # a PyMC without these helpers: the response the fit used
        observed, coords, dims = {}, {}, {}
    if not observed:
        observed = {fit.spec.observed_name: np.asarray(fit.spec.y)}
    return dict_to_dataset(
        observed, coords=coords, dims=dims, sample_dims=[], inference_library=None, check_conventions=False
    )


def to_datatree(
    fit,
    *,
    information: Literal["observed", "expected"] = "observed",
    cluster=None,
    adjust: Sequence[str] = ADJUSTS,
) -> xr.DataTree:
    """Everything a fit knows, as an ``xarray.DataTree`` in ArviZ 1.x's layout.

    Parameters
    ----------
    fit : MixedFit
    information : {"observed", "expected"}
        The bread ``A`` of the sandwich covariances (the model-based covariances are written for
        every information type the fit has).
    cluster :
        Clustering of the sandwiches, as in :meth:`MixedFit.sandwich` (default: the fit's).
    adjust : sequence of {"CR0", "CR1", "CR3"}
        The sandwiches to write (all by default; ``CR3`` needs every cluster's information
        contribution, which costs second derivatives per cluster for non-Gaussian models).

    Returns
    -------
    xarray.DataTree
        Groups (each parameter dimension ``param_<scale>`` carries the labels of
        :meth:`MixedFit.labels`; a matrix's second dimension is ``param_<scale>_2``):

        ``estimates``
            one variable per scale (``sd``, ``var``, ``cholesky``, ``natural``,
            ``unconstrained``): the point estimates, as :meth:`MixedFit.params`.
        ``vcov_<scale>``, one group per scale
            ``observed``, ``expected``: the model-based covariance ``A^{-1}`` mapped to the
            scale (:meth:`MixedFit.vcov`); ``CR0``, ``CR1``, ``CR3``: the cluster-robust
            covariances ``A^{-1} B A^{-1}`` and their adjustments (:meth:`MixedFit.sandwich`).
            A covariance the fit does not have (expected information of a non-Gaussian model;
            sandwiches of REML fits or of crossed designs without ``cluster``) is left
            out and the group's attribute ``unavailable_<name>`` says why.
        ``scores``
            ``scores_<scale>``: cluster scores (:meth:`MixedFit.scores`), dimension named after
            the grouping factor with its levels as coordinates; ``loglik``: the clusters'
            marginal log-likelihoods (ML and MAP fits; attribute ``unavailable`` otherwise).
        ``optimizer_stats``
            ``converged``, ``iterations``, ``grad_norm`` (gradient norm at the optimum),
            ``loglik``, ``min_eigenvalue`` (smallest eigenvalue of the natural-scale information,
            dimension ``information``, over the parameters not held at a bound; NaN where that
            information is not available), ``at_bound`` (natural parameters held at a bound).
        ``observed_data``
            the observed variable, named and dimensioned as ``pm.sample`` writes it, so that
            adding these groups to ``pm.sample``'s tree keeps that group's data (only its
            attributes become these).

        Every group carries the attributes ``method``, ``information``, ``nAGQ``,
        ``pymc_mixvcov_version``, ``family``, ``nobs``, ``n_clusters``, ``loglik`` and ArviZ's
        ``created_at`` (so they survive :meth:`xarray.DataTree.update`, which does not copy the
        root's attributes); the root carries them too.

    Notes
    -----
    Written to disk with ``tree.to_netcdf(path)`` (netCDF-4 groups, through ``h5netcdf``) and
    read back with ``xarray.open_datatree(path)``. To put the groups next to MCMC draws of the
    same model: ``idata = pm.sample(model=model); idata.update(fit.to_datatree())``.
    """
    import xarray as xr

    from ..inference.results import INFORMATIONS

    _check_information(information)
    adjust = [check_adjust(a) for a in ([adjust] if isinstance(adjust, str) else adjust)]
    common = _attrs(fit, information=information)
    groups: dict[str, xr.Dataset] = {}

    coords = {param_dim(s): fit.labels(s) for s in SCALES}
    groups["estimates"] = xr.Dataset(
        {s: (param_dim(s), fit.params(s).to_numpy()) for s in SCALES}, coords=coords, attrs=dict(common)
    )

    for scale in SCALES:
        d = param_dim(scale)
        dims = (d, f"{d}_2")
        labels = fit.labels(scale)
        data, notes = {}, {}
        for info in INFORMATIONS:
            try:
                data[info] = (dims, fit.vcov(scale, info).to_numpy())
            except MixVcovError as err:
                notes[f"unavailable_{info}"] = str(err)
        for adj in adjust:
            try:
                data[adj] = (dims, fit.sandwich(scale, information, adjust=adj, cluster=cluster).to_numpy())
            except MixVcovError as err:
                notes[f"unavailable_{adj}"] = str(err)
        groups[f"vcov_{scale}"] = xr.Dataset(
            data, coords={d: labels, f"{d}_2": labels}, attrs={**common, "scale": scale, **notes}
        )

    groups["scores"] = _scores_group(fit, common)

    at_bound = np.asarray(fit.at_bound, bool)
    groups["optimizer_stats"] = xr.Dataset(
        {
            "converged": ((), bool(fit.converged)),
            "iterations": ((), int(fit.iterations)),
            "grad_norm": ((), float(fit.grad_norm)),
            "loglik": ((), float(fit.loglik)),
            "min_eigenvalue": (("information",), [_smallest_eigenvalue(fit, i) for i in INFORMATIONS]),
            "at_bound": ((param_dim("natural"),), at_bound),
        },
        coords={"information": list(INFORMATIONS), param_dim("natural"): fit.labels("natural")},
        attrs={**common, "message": str(fit.message)},
    )
    groups["observed_data"] = _observed_data(fit)
    groups["observed_data"].attrs = dict(common)

    tree = xr.DataTree.from_dict({name: groups[name] for name in GROUPS})
    tree.attrs = dict(common)
    return tree


def _scores_group(fit, common: dict) -> xr.Dataset:
    import xarray as xr

    data, notes, coords = {}, {}, {}
    try:
        loglik = fit.loglik_contributions()
    except MixVcovError as err:
        return xr.Dataset(attrs={**common, "unavailable": str(err)})
    group = str(loglik.index.name)
    levels = [str(v) for v in loglik.index]
    coords[group] = levels
    data["loglik"] = ((group,), loglik.to_numpy())
    for scale in SCALES:
        try:
            S = fit.scores("cluster", scale)
        except MixVcovError as err:
            notes[f"unavailable_scores_{scale}"] = str(err)
            continue
        coords[param_dim(scale)] = fit.labels(scale)
        data[f"scores_{scale}"] = ((group, param_dim(scale)), S.to_numpy())
    return xr.Dataset(data, coords=coords, attrs={**common, "cluster_dim": group, **notes})


def _normal_draws(mean: np.ndarray, V: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Draws of ``N(mean, V)`` of shape ``(*size, P)``; entries with NaN variance stay at their mean.

    ``V`` is factored by its eigendecomposition, ``V = Q diag(w) Q^T`` and ``x = mean + Q diag(sqrt(w)) z``
    with ``z`` standard normal; eigenvalues below ``1e-10 max(w)`` in absolute value (round-off
    of a positive semi-definite matrix) count as zero.
    """
    P = mean.size
    free = np.isfinite(np.diag(V))
    out = np.broadcast_to(mean, (*size, P)).copy()
    if not free.any():
        return out
    sub = V[np.ix_(free, free)]
    sub = 0.5 * (sub + sub.T)
    if not np.all(np.isfinite(sub)):
        raise MixVcovError("the covariance matrix has non-finite entries between parameters with finite variances")
    w, Q = np.linalg.eigh(sub)
    tol = 1e-10 * max(float(np.max(np.abs(w))), np.finfo(float).tiny)
    if w[0] < -tol:
        raise MixVcovError(
            f"the covariance matrix is not positive semi-definite (smallest eigenvalue {w[0]:.3g}); "
            "it cannot be the covariance of a normal distribution"
        )
    root = Q * np.sqrt(np.clip(w, 0.0, None))
    z = rng.standard_normal((*size, int(free.sum())))
    out[..., free] += z @ root.T
    return out


def sample_normal(
    fit,
    draws: int = 1000,
    *,
    scale: str = "sd",
    vcov: Vcov = "model",
    chains: int = 4,
    information: Literal["observed", "expected"] = "observed",
    cluster=None,
    random_seed=None,
) -> xr.DataTree:
    """Draws from the normal approximation ``N(estimate, V)`` on ``scale``, as an ArviZ DataTree.

    Parameters
    ----------
    fit : MixedFit
    draws : int
        Draws per chain.
    scale : {"sd", "var", "cholesky", "natural", "unconstrained"}
        Scale of the estimate and of ``V``.
    vcov : {"model", "CR0", "CR1", "CR3"}
        ``"model"``: the inverse information mapped to the scale (:meth:`MixedFit.vcov`); else a
        cluster-robust covariance (:meth:`MixedFit.sandwich`).
    chains : int
        Number of chains. The draws are independent: the chains only give ArviZ its
        ``(chain, draw)`` layout.
    information : {"observed", "expected"}
    cluster :
        Clustering of the sandwich (see :meth:`MixedFit.sandwich`).
    random_seed : int, numpy.random.Generator or None
        Passed to :func:`numpy.random.default_rng`.

    Returns
    -------
    xarray.DataTree
        A ``posterior`` group with one variable per parameter, named by its label on ``scale``
        (``/`` written as ``∕``), each with dimensions ``(chain, draw)``: ``az.summary(tree)``
        and ArviZ's plots work on it directly. Attributes record the scale, ``vcov``,
        ``information``, the fit's method and nAGQ, and the parameters held at the estimate.

    Notes
    -----
    The draws are ``x = theta_hat + Q diag(sqrt(w)) z`` with ``V = Q diag(w) Q^T`` and ``z``
    standard normal, so that their mean and covariance tend to ``theta_hat`` and ``V``. The
    normal approximation is taken on the scale asked for and ignores its bounds: on the
    ``"sd"`` scale an SD near 0 can be drawn negative and a correlation near 1 above 1; on the
    ``"unconstrained"`` scale every draw is valid. Parameters whose variance is NaN (held at a
    boundary, see :meth:`MixedFit.vcov`) stay at their estimate in every draw.
    """
    from arviz_base import from_dict

    check_scale(scale)
    _check_information(information)
    for name, value in (("draws", draws), ("chains", chains)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise MixVcovError(f"{name} must be a positive integer, got {value!r}")
    V = fit.covariance(vcov, scale, information, cluster).to_numpy()
    mean = fit.params(scale).to_numpy()
    rng = np.random.default_rng(random_seed)
    x = _normal_draws(mean, V, (int(chains), int(draws)), rng)
    labels = fit.labels(scale)
    held = [lab for lab, v in zip(labels, np.diag(V), strict=True) if not np.isfinite(v)]
    attrs = _attrs(
        fit,
        scale=scale,
        vcov=vcov,
        information=information,
        normal_approximation="draws of N(estimate, vcov); independent across chains and draws",
        held_at_estimate=", ".join(held),
    )
    posterior = {variable_name(lab): x[..., k] for k, lab in enumerate(labels)}
    return from_dict({"posterior": posterior}, attrs={"posterior": attrs, "/": attrs})
