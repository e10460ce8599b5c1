"""The printed summary of a fit, laid out as lme4's ``summary(lmer)``, in text and HTML.

:meth:`MixedFit.summary <pymc_mixvcov.inference.results.MixedFit.summary>` returns a
:class:`Summary`: the table of all parameters (a pandas ``DataFrame``, indexed and used as
before) that prints, and renders in notebooks, as lme4 prints ``summary(fit)``:

1. what was fitted (``Linear mixed model fit by maximum likelihood``), the formula, the data,
   the family and link of a GLMM;
2. the fit criteria: ``AIC``, ``BIC``, ``logLik``, ``deviance`` (``-2 logLik``) and ``df.resid``
   (observations minus estimated parameters), or the REML criterion ``-2 logLik_REML``;
3. the quartiles of the scaled residuals of a Gaussian model (:mod:`pymc_mixvcov.inference.conditional`);
4. the random effects: ``Groups``, ``Name``, ``Variance``, ``Std.Dev.`` and the correlations
   (lme4's ``VarCorr``), the residual; the number of observations and of each factor's levels;
5. the fixed effects: ``Estimate``, ``Std. Error`` and ``t value`` (Gaussian models, as lme4),
   ``z value`` and ``Pr(>|z|)`` (other likelihoods), or ``df``, ``t value`` and ``Pr(>|t|)``
   with small-sample degrees of freedom (``ddf=``, lmerTest's layout);

and then what lme4 does not give: every parameter's estimate, standard error, Wald statistic
and interval on the chosen scale, from the chosen covariance (model-based or a sandwich), and
that full covariance matrix.

The numbers are formatted as R formats them in these tables (four significant digits, a
column sharing its decimals); the ``DataFrame`` itself holds them unrounded, and so do the
pieces in :attr:`Summary.layout`.
"""

from __future__ import annotations

import html
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["Layout", "Summary", "build_layout", "fit_html", "fit_text"]

#: lme4's digits in printed summaries: ``max(3, getOption("digits") - 3)``.
DIGITS = 4

_SCALE_WORDS = {
    "sd": "SDs and correlations",
    "var": "variances and covariances",
    "cholesky": "lme4's relative Cholesky factor (theta) and sigma",
    "natural": "the model's own parameters",
    "unconstrained": "PyMC's unconstrained parameters",
}


@dataclass
class Layout:
    """The pieces of an lme4-style summary, unrounded (see the module docstring).

    Attributes
    ----------
    title : str
        ``Linear mixed model fit by maximum likelihood``, ``... by REML``, ...
    formula, data, family : str or None
        The formula, the data's name, and ``binomial  ( logit )`` for GLMMs.
    criteria : pandas.Series
        ``AIC, BIC, logLik, deviance, df.resid``, or ``REML criterion`` for REML fits.
    residuals : pandas.Series or None
        Quartiles (``Min, 1Q, Median, 3Q, Max``) of the scaled residuals (Gaussian models).
    random : pandas.DataFrame
        lme4's ``as.data.frame(VarCorr(fit), order = "lower.tri")``: columns ``grp, var1, var2,
        vcov, sdcor``, one row per variance or covariance (then the residual).
    family_params : pandas.Series
        Other parameters of the likelihood (a negative binomial's ``alpha``, a gamma's ``shape``).
    nobs : int
    groups : dict
        Number of levels of each grouping factor.
    fixed : pandas.DataFrame
        The fixed-effect table as printed.
    table : pandas.DataFrame
        All parameters on ``scale`` (the summary's own frame).
    covariance : pandas.DataFrame
        The covariance of all parameters on ``scale`` that ``table`` uses.
    covariance_note : str
        What that covariance is (``inverse observed information``, ``CR1 sandwich ...``).
    scale : str
    notes : list of str
        Convergence and boundary remarks.
    """

    title: str
    formula: str | None
    data: str | None
    family: str | None
    criteria: pd.Series
    residuals: pd.Series | None
    random: pd.DataFrame
    family_params: pd.Series
    nobs: int
    groups: dict[str, int]
    fixed: pd.DataFrame
    table: pd.DataFrame = field(repr=False)
    covariance: pd.DataFrame = field(repr=False)
    covariance_note: str = ""
    scale: str = "sd"
    notes: list[str] = field(default_factory=list)


class Summary(pd.DataFrame):
    """The table of all parameters (a ``DataFrame``) that prints as lme4's ``summary``.

    Indexing, arithmetic and every other pandas operation give plain ``DataFrame`` objects;
    ``to_string()`` gives the table alone; ``str()``/``repr()`` and the notebook display give
    the whole layout (:func:`build_layout`), whose pieces are in :attr:`layout`. The layout is
    built on first use (it needs the scaled residuals and the covariance matrix).
    """

    _metadata = ["_pmv_source", "_pmv_layout"]

    @property
    def _constructor(self):
        return pd.DataFrame

    @classmethod
    def of(cls, fit, table: pd.DataFrame, options: dict) -> Summary:
        """``table`` of ``fit`` (made by ``fit.summary(**options)``) as a :class:`Summary`."""
        out = cls(table)
        out._pmv_source = (fit, options)
        out._pmv_layout = None
        return out

    @property
    def layout(self) -> Layout | None:
        """The pieces of the printed summary (:class:`Layout`)."""
        if getattr(self, "_pmv_layout", None) is None and getattr(self, "_pmv_source", None) is not None:
            fit, options = self._pmv_source
            self._pmv_layout = build_layout(fit, pd.DataFrame(self), **options)
        return getattr(self, "_pmv_layout", None)

    def __reduce__(self):
        # pickled (and unpickled) as the plain table: the layout holds the fit
        return pd.DataFrame(self).__reduce__()

    def __repr__(self) -> str:
        layout = self.layout
        return super().__repr__() if layout is None else layout_text(layout)

    def __str__(self) -> str:
        return self.__repr__()

    def _repr_html_(self) -> str:
        layout = self.layout
        return super()._repr_html_() if layout is None else layout_html(layout)


# -- building the layout -------------------------------------------------------------------------
def _title(fit) -> str:
    gaussian = fit.spec.gaussian
    family = getattr(fit, "family", None) or fit.spec.family
    if fit.method == "REML":
        how = "REML"
    elif fit.method == "MAP":
        how = "maximum a posteriori (the marginal posterior mode; priors kept)"
    else:
        how = "maximum likelihood"
    if gaussian:
        return f"Linear mixed model fit by {how}"
    approx = "Laplace Approximation" if fit.nagq == 1 else f"Adaptive Gauss-Hermite Quadrature, nAGQ = {fit.nagq}"
    kind = "Generalized linear mixed model" if getattr(fit, "formula", None) else f"Mixed model ({family} likelihood)"
    return f"{kind} fit by {how} ({approx})"


def _family(fit) -> str | None:
    if fit.spec.gaussian:
        return None
    family = getattr(fit, "family", None) or fit.spec.family
    link = getattr(fit, "link", None)
    return f"{family}  ( {link} )" if link else str(family)


def _criteria(fit) -> pd.Series:
    if fit.method == "REML":
        return pd.Series({"REML criterion": -2.0 * fit.loglik})
    if fit.method == "MAP":
        return pd.Series({"logLik": fit.loglik, "log posterior": float(fit._opt.get("log_posterior", np.nan))})
    return pd.Series(
        {
            "AIC": fit.aic,
            "BIC": fit.bic,
            "logLik": fit.loglik,
            "deviance": -2.0 * fit.loglik,
            "df.resid": float(fit.nobs - fit.df),
        }
    )


def _residual_quartiles(fit) -> pd.Series | None:
    if not fit.spec.gaussian:
        return None
    from ..inference.conditional import scaled_residuals

    q = np.quantile(scaled_residuals(fit), [0.0, 0.25, 0.5, 0.75, 1.0])  # R's quantile() type 7
    return pd.Series(q, index=["Min", "1Q", "Median", "3Q", "Max"])


def random_table(fit) -> pd.DataFrame:
    """lme4's ``as.data.frame(VarCorr(fit), order = "lower.tri")`` of a fit (see :class:`Layout`)."""
    spec = fit.spec
    var = np.asarray(fit.params("var"), float)
    sd = np.asarray(fit.params("sd"), float)
    rows = []
    k = spec.fixed_index.size
    seen: dict[str, int] = {}
    for t in spec.terms:
        e = [str(x) for x in t.effects]
        n = seen.get(str(t.group), 0)
        seen[str(t.group)] = n + 1
        grp = str(t.group) if n == 0 else f"{t.group}.{n}"  # R's make.unique, as lme4 names the blocks
        for col in range(t.r):
            for row in range(col, t.r):
                rows.append((grp, e[col], None if row == col else e[row], var[k], sd[k]))
                k += 1
    if spec.gaussian:
        rows.append(("Residual", None, None, var[-1], sd[-1]))
    columns = list(zip(*rows, strict=True)) if rows else [()] * 5
    return pd.DataFrame(
        {
            "grp": pd.Series(columns[0], dtype=object),
            "var1": pd.Series(columns[1], dtype=object),
            "var2": pd.Series(columns[2], dtype=object),
            "vcov": pd.Series(columns[3], dtype=float),
            "sdcor": pd.Series(columns[4], dtype=float),
        }
    )


def _groups(fit) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in fit.spec.terms:
        out.setdefault(str(t.group), len(t.levels))
    return out


def _fixed_table(fit, table: pd.DataFrame, ddf) -> pd.DataFrame:
    k = fit.spec.fixed_index.size
    fixed = table.iloc[:k]
    if ddf is not None:
        return fixed[["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]].copy()
    if fit.spec.gaussian:  # lme4 prints t values without p-values for LMMs
        return fixed[["Estimate", "Std. Error", "z value"]].rename(columns={"z value": "t value"})
    return fixed[["Estimate", "Std. Error", "z value", "Pr(>|z|)"]].copy()


def _covariance_note(fit, vcov: str, information: str, cluster, reml_cross: str, ddf) -> str:
    if vcov == "model":
        what = "inverse observed information" if information == "observed" else "inverse expected (Fisher) information"
        if fit.method == "REML" and information == "observed":
            what += ", the REML criterion's" + (" with the ML fixed/variance cross block" if reml_cross == "ml" else "")
        if ddf == "kenward-roger":
            what += "; fixed-effect standard errors from Kenward and Roger's adjusted covariance"
        return f"model-based: {what}"
    if cluster is None:
        cluster = getattr(fit, "_default_cluster", None)
    if cluster is None:
        try:
            by = fit._cluster_rows()[2]
        except Exception:  # crossed designs have no default clusters (the sandwich raised already)
            by = "the model's clusters"
    elif isinstance(cluster, str):
        by = cluster
    elif isinstance(cluster, list | tuple) and all(isinstance(c, str) for c in cluster):
        by = " and ".join(cluster) + " (multi-way)"
    else:
        by = "the given labels"
    bread = "observed" if information == "observed" else "expected"
    return f"cluster-robust {vcov} sandwich, clustered by {by} ({bread} information as the bread)"


def build_layout(
    fit,
    table: pd.DataFrame,
    *,
    vcov="model",
    scale="sd",
    information="observed",
    cluster=None,
    reml_cross="zero",
    ddf=None,
) -> Layout:
    """The pieces of the lme4-style summary of ``fit`` whose parameter table is ``table``."""
    notes = []
    if not fit.converged:
        notes.append(f"optimiser: {fit.message}")
    if fit.singular:
        notes.append(
            "boundary (singular) fit: a variance parameter is at its boundary (see the warning given by the fit)"
        )
    spec = fit.spec
    psi = [spec.natural_labels[i] for i in spec.psi_index] if not spec.gaussian else []
    nat = fit.params("natural")
    return Layout(
        title=_title(fit),
        formula=getattr(fit, "formula", None),
        data=getattr(fit, "data_name", None),
        family=_family(fit),
        criteria=_criteria(fit),
        residuals=_residual_quartiles(fit),
        random=random_table(fit),
        family_params=pd.Series([float(nat[p]) for p in psi], index=psi, dtype=float),
        nobs=int(fit.nobs),
        groups=_groups(fit),
        fixed=_fixed_table(fit, table, ddf),
        table=pd.DataFrame(table),
        covariance=fit.covariance(vcov, scale, information, cluster, reml_cross=reml_cross),
        covariance_note=_covariance_note(fit, vcov, information, cluster, reml_cross, ddf),
        scale=scale,
        notes=notes,
    )


# -- formatting, as R formats these tables -------------------------------------------------------
def _decimals(values, digits: int = DIGITS) -> int | None:
    """Decimals that show every value of a column with ``digits`` significant digits (R's
    ``format(x, digits)``), or ``None`` when fixed notation would not do (then ``%g``)."""
    x = np.abs(np.asarray([v for v in values if v is not None and np.isfinite(v)], float))
    x = x[x > 0]
    if x.size == 0:
        return 0
    need = [max(0, digits - 1 - math.floor(math.log10(v))) for v in x]
    if max(need) > 9 or x.max() >= 1e15:
        return None
    return max(need)


def _format_column(values, digits: int = DIGITS, decimals: int | None = -1) -> list[str]:
    if decimals == -1:
        decimals = _decimals(values, digits)
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append("")
        elif not np.isfinite(v):
            out.append("Inf" if v > 0 else "-Inf")
        elif decimals is None:
            out.append(f"{v:.{digits}g}")
        else:
            out.append(f"{v:.{decimals}f}")
    return out


def _format_p(values) -> list[str]:
    out = []
    for p in values:
        if p is None or not np.isfinite(p):
            out.append("")
        elif p < 2.2e-16:
            out.append("< 2e-16")
        elif p < 1e-4:
            out.append(f"{p:.2e}")
        else:
            out.append(f"{p:.{max(1, DIGITS - 1)}g}" if p >= 1e-3 else f"{p:.6f}".rstrip("0"))
    return out


def _grid(header: list[str], rows: list[list[str]], right: set[int] | None = None, indent: str = " ") -> str:
    """Columns padded to a common width: text left-aligned, numbers (indices in ``right``) right-aligned."""
    right = set() if right is None else right
    cols = len(header)
    width = [max(len(str(r[j])) for r in [header, *rows]) for j in range(cols)]
    lines = []
    for r in [header, *rows]:
        cells = [str(c).rjust(width[j]) if j in right else str(c).ljust(width[j]) for j, c in enumerate(r)]
        lines.append((indent + " ".join(cells)).rstrip())
    return "\n".join(lines)


def _coef_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """A coefficient table formatted as lme4's ``printCoefmat``: estimates share the standard
    errors' decimals, statistics 3 decimals, p-values 3 significant digits."""
    cols = list(frame.columns)
    formatted = {}
    se_dec = _decimals(frame["Std. Error"].to_numpy()) if "Std. Error" in frame else None
    est_dec = _decimals(frame["Estimate"].to_numpy()) if se_dec is None else se_dec
    for c in cols:
        v = frame[c].to_numpy(dtype=float)
        if c == "Estimate":
            formatted[c] = _format_column(v, decimals=est_dec)
        elif c == "Std. Error":
            formatted[c] = _format_column(v, decimals=se_dec)
        elif c.startswith("Pr("):
            formatted[c] = _format_p(v)
        elif c == "df":
            formatted[c] = _format_column(v, decimals=3 if np.all(np.abs(v[np.isfinite(v)]) < 1e6) else None)
        else:
            formatted[c] = _format_column(v, decimals=3)
    header = ["", *cols]
    rows = [[str(lab), *(formatted[c][i] for c in cols)] for i, lab in enumerate(frame.index)]
    return header, rows


def _random_rows(random: pd.DataFrame, variances: bool = True) -> tuple[list[str], list[list[str]], int]:
    """lme4's wide ``VarCorr`` print: one row per effect, its correlations with the effects before it."""
    terms: list[tuple[str, list[str], list[tuple[float, float]], dict]] = []
    for grp, rows in itertools.groupby(random.itertuples(index=False), key=lambda row: row[0]):
        effects, values, cors = [], [], {}
        for _, var1, var2, vc, sdc in rows:
            if pd.isna(var2):
                effects.append("" if pd.isna(var1) else str(var1))
                values.append((vc, sdc))
            else:
                cors[(str(var2), str(var1))] = sdc
        terms.append((str(grp), effects, values, cors))
    ncor = max([len(t[1]) - 1 for t in terms] + [0])
    var_text = iter(_format_column([v[0] for t in terms for v in t[2]]))
    sd_text = iter(_format_column([v[1] for t in terms for v in t[2]]))
    rows = []
    for grp, effects, _, cors in terms:
        for i, e in enumerate(effects):
            v, s = next(var_text), next(sd_text)
            cells = [grp if i == 0 else "", e, *([v, s] if variances else [s])]
            cells += [f"{cors[(e, effects[j])]:.2f}" if j < i and (e, effects[j]) in cors else "" for j in range(ncor)]
            rows.append(cells)
    header = ["Groups", "Name"] + (["Variance", "Std.Dev."] if variances else ["Std.Dev."])
    header += ["Corr" if j == 0 else "" for j in range(ncor)]
    return header, rows, len(header) - ncor


def _criteria_text(criteria: pd.Series) -> str:
    if "REML criterion" in criteria.index:
        return f"REML criterion at convergence: {criteria['REML criterion']:.1f}"
    cells = [f"{v:.0f}" if k == "df.resid" else f"{v:.1f}" for k, v in criteria.items()]
    return _grid(list(criteria.index), [cells], right=set(range(len(cells))))


def _groups_text(layout: Layout) -> str:
    groups = "; ".join(f"{g}, {n}" for g, n in layout.groups.items())
    return f"Number of obs: {layout.nobs}, groups:  {groups}"


def _matrix_text(V: pd.DataFrame) -> str:
    labels = [str(x) for x in V.index]
    header = ["", *[f"[{j + 1}]" for j in range(len(labels))]]
    cols = [_format_column_g(V.iloc[:, j].to_numpy(float)) for j in range(V.shape[1])]
    rows = [[f"[{i + 1}] {lab}", *(cols[j][i] for j in range(len(labels)))] for i, lab in enumerate(labels)]
    return _grid(header, rows, right=set(range(1, len(header))))


def _format_column_g(values) -> list[str]:
    return ["NaN" if not np.isfinite(v) else f"{v:.{DIGITS}g}" for v in values]


def _table_text(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    header = ["", *cols]
    formatted = {}
    for c in cols:
        v = table[c].to_numpy(dtype=float)
        formatted[c] = (
            _format_p(v)
            if c.startswith("Pr(")
            else [
                "" if not np.isfinite(x) and np.isnan(x) else ("Inf" if x == np.inf else f"{x:.{DIGITS + 2}g}")
                for x in v
            ]
        )
    rows = [[str(lab), *(formatted[c][i] for c in cols)] for i, lab in enumerate(table.index)]
    return _grid(header, rows, right=set(range(1, len(header))))


def _head(layout: Layout) -> list[str]:
    out = [layout.title]
    if layout.family:
        out.append(f" Family: {layout.family}")
    if layout.formula:
        out.append(f"Formula: {layout.formula}")
    if layout.data:
        out.append(f"   Data: {layout.data}")
    out.append("")
    out.append(_criteria_text(layout.criteria))
    return out


def layout_text(layout: Layout) -> str:
    """The summary as lme4 prints it, followed by all parameters and their full covariance."""
    out = _head(layout)
    if layout.residuals is not None:
        out += [
            "",
            "Scaled residuals:",
            _grid(
                list(layout.residuals.index), [[f"{v:.4f}" for v in layout.residuals]], right=set(range(5)), indent=""
            ),
        ]
    header, rows, numeric = _random_rows(layout.random)
    out += ["", "Random effects:", _grid(header, rows, right={2, 3})]
    if len(layout.family_params):
        out += ["Likelihood parameters: " + ", ".join(f"{k} = {v:.{DIGITS}g}" for k, v in layout.family_params.items())]
    out.append(_groups_text(layout))
    if len(layout.fixed):
        header, rows = _coef_rows(layout.fixed)
        out += ["", "Fixed effects:", _grid(header, rows, right=set(range(1, len(header))), indent="")]
    words = _SCALE_WORDS.get(layout.scale, layout.scale)
    out += [
        "",
        f"All parameters (scale {layout.scale!r}: {words}; {layout.covariance_note}):",
        _table_text(layout.table),
        "",
        f"Covariance of all parameters (scale {layout.scale!r}; {layout.covariance_note}):",
        _matrix_text(layout.covariance),
    ]
    for note in layout.notes:
        out += ["", note]
    return "\n".join(out)


def fit_text(fit) -> str:
    """A fit as lme4's ``print(fit)`` shows it: criteria, random-effect SDs and correlations,
    the number of observations and groups, and the fixed-effect estimates (no standard errors)."""
    layout = _print_layout(fit)
    out = _head(layout)
    header, rows, _ = _random_rows(layout.random, variances=False)
    out += ["Random effects:", _grid(header, rows, right={2})]
    if len(layout.family_params):
        out += ["Likelihood parameters: " + ", ".join(f"{k} = {v:.{DIGITS}g}" for k, v in layout.family_params.items())]
    out.append(_groups_text(layout))
    beta = layout.fixed["Estimate"]
    if len(beta):
        text = _format_column(beta.to_numpy(float))
        out += ["Fixed Effects:", _grid([str(x) for x in beta.index], [text], right=set(range(len(text))), indent="")]
    for note in layout.notes:
        out.append(note)
    return "\n".join(out)


def _print_layout(fit) -> Layout:
    """The parts of the layout that need no covariance (what lme4's ``print(fit)`` shows)."""
    k = fit.spec.fixed_index.size
    beta = fit.params("sd").iloc[:k]
    notes = [f"optimiser: {fit.message}"] if not fit.converged else []
    if fit.singular:
        notes.append("boundary (singular) fit: a variance parameter is at its boundary")
    psi = [fit.spec.natural_labels[i] for i in fit.spec.psi_index] if not fit.spec.gaussian else []
    nat = fit.params("natural")
    try:
        criteria = _criteria(fit)
    except Exception:  # pragma: no cover - criteria exist for every method
        criteria = pd.Series({"logLik": fit.loglik})
    return Layout(
        title=_title(fit),
        formula=getattr(fit, "formula", None),
        data=getattr(fit, "data_name", None),
        family=_family(fit),
        criteria=criteria,
        residuals=None,
        random=random_table(fit),
        family_params=pd.Series([float(nat[p]) for p in psi], index=psi, dtype=float),
        nobs=int(fit.nobs),
        groups=_groups(fit),
        fixed=pd.DataFrame({"Estimate": beta}),
        table=pd.DataFrame(),
        covariance=pd.DataFrame(),
        notes=notes,
    )


# -- HTML ----------------------------------------------------------------------------------------------
def _html_grid(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    def cell(tag, text, j):
        align = ' style="text-align: right"' if j in right else ' style="text-align: left"'
        return f"<{tag}{align}>{html.escape(str(text))}</{tag}>"

    head = "".join(cell("th", h, j) for j, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", c, j) for j, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="pymc-mixvcov"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_head(layout: Layout) -> list[str]:
    lines = [f"<p><strong>{html.escape(layout.title)}</strong>"]
    if layout.family:
        lines.append(f"<br>Family: {html.escape(layout.family)}")
    if layout.formula:
        lines.append(f"<br>Formula: <code>{html.escape(layout.formula)}</code>")
    if layout.data:
        lines.append(f"<br>Data: {html.escape(layout.data)}")
    lines.append("</p>")
    crit = layout.criteria
    if "REML criterion" in crit.index:
        lines.append(f"<p>REML criterion at convergence: {crit['REML criterion']:.1f}</p>")
    else:
        cells = [f"{v:.0f}" if k == "df.resid" else f"{v:.1f}" for k, v in crit.items()]
        lines.append(_html_grid(list(crit.index), [cells], set(range(len(cells)))))
    return lines


def _html_random(layout: Layout, variances: bool = True) -> list[str]:
    header, rows, _ = _random_rows(layout.random, variances=variances)
    out = ["<p><em>Random effects</em></p>", _html_grid(header, rows, set(range(2, len(header))))]
    if len(layout.family_params):
        params = ", ".join(f"{k} = {v:.{DIGITS}g}" for k, v in layout.family_params.items())
        out.append(f"<p>Likelihood parameters: {html.escape(params)}</p>")
    out.append(f"<p>{html.escape(_groups_text(layout))}</p>")
    return out


def layout_html(layout: Layout) -> str:
    """The summary as HTML (notebooks): the sections of :func:`layout_text` as tables."""
    out = ['<div class="pymc-mixvcov-summary">', *_html_head(layout)]
    if layout.residuals is not None:
        out += [
            "<p><em>Scaled residuals</em></p>",
            _html_grid(list(layout.residuals.index), [[f"{v:.4f}" for v in layout.residuals]], set(range(5))),
        ]
    out += _html_random(layout)
    if len(layout.fixed):
        header, rows = _coef_rows(layout.fixed)
        out += ["<p><em>Fixed effects</em></p>", _html_grid(header, rows, set(range(1, len(header))))]
    words = _SCALE_WORDS.get(layout.scale, layout.scale)
    cols = list(layout.table.columns)
    table_rows = [
        [str(lab), *(f"{v:.{DIGITS + 2}g}" for v in row)]
        for lab, row in zip(layout.table.index, layout.table.to_numpy(float), strict=True)
    ]
    V = layout.covariance
    cov_rows = [
        [str(lab), *(f"{v:.{DIGITS}g}" for v in row)] for lab, row in zip(V.index, V.to_numpy(float), strict=True)
    ]
    out += [
        f"<p><em>All parameters</em> (scale {html.escape(repr(layout.scale))}: {html.escape(words)}; "
        f"{html.escape(layout.covariance_note)})</p>",
        _html_grid(["", *cols], table_rows, set(range(1, len(cols) + 1))),
        f"<p><em>Covariance of all parameters</em> (scale {html.escape(repr(layout.scale))})</p>",
        _html_grid(["", *[str(c) for c in V.columns]], cov_rows, set(range(1, V.shape[1] + 1))),
    ]
    out += [f"<p>{html.escape(n)}</p>" for n in layout.notes]
    out.append("</div>")
    return "\n".join(out)


def fit_html(fit) -> str:
    """A fit as HTML, with what lme4's ``print(fit)`` shows (see :func:`fit_text`)."""
    layout = _print_layout(fit)
    out = ['<div class="pymc-mixvcov-fit">', *_html_head(layout), *_html_random(layout, variances=False)]
    beta = layout.fixed["Estimate"]
    if len(beta):
        out += [
            "<p><em>Fixed effects</em></p>",
            _html_grid([str(x) for x in beta.index], [_format_column(beta.to_numpy(float))], set(range(len(beta)))),
        ]
    out += [f"<p>{html.escape(n)}</p>" for n in layout.notes]
    out.append("</div>")
    return "\n".join(out)
