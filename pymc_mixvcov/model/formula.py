"""lme4 formula syntax -> an ordinary ``pm.Model`` plus lme4 labels.

The formula is parsed by the ``formulae`` package. Its syntax tree tells which
group-specific terms come from the same ``( ... | g)`` bar (lme4 gives them one correlated
covariance block); ``formulae`` evaluates the variables and calls of the fixed part and the
values of the random-effect expressions. The fixed-effect columns are then built as R's
``model.matrix`` builds them (see :func:`_fixed_design`): the pandas level order, treatment
contrasts for unordered and polynomial contrasts for ordered categoricals, R's term order and
interaction column order.

The model built here is a plain PyMC model that can be sampled. Its priors (ignored by ML and
REML fits) are weakly informative and scaled to the data, with ``s_y`` the SD of the response:

* ``beta[j] ~ Normal(0, 10 s_y / s_j)``, ``s_j`` the SD of column ``j`` (intercept and constant
  columns: ``10 max(|mean(y)|, s_y)``);
* ``sigma ~ HalfNormal(2.5 s_y)``;
* a block with one effect: ``sd_<block> ~ HalfNormal(2.5 s_y)``,
  ``u_<block> ~ Normal(0, sd_<block>)`` per level (dims ``(group, <block>_effect)``);
* a block with several (correlated) effects: ``chol_<block> ~ LKJCholeskyCov(eta=1,
  sd_dist=HalfNormal(2.5 s_y))``, ``u_<block> ~ MvNormal(0, chol=chol_<block>)`` per level.

``<block>`` is the grouping factor's name (``Subject``), and ``Subject.1``, ``Subject.2``, ...
for further blocks on the same factor, as lme4 prints them (``(1 | g) + (0 + x | g)``, or
``(x || g)``, lme4's double bar for uncorrelated effects, which is the same model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import pandas as pd

from .._startup import import_formulae
from ..errors import MixVcovError
from .frames import as_pandas
from .weights import binomial_counts, weights_values

if TYPE_CHECKING:  # pragma: no cover
    from ..inference.results import MixedFit
    from ..optimise.fit import Engine

__all__ = ["MixedModel", "lmm"]

Method = Literal["ML", "REML"]
#: coding of ordered categoricals: R's polynomial contrasts or treatment contrasts
OrderedContrasts = Literal["poly", "treatment"]
ORDERED_CONTRASTS: tuple[str, ...] = get_args(OrderedContrasts)
Family = Literal["binomial", "poisson", "negative_binomial", "gamma"]
FAMILIES: tuple[str, ...] = get_args(Family)
Link = Literal["logit", "probit", "cloglog", "log", "identity"]
#: links each family accepts; the first is the default
LINKS: dict[str, tuple[str, ...]] = {
    "binomial": ("logit", "probit", "cloglog"),
    "poisson": ("log", "identity"),
    "negative_binomial": ("log", "identity"),
    "gamma": ("log", "identity"),
}
#: internal name of an evaluated response column (never shown in messages)
RESPONSE = "response__"
#: counts are held as int64: 2**63 and beyond do not fit
_COUNT_LIMIT = 2.0**63
_COUNT_RANGE = "counts must be below 2**63 (about 9.2e18): PyMC's discrete distributions hold counts as int64"


@dataclass(frozen=True)
class Block:
    """One lme4 random-effect block: a bar's terms on one grouping factor."""

    group: str  # lme4's name of the grouping factor ("Subject", "cask:batch", "a:b")
    factors: tuple[str, ...]  # data columns forming it
    terms: tuple[str, ...]  # formulae term names ("1|Subject", "Days|Subject")
    effects: list[str] = field(default_factory=list)  # lme4 column names
    codes: np.ndarray | None = field(default=None, repr=False)
    levels: list[str] = field(default_factory=list)
    z: np.ndarray | None = field(default=None, repr=False)
    name: str = ""


def _lme4_name(label: str) -> str:
    """formulae column label -> lme4 column name: ``Intercept`` -> ``(Intercept)``, ``f[B]`` -> ``fB``."""
    if label in ("Intercept", "1"):
        return "(Intercept)"
    return re.sub(r"\[([^\]]*)\]", r"\1", label)


def _bars(formula: str, shown: str | None = None) -> list[tuple[list, bool]]:
    """The ``( ... | ... )`` bars of ``formula``, each resolved to its group-specific terms."""
    from formulae.expr import Binary, Grouping
    from formulae.parser import Parser
    from formulae.resolver import Resolver
    from formulae.scanner import Scanner

    shown = formula if shown is None else shown
    try:
        parser = Parser(Scanner(formula).scan())
        tree = parser.parse()
    except Exception as exc:  # formulae raises its own parse errors
        raise MixVcovError(f"cannot parse formula {shown!r}: {exc}") from exc
    if not parser.at_end():  # formulae stops at the first token it cannot join: "y ~ a b" would be "y ~ a"
        rest = " ".join(str(t.lexeme) for t in parser.tokens[parser.current :] if t.kind != "EOF")
        raise MixVcovError(
            f"cannot parse formula {shown!r}: {rest!r} follows a complete formula; join terms with '+' and "
            "check that the parentheses balance"
        )
    bars = []

    def walk(node):
        if isinstance(node, Grouping):
            inner = node.expression
            if isinstance(inner, Binary) and inner.operator.kind == "PIPE":
                slash = isinstance(inner.right, Binary) and inner.right.operator.kind == "SLASH"
                resolved = Resolver(inner).resolve()
                bars.append((getattr(resolved, "terms", [resolved]), slash))
                return
            walk(inner)
        elif isinstance(node, Binary):
            walk(node.left)
            walk(node.right)

    walk(tree)
    return bars


def _scan(text: str, start: int, step: int):
    """Indices of ``text`` from ``start`` in direction ``step`` with the nesting depth of
    parentheses at each, skipping quoted strings; yields ``(index, char, depth)``."""
    depth, quote = 0, None
    i = start
    while 0 <= i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        else:
            opening, closing = ("(", ")") if step > 0 else (")", "(")
            if ch == closing:
                if depth == 0:
                    yield i, ch, -1
                    return
                depth -= 1
            elif ch == opening:
                depth += 1
            yield i, ch, depth
        i += step


def _double_bar(text: str) -> int:
    """Index of the first ``||`` of ``text`` outside quoted strings, or -1."""
    quote = None
    for i, ch in enumerate(text):
        if quote is not None:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif text.startswith("||", i):
            return i
    return -1


def _expand_double_bars(formula: str, shown: str | None = None) -> str:
    """lme4's ``expandDoubleVerts``: ``(x || g)`` becomes ``(1 | g) + (0 + x | g)``.

    The left-hand side of a double bar is split into its terms (R's ``terms()``: interactions
    expanded, ordered by degree), each of which gets its own block without an intercept; an
    intercept, explicit or implied, gets the block ``(1 | g)``. The effects of different blocks
    are independent: ``(1 + Days || Subject)`` has two variances and no correlation. A factor
    ``f`` in ``(f || g)`` still forms one correlated block ``(0 + f | g)`` of its indicators, as
    in lme4.

    References
    ----------
    Bates, D., Maechler, M., Bolker, B. and Walker, S. (2015). Fitting linear mixed-effects
    models using lme4. *Journal of Statistical Software* 67(1), section 2.2 (Table 2).
    """
    from formulae import model_description

    shown = formula if shown is None else shown
    out = formula
    while (i := _double_bar(out)) >= 0:
        left = next((j for j, _, d in _scan(out, i - 1, -1) if d < 0), None)
        right = next((k for k, _, d in _scan(out, i + 2, 1) if d < 0), None)
        if left is None or right is None:
            raise MixVcovError(
                f"formula {shown!r}: a double bar must stand in parentheses with its grouping factor, "
                "as in (1 + x || g)"
            )
        lhs, group = out[left + 1 : i].strip(), out[i + 2 : right].strip()
        if not group or "|" in group:
            raise MixVcovError(f"formula {shown!r}: ({lhs} || {group}) needs one grouping factor after '||'")
        try:
            desc = model_description(lhs) if lhs else None
        except Exception as exc:
            raise MixVcovError(f"cannot parse {lhs!r} in ({lhs} || {group}) of formula {shown!r}: {exc}") from exc
        if desc is None:
            raise MixVcovError(f"formula {shown!r}: ( || {group}) has no terms before the double bar")
        intercept = any(not hasattr(t, "components") for t in desc.common_terms)
        terms = sorted((t for t in desc.common_terms if hasattr(t, "components")), key=lambda t: len(t.components))
        parts = (["1"] if intercept else []) + [f"0 + {t.name}" for t in terms]
        if not parts:
            raise MixVcovError(
                f"formula {shown!r}: ({lhs} || {group}) has no term (neither an intercept nor a variable)"
            )
        out = out[:left] + " + ".join(f"({p} | {group})" for p in parts) + out[right + 1 :]
    return out


def _factor_codes(data: pd.DataFrame, cols: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """Codes and levels of a grouping factor (an interaction of ``cols``, first slowest)."""
    cats = []
    for c in cols:
        col = data[c]
        if not isinstance(col.dtype, pd.CategoricalDtype):
            col = col.astype("category")
        cats.append(col.cat.remove_unused_categories())
    if len(cats) == 1:
        return cats[0].cat.codes.to_numpy().astype(int), [str(v) for v in cats[0].cat.categories]
    sizes = [len(c.cat.categories) for c in cats]
    code = np.zeros(len(data), dtype=np.int64)
    for c, m in zip(cats, sizes, strict=True):
        code = code * m + c.cat.codes.to_numpy()
    used, inv = np.unique(code, return_inverse=True)
    idx = np.array(np.unravel_index(used, sizes)).T
    levels = [":".join(str(cats[k].cat.categories[i]) for k, i in enumerate(row)) for row in idx]
    return inv.astype(int), levels


def _data_frame(data) -> pd.DataFrame:
    """``data`` as a DataFrame with a fresh 0-based index and NumPy dtypes where pandas' nullable ones were.

    Data frames of other libraries (polars, pyarrow, anything narwhals reads) are converted by
    :func:`pymc_mixvcov.model.frames.as_pandas`, with R's factor coding of their categorical and
    enum columns.

    Columns of pandas' nullable dtypes (``Int64``, ``Float64``, ``boolean``) without missing
    values become their NumPy counterparts (``int64``, ``float64``, ``bool``); those with
    missing values are kept, to be reported by :func:`_check_data` if the formula uses them.
    """
    data = as_pandas(data).reset_index(drop=True)  # polars and other frames: model/frames.py
    nullable = {}
    for c in data.columns:
        dt = data[c].dtype
        if (
            isinstance(dt, pd.api.extensions.ExtensionDtype)
            and not isinstance(dt, pd.CategoricalDtype)
            and getattr(dt, "kind", "O") in "iufb"
            and getattr(dt, "numpy_dtype", None) is not None
            and not data[c].isna().any()
        ):
            nullable[c] = data[c].to_numpy(dtype=dt.numpy_dtype)
    return data.assign(**nullable) if nullable else data


def _check_data(formula: str, data: pd.DataFrame, shown: str | None = None) -> list[str]:
    from formulae import model_description

    shown = formula if shown is None else shown
    if not isinstance(data, pd.DataFrame):
        raise MixVcovError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    try:
        desc = model_description(formula)
    except Exception as exc:
        raise MixVcovError(f"cannot parse formula {shown!r}: {exc}") from exc
    names = sorted(v for v in desc.var_names if v and v != RESPONSE)  # formulae lists literals as ""
    unknown = [v for v in names if v not in data.columns]
    if unknown:
        raise MixVcovError(
            f"formula {shown!r} names column(s) {unknown} that are not in the data; "
            f"available columns: {[c for c in data.columns if c != RESPONSE]}"
        )
    for v in names:
        col = data[v]
        bad = col.isna().to_numpy().copy()
        if pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype):
            bad |= ~np.isfinite(col.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            rows = np.flatnonzero(bad)[:10].tolist()
            more = "" if bad.sum() <= 10 else f" (and {bad.sum() - 10} more)"
            raise MixVcovError(
                f"column {v!r} has {int(bad.sum())} missing or non-finite value(s) at rows "
                f"{rows}{more}; pymc_mixvcov does not drop rows silently: remove them first, e.g. "
                f"data.dropna(subset={names!r})"
            )
    return names


def _light_groups(formula: str, data: pd.DataFrame, bars) -> pd.DataFrame:
    """``data`` with each grouping column replaced by a two-level stand-in, for ``formulae``.

    ``formulae`` materialises a grouping factor as a dense ``n x levels`` indicator matrix
    (gigabytes for 100,000 rows and 2,000 groups) although only the expression columns of a
    random-effect term are needed here; the factor codes come from :func:`_factor_codes`. A
    column that also enters the fixed part or a random-effect expression is left as it is.
    """
    from formulae import model_description

    group_cols = {v.name for terms, _ in bars for t in terms for v in t.factor.components}
    desc = model_description(formula)
    used = set()
    for term in desc.common_terms:
        used |= set(term.var_names)
    for term in desc.group_terms:
        used |= set(term.expr.var_names)
    light = [c for c in group_cols if c not in used and c in data.columns]
    if not light:
        return data
    out = data.copy(deep=False)
    stand_in = pd.Categorical(np.arange(len(data)) % 2)
    for c in light:
        out[c] = stand_in
    return out


def _lme4_order(blocks: list[Block]) -> list[Block]:
    """lme4's term order: stably by decreasing number of levels, as ``mkReTrms`` does."""
    nl = [len(b.levels) for b in blocks]
    if any(b > a for a, b in zip(nl, nl[1:], strict=False)):
        order = sorted(range(len(nl)), key=lambda i: nl[i])  # R's order(): stable ascending
        return [blocks[i] for i in reversed(order)]  # rev(order(nl))
    return blocks


@dataclass
class MixedModel:
    """A mixed model built from an lme4 formula.

    Attributes
    ----------
    model : pymc.Model
        An ordinary PyMC model (can be passed to ``pm.sample``); see the module docstring for
        its priors.
    random : list of str
        Names of its random-effect variables, in lme4's term order.
    fixed_labels : list of str
        lme4's names of the fixed-effect columns.
    """

    formula: str
    data: pd.DataFrame = field(repr=False)
    model: object = field(repr=False)
    random: list[str]
    fixed_labels: list[str]
    blocks: list[Block] = field(repr=False)
    family: str = "gaussian"
    #: where the model comes from: ``"formula"`` (:func:`lmm`, :func:`glmm`) or ``"bambi"``
    #: (:func:`pymc_mixvcov.model.bambi.from_bambi`: the likelihood of a bambi model, this package's priors)
    source: str = "formula"
    #: ``{variable of model: [(posterior variable, entry), ...]}``: where each entry of the model's
    #: parameter variables lies in the posterior of the model it was read from (a bambi model's
    #: ``Intercept``, ``1|Subject_sigma``, ...; ``entry`` counts the variable's entries after the
    #: sample dimensions, in order); :func:`pymc_mixvcov.output.compare` pairs the draws through it
    posterior_names: dict[str, list[tuple[str, int]]] | None = field(default=None, repr=False)
    #: prior weights given to :func:`lmm` (precision weights) or :func:`glmm` (binomial trials), or None
    weights: np.ndarray | None = field(default=None, repr=False)
    #: the link function of a GLMM (``None`` for Gaussian models)
    link: str | None = None

    def fit(
        self, method: Method = "ML", nAGQ: int = 1, engine: Engine = "auto", *, progress: bool | None = None
    ) -> MixedFit:
        """Fit by maximum likelihood (``"ML"``) or restricted maximum likelihood (``"REML"``).

        Gaussian models: the random effects are integrated out exactly. GLMMs: by the Laplace
        approximation (``nAGQ=1``), as lme4's ``glmer``, or by adaptive Gauss-Hermite quadrature
        with ``nAGQ`` points per random effect (one grouping factor; scalar or vector random
        effects); see :func:`pymc_mixvcov.optimise.fit.fit`, which also describes ``engine`` and
        ``progress`` (a status line for fits that take more than a second).
        """
        from ..optimise.fit import fit

        if self.source == "bambi" and method == "MAP":
            raise MixVcovError(
                "method='MAP' on a bambi model would use this package's priors, not bambi's; fit bambi's own "
                "graph instead: pmv.fit(bambi_model.backend.model, random=[... '_offset' variables], method='MAP')"
            )
        result = fit(
            self.model,
            random=self.random,
            method=method,
            fixed_labels=self.fixed_labels,
            data=self.data,
            nAGQ=nAGQ,
            engine=engine,
            progress=progress,
        )
        if self.posterior_names is not None:
            result.posterior_names = self.posterior_names
        result.formula, result.family, result.link = self.formula, self.family, self.link
        result.fixed_terms = self.fixed_labels if getattr(self.fixed_labels, "terms", None) else None
        return result


def lmm(
    formula: str,
    data: pd.DataFrame,
    *,
    weights: str | np.ndarray | None = None,
    ordered_contrasts: OrderedContrasts = "poly",
) -> MixedModel:
    """Build a linear mixed model from an lme4 formula.

    Parameters
    ----------
    formula : str
        lme4 syntax: ``y ~ x + (x | g)`` (correlated intercept and slope), ``(0 + x | g)``,
        ``(1 | g) + (0 + x | g)`` or ``(x || g)`` (independent), crossed ``(1 | a) + (1 | b)``, nested
        ``(1 | a/b)`` or ``(1 | a:b)``; fixed effects with factors and interactions coded as
        R's ``model.matrix`` codes them (see :func:`_fixed_design`).
    data : pandas.DataFrame
        The data. Categorical columns keep their level order: in the fixed effects the first
        category is the baseline of treatment contrasts, as R's first level is in lme4. Other
        string columns are factors with sorted levels, as R's ``factor()`` makes them. pandas'
        nullable dtypes (``Int64``, ``Float64``, ``boolean``) act as their NumPy counterparts.
    weights : str or array, optional
        Precision weights, as ``lmer(..., weights = w)``: a column of ``data`` or one positive
        value per row. Observation ``i`` has residual variance ``sigma^2 / w_i``; the model's
        likelihood is ``Normal(mu, sigma / sqrt(w))``, and ``loglik`` includes lme4's
        ``sum(log w) / 2``. Weights are not frequencies: ``w_i = 2`` halves a variance, it does
        not duplicate a row. See :mod:`pymc_mixvcov.model.weights`.
    ordered_contrasts : {"poly", "treatment"}, default "poly"
        Coding of ordered categoricals in the fixed effects: R's orthogonal polynomial
        contrasts (``f.L``, ``f.Q``, ``f.C``, ``f^4``, ...; lme4's default) or treatment
        contrasts against the first level (R's ``contrasts = list(f = "contr.treatment")``).

    Returns
    -------
    MixedModel

    Raises
    ------
    MixVcovError
        ``data`` not a DataFrame, unknown column or function, missing or non-finite values in a
        used column, a grouping factor with a single level (or as many levels as observations),
        rank-deficient fixed effects, weights that are missing, infinite, negative or zero
        (naming the column and rows: drop rows of weight 0, which carry no information).
    """
    _check_ordered_contrasts(ordered_contrasts)
    _check_tilde(formula)
    data = _data_frame(data)
    y, X, offset, fixed, blocks, response = _design(formula, data, ordered_contrasts=ordered_contrasts)
    w = None if weights is None else weights_values(weights, data, y.size)[0]
    for b in blocks:
        if len(b.levels) >= y.size:
            raise MixVcovError(
                f"grouping factor {b.group!r} has {len(b.levels)} levels for {y.size} observations; "
                "its variance is not identified beside the residual variance (lme4 refuses this too)"
            )
    model = _build_model(response, y, X, fixed, blocks, offset=offset, weights=w)
    return MixedModel(formula, data, model, [f"u_{b.name}" for b in blocks], fixed, blocks, weights=w)


def _check_tilde(formula) -> None:
    """A formula is a string ``response ~ terms``."""
    if not isinstance(formula, str):
        raise MixVcovError(f"formula must be a string such as 'y ~ x + (1 | g)', got {type(formula).__name__}")
    if "~" not in formula or not formula.split("~", 1)[0].strip():
        raise MixVcovError(
            f"formula {formula!r} has no response: write it as 'response ~ terms', e.g. 'y ~ x + (1 | g)'"
        )


def _check_ordered_contrasts(value) -> None:
    if value not in ORDERED_CONTRASTS:
        raise MixVcovError(
            f"unknown ordered_contrasts {value!r}; valid values are: {', '.join(map(repr, ORDERED_CONTRASTS))}"
        )


def _design(
    formula: str,
    data: pd.DataFrame,
    response: np.ndarray | None = None,
    *,
    ordered_contrasts: OrderedContrasts = "poly",
    shown: str | None = None,
):
    """Response, fixed-effect design, offset, lme4 labels and random-effect blocks of ``formula``.

    ``response`` replaces the formula's left-hand side (already evaluated, e.g. from ``cbind``).
    Offsets (``offset(log(time))``) are summed into ``offset`` and removed from ``X``. ``shown``
    is the formula as the user wrote it, for messages.
    """
    import_formulae()
    from formulae import design_matrices

    shown = formula if shown is None else shown
    formula = _expand_double_bars(formula, shown)
    _check_data(formula, data, shown)
    bars = _bars(formula, shown)
    if not bars:
        raise MixVcovError(
            f"formula {shown!r} has no random-effect term such as (1 | group); use a "
            "linear model for fixed effects only"
        )
    frame = _level_order_kept(_light_groups(formula, data, bars))
    if response is not None:
        frame = frame.assign(**{RESPONSE: response})
        formula = f"{RESPONSE} ~ {formula.split('~', 1)[1]}"
    namespace = {"log": np.log, "exp": np.exp, "sqrt": np.sqrt}
    try:
        dm = design_matrices(formula, frame, na_action="error", extra_namespace=namespace)
    except Exception as exc:
        message = _formulae_message(exc).replace(RESPONSE, "the response")
        raise MixVcovError(f"cannot build the design of {shown!r}: {message}") from exc
    y = (
        np.asarray(dm.response.design_matrix, dtype=float).reshape(-1)
        if dm.response is not None
        else np.full(len(data), np.nan)
    )
    X, fixed, offset = _fixed_design(formula, dm, data, ordered_contrasts)
    if X.shape[1] and np.linalg.matrix_rank(X) < X.shape[1]:
        redundant = _redundant_columns(X)
        raise MixVcovError(
            f"the fixed-effect design of {shown!r} is rank deficient: column(s) "
            f"{[fixed[j] for j in redundant]} are linear combinations of the columns before them (all columns: "
            f"{fixed}); remove the redundant terms (lme4 would drop these columns)"
        )
    blocks: list[Block] = []
    for terms, slash in bars:
        by_factor: dict[tuple[str, ...], list[str]] = {}
        for t in terms:
            cols = tuple(v.name for v in t.factor.components)
            by_factor.setdefault(cols, []).append(t.name)
        for cols, names in by_factor.items():
            group = ":".join(reversed(cols)) if (slash and len(cols) > 1) else ":".join(cols)
            codes, levels = _factor_codes(data, cols)
            zs, effects = [], []
            for nm in names:
                expr = dm.group.terms[nm].expr  # the expression's columns, before crossing with the factor
                zs.append(np.asarray(expr.data, dtype=float).reshape(len(data), -1))
                effects += [_lme4_name(lab) for lab in expr.labels]
            blocks.append(Block(group, cols, tuple(names), effects, codes, levels, np.hstack(zs)))
    blocks = _lme4_order(blocks)
    for b in blocks:
        if len(b.levels) < 2:
            raise MixVcovError(
                f"grouping factor {b.group!r} has a single level; a variance cannot be estimated "
                "from one cluster: drop the term or use a fixed effect"
            )
    # lme4's names of the blocks (R's make.unique, as VarCorr prints them): Subject, Subject.1, ...
    seen: dict[str, int] = {}
    for b in blocks:
        k = seen.get(b.group, 0)
        seen[b.group] = k + 1
        object.__setattr__(b, "name", b.group if k == 0 else f"{b.group}.{k}")

    name = dm.response.name if hasattr(dm.response, "name") else "y"
    return y, X, offset, fixed, blocks, str(name)


def _formulae_message(exc: Exception) -> str:
    """``formulae``'s error in words: an unknown name (a ``KeyError``) is named as such."""
    if isinstance(exc, KeyError | NameError):
        name = exc.args[0] if exc.args else exc
        return f"unknown function or variable {name!r} (check its spelling)"
    return str(exc)


def _level_order_kept(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its unordered categoricals made ordered, so that ``formulae`` keeps their level order.

    ``formulae`` sorts the levels of an unordered categorical alphabetically and keeps those of an
    ordered one. The fixed-effect columns are built by :func:`_fixed_design` from the original
    data; this keeps the level order of random-effect expressions such as ``(0 + f | g)``.
    Unused levels are dropped, as lme4's ``model.frame(drop.unused.levels = TRUE)`` does.
    """
    cats = [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
    if not cats:
        return frame
    return frame.assign(**{c: frame[c].cat.remove_unused_categories().cat.as_ordered() for c in cats})


def _contr_poly(k: int) -> tuple[np.ndarray, list[str]]:
    """R's ``contr.poly(k)``: orthonormal polynomial contrasts on the scores ``1, ..., k``.

    Column ``j`` (``j = 1, ..., k - 1``) is the degree-``j`` polynomial of the centred scores
    orthogonalised (Gram-Schmidt) against the lower degrees and scaled to unit length, with a
    positive leading coefficient; the columns are named ``.L``, ``.Q``, ``.C``, ``^4``, ...
    as R names them.

    References
    ----------
    R Core Team, ``stats::contr.poly`` (``make.poly``).
    """
    t = np.arange(1, k + 1, dtype=float)
    V = (t - t.mean())[:, None] ** np.arange(k)[None, :]
    Q, R = np.linalg.qr(V)
    Z = Q * np.sign(np.diag(R))[None, :]
    names = [".L", ".Q", ".C"][: k - 1] + [f"^{j}" for j in range(4, k)]
    return Z[:, 1:], names


def _categorical(comp, data: pd.DataFrame):
    """Codes, levels, whether R would call it ordered, and an explicit ``formulae`` encoding of a factor.

    A plain column keeps its pandas level order (unused levels dropped); other values
    (strings) are sorted, as R's ``factor()`` does; logical values are the levels ``FALSE``,
    ``TRUE``, as R's ``model.matrix`` makes them. ``C(x, ...)``, ``T(x, ...)`` and ``S(x, ...)``
    keep ``formulae``'s levels and encoding.
    """
    from formulae.categorical import CategoricalBox

    if comp.kind == "numeric":  # a logical
        v = np.asarray(comp.value).reshape(-1).astype(bool)
        col = pd.Categorical(np.where(v, "TRUE", "FALSE"), categories=["FALSE", "TRUE"]).remove_unused_categories()
        return col.codes, list(col.categories), False, None
    raw = comp._intermediate_data
    if isinstance(raw, CategoricalBox):
        levels = list(comp.levels)
        return pd.Categorical(raw.data, categories=levels).codes, levels, False, raw.contrast
    if comp.name in data.columns:
        raw = data[comp.name]
    if isinstance(raw, pd.Series) and isinstance(raw.dtype, pd.CategoricalDtype):
        col = raw.reset_index(drop=True)
    else:
        col = pd.Series(np.asarray(raw)).astype("category")
    col = col.cat.remove_unused_categories()
    return col.cat.codes.to_numpy(), [str(v) for v in col.cat.categories], bool(col.cat.ordered), None


def _factor_columns(comp, data, dummy: bool, ordered_contrasts: str) -> tuple[np.ndarray, list[str]]:
    """The columns of a factor in a term: all indicators (``dummy``) or its contrasts, as R codes them."""
    codes, levels, ordered, encoding = _categorical(comp, data)
    k = len(levels)
    if encoding is not None:
        cm = encoding.code_with_intercept(levels) if dummy else encoding.code_without_intercept(levels)
        M, suffix = np.asarray(cm.matrix, float), [str(v) for v in cm.labels]
    elif dummy:
        M, suffix = np.eye(k), levels
    elif ordered and ordered_contrasts == "poly":
        M, suffix = _contr_poly(k)
    else:
        M, suffix = np.eye(k)[:, 1:], levels[1:]
    return M[codes], [f"{comp.name}{s}" for s in suffix]


class FixedLabels(list):
    """lme4's names of the fixed-effect columns, and what lmerTest's ``anova`` needs of the terms.

    ``terms``: the model term of each column (``"(Intercept)"``, ``"age"``, ``"age:Sex"``), R's
    ``assign`` attribute by name; ``numerics``: the numeric variables of each term;
    ``rd_blocks``, ``rd_labels``, ``rd_terms``: each term's columns with every factor coded by all
    its indicators (R's ``model.matrix(~ 0 + term)``, lmerTest's ``get_rdX``); ``treatment``:
    whether every factor is coded by treatment contrasts; ``tr_blocks``, ``tr_labels``: each
    term's columns and their names as treatment contrasts would make them.
    """

    def __init__(self, labels=()):
        super().__init__(labels)
        self.terms: list[str] = ["(Intercept)"] * len(self)
        self.numerics: dict[str, frozenset] = {}
        self.rd_blocks: list[np.ndarray] = []
        self.rd_labels: list[str] = list(self)
        self.rd_terms: list[str] = list(self.terms)
        self.treatment = True
        self.tr_blocks: list[np.ndarray] = []
        self.tr_labels: list[str] = list(self)


def _fixed_design(formula: str, dm, data: pd.DataFrame, ordered_contrasts: str):
    """Fixed-effect columns, their lme4 names and the offset, built as R's ``model.matrix`` builds them.

    * Terms are ordered by degree (main effects, then two-way interactions, ...), keeping the
      formula's order within a degree; a term's variables are in order of first appearance.
    * A factor in a term is coded by contrasts when the term without it is empty or contained in
      a term before it, otherwise by all its indicators; without an intercept the first factor
      of the first term with a factor gets all its indicators (R's ``TermCode``, Chambers and
      Hastie 1992, p. 38).
    * Factors are categorical columns (and string columns, levels sorted) and logical columns
      (levels ``FALSE``, ``TRUE``: ``xTRUE``, as R names it).
    * Contrasts: treatment contrasts in the pandas level order (the first level is the
      baseline) for unordered factors; R's polynomial contrasts (``f.L``, ``f.Q``, ...) for
      ordered categoricals unless ``ordered_contrasts="treatment"``.
    * Interaction columns: the first variable's columns vary fastest (``a2:b2, a3:b2``).

    References
    ----------
    Chambers, J. M. and Hastie, T. J. (1992). *Statistical Models in S*, ch. 2.
    """
    from formulae import model_description

    desc = model_description(formula)
    n = len(data)
    Xall = np.asarray(dm.common.design_matrix, dtype=float) if dm.common is not None else np.zeros((n, 0))
    terms_in = dm.common.terms if dm.common is not None else {}
    intercept = False
    offset = np.zeros(n)
    terms: list[tuple[str, ...]] = []
    comps: dict[str, object] = {}
    factor: dict[str, bool] = {}  # R's factors: categorical and logical variables
    for t in desc.common_terms:
        if not hasattr(t, "components"):
            intercept = True
            continue
        ev = terms_in[t.name]
        if any(c.kind == "offset" for c in ev.components):
            offset = offset + Xall[:, dm.common.slices[t.name]].sum(axis=1)
            continue
        for c in ev.components:
            comps.setdefault(c.name, c)
            factor[c.name] = c.kind == "categoric" or np.asarray(c.value).dtype == bool
        terms.append(tuple(c.name for c in ev.components))
    order: list[str] = []
    for term in terms:
        order += [v for v in term if v not in order]
    terms = list(dict.fromkeys(tuple(sorted(set(t), key=order.index)) for t in terms))  # a:b and b:a: one term
    terms = sorted(terms, key=len)  # stable, as R orders terms by degree
    cols = [np.ones((n, 1))] if intercept else []
    labels = FixedLabels(["(Intercept)"] if intercept else [])
    first_dummy = not intercept
    for i, term in enumerate(terms):
        dummy = {}
        for v in term:
            if factor[v]:
                rest = set(term) - {v}
                dummy[v] = bool(rest) and not any(rest <= set(p) for p in terms[:i])
        if first_dummy and dummy:
            dummy[next(v for v in term if v in dummy)] = True
            first_dummy = False
        block, labs = np.ones((n, 1)), [""]
        rd_block, rd_labs = np.ones((n, 1)), [""]  # R's model.matrix(~ 0 + term): all indicators
        tr_block, tr_labs = np.ones((n, 1)), [""]  # the term's columns with treatment contrasts
        for v in term:
            c = comps[v]
            if factor[v]:
                z, zl = _factor_columns(c, data, dummy[v], ordered_contrasts)
                codes, levels, ordered, encoding = _categorical(c, data)
                labels.treatment &= encoding is None and not (ordered and ordered_contrasts == "poly")
                rz, rzl = np.eye(len(levels))[codes], [f"{c.name}{lev}" for lev in levels]
                tz, tzl = (rz, rzl) if dummy[v] else (rz[:, 1:], rzl[1:])
            else:
                z = np.asarray(c.value, dtype=float).reshape(n, -1)
                zl = [_lme4_name(lab) for lab in c.labels] if z.shape[1] > 1 else [c.name]
                rz, rzl, tz, tzl = z, zl, z, zl
            block = (z[:, :, None] * block[:, None, :]).reshape(n, -1)  # the earlier variables vary fastest
            labs = [f"{b}:{a}" if b else a for a in zl for b in labs]
            rd_block = (rz[:, :, None] * rd_block[:, None, :]).reshape(n, -1)
            rd_labs = [f"{b}:{a}" if b else a for a in rzl for b in rd_labs]
            tr_block = (tz[:, :, None] * tr_block[:, None, :]).reshape(n, -1)
            tr_labs = [f"{b}:{a}" if b else a for a in tzl for b in tr_labs]
        labels.tr_blocks.append(tr_block)
        labels.tr_labels += tr_labs
        cols.append(block)
        labels += labs
        name = ":".join(term)
        labels.terms += [name] * len(labs)
        labels.numerics[name] = frozenset(v for v in term if not factor[v])
        labels.rd_blocks.append(rd_block)
        labels.rd_labels += rd_labs
        labels.rd_terms += [name] * len(rd_labs)
    X = np.hstack(cols) if cols else np.zeros((n, 0))
    return X, labels, offset


def _redundant_columns(X: np.ndarray) -> list[int]:
    """Columns of ``X`` that are linear combinations of the columns before them."""
    out, kept = [], []
    for j in range(X.shape[1]):
        if np.linalg.matrix_rank(X[:, kept + [j]]) > len(kept):
            kept.append(j)
        else:
            out.append(j)
    return out


def _build_model(
    response, y, X, fixed, blocks, *, offset=None, family="gaussian", link=None, trials=None, weights=None
):
    import pymc as pm
    import pytensor
    import pytensor.tensor as pt

    gaussian = family == "gaussian"
    sy = float(np.std(y)) or 1.0
    scale = sy if gaussian else 1.0  # priors of GLMMs live on the link scale
    sx = X.std(axis=0)
    const = sx < 1e-12
    centre = max(abs(float(np.mean(y))), sy) if gaussian else 1.0
    beta_sd = np.where(const, 10.0 * centre, 10.0 * scale / np.where(const, 1.0, sx))
    coords = {"fixed": fixed}
    for b in blocks:
        coords[b.group] = b.levels
        coords[f"{b.name}_effect"] = b.effects
    if gaussian:
        sw = np.ones(y.size) if weights is None else np.sqrt(weights)
        yw, Xw = (y - offset) * sw, X * sw[:, None]
        resid = yw - Xw @ np.linalg.lstsq(Xw, yw, rcond=None)[0] if X.shape[1] else yw - yw.mean()
        s0 = float(np.std(resid)) or sy
    else:
        s0 = 1.0
    # without pytensor's creation tracebacks: they would point here, not to user code, and
    # collecting them is a third of the cost of building the model
    with pytensor.config.change_flags(traceback__limit=0), pm.Model(coords=coords) as model:
        beta = pm.Normal("beta", 0.0, sigma=beta_sd, dims="fixed")
        eta = pt.dot(pt.as_tensor(X), beta)
        if offset is not None and np.any(offset != 0):
            eta = eta + pt.as_tensor(offset)
        for b in blocks:
            r = len(b.effects)
            codes = pt.as_tensor(b.codes.astype("int64"))
            if r == 1:
                sd = pm.HalfNormal(f"sd_{b.name}", sigma=2.5 * scale, initval=0.5 * s0)
                u = pm.Normal(f"u_{b.name}", 0.0, sigma=sd, dims=(b.group, f"{b.name}_effect"))
                eta = eta + u[codes, 0] * pt.as_tensor(b.z[:, 0])
            else:
                chol, _, _ = pm.LKJCholeskyCov(
                    f"chol_{b.name}",
                    n=r,
                    eta=1.0,
                    sd_dist=pm.HalfNormal.dist(2.5 * scale, shape=r),
                    compute_corr=True,
                )
                u = pm.MvNormal(f"u_{b.name}", mu=np.zeros(r), chol=chol, dims=(b.group, f"{b.name}_effect"))
                eta = eta + pt.sum(u[codes] * pt.as_tensor(b.z), axis=1)
        _likelihood(str(response), family, link, eta, y, trials, s0, sy, weights)
    return model


def _inverse_link(link: str, eta):
    import pymc as pm
    import pytensor.tensor as pt

    if link == "logit":
        return pm.math.invlogit(eta)
    if link == "probit":
        return 0.5 * pt.erfc(-eta / np.sqrt(2.0))
    if link == "cloglog":
        return 1.0 - pt.exp(-pt.exp(eta))
    if link == "log":
        return pt.exp(eta)
    return eta  # identity


def _likelihood(name, family, link, eta, y, trials, s0, sy, weights=None):
    import pymc as pm
    import pytensor.tensor as pt

    if family == "gaussian":
        sigma = pm.HalfNormal("sigma", sigma=2.5 * sy, initval=s0)
        # precision weights: residual SD sigma / sqrt(w), read back by pymc_mixvcov.model.weights
        sd = sigma if weights is None else sigma / pt.sqrt(pt.as_tensor(np.asarray(weights, float)))
        pm.Normal(name, mu=eta, sigma=sd, observed=y)
    elif family == "binomial":
        n = np.ones(y.size, dtype="int64") if trials is None else trials.astype("int64")
        y_int = y.astype("int64")
        if link == "logit":
            pm.Binomial(name, n=n, logit_p=eta, observed=y_int)
        else:
            pm.Binomial(name, n=n, p=_inverse_link(link, eta), observed=y_int)
    elif family == "poisson":
        pm.Poisson(name, mu=_inverse_link(link, eta), observed=y.astype("int64"))
    elif family == "negative_binomial":
        alpha = pm.HalfNormal("alpha", sigma=10.0, initval=1.0)
        pm.NegativeBinomial(name, mu=_inverse_link(link, eta), alpha=alpha, observed=y.astype("int64"))
    elif family == "gamma":
        shape = pm.HalfNormal("shape", sigma=10.0, initval=1.0)
        pm.Gamma(name, alpha=shape, beta=shape / _inverse_link(link, eta), observed=y)


def glmm(
    formula: str,
    data: pd.DataFrame,
    family: Family = "binomial",
    link: Link | None = None,
    offset: np.ndarray | str | None = None,
    *,
    weights: str | np.ndarray | None = None,
    ordered_contrasts: OrderedContrasts = "poly",
) -> MixedModel:
    """Build a generalised linear mixed model from an lme4 formula.

    Parameters
    ----------
    formula : str
        lme4 syntax, as for :func:`lmm`. Binomial responses: a 0/1 column, a two-level
        categorical column (its second level is a success, as in lme4), or
        ``cbind(successes, failures)`` with expressions of columns. Offsets the lme4 way,
        ``+ offset(log(time))`` (``log``, ``exp`` and ``sqrt`` usable by bare name).
    data : pandas.DataFrame
    family : {"binomial", "poisson", "negative_binomial", "gamma"}
        The negative binomial's dispersion ``alpha`` (variance ``mu + mu^2 / alpha``) and the
        gamma's shape are estimated.
    link : str, optional
        ``logit`` (default), ``probit`` or ``cloglog`` for binomial; ``log`` (default) or
        ``identity`` for the others.
    offset : array or column name, optional
        An offset on the linear-predictor scale, added to any ``offset()`` in the formula.
    weights : str or array, optional
        Binomial family only: the numbers of trials of a proportion response, as
        ``glmer(prop ~ ..., family = binomial, weights = n)``: a column of ``data`` or one value
        per row. The model is that of ``cbind(prop * n, n - prop * n)``, with the same
        log-likelihood as glmer's. Trials must be positive whole numbers and ``prop * n`` whole
        numbers (glmer only warns, and rounds them). Weights of other families, and prior weights
        on a ``cbind`` response, are refused (see :mod:`pymc_mixvcov.model.weights`).
    ordered_contrasts : {"poly", "treatment"}, default "poly"
        Coding of ordered categoricals in the fixed effects, as for :func:`lmm`.

    Returns
    -------
    MixedModel
        ``.fit(method="ML")`` uses the Laplace approximation (lme4's ``glmer`` default).

    Raises
    ------
    MixVcovError
        Unknown family or link; a response outside the family's support (naming the column
        and how many rows); weights that are not positive whole numbers of trials of a proportion
        response, or weights with another family; everything :func:`lmm` raises.
    """
    if family not in FAMILIES:
        raise MixVcovError(f"unknown family {family!r}; valid families are: {', '.join(map(repr, FAMILIES))}")
    link = LINKS[family][0] if link is None else link
    if link not in LINKS[family]:
        raise MixVcovError(
            f"link {link!r} is not available for family {family!r}; valid links: {', '.join(map(repr, LINKS[family]))}"
        )
    _check_ordered_contrasts(ordered_contrasts)
    _check_tilde(formula)
    data = _data_frame(data)
    lhs, rhs = formula.split("~", 1)
    if weights is None:
        y, trials, label = _glmm_response(lhs.strip(), data, family)
        w = None
    else:
        y, trials, label, w = _weighted_response(lhs.strip(), data, family, weights)
    _, X, off, fixed, blocks, _ = _design(
        f"{RESPONSE} ~ {rhs}",
        data.assign(**{RESPONSE: y}),
        ordered_contrasts=ordered_contrasts,
        shown=formula,
    )
    if offset is not None:
        extra = data[offset].to_numpy(float) if isinstance(offset, str) else np.asarray(offset, float).reshape(-1)
        if extra.size != y.size or not np.all(np.isfinite(extra)):
            raise MixVcovError(f"offset must be {y.size} finite values, one per row of the data")
        off = off + extra
    model = _build_model(label, y, X, fixed, blocks, offset=off, family=family, link=link, trials=trials)
    return MixedModel(
        formula, data, model, [f"u_{b.name}" for b in blocks], fixed, blocks, family=family, link=link, weights=w
    )


def _weighted_response(lhs: str, data: pd.DataFrame, family: str, weights):
    """Successes, trials, a name and the weights of a weighted GLMM response (see :func:`glmm`)."""
    if family != "binomial":
        raise MixVcovError(
            f"glmm(weights=) takes the numbers of trials of a binomial proportion response, not weights for family "
            f"{family!r}. glmer's prior weights of other families multiply each observation's log-likelihood: "
            "write that model by hand with its likelihood as pm.Potential('loglik', (w * pm.logp(dist, y)).sum()) "
            "and fit it with pmv.fit (see pymc_mixvcov.model.weights); for counts with exposures use an offset, "
            "offset=np.log(t)"
        )
    if re.fullmatch(r"cbind\((.*),(.*)\)", lhs.replace(" ", "")) is not None:
        raise MixVcovError(
            f"weights with a cbind(successes, failures) response: the trials are already in {lhs!r}. Give either "
            "cbind(successes, failures) without weights, or the proportion successes / trials with weights = trials. "
            "(glmer reads weights there as prior weights multiplying each row's log-likelihood: write such a model "
            "by hand with pm.Potential('loglik', (w * pm.logp(dist, k)).sum()) and fit it with pmv.fit)"
        )
    if lhs not in data.columns:
        raise MixVcovError(f"response {lhs!r} is not a column of the data; available columns: {list(data.columns)}")
    col = data[lhs]
    if col.isna().any():
        rows = np.flatnonzero(col.isna().to_numpy())[:10].tolist()
        raise MixVcovError(f"response {lhs!r} has {int(col.isna().sum())} missing value(s) at rows {rows}")
    if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or col.dtype == bool:
        y = _glmm_response(lhs, data, family)[0]
    else:
        y = col.to_numpy(dtype=float)
    w, name = weights_values(weights, data, y.size)
    k, n = binomial_counts(y, w, lhs, name)
    if np.any(n >= _COUNT_LIMIT):
        raise MixVcovError(f"{name}: {_COUNT_RANGE}")
    return k, n, lhs, w


def _glmm_response(lhs: str, data: pd.DataFrame, family: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Response values, binomial trials (or None) and a name, with the family's support checked."""
    m = re.fullmatch(r"cbind\((.*),(.*)\)", lhs.replace(" ", ""))
    if m is not None:
        if family != "binomial":
            raise MixVcovError(f"cbind(successes, failures) is a binomial response; family is {family!r}")
        try:
            succ = np.asarray(data.eval(m.group(1)), float)
            fail = np.asarray(data.eval(m.group(2)), float)
        except Exception as exc:
            raise MixVcovError(f"cannot evaluate the response {lhs!r} in the data: {exc}") from exc
        _check_support(
            (succ < 0) | (fail < 0) | (succ != np.round(succ)) | (fail != np.round(fail)),
            lhs,
            "successes and failures must be non-negative integers (successes <= trials)",
        )
        _check_support(succ + fail >= _COUNT_LIMIT, lhs, _COUNT_RANGE)
        return succ, succ + fail, m.group(1)
    if lhs not in data.columns:
        raise MixVcovError(f"response {lhs!r} is not a column of the data; available columns: {list(data.columns)}")
    col = data[lhs]
    if col.isna().any():
        rows = np.flatnonzero(col.isna().to_numpy())[:10].tolist()
        raise MixVcovError(f"response {lhs!r} has {int(col.isna().sum())} missing value(s) at rows {rows}")
    if family == "binomial" and (
        isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or pd.api.types.is_string_dtype(col)
    ):
        cat = col.astype("category")
        if len(cat.cat.categories) != 2:
            raise MixVcovError(
                f"binomial response {lhs!r} has {len(cat.cat.categories)} levels; a categorical response needs "
                "two (the second is a success)"
            )
        return cat.cat.codes.to_numpy().astype(float), None, lhs
    y = col.to_numpy(dtype=float)
    if family == "binomial":
        _check_support((y != 0) & (y != 1), lhs, "a Bernoulli response must be 0 or 1")
    elif family in ("poisson", "negative_binomial"):
        _check_support((y < 0) | (y != np.round(y)), lhs, "counts must be non-negative integers")
        _check_support(y >= _COUNT_LIMIT, lhs, _COUNT_RANGE)
    else:
        _check_support(~(y > 0), lhs, "gamma responses must be positive")
    return y, None, lhs


def _check_support(bad: np.ndarray, column: str, what: str) -> None:
    if np.any(bad):
        rows = np.flatnonzero(bad)[:10].tolist()
        raise MixVcovError(f"response {column!r}: {int(np.sum(bad))} row(s) outside the support ({what}); rows {rows}")
