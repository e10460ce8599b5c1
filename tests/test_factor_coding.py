"""Fixed-effect factors coded as R codes them: level order, contrasts, term and column order.

References: ``tests/reference/factor_coding.json``, written by ``generate_factors.R`` (R 4.2.2,
lme4 1.1-31, nlme 3.1-162).
"""

import numpy as np
import pandas as pd
import pytest
from conftest import reference

import pymc_mixvcov as pmv
from pymc_mixvcov.model.formula import _design

REF = reference("factor_coding")


def _toy() -> pd.DataFrame:
    """The toy data of generate_factors.R: ``a`` with levels z, y, x (not sorted), ``b`` with q, p,
    ``o`` ordered lo < mid < hi, ``x`` numeric, ``l`` logical; plus a response and a grouping factor."""
    t = REF["toy_data"]
    return pd.DataFrame(
        {
            "a": pd.Categorical(t["a"], categories=["z", "y", "x"]),
            "b": pd.Categorical(t["b"], categories=["q", "p"]),
            "o": pd.Categorical(t["o"], categories=["lo", "mid", "hi"], ordered=True),
            "x": t["x"],
            "l": np.array(t["l"], bool),
            "y": np.sin(np.arange(24.0)),
            "g": pd.Categorical(np.arange(24) % 4),
        }
    )


@pytest.mark.parametrize("case", REF["toy"], ids=[c["formula"] for c in REF["toy"]])
def test_design_is_r_model_matrix(case):
    # names and values of R's model.matrix(): the pandas level order (first level the
    # baseline), contr.poly for the ordered factor, a logical as a factor (lTRUE), terms by
    # degree, first factor fastest in interactions, indicators where R's TermCode asks for them. The values are exact
    # indicators or R's contr.poly (printed to 17 digits): 1e-12.
    _, X, _, fixed, _, _ = _design(f"y {case['formula']} + (1 | g)", _toy())
    assert fixed == case["names"]
    np.testing.assert_allclose(X, np.array(case["values"], float), rtol=0, atol=1e-12)


def test_string_columns_are_factors_with_sorted_levels():
    # R's factor() sorts the levels of a character column: baseline p, column bq
    d = _toy().assign(b=lambda f: f["b"].astype(str))
    _, _, _, fixed, _, _ = _design("y ~ b + (1 | g)", d)
    assert fixed == ["(Intercept)", "bq"]


def test_cake_reml_matches_lme4_with_polynomial_contrasts():
    # lme4 1.1-31: lmer(angle ~ recipe * temperature + (1 | recipe:replicate), cake, REML = TRUE),
    # temperature an ordered factor (contr.poly). The design is balanced, so the fixed effects are
    # OLS (exact: 1e-8); the log-likelihood is at an optimum, flat to first order (1e-6).
    ref = REF["cake_reml"]
    model = pmv.lmm(ref["formula"], pmv.datasets.load("cake"))
    assert model.fixed_labels == ref["names"]
    fit = model.fit("REML")
    np.testing.assert_allclose(fit.loglik, ref["logLik"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fit.params("var").loc[ref["names"]], ref["estimate"], rtol=0, atol=1e-8)


def test_cake_treatment_contrasts_one_keyword_away():
    # lme4 1.1-31, the same model with contrasts = list(temperature = "contr.treatment"): the REML
    # log-likelihood differs from the polynomial coding's by log det of the change of basis
    ref = REF["cake_reml_treatment"]
    model = pmv.lmm(ref["formula"], pmv.datasets.load("cake"), ordered_contrasts="treatment")
    assert model.fixed_labels == ref["names"]
    fit = model.fit("REML")
    np.testing.assert_allclose(fit.loglik, ref["logLik"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fit.params("var").loc[ref["names"]], ref["estimate"], rtol=0, atol=1e-8)


def test_unknown_ordered_contrasts_lists_values():
    with pytest.raises(pmv.MixVcovError, match="valid values are: 'poly', 'treatment'"):
        pmv.lmm("angle ~ temperature + (1 | replicate)", pmv.datasets.load("cake"), ordered_contrasts="helmert")


@pytest.mark.filterwarnings("ignore::pymc_mixvcov.SingularFitWarning")
def test_orthodont_sex_has_male_baseline():
    # lme4 1.1-31 (lmerTest summary in the same script): SexFemale, Male the baseline. The
    # design is balanced: fixed effects are OLS whatever the variance estimates (1e-8).
    ref = REF["orthodont_reml"]
    model = pmv.lmm(ref["formula"], pmv.datasets.load("orthodont"))
    assert model.fixed_labels == ["(Intercept)", "age", "SexFemale", "age:SexFemale"] == ref["names"]
    fit = model.fit("REML")
    np.testing.assert_allclose(fit.params("var").loc[ref["names"]], ref["estimate"], rtol=0, atol=1e-8)


@pytest.mark.filterwarnings("ignore::pymc_mixvcov.SingularFitWarning")
def test_orthodont_reml_loglik():
    """lme4 1.1-31's REML optimum of Orthodont. The first L-BFGS-B run stops where the intercept's
    Cholesky entry is 0 and the gradient pushes it outward; with the column below it negated (the
    same covariance) it pulls inward, and the restart reaches the optimum (fit.py, start.py).
    lme4's bobyqa stops within about 1e-5 of its optimum; ours is at least as high."""
    ref = REF["orthodont_reml"]
    fit = pmv.lmm(ref["formula"], pmv.datasets.load("orthodont")).fit("REML")
    assert fit.converged and not fit.singular
    np.testing.assert_allclose(fit.loglik, ref["logLik"], rtol=0, atol=1e-5)
    assert fit.loglik >= ref["logLik"] - 1e-8
    np.testing.assert_allclose(fit.params("sd").to_numpy()[:4], ref["estimate"], rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "dataset", "group"),
    [("verbagg", "verbagg", "id"), ("insteval", "insteval", "s")],
)
def test_bundled_factors_match_lme4_columns(name, dataset, group):
    # R's model.matrix() on lme4's VerbAgg (mode: want, do; Gender: F, M) and InstEval (dept in
    # lme4's level order, studage and lectage ordered: contr.poly); column sums of 0/1
    # indicators are exact and those of the polynomial columns are sums of 73,421 terms (1e-8)
    ref = REF[name]
    data = pmv.datasets.load(dataset)
    lhs, rhs = ref["formula"].split("~")
    response = "Anger" if name == "verbagg" else lhs.strip()
    _, X, _, fixed, _, _ = _design(f"{response} ~ {rhs} + (1 | {group})", data)
    assert fixed == ref["names"]
    np.testing.assert_allclose(X.sum(axis=0), ref["colsums"], rtol=1e-12, atol=1e-8)


def test_rank_deficient_design_names_the_redundant_column():
    # R: model.matrix(~ x + a:b) codes a and b by all their indicators: the last column,
    # ax:bp, is the sum of the others minus the intercept, and lme4 drops it
    with pytest.raises(pmv.MixVcovError, match=r"column\(s\) \['ax:bp'\] are linear combinations"):
        pmv.lmm("y ~ x + a:b + (1 | g)", _toy())
