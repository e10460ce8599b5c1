"""bambi models: ``pmv.fit(bambi_model)`` reads the model's terms, family and link.

bambi is an optional dependency (``pip install pymc-mixvcov[bambi]``); these tests are skipped
where it is not installed. Measured with bambi 0.21: ``(Days | Subject)`` is built as
uncorrelated terms (each column its own SD), which is lme4's ``(Days || Subject)``; the
reference values are lme4 1.1-31's (tests/reference/uncorrelated.json, made by
generate_uncorrelated.R).
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import reference

import pymc_mixvcov as pmv

bmb = pytest.importorskip("bambi")

SD_LABELS = ["(Intercept)", "Days", "sd_(Intercept)|Subject", "sd_Days|Subject", "sigma"]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # bambi's own deprecation notices
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def sleep_bambi(sleepstudy):
    return _quiet(bmb.Model, "Reaction ~ Days + (Days | Subject)", sleepstudy)


@pytest.fixture(scope="module")
def cbpp():
    data = pmv.datasets.load("cbpp")
    return data.assign(p=data["period"].astype(float) - 2.5)  # as in generate_uncorrelated.R


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_bambi_sleepstudy_equals_double_bar(sleepstudy, sleep_bambi, method):
    ref = reference("uncorrelated")[f"sleepstudy_{method.lower()}"]
    got = pmv.fit(sleep_bambi, method=method)
    want = pmv.lmm("Reaction ~ Days + (Days || Subject)", sleepstudy).fit(method)
    assert got.converged
    assert got.labels("sd") == want.labels("sd") == SD_LABELS
    # the same likelihood, the same graph, the same optimiser: equal to rounding
    np.testing.assert_allclose(got.loglik, want.loglik, atol=1e-9)
    np.testing.assert_allclose(got.params("sd"), want.params("sd"), rtol=1e-7)
    v, w = got.vcov("sd").to_numpy(), want.vcov("sd").to_numpy()
    np.testing.assert_allclose(v, w, rtol=1e-6, atol=1e-9 * np.abs(w).max())
    if method == "ML":  # sandwiches are defined for ML fits
        s, t = got.sandwich("sd", adjust="CR1").to_numpy(), want.sandwich("sd", adjust="CR1").to_numpy()
        np.testing.assert_allclose(s, t, rtol=1e-6, atol=1e-9 * np.abs(t).max())
    # and lme4's (Days || Subject): tolerances as in test_uncorrelated.py (lme4's optimiser stops
    # within about 1e-5 relative of the optimum; the logLik is flat there)
    np.testing.assert_allclose(got.loglik, ref["logLik"], atol=1e-6)
    np.testing.assert_allclose(got.params("sd").iloc[:2], ref["beta"], rtol=1e-6)
    np.testing.assert_allclose(got.params("sd").iloc[2:], ref["sdcor"], rtol=1e-4)


def test_bambi_intercept_is_uncentred(sleepstudy, sleep_bambi):
    """bambi centres the common predictors (its Intercept is the mean response at mean(Days));
    the fit reports lme4's intercept, Intercept_bambi - mean(Days) * Days."""
    assert sleep_bambi.center_predictors
    _quiet(sleep_bambi.build)
    # bambi's own graph, fitted as it is: its Intercept is the centred one
    raw = pmv.fit(sleep_bambi.backend.model, random=["1|Subject_offset", "Days|Subject_offset"])
    got = pmv.fit(sleep_bambi)
    np.testing.assert_allclose(raw.loglik, got.loglik, atol=1e-8)  # the same likelihood
    b_raw, b = raw.params("sd"), got.params("sd")
    np.testing.assert_allclose(b_raw["Days"], b["Days"], rtol=1e-7)
    centred = b["(Intercept)"] + sleepstudy["Days"].mean() * b["Days"]  # 251.405 + 4.5 * 10.467
    np.testing.assert_allclose(b_raw["Intercept"], centred, rtol=1e-8)
    assert abs(b_raw["Intercept"] - b["(Intercept)"]) > 40  # the two intercepts differ by 47.1
    np.testing.assert_allclose(b["(Intercept)"], reference("uncorrelated")["sleepstudy_ml"]["beta"][0], rtol=1e-6)
    # bambi's own graph: its labels, its non-centred terms read through the deterministics x|g
    assert [t.effects for t in raw.spec.terms] == [["1|Subject"], ["Days|Subject"]]
    # the same model without centring: the same fit
    plain = _quiet(bmb.Model, "Reaction ~ Days + (Days | Subject)", sleepstudy, center_predictors=False)
    np.testing.assert_allclose(pmv.fit(plain).params("sd"), b, rtol=1e-7)


def test_bambi_binomial_equals_glmm(cbpp):
    ref = reference("uncorrelated")["cbpp_ml"]
    model = _quiet(bmb.Model, "p(incidence, size) ~ p + (p | herd)", cbpp, family="binomial")
    got = pmv.fit(model)
    want = pmv.glmm("cbind(incidence, size - incidence) ~ p + (p || herd)", cbpp).fit()
    assert got.converged
    assert got.labels("sd") == want.labels("sd") == ["(Intercept)", "p", "sd_(Intercept)|herd", "sd_p|herd"]
    np.testing.assert_allclose(got.loglik, want.loglik, atol=1e-9)
    np.testing.assert_allclose(got.params("sd"), want.params("sd"), rtol=1e-6)
    np.testing.assert_allclose(got.vcov("sd").to_numpy(), want.vcov("sd").to_numpy(), rtol=1e-6)
    # lme4's glmer (Laplace): tolerances as in test_uncorrelated.py
    np.testing.assert_allclose(got.loglik, ref["logLik"], atol=1e-5)
    np.testing.assert_allclose(got.params("sd").iloc[2:], ref["sdcor"], rtol=1e-4)


def test_bambi_factor_labels(cbpp):
    """bambi's ``period[2]`` is lme4's ``period2``."""
    model = _quiet(bmb.Model, "p(incidence, size) ~ period + (1 | herd)", cbpp, family="binomial")
    got = pmv.fit(model)
    want = pmv.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp).fit()
    assert got.labels("sd") == want.labels("sd")
    assert got.labels("sd")[1:4] == ["period2", "period3", "period4"]
    np.testing.assert_allclose(got.loglik, want.loglik, atol=1e-9)
    np.testing.assert_allclose(got.params("sd"), want.params("sd"), rtol=1e-6)
    # lme4 1.1-31, glmer(cbind(incidence, size - incidence) ~ period + (1 | herd)): -92.02657, 2.8e-4 below
    # the Laplace value at its own estimates (see test_glmm.py); 5e-4 as there
    np.testing.assert_allclose(got.loglik, reference("cbpp_binomial")["logLik"], atol=5e-4)


def test_bambi_bernoulli_equals_glmm(cbpp):
    """A 0/1 response (bambi's bernoulli family): cbpp's counts as one row per animal."""
    rows = cbpp.loc[cbpp.index.repeat(cbpp["size"])].reset_index(drop=True)
    k = rows.groupby(["herd", "period"], observed=True).cumcount()
    rows = rows.assign(y=(k < rows["incidence"]).astype(int))
    model = _quiet(bmb.Model, "y ~ p + (p | herd)", rows, family="bernoulli")
    got = pmv.fit(model)
    want = pmv.glmm("y ~ p + (p || herd)", rows).fit()
    assert got.labels("sd") == want.labels("sd") == ["(Intercept)", "p", "sd_(Intercept)|herd", "sd_p|herd"]
    np.testing.assert_allclose(got.loglik, want.loglik, atol=1e-9)
    np.testing.assert_allclose(got.params("sd"), want.params("sd"), rtol=1e-6)
    # the same estimates as the aggregated binomial model (lme4's, tests/reference/uncorrelated.json)
    np.testing.assert_allclose(got.params("sd").iloc[2:], reference("uncorrelated")["cbpp_ml"]["sdcor"], rtol=1e-4)


def test_bambi_factor_in_group_term_is_one_block_per_column(sleepstudy):
    """bambi's (0 + f | g) gives each level of f its own SD and no correlation: lme4's
    (0 + f1 | g) + (0 + f2 | g) with indicator columns."""
    early = (sleepstudy["Days"] < 5).to_numpy()
    d = sleepstudy.assign(
        late=pd.Categorical(np.where(early, "early", "late")), e=early.astype(float), l=(~early).astype(float)
    )
    got = pmv.fit(_quiet(bmb.Model, "Reaction ~ Days + (0 + late | Subject)", d))
    want = pmv.lmm("Reaction ~ Days + (0 + e | Subject) + (0 + l | Subject)", d).fit()
    assert got.labels("sd")[2:4] == ["sd_lateearly|Subject", "sd_latelate|Subject"]  # lme4's names of f's columns
    np.testing.assert_allclose(got.loglik, want.loglik, atol=1e-9)
    np.testing.assert_allclose(got.params("sd").to_numpy(), want.params("sd").to_numpy(), rtol=1e-7)
    assert got.posterior_names["sd_Subject.1"] == [("late|Subject_sigma", 1)]


def test_bambi_poisson_with_offset(cbpp):
    model = _quiet(bmb.Model, "incidence ~ period + offset(np.log(size)) + (1 | herd)", cbpp, family="poisson")
    got = pmv.fit(model)
    want = pmv.glmm("incidence ~ period + offset(log(size)) + (1 | herd)", cbpp, family="poisson").fit()
    assert got.labels("sd") == want.labels("sd")
    np.testing.assert_allclose(got.loglik, want.loglik, atol=1e-9)
    np.testing.assert_allclose(got.params("sd").to_numpy(), want.params("sd").to_numpy(), rtol=1e-6)


def test_bambi_cluster_option(sleepstudy, sleep_bambi):
    """pmv.fit(bambi_model, cluster=...) sets the default clusters of the sandwich."""
    by_days = pmv.fit(sleep_bambi, cluster="Days", data=sleepstudy)
    plain = pmv.fit(sleep_bambi)
    np.testing.assert_allclose(by_days.loglik, plain.loglik, atol=1e-12)
    want = plain.sandwich("sd", adjust="CR0", cluster="Days").to_numpy()
    np.testing.assert_allclose(by_days.sandwich("sd", adjust="CR0").to_numpy(), want, rtol=1e-12)
    assert not np.allclose(want, plain.sandwich("sd", adjust="CR0").to_numpy())  # Days is not the default


def test_bambi_map_and_arguments_refused(sleep_bambi):
    with pytest.raises(pmv.MixVcovError, match="bambi's own graph"):
        pmv.fit(sleep_bambi, method="MAP")
    with pytest.raises(pmv.MixVcovError, match="without random"):
        pmv.fit(sleep_bambi, random=["1|Subject_offset"])


def test_bambi_unsupported_models_refused(sleepstudy):
    t_model = _quiet(bmb.Model, "Reaction ~ Days + (1 | Subject)", sleepstudy, family="t")
    with pytest.raises(pmv.MixVcovError, match="family 't' is not supported"):
        pmv.fit(t_model)
    student = _quiet(
        bmb.Model,
        "Reaction ~ Days + (1 | Subject)",
        sleepstudy,
        priors={"1|Subject": bmb.Prior("StudentT", nu=4, mu=0, sigma=bmb.Prior("HalfNormal", sigma=10))},
    )
    with pytest.raises(pmv.MixVcovError, match="must be Normal"):
        pmv.fit(student)
    collinear = _quiet(bmb.Model, "Reaction ~ Days + D2 + (1 | Subject)", sleepstudy.assign(D2=2 * sleepstudy["Days"]))
    with pytest.raises(pmv.MixVcovError, match=r"rank deficient: column\(s\) \['D2'\]"):
        pmv.fit(collinear)
    distributional = _quiet(bmb.Model, bmb.Formula("Reaction ~ Days + (1 | Subject)", "sigma ~ Days"), sleepstudy)
    with pytest.raises(pmv.MixVcovError, match="own predictors"):
        pmv.fit(distributional)


def test_compare_pairs_bambi_posterior(sleep_bambi):
    """pmv.compare pairs bambi's posterior (Intercept, Days, 1|Subject_sigma, ...) with the fit's
    parameters; bambi reports its Intercept uncentred after sampling, as the fit does."""
    fit = pmv.fit(sleep_bambi)
    idata = _quiet(sleep_bambi.fit, draws=200, tune=200, chains=2, random_seed=3, progressbar=False, cores=1)
    table = pmv.compare(fit, idata)
    assert list(table.index) == SD_LABELS
    post = idata["posterior"]
    sources = ["Intercept", "Days", "1|Subject_sigma", "Days|Subject_sigma", "sigma"]
    for label, name in zip(SD_LABELS, sources, strict=True):
        # the same draws: equal to rounding
        np.testing.assert_allclose(table.loc[label, "posterior_mean"], float(post[name].mean()), rtol=1e-12)
        np.testing.assert_allclose(table.loc[label, "posterior_sd"], float(post[name].std(ddof=1)), rtol=1e-10)
    # the uncentred intercept on both sides: the posterior mean is near the ML estimate (251.4,
    # posterior SD about 7), not near bambi's centred intercept (298.5)
    row = table.loc["(Intercept)"]
    assert abs(row["posterior_mean"] - row["estimate"]) < 2 * row["posterior_sd"]
    with pytest.raises(pmv.MixVcovError, match="lacks the bambi model's variable"):
        pmv.compare(fit, post.to_dataset().drop_vars("Days"))
