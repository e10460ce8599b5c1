"""Likelihood-ratio tests (pmv.anova) and information criteria (MixedFit.df, .aic, .bic).

Reference: tests/reference/anova.json, written by tests/reference/generate_anova.R (R 4.2.2,
lme4 1.1-31): lme4's anova() tables, AIC(), BIC(), logLik()'s df, and the boundary-corrected
p-values 0.5 P(chi2_{d-1} > x) + 0.5 P(chi2_d > x) computed by R's pchisq at lme4's statistic.

Tolerances. Gaussian models: the log-likelihoods of lme4 and of this package at their optima
agree to about 3e-8 (both optimisers stop within ~1e-7 of the maximum), hence 1e-6 absolute on
log-likelihoods, AIC, BIC and deviances, 2e-6 on chi-square statistics, and 1e-5 relative on the
p-values (dp/p = |d log p / dx| dx stays below 1e-5 for these statistics). cbpp (Laplace): lme4's
optimum is up to 2.8e-4 below the exact Laplace maximum (see test_glmm.py), hence 5e-4 on
log-likelihoods, 1e-3 on AIC, BIC and chi-square statistics and 1e-3 relative on p-values.
"""

import warnings

import numpy as np
import pandas as pd
import pymc as pm
import pytest
from conftest import reference
from scipy.stats import chi2

import pymc_mixvcov as pmv
from pymc_mixvcov.inference.anova import boundary_pvalue

COLUMNS = ["npar", "loglik", "aic", "bic", "deviance", "chisq", "chi_df", "p", "p_boundary", "null_dist"]


@pytest.fixture(scope="module")
def ref():
    return reference("anova")


@pytest.fixture(scope="module")
def sleep(sleepstudy, sleep_ml):
    fits = {"full": sleep_ml}
    formulas = {
        "ri": "Reaction ~ Days + (1 | Subject)",
        "unc": "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)",
        "nodays": "Reaction ~ 1 + (Days | Subject)",
    }
    for name, formula in formulas.items():
        fits[name] = pmv.lmm(formula, sleepstudy).fit("ML")
    return fits


def _check_table(got: pd.DataFrame, want: dict, names: list[str], atol: float, chisq_atol: float, p_rtol: float):
    assert list(got.columns) == COLUMNS
    assert list(got.index) == names
    np.testing.assert_array_equal(got["npar"].to_numpy(), want["npar"])
    for col, key in (("aic", "AIC"), ("bic", "BIC"), ("loglik", "logLik"), ("deviance", "deviance")):
        np.testing.assert_allclose(got[col].to_numpy(), want[key], rtol=0, atol=atol, err_msg=col)
    np.testing.assert_allclose(got["chisq"].to_numpy()[1:], want["Chisq"][1:], rtol=0, atol=chisq_atol)
    np.testing.assert_array_equal(got["chi_df"].to_numpy()[1:], want["Df"][1:])
    np.testing.assert_allclose(got["p"].to_numpy()[1:], want["p"][1:], rtol=p_rtol)
    assert np.isnan(got.iloc[0][["chisq", "chi_df", "p", "p_boundary"]].to_numpy(float)).all()


# -- information criteria ----------------------------------------------------------------------------------
def test_information_criteria_match_lme4(sleep, ref):
    """AIC 1763.939 and BIC 1783.097 for the ML (Days | Subject) fit (issue 16), and the others."""
    for name in ("ri", "unc", "full", "nodays"):
        want = ref["sleepstudy"][name]
        assert sleep[name].df == want["df"]
        np.testing.assert_allclose(sleep[name].aic, want["AIC"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(sleep[name].bic, want["BIC"], rtol=0, atol=1e-6)
    np.testing.assert_allclose([sleep["full"].aic, sleep["full"].bic], [1763.939, 1783.097], atol=5e-4)


def test_reml_information_criteria_use_the_reml_criterion(sleep_reml, ref):
    """lme4's AIC of a REML fit is -2 logLik_REML + 2 df, its BIC uses log(n), n the observations."""
    want = ref["sleepstudy"]["full_reml"]
    assert sleep_reml.df == want["df"] == 6
    np.testing.assert_allclose(sleep_reml.loglik, want["logLik"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(sleep_reml.aic, want["AIC"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(sleep_reml.bic, want["BIC"], rtol=0, atol=1e-6)


def test_map_fit_has_no_information_criteria(sleepstudy):
    fit = pmv.lmm("Reaction ~ Days + (1 | Subject)", sleepstudy).model
    map_fit = pmv.fit(fit, random=["u_Subject"], method="MAP")
    assert map_fit.df == 4
    with pytest.raises(pmv.MixVcovError, match="AIC needs the maximised likelihood.*method='ML'"):
        _ = map_fit.aic
    with pytest.raises(pmv.MixVcovError, match="BIC needs the maximised likelihood"):
        _ = map_fit.bic
    with pytest.raises(pmv.MixVcovError, match="MAP fit.*method='ML'"):
        pmv.anova(map_fit, map_fit)


# -- the chi-bar-square p-value -------------------------------------------------------------------------------
def test_boundary_pvalue_closed_forms():
    """Critical values of the mixtures at the 5% level: 2.7055 for 1/2 chi2_0 + 1/2 chi2_1 (the
    chi2_1 90% quantile, Self and Liang 1987) and 5.1380 for 1/2 chi2_1 + 1/2 chi2_2 (Stram and Lee
    1994, table 1: 5.14), here from scipy's quantiles."""
    np.testing.assert_allclose(boundary_pvalue(chi2.ppf(0.90, 1), 1), 0.05, rtol=1e-12)
    np.testing.assert_allclose(boundary_pvalue(5.1380, 2), 0.05, atol=1e-5)
    x = 3.7
    np.testing.assert_allclose(boundary_pvalue(x, 3), 0.5 * chi2.sf(x, 2) + 0.5 * chi2.sf(x, 3), rtol=1e-14)
    assert boundary_pvalue(0.0, 1) == 1.0  # P(T >= 0) = 1: half the mass sits at 0
    assert boundary_pvalue(-1e-9, 2) == 1.0
    with pytest.raises(pmv.MixVcovError, match="one variance on its boundary only"):
        boundary_pvalue(1.0, 2, boundary=2)
    with pytest.raises(pmv.MixVcovError, match="df must be a positive integer"):
        boundary_pvalue(1.0, 0)


# -- lme4's tables ------------------------------------------------------------------------------------------
def test_correlation_test_matches_lme4(sleep, ref):
    """(1 | Subject) + (0 + Days | Subject) against (Days | Subject): chi-square 0.06391 on 1 df; the
    correlation's null value 0 is interior, so p_boundary = p."""
    got = pmv.anova(sleep["unc"], sleep["full"], names=["unc", "full"])
    _check_table(got, ref["sleepstudy"]["anova_unc_full"], ["unc", "full"], 1e-6, 2e-6, 1e-5)
    np.testing.assert_allclose(got.loc["full", "chisq"], 0.06391, atol=5e-6)
    assert got.loc["full", "p_boundary"] == got.loc["full", "p"]
    assert got.loc["full", "null_dist"] == "chi2(1)"
    assert "1 covariance(s)" in got.attrs["notes"]["full"]
    assert got.attrs["criterion"] == "ML" and got.attrs["refitted"] == []


def test_random_slope_test_with_boundary_correction(sleep, ref):
    """(1 | Subject) against (Days | Subject): 2 df, one variance on its boundary, the mixture
    1/2 chi2_1 + 1/2 chi2_2 (Stram and Lee 1994); models given largest first."""
    got = pmv.anova(sleep["full"], sleep["ri"], names=["full", "ri"])
    _check_table(got, ref["sleepstudy"]["anova_ri_full"], ["ri", "full"], 1e-6, 2e-6, 1e-5)
    np.testing.assert_allclose(got.loc["full", "p_boundary"], ref["sleepstudy"]["p_boundary_ri_full"], rtol=1e-5)
    assert got.loc["full", "p_boundary"] < got.loc["full", "p"]
    assert got.loc["full", "null_dist"] == "0.5 chi2(1) + 0.5 chi2(2)"


def test_three_models_in_order_of_npar(sleep, ref):
    """Each row is tested against the row before, as lme4 does; rows keep their names."""
    got = pmv.anova(sleep["full"], sleep["ri"], sleep["unc"], names=["full", "ri", "unc"])
    _check_table(got, ref["sleepstudy"]["anova_ri_unc_full"], ["ri", "unc", "full"], 1e-6, 2e-6, 1e-5)
    # (1 | Subject) -> + (0 + Days | Subject): an independent variance, 1/2 chi2_0 + 1/2 chi2_1
    np.testing.assert_allclose(got.loc["unc", "p_boundary"], ref["sleepstudy"]["p_boundary_ri_unc"], rtol=1e-5)
    np.testing.assert_allclose(got.loc["unc", "p_boundary"], got.loc["unc", "p"] / 2, rtol=1e-12)
    assert list(got["null_dist"]) == ["", "0.5 chi2(0) + 0.5 chi2(1)", "chi2(1)"]


def test_fixed_effect_test_matches_lme4(sleep, ref):
    got = pmv.anova(sleep["nodays"], sleep["full"], names=["nodays", "full"])
    _check_table(got, ref["sleepstudy"]["anova_nodays_full"], ["nodays", "full"], 1e-6, 2e-6, 1e-5)
    assert got.loc["full", "p_boundary"] == got.loc["full", "p"]
    assert "1 fixed effect(s)" in got.attrs["notes"]["full"]


def test_nested_term_on_a_new_grouping_factor(ref):
    """pastes: (1 | batch) against (1 | batch) + (1 | batch:cask), ML."""
    pastes = pmv.datasets.load("pastes")
    p0 = pmv.lmm("strength ~ 1 + (1 | batch)", pastes).fit()
    p1 = pmv.lmm("strength ~ 1 + (1 | batch) + (1 | batch:cask)", pastes).fit()
    got = pmv.anova(p0, p1, names=["p0", "p1"])
    _check_table(got, ref["pastes"]["anova"], ["p0", "p1"], 1e-6, 2e-6, 1e-5)
    np.testing.assert_allclose(got.loc["p1", "p_boundary"], ref["pastes"]["p_boundary"], rtol=1e-5)


def test_cbpp_glmm(ref):
    """cbpp (binomial, Laplace): the period term (3 fixed effects, interior) and an
    observation-level random effect (one variance on its boundary)."""
    cbpp = pmv.datasets.load("cbpp")
    cbpp = cbpp.assign(obs=pd.Categorical(np.arange(len(cbpp))))
    lhs = "cbind(incidence, size - incidence) ~ "
    g0 = pmv.glmm(lhs + "1 + (1 | herd)", cbpp).fit()
    g1 = pmv.glmm(lhs + "period + (1 | herd)", cbpp).fit()
    g2 = pmv.glmm(lhs + "period + (1 | herd) + (1 | obs)", cbpp).fit()
    for fit, name in ((g0, "g0"), (g1, "g1"), (g2, "g2")):
        want = ref["cbpp"][name]
        assert fit.df == want["df"]
        np.testing.assert_allclose([fit.aic, fit.bic], [want["AIC"], want["BIC"]], rtol=0, atol=1e-3)
    got = pmv.anova(g0, g1, names=["g0", "g1"])
    _check_table(got, ref["cbpp"]["anova_period"], ["g0", "g1"], 1e-3, 1e-3, 1e-3)
    assert got.loc["g1", "p_boundary"] == got.loc["g1", "p"]
    got = pmv.anova(g2, g1, names=["g2", "g1"])
    _check_table(got, ref["cbpp"]["anova_obs"], ["g1", "g2"], 1e-3, 1e-3, 1e-3)
    np.testing.assert_allclose(got.loc["g2", "p_boundary"], ref["cbpp"]["p_boundary_obs"], rtol=1e-3)
    # a Laplace fit and a quadrature fit: different approximations of the likelihood
    g0_agq = pmv.glmm(lhs + "1 + (1 | herd)", cbpp).fit(nAGQ=5)
    with pytest.raises(pmv.MixVcovError, match=r"different likelihood approximations \(nAGQ = \[1, 5\]\)"):
        pmv.anova(g0_agq, g1)


# -- REML fits --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unc_reml(sleepstudy):
    return pmv.lmm("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", sleepstudy).fit("REML")


def test_reml_fits_are_refitted_by_ml(unc_reml, sleep_reml, ref):
    with pytest.warns(pmv.MixVcovWarning, match=r"refitting model\(s\) 'unc', 'full' with ML \(instead of REML\)"):
        got = pmv.anova(unc_reml, sleep_reml, names=["unc", "full"])
    _check_table(got, ref["sleepstudy"]["anova_reml_refit"], ["unc", "full"], 1e-6, 2e-6, 1e-5)
    assert got.attrs["refitted"] == ["unc", "full"] and got.attrs["criterion"] == "ML"
    assert sleep_reml.method == "REML"  # the fits given are left as they are


def test_reml_criteria_compared_without_refit(unc_reml, sleep_reml, sleep, ref):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = pmv.anova(unc_reml, sleep_reml, names=["unc", "full"], refit=False)
    _check_table(got, ref["sleepstudy"]["anova_reml_norefit"], ["unc", "full"], 1e-6, 2e-6, 1e-5)
    assert got.attrs["criterion"] == "REML"
    with pytest.raises(pmv.MixVcovError, match="'ml' are not REML fits"):
        pmv.anova(unc_reml, sleep["full"], names=["reml", "ml"], refit=False)


def test_reml_without_refit_needs_the_same_fixed_effects(sleepstudy, sleep_reml):
    nodays = pmv.lmm("Reaction ~ 1 + (Days | Subject)", sleepstudy).fit("REML")
    with pytest.raises(pmv.MixVcovError, match="different fixed-effect designs.*use refit=True"):
        pmv.anova(nodays, sleep_reml, refit=False)


# -- bad input and non-nested models -------------------------------------------------------------------------------
def test_models_of_different_data_are_refused(sleepstudy, sleep):
    fewer = pmv.lmm("Reaction ~ Days + (1 | Subject)", sleepstudy.iloc[:170]).fit()
    with pytest.raises(pmv.MixVcovError, match="different numbers of observations \\(180 and 170\\)"):
        pmv.anova(sleep["full"], fewer)
    logged = pmv.lmm("log(Reaction) ~ Days + (1 | Subject)", sleepstudy).fit()
    with pytest.raises(pmv.MixVcovError, match="different responses \\(180 of 180 observations differ"):
        pmv.anova(sleep["full"], logged)


def test_arguments_are_checked(sleepstudy, sleep):
    with pytest.raises(pmv.MixVcovError, match="two or more fits; got 1"):
        pmv.anova(sleep["full"])
    model = pmv.lmm("Reaction ~ Days + (1 | Subject)", sleepstudy)
    with pytest.raises(pmv.MixVcovError, match="argument 2 of anova is a MixedModel, not a MixedFit; call its .fit"):
        pmv.anova(sleep["full"], model)
    with pytest.raises(pmv.MixVcovError, match="names must be 2 distinct labels"):
        pmv.anova(sleep["full"], sleep["ri"], names=["a", "a"])
    with pytest.raises(pmv.MixVcovError, match="refit must be True or False"):
        pmv.anova(sleep["full"], sleep["ri"], refit="no")


def test_same_npar_and_non_nested_models_warn(sleep):
    # (1 | Subject) + (0 + Days | Subject) and 1 + (Days | Subject) both have 5 parameters
    with pytest.warns(pmv.MixVcovWarning, match="same number of parameters \\(5\\)"):
        got = pmv.anova(sleep["unc"], sleep["nodays"], names=["unc", "nodays"])
    assert np.isnan(got.iloc[1][["p", "p_boundary"]].to_numpy(float)).all()
    # Days + (1 | Subject) is not nested in 1 + (Days | Subject): the Days column is missing
    with pytest.warns(pmv.MixVcovWarning, match="'ri' is not nested in 'nodays' \\(fixed-effect column 1"):
        got = pmv.anova(sleep["ri"], sleep["nodays"], names=["ri", "nodays"])
    assert np.isnan(got.loc["nodays", "p_boundary"])
    assert np.isfinite(got.loc["nodays", "p"])  # lme4's p-value is reported all the same


def test_larger_loglik_of_smaller_model_warns(sleepstudy, sleep):
    """A model with more parameters but a smaller log-likelihood: no Days effect, and a random
    intercept for six arbitrary groups of rows instead (estimated at or near 0)."""
    data = sleepstudy.assign(rows=pd.Categorical(np.arange(len(sleepstudy)) % 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pmv.SingularFitWarning)
        big = pmv.lmm("Reaction ~ 1 + (Days | Subject) + (1 | rows)", data).fit()
    assert big.df == 6 and big.loglik < sleep["unc"].loglik - 1
    with (
        pytest.warns(pmv.MixVcovWarning, match="fewer parameters than 'big' but a larger log-likelihood"),
        pytest.warns(pmv.MixVcovWarning, match="'unc' is not nested in 'big' \\(fixed-effect column 1"),
    ):
        got = pmv.anova(sleep["unc"], big, names=["unc", "big"])
    assert got.loc["big", "chisq"] == 0.0
    assert got.loc["big", "p"] == 1.0


def test_reparameterised_random_effects_cannot_be_told(sleepstudy, sleep):
    """(0 + late | Subject) spans the random intercept without containing it as an effect: nested,
    but which variances sit on the boundary cannot be read off, so p_boundary is NaN, with a note."""
    data = sleepstudy.assign(late=pd.Categorical(np.where(sleepstudy["Days"] >= 5, "late", "early")))
    factor = pmv.lmm("Reaction ~ Days + (0 + late | Subject)", data).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = pmv.anova(sleep["ri"], factor, names=["ri", "factor"])
    assert np.isfinite(got.loc["factor", "p"]) and np.isnan(got.loc["factor", "p_boundary"])
    assert got.loc["factor", "null_dist"] == ""
    assert "cannot be told" in got.attrs["notes"]["factor"]


# -- hand-written models ------------------------------------------------------------------------------------------
def _handwritten(data, kind: str) -> pm.Model:
    subj = data["Subject"].cat.codes.to_numpy()
    days = data["Days"].to_numpy(float)
    with pm.Model(coords={"Subject": list(data["Subject"].cat.categories)}) as model:
        beta = pm.Normal("beta", 0, 100, shape=2)
        sigma = pm.HalfNormal("sigma", 50.0)
        mu = beta[0] + beta[1] * days
        if kind == "shared":  # one SD for the intercepts and the slopes
            sd = pm.HalfNormal("sd", 50.0)
            mu = mu + pm.Normal("a", 0, sd, dims="Subject")[subj] + pm.Normal("b", 0, sd, dims="Subject")[subj] * days
        else:
            mu = mu + pm.Normal("a", 0, pm.HalfNormal("sd_a", 50.0), dims="Subject")[subj]
            if kind == "independent":
                mu = mu + pm.Normal("b", 0, pm.HalfNormal("sd_b", 50.0), dims="Subject")[subj] * days
        pm.Normal("y", mu, sigma, observed=data["Reaction"].to_numpy(float))
    return model


def test_handwritten_models(sleepstudy, sleep, ref):
    """Hand-written models are read the same way: the intercept-only model against independent
    intercepts and slopes gives the formula models' table; with one SD shared by both terms the
    parameters do not map onto the covariance entries, and p_boundary is NaN."""
    ri = pmv.fit(_handwritten(sleepstudy, "intercept"), random=["a"])
    unc = pmv.fit(_handwritten(sleepstudy, "independent"), random=["a", "b"])
    shared = pmv.fit(_handwritten(sleepstudy, "shared"), random=["a", "b"])
    got = pmv.anova(ri, unc, sleep["full"], names=["ri", "unc", "full"])
    _check_table(got, ref["sleepstudy"]["anova_ri_unc_full"], ["ri", "unc", "full"], 1e-6, 2e-6, 1e-5)
    np.testing.assert_allclose(got.loc["unc", "p_boundary"], ref["sleepstudy"]["p_boundary_ri_unc"], rtol=1e-5)
    assert list(got["null_dist"]) == ["", "0.5 chi2(0) + 0.5 chi2(1)", "chi2(1)"]
    got = pmv.anova(shared, unc, names=["shared", "unc"])
    assert np.isfinite(got.loc["unc", "p"]) and np.isnan(got.loc["unc", "p_boundary"])
    assert "do not map one to one" in got.attrs["notes"]["unc"]
