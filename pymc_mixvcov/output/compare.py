"""Frequentist intervals next to the posterior of the same PyMC model.

The posterior holds draws of the model's free variables. Each draw is assembled into the
model's natural parameter vector ``nat`` (the variables of ``fit.spec.params``, in their order)
and mapped to the reporting scale by the very map that gives the fit's estimates,
``h(nat) = params(scale)``: the model map ``nat -> phi = (beta, theta, sigma)`` read off the
``pm.Model`` and the core map ``phi -> scale`` (both from :mod:`pymc_mixvcov.compilation.derivatives`),
evaluated for all draws at once. Posterior draws and estimates therefore land on the same
labelled parameters: an LKJ Cholesky factor becomes SDs and a correlation, a HalfNormal SD a
variance on the ``"var"`` scale, a residual SD ``sigma`` the ``residual`` variance.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import pandas as pd

from ..errors import MixVcovError, MixVcovWarning
from ..inference.sandwich import ADJUSTS
from ..inference.scales import check_scale
from .datatree import _check_information, variable_name

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["compare", "plot_compare", "posterior_on_scale"]

CiKind = Literal["eti", "hdi"]
CI_KINDS: tuple[str, ...] = get_args(CiKind)
COLUMNS: tuple[str, ...] = (
    "estimate",
    "se_model",
    "se_sandwich",
    "wald_lower",
    "wald_upper",
    "sandwich_lower",
    "sandwich_upper",
    "posterior_mean",
    "posterior_sd",
    "posterior_lower",
    "posterior_upper",
)


# -- the posterior, as natural parameter vectors ------------------------------------------------------
def _posterior_dataset(posterior) -> xr.Dataset:
    """The posterior draws as a Dataset: ``pm.sample``'s DataTree, its ``posterior`` group, or a Dataset."""
    import xarray as xr

    if isinstance(posterior, xr.DataTree):
        if "posterior" in posterior.children:
            return posterior["posterior"].to_dataset()
        if posterior.data_vars:
            return posterior.to_dataset()
        raise MixVcovError(
            "the DataTree has no 'posterior' group and no variables of its own (groups: "
            f"{', '.join(map(repr, posterior.children)) or 'none'}); pass the output of pm.sample or its "
            "'posterior' group"
        )
    if isinstance(posterior, xr.Dataset):
        return posterior
    raise MixVcovError(
        f"posterior must be an xarray DataTree (the output of pm.sample) or Dataset, got {type(posterior).__name__}"
    )


def _sample_dims(ds: xr.Dataset) -> tuple[str, ...]:
    if "chain" in ds.dims and "draw" in ds.dims:
        return ("chain", "draw")
    if "draw" in ds.dims:
        return ("draw",)
    raise MixVcovError(
        f"the posterior has no 'draw' dimension (dimensions: {', '.join(map(repr, ds.dims))}); ArviZ's "
        "layout has the draws along ('chain', 'draw')"
    )


def _coordinate_keys(values) -> list[str]:
    """Coordinate values as the strings by which entries are matched (as the fit's labels print them)."""
    return [str(v) for v in np.asarray(values).tolist()]


def _model_axes(fit, p) -> list[tuple[str | None, list[str] | None]]:
    """``(dimension name, coordinate values)`` of every axis of the model's variable ``p``.

    The name is ``None`` where the model gives the axis no dimension, the values ``None``
    where it gives the dimension no coordinates: the entries are then known by position only,
    as ``0, 1, ...`` (which is how ``pm.sample`` labels them).
    """
    model = fit.spec.model
    dims = tuple((getattr(model, "named_vars_to_dims", {}) or {}).get(p.name) or ())
    if len(dims) != len(p.shape):
        dims = (None,) * len(p.shape)
    coords = getattr(model, "coords", {}) or {}
    out = []
    for d in dims:
        values = coords.get(d) if d is not None else None
        out.append((None if d is None else str(d), None if values is None else _coordinate_keys(values)))
    return out


def _list_keys(keys) -> str:
    return ", ".join(map(repr, keys)) or "none"


def _align_by_label(fit, p, da: xr.DataArray, sample_dims: tuple[str, ...]) -> xr.DataArray:
    """The posterior variable ``da`` with its entries in the order of the model's variable ``p``.

    Every axis is matched by coordinate values, never by position: the posterior's dimension
    named as the model's (else the posterior's dimensions in their order) must carry the model's
    coordinate values, in any order (``0, 1, ...`` where the model names none).

    Raises
    ------
    MixVcovError
        Where the coordinates differ (the message lists the values missing from either side), a
        posterior dimension has no coordinate values where the model has, or the shape differs.
    """
    event = [str(d) for d in da.dims if d not in sample_dims]
    shape = tuple(da.sizes[d] for d in event)
    if shape != tuple(p.shape):
        raise MixVcovError(
            f"posterior variable {p.name!r} has shape {shape} per draw, but the model's {p.name!r} has shape "
            f"{tuple(p.shape)}; the posterior is not from this model"
        )
    axes = _model_axes(fit, p)
    names = [name for name, _ in axes]
    order = names if None not in names and sorted(names) == sorted(event) else event
    if any(da.sizes[d] != n for d, n in zip(order, p.shape, strict=True)):
        raise MixVcovError(
            f"posterior variable {p.name!r} has dimensions {dict((d, da.sizes[d]) for d in event)} per draw, but "
            f"the model's {p.name!r} has {dict(zip(names, p.shape, strict=True))}; the posterior is not from this model"
        )
    for dim, (model_dim, model_keys) in zip(order, axes, strict=True):
        n = da.sizes[dim]
        want = model_keys if model_keys is not None else [str(i) for i in range(n)]
        where = f"along dimension {dim!r}" + (f" (the model's {model_dim!r})" if model_dim not in (None, dim) else "")
        if dim not in da.coords:
            if model_keys is None:
                continue  # positions on both sides: nothing else to match by
            raise MixVcovError(
                f"posterior variable {p.name!r} has no coordinate values {where}, so its draws cannot be matched "
                f"to the model's entries {_list_keys(want)} by label; give the dimension its coordinates (as "
                "pm.sample does)"
            )
        got = _coordinate_keys(da[dim].values)
        if len(set(got)) != len(got):
            repeated = sorted({k for k in got if got.count(k) > 1})
            raise MixVcovError(
                f"posterior variable {p.name!r} repeats the coordinate value(s) {_list_keys(repeated)} {where}; "
                "each entry needs its own label"
            )
        if set(got) != set(want):
            missing = [k for k in want if k not in set(got)]
            extra = [k for k in got if k not in set(want)]
            raise MixVcovError(
                f"posterior variable {p.name!r} {where} has coordinates {_list_keys(got)}, but the model's "
                f"{p.name!r} has {_list_keys(want)}: the posterior lacks {_list_keys(missing)} and has "
                f"{_list_keys(extra)}, which the model does not. Draws are matched by label; pass draws of the "
                "model the fit was made from"
            )
        if got != want:
            da = da.isel({dim: [got.index(k) for k in want]})
    return da.transpose(*sample_dims, *order)


def _check_support(fit, nat: np.ndarray) -> None:
    """Refuse draws outside the support of the model's parameters (a negative SD, a NaN)."""
    spec = fit.spec
    flat = nat.reshape(-1, nat.shape[-1])
    labels, lower, upper = spec.natural_labels, spec.lower, spec.upper
    problems = []
    for k in range(flat.shape[1]):
        x = flat[:, k]
        bad = ~np.isfinite(x)
        if bad.any():
            problems.append(f"{labels[k]!r} has {int(bad.sum())} non-finite draw(s)")
            continue
        below, above = x < lower[k], x > upper[k]
        if below.any():
            problems.append(
                f"{labels[k]!r} has {int(below.sum())} of {x.size} draws below its lower bound {lower[k]:g} "
                f"(smallest {x.min():.6g})"
            )
        if above.any():
            problems.append(
                f"{labels[k]!r} has {int(above.sum())} of {x.size} draws above its upper bound {upper[k]:g} "
                f"(largest {x.max():.6g})"
            )
    if problems:
        raise MixVcovError(
            "the posterior holds draws outside the support of the model's parameters: "
            + "; ".join(problems)
            + ". A sampler of this model never leaves the support; pass draws of the model the fit was made from "
            "(on its constrained scale, as pm.sample stores them)"
        )


def _check_observed(fit, posterior) -> None:
    """Warn where the posterior's ``observed_data`` group differs from the data of the fit."""
    import xarray as xr

    if not isinstance(posterior, xr.DataTree) or "observed_data" not in posterior.children:
        return
    group = posterior["observed_data"].to_dataset()
    try:
        from pymc.backends.arviz import find_observations

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            observed = find_observations(fit.spec.model)
    except Exception:  # a PyMC without the helper: the response the fit used
        observed = {fit.spec.observed_name: fit.spec.y} if fit.spec.model.observed_RVs else {}
    differences = []
    for name, values in observed.items():
        mine = np.asarray(values, float)
        if name not in group.data_vars:
            differences.append(
                f"it has no variable {name!r}, the fit's observed variable (it has "
                f"{_list_keys(list(map(str, group.data_vars)))})"
            )
            continue
        theirs = np.asarray(group[name].values, float)
        if theirs.shape != mine.shape:
            differences.append(f"{name!r} has shape {theirs.shape} there and {mine.shape} in the fit")
            continue
        differ = ~((theirs == mine) | (np.isnan(theirs) & np.isnan(mine)))
        if differ.any():
            gap = np.nanmax(np.abs(theirs - mine)[differ], initial=0.0)
            differences.append(
                f"{int(differ.sum())} of {mine.size} values of {name!r} differ (largest difference {gap:.6g})"
            )
    if differences:
        warnings.warn(
            "the posterior was drawn on other data than the fit: in its observed_data group, "
            + "; ".join(differences)
            + ". The estimates and the posterior then describe different data sets; sample the model the fit "
            "was made from, on the same data",
            MixVcovWarning,
            stacklevel=5,
        )


def _from_source_names(fit, ds: xr.Dataset, sample_dims: tuple[str, ...]) -> xr.Dataset:
    """A bambi model's posterior with its variables renamed to those of the fit's model.

    A fit of :func:`pymc_mixvcov.from_bambi` records where each entry of its model's parameters
    lies in bambi's posterior (``fit.posterior_names``: bambi's ``Intercept``, which bambi reports
    uncentred after sampling, as the fit does; ``Days``; ``1|Subject_sigma``; ...). Where the
    posterior holds those variables and not the model's own, the draws are assembled into the
    model's variables, with the model's coordinates. Other posteriors pass unchanged.
    """
    import xarray as xr

    names = getattr(fit, "posterior_names", None)
    if not names or all(p.name in ds.data_vars for p in fit.spec.params):
        return ds
    needed = sorted({v for entries in names.values() for v, _ in entries})
    missing = [v for v in needed if v not in ds.data_vars]
    if missing:
        raise MixVcovError(
            f"the posterior lacks the bambi model's variable(s) {_list_keys(missing)} (needed: {_list_keys(needed)}; "
            f"the posterior has: {_list_keys(list(ds.data_vars))}). Pass the output of the bambi model's fit()"
        )
    flat = {}
    for v in needed:
        da = ds[v]
        lacking = [d for d in sample_dims if d not in da.dims]
        if lacking:
            raise MixVcovError(f"posterior variable {v!r} lacks the sample dimension(s) {lacking}")
        other = [d for d in da.dims if d not in sample_dims]
        values = np.asarray(da.transpose(*sample_dims, *other).values, float)
        flat[v] = values.reshape(*values.shape[: len(sample_dims)], -1)
    out = {}
    for p in fit.spec.params:
        entries = names.get(p.name)
        if entries is None or len(entries) != p.size:
            raise MixVcovError(
                f"internal error: the bambi model's posterior names do not cover the parameter {p.name!r}"
            )
        values = np.stack([flat[v][..., j] for v, j in entries], axis=-1)
        axes = _model_axes(fit, p)
        dims = [d if d is not None else f"{p.name}_dim_{k}" for k, (d, _) in enumerate(axes)]
        coords = {d: c for d, (_, c) in zip(dims, axes, strict=True) if c is not None}
        out[p.name] = xr.DataArray(
            values.reshape(*values.shape[:-1], *p.shape), dims=[*sample_dims, *dims], coords=coords
        )
    return xr.Dataset(out, coords={d: ds[d].values for d in sample_dims if d in ds.coords})


def natural_draws(fit, posterior) -> tuple[np.ndarray, tuple[str, ...], dict]:
    """The posterior's draws of the model's natural parameter vector.

    Entries are matched to the model's by label (:func:`_align_by_label`), the draws must lie
    in the parameters' support, and a ``pm.sample`` tree whose ``observed_data`` differs from
    the fit's data draws a warning.

    Returns
    -------
    nat : numpy.ndarray
        Shape ``(chains, draws, P)``; column ``k`` is entry ``k`` of ``fit.params("natural")``.
    sample_dims : tuple of str
        The posterior's sample dimensions.
    coords : dict
        Their coordinates.

    Raises
    ------
    MixVcovError
        For a missing variable, other coordinates or shapes than the model's, and draws outside
        the support.
    """
    ds = _posterior_dataset(posterior)
    sample_dims = _sample_dims(ds)
    params = fit.spec.params
    ds = _from_source_names(fit, ds, sample_dims)
    missing = [p.name for p in params if p.name not in ds.data_vars]
    if missing:
        raise MixVcovError(
            f"the posterior lacks the model's parameter variable(s) {', '.join(map(repr, missing))} (needed: "
            f"{', '.join(repr(p.name) for p in params)}; the posterior has: "
            f"{', '.join(map(repr, ds.data_vars)) or 'no variables'}). Pass draws of the same PyMC model "
            "the fit was made from, e.g. the output of pm.sample(model=...)."
        )
    chains = ds.sizes["chain"] if "chain" in sample_dims else 1
    n_draws = ds.sizes["draw"]
    out = np.empty((chains, n_draws, fit.spec.n_params))
    for p in params:
        da = ds[p.name]
        lacking = [d for d in sample_dims if d not in da.dims]
        if lacking:
            raise MixVcovError(f"posterior variable {p.name!r} lacks the sample dimension(s) {lacking}")
        values = np.asarray(_align_by_label(fit, p, da, sample_dims).values, float)
        out[..., p.slice] = values.reshape(chains, n_draws, p.size)
    _check_support(fit, out)
    _check_observed(fit, posterior)
    coords = {d: ds[d].values for d in sample_dims if d in ds.coords}
    return out, sample_dims, coords


# -- the map natural -> scale, for many draws at once --------------------------------------------------
_SCALE_ORDER = ("var", "sd", "cholesky", "unconstrained")


def _batch_map(fit):
    """``(fn, vectorised)``: the fit's map from natural parameters to the var, sd, cholesky and
    unconstrained scales, compiled for a batch of vectors (one per row) when pytensor can
    vectorise the graph, else for one vector."""
    cache = fit._cache
    if "batch_scale_map" not in cache:
        import pytensor.tensor as pt
        from pytensor.graph.replace import graph_replace, vectorize_graph

        from ..compilation.derivatives import _scale_parts, compile_fn

        spec, model_map = fit.spec, fit._functions.map
        sig = model_map.sig
        nat = pt.vector("nat", shape=(spec.n_params,))
        phi = model_map._phi(nat)
        parts = _scale_parts(phi, sig.p, sig.r, sig.n_theta, "sigma" if spec.gaussian else "psi")
        outs = [pt.concatenate(parts[k]) for k in _SCALE_ORDER[:3]]
        outs.append(graph_replace(spec.unconstrained(), {spec.nat: nat}, strict=False))
        batch = pt.matrix("nat_batch", shape=(None, spec.n_params))
        try:
            cache["batch_scale_map"] = (compile_fn([batch], vectorize_graph(outs, {nat: batch})), True)
        except Exception:  # an Op pytensor cannot vectorise: one vector at a time
            cache["batch_scale_map"] = (compile_fn([nat], outs), False)
    return cache["batch_scale_map"]


def scale_values(fit, nat: np.ndarray, scale: str) -> np.ndarray:
    """Values on ``scale`` of the natural parameter vectors in the rows of ``nat`` (shape ``(..., P)``).

    The same map as :meth:`MixedFit.params`: applied to the fit's own natural estimate it returns
    ``fit.params(scale)`` (checked on every call).
    """
    check_scale(scale)
    nat = np.asarray(nat, float)
    if scale == "natural":
        return nat.copy()
    flat = nat.reshape(-1, nat.shape[-1])
    rows = np.vstack([np.asarray(fit._opt["nat"], float)[None], flat])
    fn, vectorised = _batch_map(fit)
    k = _SCALE_ORDER.index(scale)
    if vectorised:
        values = np.asarray(fn(rows)[k])
    else:
        values = np.stack([np.asarray(fn(row)[k]) for row in rows])
    want = fit.params(scale).to_numpy()
    ok = np.isfinite(want)
    if not np.allclose(values[0, ok], want[ok], rtol=1e-10, atol=1e-12 * (1 + np.max(np.abs(want[ok]), initial=0))):
        raise MixVcovError(f"internal error: the batched map to scale {scale!r} does not reproduce the fit's estimates")
    return values[1:].reshape(*nat.shape[:-1], values.shape[-1])


def _draws_on_scale(fit, posterior, scale: str) -> tuple[np.ndarray, tuple[str, ...], dict]:
    nat, sample_dims, coords = natural_draws(fit, posterior)
    return scale_values(fit, nat, scale), sample_dims, coords


def posterior_on_scale(fit, posterior, scale: str = "sd") -> xr.DataTree:
    """The posterior of the fit's model, mapped to ``scale`` and labelled as the fit's parameters.

    Parameters
    ----------
    fit : MixedFit
    posterior : xarray.DataTree or xarray.Dataset
        Draws of the model's free variables: the output of ``pm.sample`` (its ``posterior``
        group is used), that group, or a Dataset with ``(chain, draw)`` dimensions.
    scale : {"sd", "var", "cholesky", "natural", "unconstrained"}

    Returns
    -------
    xarray.DataTree
        A ``posterior`` group laid out as :meth:`MixedFit.sample_normal`'s: one variable per
        label of ``fit.labels(scale)``, dimensions ``(chain, draw)``, so that the two can be
        passed together to ArviZ (``az.plot_forest({"MCMC": ..., "normal": ...})``).

    Raises
    ------
    MixVcovError
        As :func:`compare`: the draws are matched to the model by label and must lie in the
        parameters' support.
    """
    from arviz_base import from_dict

    check_scale(scale)
    x, sample_dims, coords = _draws_on_scale(fit, posterior, scale)
    if sample_dims == ("draw",):
        coords = {"draw": coords["draw"]} if "draw" in coords else {}
    data = {variable_name(lab): x[..., k] for k, lab in enumerate(fit.labels(scale))}
    return from_dict({"posterior": data}, coords=coords, attrs={"posterior": {"scale": scale}})


# -- the table ------------------------------------------------------------------------------------
def _check_prob(prob) -> float:
    if isinstance(prob, bool) or not isinstance(prob, int | float | np.floating) or not 0 < prob < 1:
        raise MixVcovError(f"prob must be a number strictly between 0 and 1, got {prob!r}")
    return float(prob)


def _check_options(scale: str, prob, vcov, ci_kind: str, information: str) -> float:
    check_scale(scale)
    prob = _check_prob(prob)
    if vcov is not None and vcov not in ADJUSTS:
        raise MixVcovError(
            f"unknown vcov {vcov!r}; valid values are: {', '.join(map(repr, ADJUSTS))}, or None to leave the "
            "sandwich columns out"
        )
    if ci_kind not in CI_KINDS:
        raise MixVcovError(f"unknown ci_kind {ci_kind!r}; valid values are: {', '.join(map(repr, CI_KINDS))}")
    _check_information(information)
    return prob


def _interval(x: np.ndarray, prob: float, ci_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Posterior intervals of the columns of ``x`` (draws in rows)."""
    if ci_kind == "eti":
        lo, hi = np.quantile(x, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        return lo, hi
    from arviz_stats.base import array_stats

    bounds = np.asarray(array_stats.hdi(x.T, prob, axis=-1))
    return bounds[:, 0], bounds[:, 1]


def compare(
    fit,
    posterior,
    scale: str = "sd",
    prob: float = 0.95,
    vcov: Literal["CR0", "CR1", "CR3"] | None = "CR1",
    *,
    ci_kind: CiKind = "eti",
    information: Literal["observed", "expected"] = "observed",
    cluster=None,
) -> pd.DataFrame:
    """Frequentist estimates and intervals next to posterior summaries, parameter by parameter.

    Parameters
    ----------
    fit : MixedFit
    posterior : xarray.DataTree or xarray.Dataset
        Draws of the fitted PyMC model's free variables: ``pm.sample``'s output, its
        ``posterior`` group, or a Dataset with ``(chain, draw)`` dimensions. It must hold every
        parameter variable of the model (``[p.name for p in fit.spec.params]``); other
        variables (random effects, PyMC's derived ``*_corr`` and ``*_stds``) are ignored.
        A fit of a bambi model (:func:`pymc_mixvcov.from_bambi`) takes the bambi model's
        posterior (``bambi_model.fit()``), whose variables it pairs with its own.
        Entries are matched to the model's by coordinate values, never by position (a ``beta``
        stored with its ``fixed`` coordinate in another order is read correctly). Where the tree
        has an ``observed_data`` group that differs from the fit's data, a
        :class:`~pymc_mixvcov.errors.MixVcovWarning` says that the posterior was drawn on other data.
    scale : {"sd", "var", "cholesky", "natural", "unconstrained"}
        Scale of every column; the posterior draws are mapped to it by the fit's own map.
    prob : float
        Coverage of all intervals, strictly between 0 and 1.
    vcov : {"CR0", "CR1", "CR3"} or None
        The sandwich of ``se_sandwich`` and the sandwich interval; ``None`` leaves these
        columns NaN (REML fits have no sandwich). For MAP fits ``se_model`` is the Laplace
        (posterior) SE, from the inverse negative Hessian of the log marginal posterior, and
        ``se_sandwich`` the MAP sandwich's (see :meth:`MixedFit.sandwich`), side by side.
    ci_kind : {"eti", "hdi"}
        Posterior interval: equal-tailed (quantiles ``(1 - prob)/2`` and ``(1 + prob)/2``) or
        highest-density (ArviZ's ``hdi``).
    information : {"observed", "expected"}
    cluster :
        Clustering of the sandwich (see :meth:`MixedFit.sandwich`).

    Returns
    -------
    pandas.DataFrame
        One row per parameter, indexed by ``fit.labels(scale)`` as in :meth:`MixedFit.vcov`;
        columns ``estimate``, ``se_model``, ``se_sandwich``, ``wald_lower``, ``wald_upper``,
        ``sandwich_lower``, ``sandwich_upper``, ``posterior_mean``, ``posterior_sd``,
        ``posterior_lower``, ``posterior_upper``. ``attrs`` records the options.

    Raises
    ------
    MixVcovError
        For an unknown scale, ``prob`` outside ``(0, 1)``, a posterior that lacks one of the
        model's parameter variables (the message names them), holds them with another shape or
        with other coordinate values than the model's (the message names the difference), holds
        draws outside their support (a negative SD; the message names the parameter), and a
        sandwich the fit does not have.

    Notes
    -----
    With ``h`` the map from natural parameters to the scale (``estimate = h(nat_hat)``) and
    ``x_s = h(nat_s)`` the mapped draws, ``posterior_mean = S^{-1} sum_s x_s`` and
    ``posterior_sd`` is their standard deviation with divisor ``S - 1`` (as ``az.summary``).
    The Wald and sandwich intervals are :meth:`MixedFit.summary`'s, with ``q = Phi^{-1}((1 + prob)/2)``:
    ``est +- q se`` for unbounded parameters, ``est exp(+-q se / est)`` for SDs and variances
    (a Wald interval for ``log est``) and ``tanh(atanh(r) +- q se / (1 - r^2))`` for
    correlations (Fisher's ``z``), so that they respect the parameter space as posterior
    intervals do.
    """
    prob = _check_options(scale, prob, vcov, ci_kind, information)
    x, _, _ = _draws_on_scale(fit, posterior, scale)
    x = x.reshape(-1, x.shape[-1])
    labels = fit.labels(scale)
    model = fit.summary(vcov="model", scale=scale, level=prob, information=information)
    table = pd.DataFrame(index=pd.Index(labels, name="parameter"), columns=list(COLUMNS), dtype=float)
    table["estimate"] = model["Estimate"].to_numpy()
    table["se_model"] = model["Std. Error"].to_numpy()
    table["wald_lower"] = model.iloc[:, 4].to_numpy()
    table["wald_upper"] = model.iloc[:, 5].to_numpy()
    if vcov is not None:
        try:
            robust = fit.summary(vcov=vcov, scale=scale, level=prob, information=information, cluster=cluster)
        except MixVcovError as err:
            raise MixVcovError(f"{err}; or pass vcov=None to leave the sandwich columns out") from err
        table["se_sandwich"] = robust["Std. Error"].to_numpy()
        table["sandwich_lower"] = robust.iloc[:, 4].to_numpy()
        table["sandwich_upper"] = robust.iloc[:, 5].to_numpy()
    table["posterior_mean"] = x.mean(axis=0)
    table["posterior_sd"] = x.std(axis=0, ddof=1) if x.shape[0] > 1 else np.nan
    lo, hi = _interval(x, prob, ci_kind)
    table["posterior_lower"], table["posterior_upper"] = lo, hi
    table.attrs = {
        "scale": scale,
        "prob": prob,
        "vcov": vcov,
        "ci_kind": ci_kind,
        "information": information,
        "method": fit.method,
        "draws": int(x.shape[0]),
    }
    return table


# -- the plot -------------------------------------------------------------------------------------
def plot_compare(
    fit,
    posterior,
    scale: str = "sd",
    prob: float = 0.95,
    filename: str | Path | None = None,
    *,
    vcov: Literal["CR0", "CR1", "CR3"] | None = "CR1",
    ci_kind: CiKind = "eti",
    information: Literal["observed", "expected"] = "observed",
    cluster=None,
    dpi: int = 150,
):
    """Forest plot: the posterior, Wald and sandwich intervals of every parameter.

    Parameters
    ----------
    fit, posterior, scale, prob, vcov, ci_kind, information, cluster :
        As in :func:`compare`, which computes the intervals.
    filename : str or path, optional
        Where to write the figure (PNG, or any format matplotlib infers from the suffix).
    dpi : int
        Resolution of the written file.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per parameter, each with its own horizontal axis: the posterior interval
        with the posterior mean, the Wald interval and the sandwich interval with the estimate.

    Notes
    -----
    Drawn with matplotlib, not with ArviZ's ``plot_forest``: that puts every parameter on one
    shared axis, where an intercept of 250 and a correlation of 0.07 cannot both be read. The
    figure is built without pyplot, so no GUI backend is needed. The table behind it is
    ``compare(fit, posterior, scale, prob, vcov)``.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    table = compare(fit, posterior, scale, prob, vcov, ci_kind=ci_kind, information=information, cluster=cluster)
    rows = [
        ("posterior", "posterior_lower", "posterior_upper", "posterior_mean", "C0", "o"),
        (
            "Laplace (model)" if fit.method == "MAP" else "Wald (model)",
            "wald_lower",
            "wald_upper",
            "estimate",
            "C1",
            "D",
        ),
    ]
    if vcov is not None:
        rows.append((f"sandwich ({vcov})", "sandwich_lower", "sandwich_upper", "estimate", "C2", "s"))
    n = len(table)
    fig = Figure(figsize=(7.5, 0.75 + 0.62 * n), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n, 1, squeeze=False)[:, 0])
    for ax, (label, row) in zip(axes, table.iterrows(), strict=True):
        for k, (_, lo, hi, mid, colour, marker) in enumerate(rows):
            y = len(rows) - 1 - k
            if np.isfinite(row[lo]) and np.isfinite(row[hi]):
                ax.plot([row[lo], row[hi]], [y, y], color=colour, lw=2.2, solid_capstyle="butt")
            if np.isfinite(row[mid]):
                ax.plot([row[mid]], [y], marker=marker, color=colour, ms=4.5, ls="none")
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8.5)
        ax.tick_params(axis="x", labelsize=7.5, length=2.5, pad=1.5)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.grid(axis="x", lw=0.4, alpha=0.4)
    handles = [Line2D([], [], color=c, lw=2.2, marker=m, ms=4.5, label=name) for name, _, _, _, c, m in rows]
    kind = "equal-tailed" if ci_kind == "eti" else "HDI"
    fig.suptitle(
        f"{fit.method} fit vs posterior, scale {scale!r}: {100 * prob:g}% intervals (posterior: {kind})",
        fontsize=10,
    )
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8.5, frameon=False)
    if filename is not None:
        fig.savefig(filename, dpi=dpi)
    return fig
