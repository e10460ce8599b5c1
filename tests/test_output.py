"""summary() laid out as lme4's summary(lmer), tidy() as broom.mixed's tidy(), the HTML displays.

References: tests/reference/output_summary.json, written by generate_output.R (R 4.2.2, lme4
1.1-31, lmerTest 3.1-3, broom.mixed 0.2.9.4). Tolerances: our optimum is lme4's to about 3e-5
relative in the variance parameters (lme4 stops at its optimiser's tolerance; ours has the higher
log-likelihood, see README), so numbers that depend on them (variances, residuals, fixed-effect
SEs) are compared with rtol 1e-4 (atol 1e-4 for residuals, which are of order 1); the
log-likelihood agrees to 1.3e-8, so criteria are compared with atol 1e-6; fixed-effect
estimates (GLS, insensitive to the variance parameters at this order) with rtol 1e-6.
"""

from __future__ import annotations

import html.parser
import json
import pickle

import numpy as np
import pandas as pd
import pytest
from conftest import REF

import pymc_mixvcov as pmv
from pymc_mixvcov.inference.conditional import conditional_modes, scaled_residuals
from pymc_mixvcov.output.summary import Summary
from pymc_mixvcov.output.tidy import COLUMNS

R = json.loads((REF / "output_summary.json").read_text())["cases"]


def _random(layout) -> pd.DataFrame:
    return layout.random


# -- the summary's pieces against lme4 -------------------------------------------------------------
@pytest.mark.parametrize("case", ["sleepstudy_ml", "sleepstudy_reml"])
def test_sleepstudy_summary_pieces_match_lme4(case, sleep_ml, sleep_reml):
    fit = sleep_ml if case == "sleepstudy_ml" else sleep_reml
    ref = R[case]
    layout = fit.summary().layout
    crit = layout.criteria
    if fit.method == "ML":
        for key in ("AIC", "BIC", "logLik", "deviance", "df.resid"):
            np.testing.assert_allclose(crit[key], ref["AICtab"][key], atol=1e-6)
        assert layout.title == "Linear mixed model fit by maximum likelihood"
    else:
        # lme4's "REML criterion at convergence" is -2 logLik of the REML fit
        np.testing.assert_allclose(crit["REML criterion"], -2 * ref["logLik"], atol=1e-6)
        assert layout.title == "Linear mixed model fit by REML"
    np.testing.assert_allclose(layout.residuals.to_numpy(), ref["resid_scaled_quantiles"], atol=1e-4)
    rnd = _random(layout)
    assert list(rnd["grp"]) == ref["varcorr"]["grp"]
    assert [None if pd.isna(v) else v for v in rnd["var1"]] == ref["varcorr"]["var1"]
    assert [None if pd.isna(v) else v for v in rnd["var2"]] == ref["varcorr"]["var2"]
    np.testing.assert_allclose(rnd["vcov"], ref["varcorr"]["vcov"], rtol=1e-4)
    # the correlation 0.08 is small: compare it on its own scale (its SE is 0.32)
    np.testing.assert_allclose(rnd["sdcor"], ref["varcorr"]["sdcor"], rtol=1e-4, atol=1e-4)
    assert layout.nobs == ref["nobs"] and layout.groups == ref["ngrps"]
    fixed, coef = layout.fixed, ref["coefficients"]
    assert list(fixed.index) == coef["names"]
    assert list(fixed.columns) == ["Estimate", "Std. Error", "t value"]  # lme4 prints no p-values for LMMs
    np.testing.assert_allclose(fixed["Estimate"], coef["Estimate"], rtol=1e-6)
    np.testing.assert_allclose(fixed["Std. Error"], coef["Std. Error"], rtol=1e-4)
    np.testing.assert_allclose(fixed["t value"], coef["t value"], rtol=1e-4)


def test_scaled_residuals_are_lme4s(sleep_ml, penicillin_ml):
    """All 180 (sleepstudy) and 144 (Penicillin, crossed) residuals, lme4's
    residuals(fit, type = "pearson", scaled = TRUE)."""
    np.testing.assert_allclose(scaled_residuals(sleep_ml), R["sleepstudy_ml"]["resid_scaled"], atol=1e-4)
    np.testing.assert_allclose(scaled_residuals(penicillin_ml), R["penicillin_ml"]["resid_scaled"], atol=1e-4)


def test_conditional_modes_solve_their_normal_equations(sleep_ml):
    """Identity: b maximises the joint density, so Z'(y - X beta - Z b) = sigma^2 G^{-1} b per
    Subject (G the 2 x 2 covariance of the term, nonsingular here)."""
    (b,) = conditional_modes(sleep_ml)
    t = sleep_ml.spec.terms[0]
    var = sleep_ml.params("var")
    G = np.array([[var.iloc[2], var.iloc[3]], [var.iloc[3], var.iloc[4]]])
    sigma2 = var.iloc[-1]
    beta = sleep_ml.params("natural").to_numpy()[sleep_ml.spec.fixed_index]
    resid = sleep_ml.spec.y - sleep_ml.spec.X @ beta - np.sum(t.z * b[t.codes], axis=1)
    for j in range(len(t.levels)):
        rows = t.codes == j
        lhs = t.z[rows].T @ resid[rows]
        np.testing.assert_allclose(lhs, sigma2 * np.linalg.solve(G, b[j]), rtol=1e-8, atol=1e-8 * np.abs(lhs).max())


def test_penicillin_crossed_summary(penicillin_ml):
    layout = penicillin_ml.summary().layout
    ref = R["penicillin_ml"]
    assert layout.groups == ref["ngrps"]  # {"plate": 24, "sample": 6}
    np.testing.assert_allclose(layout.random["vcov"], ref["varcorr"]["vcov"], rtol=1e-4)
    assert "Number of obs: 144, groups:  plate, 24; sample, 6" in str(penicillin_ml.summary())


def test_glmm_summary(cbpp_fit):
    """cbpp: lme4's criteria and VarCorr; the fixed-effect SEs are those of the exact Hessian
    (glmmTMB 1.1.5, tests/reference/cbpp_glmmtmb.json), not lme4's finite-difference ones."""
    layout = cbpp_fit.summary().layout
    ref = R["cbpp"]
    assert layout.title == "Generalized linear mixed model fit by maximum likelihood (Laplace Approximation)"
    assert layout.family == "binomial  ( logit )"
    for key in ("AIC", "BIC", "logLik", "deviance", "df.resid"):
        np.testing.assert_allclose(
            layout.criteria[key], ref["AICtab"][key], atol=1e-3
        )  # glmer's optimum: 1e-4 in logLik
    assert layout.residuals is None  # Pearson residuals of GLMMs are not computed
    np.testing.assert_allclose(layout.random["sdcor"], ref["varcorr"]["sdcor"], rtol=2e-3)  # glmer's theta tolerance
    assert list(layout.fixed.columns) == ["Estimate", "Std. Error", "z value", "Pr(>|z|)"]
    tmb = json.loads((REF / "cbpp_glmmtmb.json").read_text())
    V = np.array(tmb["vcov_full_beta_logsd"]["values"])
    np.testing.assert_allclose(layout.fixed["Std. Error"], np.sqrt(np.diag(V))[:4], rtol=1e-5)
    text = str(cbpp_fit.summary())
    assert " Family: binomial  ( logit )" in text and "Scaled residuals" not in text


# -- the printed layout ------------------------------------------------------------------------------
def test_summary_text_reads_like_lme4(sleep_ml):
    text = str(sleep_ml.summary())
    lines = text.splitlines()
    assert lines[0] == "Linear mixed model fit by maximum likelihood"
    assert lines[1] == "Formula: Reaction ~ Days + (Days | Subject)"
    # the sections in lme4's order, then ours
    order = [
        "AIC",
        "Scaled residuals:",
        "Random effects:",
        "Number of obs: 180, groups:  Subject, 18",
        "Fixed effects:",
        "All parameters (scale 'sd'",
        "Covariance of all parameters",
    ]
    at = [next(i for i, line in enumerate(lines) if line.strip().startswith(key)) for key in order]
    assert at == sorted(at)
    i = at[0]
    assert lines[i].split() == ["AIC", "BIC", "logLik", "deviance", "df.resid"]
    assert lines[i + 1].split() == ["1763.9", "1783.1", "-876.0", "1751.9", "174"]  # lme4's printed values
    rnd = lines[at[2] + 1 : at[3]]
    assert rnd[0].split() == ["Groups", "Name", "Variance", "Std.Dev.", "Corr"]
    assert rnd[1].split() == ["Subject", "(Intercept)", "565.52", "23.781"]
    assert rnd[2].split() == ["Days", "32.68", "5.717", "0.08"]  # lme4: 32.68 5.717 0.08
    assert rnd[3].split() == ["Residual", "654.94", "25.592"]
    fixed = lines[at[4] + 1 : at[4] + 4]
    assert fixed[0].split() == ["Estimate", "Std.", "Error", "t", "value"]
    assert fixed[1].split() == ["(Intercept)", "251.405", "6.632", "37.906"]  # lme4: 251.405 6.632 37.907
    assert fixed[2].split() == ["Days", "10.467", "1.502", "6.968"]


def test_summary_with_ddf_has_lmertest_columns(sleep_reml):
    """lmerTest 3.1-3's Satterthwaite table for the REML fit (df 17.000)."""
    s = sleep_reml.summary(ddf="satterthwaite")
    ref = R["sleepstudy_reml"]["satterthwaite"]
    fixed = s.layout.fixed
    assert list(fixed.columns) == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    np.testing.assert_allclose(fixed["df"], ref["df"], rtol=1e-4)
    np.testing.assert_allclose(fixed["Pr(>|t|)"], ref["Pr(>|t|)"], rtol=1e-3)
    assert "REML criterion at convergence: 1743.6" in str(s)


def test_summary_is_still_the_parameter_table(sleep_ml):
    s = sleep_ml.summary(vcov="CR1", scale="sd")
    assert isinstance(s, Summary) and isinstance(s, pd.DataFrame)
    assert list(s.columns) == ["Estimate", "Std. Error", "z value", "Pr(>|z|)", "2.5 %", "97.5 %"]
    assert list(s.index) == sleep_ml.labels("sd")
    # pandas operations give plain frames; to_string() is the table alone
    assert type(s.iloc[:2]) is pd.DataFrame and type(s.copy()) is pd.DataFrame
    assert s.to_string() == pd.DataFrame(s).to_string()
    back = pickle.loads(pickle.dumps(s))  # pickled as the plain table, without the fit
    assert type(back) is pd.DataFrame and back.equals(pd.DataFrame(s))
    robust = sleep_ml.sandwich("sd", adjust="CR1")
    np.testing.assert_allclose(s["Std. Error"], np.sqrt(np.diag(robust)), rtol=1e-12)
    np.testing.assert_allclose(s.layout.covariance.to_numpy(), robust.to_numpy(), rtol=1e-12)
    assert "cluster-robust CR1 sandwich, clustered by Subject" in str(s)


def test_print_fit_reads_like_lme4_print(sleep_ml):
    text = str(sleep_ml)
    assert text.startswith("Linear mixed model fit by maximum likelihood\nFormula: Reaction ~ Days + (Days | Subject)")
    assert "Random effects:" in text and "Fixed Effects:" in text
    assert "Number of obs: 180, groups:  Subject, 18" in text
    assert repr(sleep_ml).startswith("MixedFit(")  # repr unchanged


class _Checker(html.parser.HTMLParser):
    """Records the tags and fails on unbalanced ones."""

    def __init__(self):
        super().__init__()
        self.stack, self.tables, self.text = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag not in ("br",):
            self.stack.append(tag)
        self.tables += tag == "table"

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"

    def handle_data(self, data):
        self.text.append(data)


def _check_html(markup: str) -> _Checker:
    checker = _Checker()
    checker.feed(markup)
    checker.close()
    assert checker.stack == []
    return checker


def test_html_representations_render(sleep_ml):
    page = _check_html(sleep_ml.summary()._repr_html_())
    assert page.tables == 6  # criteria, residuals, random effects, fixed effects, all parameters, covariance
    text = " ".join(page.text)
    for piece in ("Random effects", "Fixed effects", "cor_Days.(Intercept)|Subject", "Covariance of all parameters"):
        assert piece in text
    page = _check_html(sleep_ml._repr_html_())
    assert page.tables == 3 and "Reaction ~ Days + (Days | Subject)" in " ".join(page.text)


def test_html_escapes_labels(sleepstudy):
    data = sleepstudy.assign(f=np.where(sleepstudy["Days"] > 4, "x<y", "z&w"))
    fit = pmv.lmm("Reaction ~ f + (1 | Subject)", data).fit()
    assert fit.labels("sd")[1] == "fz&w"
    for page in (fit.summary()._repr_html_(), fit._repr_html_()):
        _check_html(page)
        assert "fz&amp;w" in page and "fz&w" not in page


# -- tidy ---------------------------------------------------------------------------------------------
def test_tidy_columns_and_broom_mixed_rows(sleep_ml):
    td = sleep_ml.tidy()
    ref = R["sleepstudy_ml"]["tidy"]
    assert list(td.columns) == [c for c in COLUMNS if c != "df"]
    assert list(td["effect"]) == ref["effect"]
    assert [None if pd.isna(g) else g for g in td["group"]] == ref["group"]
    np.testing.assert_allclose(td["estimate"], ref["estimate"], rtol=1e-4, atol=1e-4)
    fixed = td["effect"] == "fixed"
    for ours, theirs in (
        ("std_error", "std.error"),
        ("statistic", "statistic"),
        ("conf_low", "conf.low"),
        ("conf_high", "conf.high"),
    ):
        np.testing.assert_allclose(td.loc[fixed, ours], np.asarray(ref[theirs], float)[fixed.to_numpy()], rtol=1e-4)
    # broom.mixed has no standard errors for ran_pars; ours are the full covariance's
    np.testing.assert_allclose(td["std_error"], sleep_ml.se("sd"), rtol=1e-12)
    assert td.loc[~fixed, "p_value"].isna().all() and td.loc[fixed, "p_value"].notna().all()
    assert (td["scale"] == "sd").all() and (td["vcov"] == "model").all()
    assert list(td["term"]) == sleep_ml.labels("sd")


def test_tidy_var_scale_is_broom_mixed_vcov(sleep_ml):
    """broom.mixed's tidy(effects = "ran_pars", scales = "vcov"): var__, cov__ and var__Observation."""
    td = sleep_ml.tidy(scale="var")
    ref = R["sleepstudy_ml"]["tidy_vcov"]
    rp = td[td["effect"] == "ran_pars"]
    np.testing.assert_allclose(rp["estimate"], ref["estimate"], rtol=1e-4)
    assert list(rp["group"]) == ref["group"]


def test_tidy_with_ddf_and_sandwich(sleep_reml, sleep_ml):
    td = sleep_reml.tidy(ddf="satterthwaite")
    ref = R["sleepstudy_reml"]["tidy_satterthwaite"]
    assert list(td.columns) == list(COLUMNS)
    fixed = (td["effect"] == "fixed").to_numpy()
    np.testing.assert_allclose(td.loc[fixed, "df"], np.asarray(ref["df"], float)[fixed], rtol=1e-4)
    np.testing.assert_allclose(td.loc[fixed, "p_value"], np.asarray(ref["p.value"], float)[fixed], rtol=1e-3)
    np.testing.assert_allclose(td.loc[fixed, "conf_low"], np.asarray(ref["conf.low"], float)[fixed], rtol=1e-4)
    assert td.loc[~fixed, "df"].isna().all()
    cr1 = sleep_ml.tidy(vcov="CR1", conf_level=0.9)
    np.testing.assert_allclose(cr1["std_error"], np.sqrt(np.diag(sleep_ml.sandwich("sd", adjust="CR1"))), rtol=1e-12)
    table = sleep_ml.summary(vcov="CR1", level=0.9)
    np.testing.assert_allclose(cr1["conf_low"], table["5 %"], rtol=1e-12)
    assert (cr1["vcov"] == "CR1").all()


def test_tidy_of_a_glmm_and_uncorrelated_blocks(cbpp_fit, sleepstudy):
    td = cbpp_fit.tidy()
    assert list(td["effect"]) == ["fixed"] * 4 + ["ran_pars"]
    assert list(td["group"])[-1] == "herd"
    u = pmv.lmm("Reaction ~ Days + (Days || Subject)", sleepstudy).fit()
    assert list(u.tidy()["group"])[2:] == ["Subject", "Subject.1", "Residual"]  # lme4's block names
    with pytest.raises(pmv.MixVcovError, match="unknown scale"):
        u.tidy(scale="log")
