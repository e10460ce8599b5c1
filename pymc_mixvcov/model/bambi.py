"""Models built with bambi: their likelihood read off the ``bmb.Model``, with lme4's labels.

A ``bmb.Model`` holds, once built, an ordinary ``pm.Model`` (``model.backend.model``) in which
every group-specific term ``x|g`` is non-centred: ``x|g_offset ~ Normal(0, 1)`` per level (and
per column of ``x``), ``x|g_sigma`` its SD, and the deterministic ``x|g = x|g_offset * x|g_sigma``
enters the linear predictor; the common predictors are centred (``X - mean(X)``) when the model
has an intercept (bambi's ``center_predictors=True``, its default), so that bambi's
``Intercept`` variable is the intercept at the predictors' means. bambi reports the intercept
uncentred after sampling (``Intercept - mean(X) @ beta``).

:func:`from_bambi` reads the terms of the model (``model.parameters``): the response, the
common terms' columns as bambi codes them (uncentred), the group-specific terms' grouping
factors, levels and predictor columns, offsets, the family and the link. It builds from them
the same likelihood in the form of :func:`pymc_mixvcov.lmm` and :func:`pymc_mixvcov.glmm`: each
column of each group-specific term is an independent random effect with its own SD, as bambi's
``Normal(0, sigma)`` prior makes it (bambi's ``(Days | Subject)`` is lme4's
``(Days || Subject)``). The fit then reports on the original (uncentred) predictor scale, with
lme4's labels: ``(Intercept)``, ``period2`` (bambi's ``period[2]``), ``sd_(Intercept)|Subject``,
``sd_Days|Subject``; several blocks on one factor are named as lme4 prints them (``Subject``,
``Subject.1``).

ML and REML depend on the likelihood alone, so they equal the fits of bambi's own graph (up to
the centring of the intercept; see :func:`pymc_mixvcov.optimise.fit.fit` with
``random=["1|Subject_offset", ...]`` for that graph). ``method="MAP"`` is refused: the model
built here carries this package's priors, not bambi's.

bambi is an optional dependency (``pip install pymc-mixvcov[bambi]``); it is imported only
when a bambi model is passed.
"""

from __future__ import annotations

import numpy as np

from ..errors import MixVcovError
from .formula import Block, MixedModel, _build_model, _lme4_name, _lme4_order, _redundant_columns

__all__ = ["from_bambi", "is_bambi_model"]

#: bambi family name -> (this package's family, whether the response is 0/1)
_FAMILIES = {
    "gaussian": ("gaussian", False),
    "bernoulli": ("binomial", True),
    "binomial": ("binomial", False),
    "poisson": ("poisson", False),
    "negativebinomial": ("negative_binomial", False),
    "gamma": ("gamma", False),
}
#: links of each family (as in pymc_mixvcov.model.formula.LINKS, gaussian: identity only)
_LINKS = {
    "gaussian": ("identity",),
    "binomial": ("logit", "probit", "cloglog"),
    "poisson": ("log", "identity"),
    "negative_binomial": ("log", "identity"),
    "gamma": ("log", "identity"),
}


def is_bambi_model(obj) -> bool:
    """Whether ``obj`` is a ``bambi.Model`` (checked without importing bambi)."""
    return any(c.__module__.split(".")[0] == "bambi" and c.__name__ == "Model" for c in type(obj).__mro__)


def from_bambi(model) -> MixedModel:
    """The mixed model of a ``bambi.Model``, on its original predictor scale with lme4's labels.

    Parameters
    ----------
    model : bambi.Model
        A bambi model, built or not (``model.build()`` is not needed: the terms are read, not
        the PyMC graph). Supported: families ``gaussian`` (identity link), ``bernoulli`` and
        ``binomial`` (logit, probit, cloglog), ``poisson``, ``negativebinomial`` and ``gamma``
        (log, identity); common terms, offsets, and group-specific terms with bambi's default
        ``Normal(0, sigma)`` prior and an estimated ``sigma``.

    Returns
    -------
    MixedModel
        Fit it with ``.fit(method="ML")`` or ``"REML"`` (Gaussian). Its fixed effects are
        ``beta`` of ``eta = X beta + Z u`` with the columns of ``X`` uncentred, whatever
        bambi's ``center_predictors``: the intercept is lme4's, ``Intercept_bambi - mean(X) @ beta``
        for a centred bambi model.

    Raises
    ------
    MixVcovError
        An unsupported family or link, a distributional parameter with its own predictors
        (``bmb.Formula("y ~ x", "sigma ~ x")``), HSGP terms, a censored, truncated or weighted
        response, a group-specific term with another prior than ``Normal(0, sigma)`` or with a
        fixed ``sigma``, a multivariate response.

    Examples
    --------
    >>> import bambi as bmb  # doctest: +SKIP
    >>> m = bmb.Model("Reaction ~ Days + (Days | Subject)", pmv.datasets.load("sleepstudy"))  # doctest: +SKIP
    >>> pmv.fit(m).summary()  # the same fit as pmv.lmm("Reaction ~ Days + (Days || Subject)", ...)  # doctest: +SKIP
    """
    if not is_bambi_model(model):
        raise MixVcovError(f"model must be a bambi.Model, got {type(model).__name__}")
    fam_name = str(model.family.name)
    if fam_name not in _FAMILIES:
        raise MixVcovError(
            f"bambi family {fam_name!r} is not supported; supported families are: {', '.join(map(repr, _FAMILIES))}"
        )
    family, bernoulli = _FAMILIES[fam_name]
    parent = model.family.likelihood.parent
    link = str(model.family.link[parent].name)
    if link not in _LINKS[family]:
        raise MixVcovError(
            f"link {link!r} of bambi family {fam_name!r} is not supported; supported links: "
            f"{', '.join(map(repr, _LINKS[family]))}"
        )
    _check_components(model, parent)
    comp = _parameters(model)[parent]
    response = model.response_term if hasattr(type(model), "response_term") else model.response_component.term
    for flag in ("is_censored", "is_truncated", "is_weighted", "is_constrained"):
        if getattr(response, flag, False):
            raise MixVcovError(
                f"the response {response.name!r} is {flag.removeprefix('is_')}; only plain responses are supported"
            )
    y, trials = _response(response, family, bernoulli)
    n = y.size
    X, fixed = _common_design(comp, n)
    if X.shape[1] and np.linalg.matrix_rank(X) < X.shape[1]:
        redundant = [fixed[j] for j in _redundant_columns(X)]
        raise MixVcovError(
            f"the common terms of bambi model {_formula_text(model)!r} are rank deficient: column(s) {redundant} "
            f"are linear combinations of the columns before them (all columns: {fixed}); remove the redundant terms"
        )
    offset = np.zeros(n)
    for term in getattr(comp, "offset_terms", {}).values():
        offset = offset + np.asarray(term.data, float).reshape(n, -1).sum(axis=1)
    blocks = _lme4_order(_blocks(comp, n))
    if not blocks:
        raise MixVcovError(
            f"bambi model {_formula_text(model)!r} has no group-specific term such as (1 | group); "
            "there is nothing to integrate out"
        )
    seen: dict[str, int] = {}
    for b in blocks:  # lme4's names (R's make.unique): Subject, Subject.1, ...
        k = seen.get(b.group, 0)
        seen[b.group] = k + 1
        object.__setattr__(b, "name", b.group if k == 0 else f"{b.group}.{k}")
    if family == "gaussian":
        for b in blocks:
            if len(b.levels) >= n:
                raise MixVcovError(
                    f"grouping factor {b.group!r} has {len(b.levels)} levels for {n} observations; its variance "
                    "is not identified beside the residual variance"
                )
    label = str(response.name)
    pm_model = _build_model(
        label,
        y,
        X,
        fixed,
        blocks,
        offset=offset,
        family=family,
        link=None if family == "gaussian" else link,
        trials=trials,
    )
    data = model.data if len(model.data) == n else None
    names = _posterior_names(comp, blocks, family, _parameters(model), parent)
    return MixedModel(
        _formula_text(model),
        data,
        pm_model,
        [f"u_{b.name}" for b in blocks],
        fixed,
        blocks,
        family=family,
        source="bambi",
        posterior_names=names,
    )


def _formula_text(model) -> str:
    """The model's formula as written (``bmb.Formula.main``)."""
    return str(getattr(model.formula, "main", model.formula))


def _aliased(term) -> str:
    return str(getattr(term, "alias", None) or term.name)


def _posterior_names(comp, blocks: list[Block], family: str, parameters: dict, parent: str) -> dict:
    """Where each entry of the built model's parameters lies in bambi's posterior.

    ``beta``: bambi's ``Intercept`` (uncentred in bambi's posterior, as here) and the common
    terms' variables, column by column; ``sd_<block>``: the group-specific term's ``<term>_sigma``
    (its ``j``-th entry for the ``j``-th column); ``sigma`` (gaussian), ``alpha`` (negative
    binomial) and ``shape`` (gamma, bambi's ``alpha``): the family's auxiliary parameter.
    """
    beta: list[tuple[str, int]] = []
    if comp.intercept_term is not None:
        beta.append((_aliased(comp.intercept_term), 0))
    for term in comp.common_terms.values():
        width = int(np.prod(np.shape(term.data)[1:], dtype=int)) if np.ndim(term.data) > 1 else 1
        beta += [(_aliased(term), j) for j in range(width)]
    names: dict[str, list[tuple[str, int]]] = {"beta": beta}
    column: dict[str, int] = {}
    for b in blocks:
        term = comp.group_specific_terms[b.terms[0]]
        j = column.get(b.terms[0], 0)
        column[b.terms[0]] = j + 1
        sigma = term.hyperprior_alias.get("sigma", "sigma") if getattr(term, "hyperprior_alias", None) else "sigma"
        names[f"sd_{b.name}"] = [(f"{_aliased(term)}_{sigma}", j)]
    aux = {"gaussian": ("sigma", "sigma"), "negative_binomial": ("alpha", "alpha"), "gamma": ("shape", "alpha")}
    if family in aux:
        ours, theirs = aux[family]
        other = parameters.get(theirs)
        label = str(getattr(other, "alias", None) or theirs) if other is not None else theirs
        names[ours] = [(label, 0)]
    return names


def _parameters(model) -> dict:
    """The model's parameters (``mu``, ``sigma``, ...) with their terms: ``Model.parameters``, or
    ``Model.components`` in bambi versions without it."""
    return model.parameters if hasattr(type(model), "parameters") else model.components


def _check_components(model, parent: str) -> None:
    """Only the parent parameter (``mu``, ``p``) may have predictors; the others are constants or priors."""
    modelled = [
        name
        for name, c in _parameters(model).items()
        if name != parent and (getattr(c, "common_terms", None) or getattr(c, "group_specific_terms", None))
    ]
    if modelled:
        raise MixVcovError(
            f"the distributional parameter(s) {modelled} have their own predictors; only the mean's linear "
            "predictor may have terms"
        )
    comp = _parameters(model)[parent]
    if getattr(comp, "hsgp_terms", None):
        raise MixVcovError(f"HSGP terms {list(comp.hsgp_terms)} are not supported; only linear mixed terms are")


def _response(term, family: str, bernoulli: bool) -> tuple[np.ndarray, np.ndarray | None]:
    data = np.asarray(term.data)
    if family == "binomial" and not bernoulli:
        if data.ndim != 2 or data.shape[1] != 2:
            raise MixVcovError(f"binomial response {term.name!r} must be p(successes, trials)")
        y, trials = data[:, 0].astype(float), data[:, 1].astype(float)
        if np.any((y < 0) | (y > trials) | (y != np.round(y)) | (trials != np.round(trials))):
            raise MixVcovError(f"binomial response {term.name!r}: successes must be integers from 0 to the trials")
        return y, trials
    y = data.reshape(-1).astype(float)
    if data.ndim > 1 and data.shape[1] > 1:
        raise MixVcovError(f"response {term.name!r} has {data.shape[1]} columns; a univariate response is needed")
    return y, None


def _common_design(comp, n: int) -> tuple[np.ndarray, list[str]]:
    """Uncentred fixed-effect columns (bambi's coding) and their lme4 names."""
    cols, labels = [], []
    if comp.intercept_term is not None:
        cols.append(np.ones((n, 1)))
        labels.append("(Intercept)")
    for term in comp.common_terms.values():
        z = np.asarray(term.data, float).reshape(n, -1)
        labs = list(getattr(term.term, "labels", None) or [])
        if len(labs) != z.shape[1]:
            labs = [term.name] if z.shape[1] == 1 else [f"{term.name}[{i}]" for i in range(z.shape[1])]
        cols.append(z)
        labels += [_lme4_name(lab) for lab in labs]
    X = np.hstack(cols) if cols else np.zeros((n, 0))
    return X, labels


def _blocks(comp, n: int) -> list[Block]:
    """One block per column of each group-specific term (bambi gives each its own SD)."""
    from bambi.priors import Prior

    out = []
    for name, term in comp.group_specific_terms.items():
        prior = term.prior
        sigma = prior.args.get("sigma") if prior is not None else None
        if prior is None or prior.name != "Normal" or np.any(np.asarray(prior.args.get("mu", 0.0)) != 0):
            raise MixVcovError(
                f"group-specific term {name!r} has the prior {prior}; random effects must be Normal(0, sigma) "
                "(bambi's default)"
            )
        if not isinstance(sigma, Prior):
            raise MixVcovError(
                f"group-specific term {name!r} has a fixed sigma ({sigma}); its SD must be a parameter "
                "(a prior such as HalfNormal)"
            )
        factor = term.term.factor
        cols = tuple(v.name for v in getattr(factor, "components", [])) or (str(factor.name),)
        group = ":".join(cols)
        levels = [str(v) for v in term.groups]
        codes = np.asarray(term.group_index, dtype=np.int64).reshape(-1)
        z = np.asarray(term.predictor, float).reshape(n, -1)
        labs = list(getattr(term.term.expr, "labels", None) or [])
        if len(labs) != z.shape[1]:
            labs = [str(term.term.expr.name)] if z.shape[1] == 1 else [str(v) for v in range(z.shape[1])]
        for j, lab in enumerate(labs):
            out.append(
                Block(group, cols, (name,), [_lme4_name(lab)], codes, levels, z[:, j : j + 1].copy(), name=group)
            )
    return out
