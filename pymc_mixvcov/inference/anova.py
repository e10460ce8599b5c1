"""Likelihood-ratio tests between nested mixed models, as lme4's ``anova``.

:func:`anova` orders the fits by their number of parameters and tests each against the one
before it: ``chisq = 2 max(0, l_1 - l_0)`` on ``chi_df = npar_1 - npar_0`` degrees of freedom,
``p = P(chi2_{chi_df} >= chisq)``, exactly lme4's table. When the smaller model sets a variance
component to 0, that null value is on the boundary of the parameter space and ``p`` is
conservative; the ``p_boundary`` column then refers ``chisq`` to the chi-bar-square mixture of
Self and Liang (1987) and Stram and Lee (1994):

.. math::

    p_{\\text{boundary}} = \\tfrac12 P(\\chi^2_{d-1} \\ge x) + \\tfrac12 P(\\chi^2_d \\ge x),

with ``d = chi_df`` and ``chi2_0`` the point mass at 0. Where the smaller model puts no variance
on its boundary, ``p_boundary = p``. When the rule applies is decided from the models
themselves (their fixed-effect designs and random-effect terms), for formula-built and
hand-written models alike; see :func:`anova`.

References
----------
Self, S. G. and Liang, K.-Y. (1987). Asymptotic properties of maximum likelihood estimators
and likelihood ratio tests under nonstandard conditions. *Journal of the American Statistical
Association* 82, 605-610.

Stram, D. O. and Lee, J. W. (1994). Variance components testing in the longitudinal mixed
effects model. *Biometrics* 50, 1171-1177.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import chdtrc  # chi-square survival function (scipy.stats costs 0.4 s to import)

from ..errors import MixVcovError, MixVcovWarning
from .results import MixedFit

__all__ = ["anova", "boundary_pvalue"]

#: A smaller model whose log-likelihood exceeds the larger one's by more than this is reported as
#: not nested (or not at its maximum): a chi-square below ``2e-4`` is far below any level of interest
#: (its 1-df p-value is 0.989), and the optimiser stops within about ``1e-6`` of the maximum.
LOGLIK_TOL = 1e-4
#: Relative tolerance of the comparisons of design columns between models (data stored as float64).
_COLUMN_RTOL = 1e-8


def boundary_pvalue(chisq: float, df: int, boundary: int = 1) -> float:
    """p-value of a likelihood-ratio statistic whose null puts one variance on its boundary.

    Parameters
    ----------
    chisq : float
        The statistic ``2 (l_1 - l_0)`` (negative values count as 0).
    df : int
        Number of parameters the alternative adds, ``d >= 1``.
    boundary : {1}
        Number of variances the null sets to 0 on their boundary; only 1 is supported: with several,
        the mixture weights depend on the information matrix.

    Returns
    -------
    float
        ``1/2 P(chi2_{d-1} >= x) + 1/2 P(chi2_d >= x)``, ``chi2_0`` the point mass at 0 (Self and
        Liang 1987, case 5 and its extension to ``d - 1`` parameters tested in the interior; Stram
        and Lee 1994 for a ``q``-vector random effect extended to ``q + 1`` correlated effects,
        ``d = q + 1``). At ``x = 0`` the p-value is 1.
    """
    if boundary != 1:
        raise MixVcovError(
            f"boundary={boundary!r}: the chi-bar-square mixture is available in closed form for one variance on "
            "its boundary only (boundary=1); with several, its weights depend on the information matrix"
        )
    if isinstance(df, bool) or int(df) != df or df < 1:
        raise MixVcovError(f"df must be a positive integer, got {df!r}")
    x = max(float(chisq), 0.0)
    lower = (1.0 if x <= 0 else 0.0) if df == 1 else float(chdtrc(df - 1, x))
    upper = 1.0 if x <= 0 else float(chdtrc(df, x))
    return 0.5 * lower + 0.5 * upper


# -- the models' structure --------------------------------------------------------------------------------
@dataclass
class _Effect:
    """One random effect: design values ``z`` on the rows where it acts, and their grouping.

    Its contribution to the linear predictor is ``Z_e u_e`` with ``Z_e[i, l] = z_i 1(level_i = l)``;
    two effects with the same rows, the same values and the same grouping of those rows (levels
    relabelled by first appearance) have the same ``Z_e`` up to the order of the levels.
    """

    rows: np.ndarray  # bool: the observations where it acts (its level is known and z != 0)
    labels: np.ndarray  # canonical level of each of those rows
    values: np.ndarray  # z on those rows
    name: str  # "<effect>|<group>", for messages

    def same(self, other: _Effect) -> bool:
        return (
            np.array_equal(self.rows, other.rows)
            and np.array_equal(self.labels, other.labels)
            and _same_values(self.values, other.values)
        )


@dataclass
class _Structure:
    X: np.ndarray
    offset: np.ndarray
    family: str
    effects: list[_Effect]
    free: set[tuple[int, int]]  # (i, j), i >= j, effects of one term: free (co)variance entries
    n_likelihood: int  # residual SD and the likelihood's own parameters
    clear: str  # "" when every free (co)variance entry is one parameter of its own; else why not
    weights: np.ndarray | None = None  # Gaussian precision weights


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)), 1e-300)
    return bool(np.all(np.abs(a - b) <= _COLUMN_RTOL * scale))


def _in_span(column: np.ndarray, basis: np.ndarray) -> bool:
    if basis.shape[1] == 0:
        return not np.any(column)
    coef = np.linalg.lstsq(basis, column, rcond=None)[0]
    return bool(np.linalg.norm(column - basis @ coef) <= 1e-8 * max(np.linalg.norm(column), 1e-300))


def _structure(fit: MixedFit) -> _Structure:
    """Fixed-effect design, offset, random effects and the (co)variance entries that are free.

    An entry of a term's covariance is free when it moves with some variance parameter of the
    model (the pattern of the Jacobian of the ``"var"`` scale, taken off the boundary).
    """
    spec = fit.spec
    dep = fit._dependence("var")
    variance = np.ones(spec.n_params, bool)
    variance[spec.fixed_index] = False
    effects: list[_Effect] = []
    free: set[tuple[int, int]] = set()
    row = spec.fixed_index.size
    for t in spec.terms:
        codes = np.asarray(t.codes)
        z = np.asarray(t.z, float).reshape(spec.n, t.r)
        base = len(effects)
        for k in range(t.r):
            rows = (codes >= 0) & (z[:, k] != 0)
            labels = pd.factorize(codes[rows])[0].astype(np.int64)
            effects.append(_Effect(rows, labels, z[rows, k], f"{t.effects[k]}|{t.group}"))
        for j in range(t.r):
            for i in range(j, t.r):
                if dep[row, variance].any():
                    free.add((base + i, base + j))
                row += 1
    n_likelihood = (1 if spec.gaussian else 0) + spec.psi_index.size
    n_variance = int(variance.sum())
    clear = ""
    if len(free) + n_likelihood != n_variance:
        clear = (
            f"its {n_variance} variance parameter(s) do not map one to one onto its {len(free)} free random-effect "
            f"(co)variance(s) and {n_likelihood} likelihood parameter(s) (shared or structured covariances)"
        )
    return _Structure(
        np.asarray(spec.X, float),
        np.asarray(spec.offset, float).reshape(-1),
        spec.family,
        effects,
        free,
        n_likelihood,
        clear,
        None if spec.weights is None else np.asarray(spec.weights, float),
    )


@dataclass
class _Comparison:
    """How the smaller model of a pair sits in the larger one."""

    nested: bool | None  # True, False (it cannot be), None (cannot be told)
    boundary: int = 0  # variances the smaller model sets to 0
    note: str = ""


def _compare(small: _Structure, large: _Structure, d: int) -> _Comparison:
    """Is the smaller model the larger one with some parameters at 0, and how many of them are variances?

    The fixed-effect columns of the smaller model must span a subspace of the larger one's, every
    random effect of the smaller model must be one of the larger model's (:class:`_Effect`), and
    each (co)variance free in the smaller model must be free in the larger one. The parameters the
    larger model adds are then its extra fixed-effect columns and its (co)variance entries not free
    in the smaller model; among these, the variances of effects the smaller model lacks are the
    ones it sets to 0, on their boundary. The count must add up to ``d``.
    """
    if small.family != large.family:
        return _Comparison(None, note=f"the models have different likelihoods ({small.family}, {large.family})")
    if not _same_values(small.offset, large.offset):
        return _Comparison(None, note="the models have different offsets")
    ws, wl = (np.ones(small.X.shape[0]) if m.weights is None else m.weights for m in (small, large))
    if not _same_values(ws, wl):
        return _Comparison(None, note="the models have different weights")
    for why in (small.clear, large.clear):
        if why:
            return _Comparison(None, note=f"the random-effect structure cannot be read off a model: {why}")
    for k in range(small.X.shape[1]):
        if not _in_span(small.X[:, k], large.X):
            return _Comparison(
                False, note=f"fixed-effect column {k} of the smaller model is not in the span of the larger one's"
            )
    rank = [int(np.linalg.matrix_rank(m.X)) if m.X.shape[1] else 0 for m in (small, large)]
    new_fixed = rank[1] - rank[0]
    where: dict[int, int] = {}
    for i, e in enumerate(small.effects):
        hit = next((j for j, f in enumerate(large.effects) if e.same(f)), None)
        if hit is None:
            return _Comparison(
                None,
                note=f"random effect {e.name} of the smaller model is not one of the larger model's (compared by "
                "design values and grouping): whether the models are nested, and which variances the smaller one "
                "puts on the boundary, cannot be told",
            )
        where[i] = hit

    def image(i: int, j: int) -> tuple[int, int]:
        return max(where[i], where[j]), min(where[i], where[j])

    for i, j in small.free:
        if image(i, j) not in large.free:
            e = small.effects
            what = f"the variance of {e[i].name}" if i == j else f"the covariance of {e[i].name} and {e[j].name}"
            return _Comparison(False, note=f"{what} is free in the smaller model but fixed in the larger one")
    mapped = {image(i, j) for i, j in small.free}
    extra = large.free - mapped
    present = {where[i] for i, j in small.free if i == j}
    new_var = sum(1 for i, j in extra if i == j and i not in present)
    new_cov = len(extra) - new_var
    counted = new_fixed + new_var + new_cov + (large.n_likelihood - small.n_likelihood)
    if counted != d:
        return _Comparison(
            None,
            note=f"the larger model adds {d} parameter(s), but {counted} can be told apart in its design "
            f"({new_fixed} fixed, {new_var} variance(s), {new_cov} covariance(s))",
        )
    counts = ((new_fixed, "fixed effect(s)"), (new_var, "variance(s)"), (new_cov, "covariance(s)"))
    what = ", ".join(f"{k} {w}" for k, w in counts if k)
    return _Comparison(True, boundary=new_var, note=f"nested: the larger model adds {what}")


# -- the table ----------------------------------------------------------------------------------------------
def _refit_ml(fit: MixedFit, name: str) -> MixedFit:
    call = getattr(fit, "_call", None)
    if call is None:
        raise MixVcovError(
            f"model {name!r} is a REML fit that cannot be refitted by ML here (it was not made by "
            "pymc_mixvcov.optimise.fit or MixedModel.fit); fit it with method='ML' and pass that fit"
        )
    from ..optimise.fit import fit as fit_model

    return fit_model(method="ML", **call)


def _check_same_data(fits: list[MixedFit], names: list[str]) -> None:
    n0, y0 = fits[0].nobs, np.asarray(fits[0].spec.y, float)
    for f, name in zip(fits[1:], names[1:], strict=True):
        if f.nobs != n0:
            raise MixVcovError(
                f"models {names[0]!r} and {name!r} were fitted to different numbers of observations ({n0} and "
                f"{f.nobs}); likelihood-ratio tests and information criteria compare models of the same data only. "
                "Fit them to the same rows (drop rows with missing values in any model's variables first)"
            )
        y = np.asarray(f.spec.y, float)
        if not np.array_equal(y, y0, equal_nan=True):
            bad = np.flatnonzero(~((y == y0) | (np.isnan(y) & np.isnan(y0))))
            raise MixVcovError(
                f"models {names[0]!r} and {name!r} have different responses ({bad.size} of {n0} observations "
                f"differ, first at row {bad[0]}); likelihood-ratio tests compare models of the same response only"
            )


def anova(*fits: MixedFit, names: list[str] | None = None, refit: bool = True) -> pd.DataFrame:
    """Likelihood-ratio tests between nested models and their information criteria (lme4's ``anova``).

    Parameters
    ----------
    *fits : MixedFit
        Two or more fits of models of the same response on the same observations.
    names : list of str, optional
        Row labels, one per fit in the order given (default ``model1``, ``model2``, ...).
    refit : bool, default True
        Refit REML fits by maximum likelihood first, as lme4 does, with a :class:`MixVcovWarning`
        naming them (lme4's "refitting model(s) with ML (instead of REML)"): REML criteria of
        models with different fixed effects are not comparable. ``False`` compares REML
        criteria, which is allowed when every fit is REML and all have the same fixed-effect
        design.

    Returns
    -------
    pandas.DataFrame
        One row per model, in order of ``npar``; columns

        ``npar``
            number of estimated parameters (:attr:`MixedFit.df`);
        ``loglik``, ``aic``, ``bic``, ``deviance``
            log-likelihood (ML, or REML with ``refit=False``), ``-2 loglik + 2 npar``,
            ``-2 loglik + log(n) npar``, ``-2 loglik``;
        ``chisq``, ``chi_df``, ``p``
            against the row before: ``2 max(0, l_i - l_{i-1})`` on ``npar_i - npar_{i-1}`` degrees of
            freedom and its chi-square p-value (NaN when ``chi_df = 0``), as lme4;
        ``p_boundary``, ``null_dist``
            the p-value from the reference distribution ``null_dist`` that accounts for variances the
            smaller model puts on their boundary (see Notes), NaN where it cannot be told.

        ``attrs["criterion"]`` is ``"ML"`` or ``"REML"``, ``attrs["refitted"]`` names the fits that were
        refitted by ML, and ``attrs["notes"]`` says for each row how its model sits in the one before.

    Raises
    ------
    MixVcovError
        Fewer than two fits, anything other than a :class:`MixedFit`, MAP fits, different numbers of
        observations or responses, different quadrature (``nAGQ``), or ``refit=False`` with ML fits or
        with REML fits of different fixed effects.

    Warns
    -----
    MixVcovWarning
        REML fits refitted by ML; two models with the same number of parameters (no test); a smaller
        model whose log-likelihood exceeds the larger one's by more than :data:`LOGLIK_TOL`, or whose
        design shows it is not nested in the larger one (the chi-square test does not apply).

    Notes
    -----
    The likelihood-ratio statistic ``x = 2 (l_1 - l_0)`` is asymptotically ``chi2_d`` when the null
    values of the ``d`` extra parameters are interior points of the parameter space: fixed effects,
    covariances. A variance set to 0 is on the boundary, and then (Self and Liang 1987) the
    limit for one such variance, with the other ``d - 1`` tested parameters interior, is the
    mixture ``1/2 chi2_{d-1} + 1/2 chi2_d`` (``chi2_0`` the point mass at 0). This covers adding
    a random intercept or an independent random slope (``d = 1``: ``1/2 chi2_0 + 1/2 chi2_1``,
    p-value half the naive one) and extending a ``q``-vector of correlated random effects to
    ``q + 1`` (``(1 | g)`` to ``(x | g)``: ``d = 2``, ``1/2 chi2_1 + 1/2 chi2_2``; Stram and Lee 1994).

    ``p_boundary`` applies this rule when the pair is found to be nested, by reading both models:
    the smaller model's fixed-effect columns lie in the span of the larger one's; each of its random
    effects (a design column on a grouping of the observations, compared by value, so hand-written
    models qualify) is one of the larger model's on the same grouping; every (co)variance free in
    the smaller model is free in the larger one; and the larger model's extra fixed-effect columns,
    (co)variances and variances add up to ``chi_df``. The variances of effects that the smaller model
    lacks are those it puts on the boundary. With none, ``p_boundary = p`` and ``null_dist`` is
    ``chi2(d)``; with one, the mixture above; with two or more the mixture weights depend on the
    information matrix (Self and Liang 1987, case 7) and ``p_boundary`` is NaN (a parametric
    bootstrap gives the p-value). It is also NaN, with the reason in ``attrs["notes"]``, when the
    pair is not nested or nesting cannot be told: random effects that are combinations of the other
    model's (``(0 + f | g)`` against ``(1 | g)``), variance parameters shared between terms or
    structured covariances, different offsets or families.

    GLMMs: the log-likelihoods are those of the fits' own approximation (Laplace, or adaptive
    Gauss-Hermite quadrature; all fits must use the same ``nAGQ``).

    References
    ----------
    Self, S. G. and Liang, K.-Y. (1987). *JASA* 82, 605-610. Stram, D. O. and Lee, J. W. (1994).
    *Biometrics* 50, 1171-1177. Bates, D., Maechler, M., Bolker, B. and Walker, S. (2015). Fitting
    linear mixed-effects models using lme4. *Journal of Statistical Software* 67(1).

    Examples
    --------
    >>> import pymc_mixvcov as pmv
    >>> data = pmv.datasets.load("sleepstudy")
    >>> fit0 = pmv.lmm("Reaction ~ Days + (1 | Subject)", data).fit()
    >>> fit1 = pmv.lmm("Reaction ~ Days + (Days | Subject)", data).fit()
    >>> pmv.anova(fit0, fit1)  # doctest: +SKIP
    """
    if len(fits) < 2:
        raise MixVcovError(f"anova compares two or more fits; got {len(fits)}")
    for i, f in enumerate(fits):
        if not isinstance(f, MixedFit):
            hint = "; call its .fit() first" if hasattr(f, "fit") and hasattr(f, "formula") else ""
            raise MixVcovError(f"argument {i + 1} of anova is a {type(f).__name__}, not a MixedFit{hint}")
    if names is None:
        names = [f"model{i + 1}" for i in range(len(fits))]
    else:
        names = [str(n) for n in names]
        if len(names) != len(fits) or len(set(names)) != len(names):
            raise MixVcovError(f"names must be {len(fits)} distinct labels, one per fit; got {names!r}")
    if not isinstance(refit, bool):
        raise MixVcovError(f"refit must be True or False, got {refit!r}")
    fits_l = list(fits)
    for f, name in zip(fits_l, names, strict=True):
        if f.method == "MAP":
            raise MixVcovError(
                f"model {name!r} is a MAP fit (the posterior mode); likelihood-ratio tests need maximum-likelihood "
                "fits: refit it with method='ML'"
            )
    nagq = {f.nagq for f in fits_l}
    if len(nagq) > 1:
        raise MixVcovError(
            f"the fits use different likelihood approximations (nAGQ = {sorted(nagq)}); their log-likelihoods are "
            "not comparable: fit all models with the same nAGQ"
        )
    _check_same_data(fits_l, names)
    reml = [f.method == "REML" for f in fits_l]
    refitted: list[str] = []
    if refit:
        if any(reml):
            refitted = [n for n, r in zip(names, reml, strict=True) if r]
            warnings.warn(
                f"refitting model(s) {', '.join(map(repr, refitted))} with ML (instead of REML): REML criteria "
                "of models with different fixed effects are not comparable",
                MixVcovWarning,
                stacklevel=2,
            )
            fits_l = [_refit_ml(f, n) if r else f for f, n, r in zip(fits_l, names, reml, strict=True)]
        criterion = "ML"
    else:
        if not all(reml):
            raise MixVcovError(
                "refit=False compares REML criteria, but "
                + ", ".join(repr(n) for n, r in zip(names, reml, strict=True) if not r)
                + " are not REML fits; use refit=True (the default) to compare ML log-likelihoods"
            )
        X0 = np.asarray(fits_l[0].spec.X, float)
        for f, name in zip(fits_l[1:], names[1:], strict=True):
            X = np.asarray(f.spec.X, float)
            if X.shape != X0.shape or not _same_values(X.ravel(), X0.ravel()):
                raise MixVcovError(
                    f"refit=False: REML fits {names[0]!r} and {name!r} have different fixed-effect designs, and REML "
                    "criteria of models with different fixed effects are not comparable; use refit=True"
                )
        criterion = "REML"

    npar = np.array([f.df for f in fits_l])
    order = np.argsort(npar, kind="stable")
    fits_o = [fits_l[i] for i in order]
    names_o = [names[i] for i in order]
    npar = npar[order]
    ll = np.array([f.loglik for f in fits_o])
    nobs = fits_o[0].nobs
    k = len(fits_o)
    chisq = np.full(k, np.nan)
    chi_df = np.full(k, np.nan)
    p = np.full(k, np.nan)
    p_b = np.full(k, np.nan)
    null_dist = [""] * k
    notes = {names_o[0]: "first model"}
    structures: list[_Structure | None] = [None] * k
    for i in range(1, k):
        d = int(npar[i] - npar[i - 1])
        chisq[i] = 2 * max(0.0, ll[i] - ll[i - 1])
        chi_df[i] = d
        a, b = names_o[i - 1], names_o[i]
        if d == 0:
            notes[b] = f"same number of parameters as {a!r}: not nested, no test"
            warnings.warn(
                f"models {a!r} and {b!r} have the same number of parameters ({npar[i]}): they are not nested and "
                "are not tested against each other; compare their AIC and BIC instead",
                MixVcovWarning,
                stacklevel=2,
            )
            continue
        p[i] = float(chdtrc(d, chisq[i]))
        if ll[i - 1] - ll[i] > LOGLIK_TOL:
            warnings.warn(
                f"model {a!r} has fewer parameters than {b!r} but a larger log-likelihood ({ll[i - 1]:.6f} > "
                f"{ll[i]:.6f}): the models are not nested, or {b!r} did not reach its maximum; the chi-square test "
                "does not apply",
                MixVcovWarning,
                stacklevel=2,
            )
        for j in (i - 1, i):
            if structures[j] is None:
                structures[j] = _structure(fits_o[j])
        comp = _compare(structures[i - 1], structures[i], d)
        if comp.nested is False:
            warnings.warn(
                f"model {a!r} is not nested in {b!r} ({comp.note}); the chi-square test does not apply",
                MixVcovWarning,
                stacklevel=2,
            )
        if comp.nested is not True:
            notes[b] = f"against {a!r}: {comp.note}; p_boundary not computed"
            continue
        if comp.boundary == 0:
            p_b[i], null_dist[i] = p[i], f"chi2({d})"
            notes[b] = f"against {a!r}: {comp.note}; no variance on its boundary under the null"
        elif comp.boundary == 1:
            p_b[i] = boundary_pvalue(chisq[i], d)
            null_dist[i] = f"0.5 chi2({d - 1}) + 0.5 chi2({d})"
            notes[b] = f"against {a!r}: {comp.note}; one variance on its boundary under the null"
        else:
            notes[b] = (
                f"against {a!r}: {comp.note}; {comp.boundary} variances on their boundary under the null, where the "
                "chi-bar-square weights depend on the information matrix; p_boundary not computed (use a "
                "parametric bootstrap)"
            )
    table = pd.DataFrame(
        {
            "npar": npar.astype(int),
            "loglik": ll,
            "aic": -2 * ll + 2 * npar,
            "bic": -2 * ll + np.log(nobs) * npar,
            "deviance": -2 * ll,
            "chisq": chisq,
            "chi_df": chi_df,
            "p": p,
            "p_boundary": p_b,
            "null_dist": null_dist,
        },
        index=pd.Index(names_o, name="model"),
    )
    table.attrs = {"criterion": criterion, "refitted": refitted, "notes": notes}
    return table
