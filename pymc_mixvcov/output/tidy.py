"""A fit as a tidy table: one row per parameter, as ``broom.mixed::tidy`` and pyfixest give them.

Columns (in this order):

``effect``
    ``"fixed"`` (fixed effects), ``"ran_pars"`` (the random effects' variance parameters and
    the Gaussian residual SD, as broom.mixed), or ``"fam_pars"`` (other parameters of the
    likelihood: a negative binomial's ``alpha``, a gamma's ``shape``).
``group``
    The grouping factor of a variance parameter (``"Subject"``; ``"Subject.1"`` for a second
    block on it, as lme4 names it), ``"Residual"`` for the residual SD, missing for the others.
``term``
    The parameter's label on ``scale``, as in :meth:`MixedFit.vcov` (``"(Intercept)"``,
    ``"sd_(Intercept)|Subject"``, ``"cor_Days.(Intercept)|Subject"``, ``"sigma"``), so that the
    rows index the covariance matrices. broom.mixed writes the same parameters as ``sd__(Intercept)``,
    ``cor__(Intercept).Days``, ``sd__Observation`` (group ``Residual``).
``estimate``, ``std_error``, ``statistic``, ``df``, ``p_value``, ``conf_low``, ``conf_high``
    :meth:`MixedFit.summary`'s numbers: the Wald statistic ``estimate / std_error`` and its
    two-sided normal p-value, or with ``ddf`` the fixed effects' t statistic, small-sample
    ``df`` (the column is there only with ``ddf``) and t p-value; intervals at ``conf_level``
    formed where each parameter is unbounded (SDs on the log scale, correlations on Fisher's
    scale, see :meth:`MixedFit.summary`). ``p_value`` is missing for ``ran_pars`` rows, as in
    broom.mixed: the null value of a variance parameter (an SD of 0) lies on the boundary of the
    parameter space, where the Wald test does not hold (:func:`pymc_mixvcov.anova` gives the
    likelihood-ratio test with the boundary-corrected p-value).
``scale``, ``vcov``
    The reporting scale and the covariance used (``"model"``, ``"CR0"``, ``"CR1"``, ``"CR3"``).

Unlike broom.mixed, which has no standard errors for ``ran_pars`` (lme4 does not give them),
every parameter has its standard error and interval from the full covariance matrix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["tidy", "COLUMNS"]

#: Columns of :func:`tidy` (``df`` only when ``ddf`` is given).
COLUMNS: tuple[str, ...] = (
    "effect",
    "group",
    "term",
    "estimate",
    "std_error",
    "statistic",
    "df",
    "p_value",
    "conf_low",
    "conf_high",
    "scale",
    "vcov",
)


def _effects_and_groups(fit, scale: str) -> tuple[list[str], list[str | None]]:
    """``effect`` and ``group`` of every parameter of ``scale`` (rows as :meth:`MixedFit.labels`)."""
    spec = fit.spec
    n = len(fit.labels(scale))
    k = spec.fixed_index.size
    if scale in ("natural", "unconstrained"):
        effect = ["fixed" if i in set(spec.fixed_index.tolist()) else "ran_pars" for i in range(n)]
        if not spec.gaussian:
            for i in spec.psi_index:
                effect[int(i)] = "fam_pars"
        return effect, [None] * n
    effect, group = ["fixed"] * k, [None] * k
    seen: dict[str, int] = {}
    for t in spec.terms:
        m = seen.get(str(t.group), 0)
        seen[str(t.group)] = m + 1
        name = str(t.group) if m == 0 else f"{t.group}.{m}"
        size = t.r * (t.r + 1) // 2
        effect += ["ran_pars"] * size
        group += [name] * size
    rest = n - len(effect)
    if spec.gaussian:
        effect += ["ran_pars"] * rest
        group += ["Residual"] * rest
    else:
        effect += ["fam_pars"] * rest
        group += [None] * rest
    return effect, group


def tidy(
    fit,
    *,
    scale: str = "sd",
    vcov: str | None = None,
    conf_level: float = 0.95,
    ddf: str | None = None,
    information: str = "observed",
    cluster=None,
    reml_cross: str = "zero",
) -> pd.DataFrame:
    """One row per parameter of ``fit`` (see the module docstring for the columns).

    Parameters
    ----------
    fit : MixedFit
    scale : str
        Reporting scale (:meth:`MixedFit.labels`), default ``"sd"``.
    vcov : None, {"model", "CR0", "CR1", "CR3"}
        ``None`` or ``"model"``: the model-based covariance; otherwise that sandwich.
    conf_level : float
        Level of the intervals.
    ddf : {"satterthwaite", "kenward-roger"} or None
        Small-sample t tests of the fixed effects (model-based covariance only).
    information, cluster, reml_cross
        As in :meth:`MixedFit.summary`.

    Returns
    -------
    pandas.DataFrame
        A fresh 0-based index; columns :data:`COLUMNS` (``df`` only with ``ddf``).
    """
    vcov = "model" if vcov is None else vcov
    table = pd.DataFrame(fit.summary(vcov, scale, conf_level, information, cluster, reml_cross=reml_cross, ddf=ddf))
    effect, group = _effects_and_groups(fit, scale)
    stat = "z value" if ddf is None else "t value"
    pcol = "Pr(>|z|)" if ddf is None else "Pr(>|t|)"
    low, high = table.columns[-2], table.columns[-1]
    p = table[pcol].to_numpy(float).copy()
    p[np.array(effect) == "ran_pars"] = np.nan
    out = pd.DataFrame(
        {
            "effect": effect,
            "group": pd.Series(group, dtype=object),
            "term": list(table.index),
            "estimate": table["Estimate"].to_numpy(float),
            "std_error": table["Std. Error"].to_numpy(float),
            "statistic": table[stat].to_numpy(float),
            "df": table["df"].to_numpy(float) if ddf is not None else np.nan,
            "p_value": p,
            "conf_low": table[low].to_numpy(float),
            "conf_high": table[high].to_numpy(float),
            "scale": scale,
            "vcov": vcov,
        }
    )
    if ddf is not None:
        out.loc[out["effect"] != "fixed", "df"] = np.nan
        return out[list(COLUMNS)]
    return out[[c for c in COLUMNS if c != "df"]]
