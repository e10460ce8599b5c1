"""The full result of a fit as one ``xarray.DataTree``, written as netCDF or JSON.

:func:`result_tree` is :meth:`MixedFit.to_datatree <pymc_mixvcov.inference.results.MixedFit.to_datatree>`
(estimates on every scale, model-based and sandwich covariances on every scale, cluster scores,
the optimiser's diagnostics, the observed data) plus two groups:

``summary``
    :meth:`MixedFit.tidy` as variables over the dimension ``term`` (``effect``, ``group``,
    ``estimate``, ``std_error``, ``statistic``, ``df``, ``p_value``, ``conf_low``,
    ``conf_high``), with the scale, covariance and interval level as attributes;
``random_effects``
    lme4's ``as.data.frame(VarCorr(fit))`` (``grp``, ``var1``, ``var2``, ``vcov``, ``sdcor``)
    over the dimension ``row``.

The root's attributes add the formula, the data's name, the family and link, ``aic``, ``bic``,
``df`` and ``converged``. :func:`write` writes the tree as netCDF-4 groups (``.nc``: read back with
``xarray.open_datatree``) or as JSON (``.json``: :func:`tree_to_json`, one object per group as
``xarray.Dataset.to_dict`` gives it; missing and non-finite numbers are ``null``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import MixVcovError

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

__all__ = ["result_tree", "tree_to_json", "write", "FORMATS"]

#: File suffixes :func:`write` knows, and the format each means.
FORMATS: dict[str, str] = {".nc": "netcdf", ".nc4": "netcdf", ".netcdf": "netcdf", ".json": "json"}


def _text(values) -> list[str]:
    """Strings for a netCDF variable: missing entries as empty strings."""
    return ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values]


def result_tree(
    fit,
    *,
    scale: str = "sd",
    vcov: str | None = None,
    conf_level: float = 0.95,
    ddf: str | None = None,
    information: str = "observed",
    cluster=None,
) -> xr.DataTree:
    """The fit's DataTree with the ``summary`` and ``random_effects`` groups (module docstring)."""
    import xarray as xr

    from .summary import random_table

    tree = fit.to_datatree(information=information, cluster=cluster)
    common = dict(tree.attrs)
    table = fit.tidy(scale=scale, vcov=vcov, conf_level=conf_level, ddf=ddf, information=information, cluster=cluster)
    numbers = [c for c in table.columns if c not in ("effect", "group", "term", "scale", "vcov")]
    summary = xr.Dataset(
        {
            "effect": ("term", _text(table["effect"])),
            "group": ("term", _text(table["group"])),
            **{c: ("term", table[c].to_numpy(float)) for c in numbers},
        },
        coords={"term": [str(t) for t in table["term"]]},
        attrs={
            **common,
            "scale": scale,
            "vcov": "model" if vcov is None else str(vcov),
            "conf_level": float(conf_level),
            "ddf": "" if ddf is None else str(ddf),
        },
    )
    random = random_table(fit)
    random_effects = xr.Dataset(
        {
            "grp": ("row", _text(random["grp"])),
            "var1": ("row", _text(random["var1"])),
            "var2": ("row", _text(random["var2"])),
            "vcov": ("row", random["vcov"].to_numpy(float)),
            "sdcor": ("row", random["sdcor"].to_numpy(float)),
        },
        coords={"row": np.arange(len(random))},
        attrs=dict(common),
    )
    groups = {name: tree[name].to_dataset() for name in tree.children}
    groups["summary"] = summary
    groups["random_effects"] = random_effects
    out = xr.DataTree.from_dict(groups)
    extra = {
        "formula": getattr(fit, "formula", None) or "",
        "data": getattr(fit, "data_name", None) or "",
        "family_name": getattr(fit, "family", None) or str(fit.spec.family),
        "link": getattr(fit, "link", None) or "",
        "df": int(fit.df),
        "converged": int(bool(fit.converged)),
        "singular": int(bool(fit.singular)),
    }
    if fit.method != "MAP":
        extra.update(aic=float(fit.aic), bic=float(fit.bic))
    out.attrs = {**common, **extra}
    return out


def _plain(value):
    """``value`` with NumPy scalars and arrays as Python objects and non-finite floats as ``None``."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def tree_to_json(tree: xr.DataTree) -> dict:
    """A DataTree as JSON-ready data: ``{"attrs": root attributes, "groups": {name: Dataset.to_dict()}}``."""
    groups = {name: _plain(tree[name].to_dataset().to_dict(data="list")) for name in tree.children}
    return {"attrs": _plain(dict(tree.attrs)), "groups": groups}


def write(tree: xr.DataTree, path: str | Path) -> Path:
    """Write ``tree`` to ``path``: netCDF-4 for ``.nc``/``.nc4``/``.netcdf``, JSON for ``.json``."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise MixVcovError(
            f"cannot tell the format of {str(path)!r} from its suffix; use one of: {', '.join(sorted(FORMATS))}"
        )
    if kind == "json":
        path.write_text(json.dumps(tree_to_json(tree), indent=1, allow_nan=False) + "\n")
    else:
        tree.to_netcdf(path, engine="h5netcdf")
    return path
