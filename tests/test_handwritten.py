"""Hand-written PyMC models through pmv.fit: the same fit as the formula path and as lme4/merDeriv.

References: tests/reference/sleepstudy_ml.json (lme4 1.1-31, merDeriv 0.2-4). Tolerances as in
test_lmm_reference.py: 2e-3 after scaling by sqrt(v_ii v_jj) against merDeriv; agreement
between two fits of the same model by this package is limited only by where the optimiser
stops (Newton decrement < 1e-6), so 1e-5 relative there.
"""

import numpy as np
import pandas as pd
import pymc as pm
import pytest
from conftest import ref_matrix, reference, scaled_error

import pymc_mixvcov as pmv


@pytest.fixture(scope="module")
def ss():
    d = pmv.datasets.load("sleepstudy")
    subj = d["Subject"].cat.codes.to_numpy()
    return d, subj, d["Days"].to_numpy(float), d["Reaction"].to_numpy(float)


def _coords(d):
    return {
        "Subject": list(d["Subject"].cat.categories),
        "effect": ["(Intercept)", "Days"],
        "fixed": ["(Intercept)", "Days"],
    }


def centred(d, subj, days, y):
    with pm.Model(coords=_coords(d)) as model:
        beta = pm.Normal("beta", 0, 100, dims="fixed")
        chol, _, _ = pm.LKJCholeskyCov("chol", n=2, eta=1.0, sd_dist=pm.HalfNormal.dist(50.0, shape=2))
        u = pm.MvNormal("u", mu=np.zeros(2), chol=chol, dims=("Subject", "effect"))
        sigma = pm.HalfNormal("sigma", 50.0)
        mu = beta[0] + beta[1] * days + u[subj, 0] + u[subj, 1] * days
        pm.Normal("y", mu, sigma, observed=y)
    return model


def noncentred(d, subj, days, y):
    with pm.Model(coords=_coords(d)) as model:
        beta = pm.Normal("beta", 0, 100, dims="fixed")
        chol, _, _ = pm.LKJCholeskyCov("chol", n=2, eta=1.0, sd_dist=pm.HalfNormal.dist(50.0, shape=2))
        z = pm.Normal("z", 0.0, 1.0, dims=("Subject", "effect"))
        u = pm.Deterministic("u", z @ chol.T, dims=("Subject", "effect"))
        sigma = pm.HalfNormal("sigma", 50.0)
        mu = beta[0] + beta[1] * days + u[subj, 0] + u[subj, 1] * days
        pm.Normal("y", mu, sigma, observed=y)
    return model


@pytest.fixture(scope="module")
def formula_fit(ss):
    return pmv.lmm("Reaction ~ Days + (Days | Subject)", ss[0]).fit("ML")


@pytest.fixture(scope="module")
def centred_fit(ss):
    return pmv.fit(centred(*ss), random=["u"], method="ML")


@pytest.fixture(scope="module")
def noncentred_fit(ss):
    return pmv.fit(noncentred(*ss), random=["z"], method="ML")


def test_centred_matches_formula_and_merderiv(centred_fit, formula_fit):
    np.testing.assert_allclose(centred_fit.loglik, -875.969672244495, atol=1e-6)  # lme4 logLik
    np.testing.assert_allclose(centred_fit.params("var").to_numpy(), formula_fit.params("var").to_numpy(), rtol=1e-5)
    got = centred_fit.vcov("var").to_numpy()
    want = ref_matrix(reference("sleepstudy_ml"), "merDeriv_vcov_observed_var").to_numpy()
    assert np.max(scaled_error(got, want)) < 2e-3
    assert np.max(scaled_error(got, formula_fit.vcov("var").to_numpy())) < 1e-5
    # labels: the model's own names, with the effect coordinates
    assert centred_fit.labels("var") == [
        "beta[(Intercept)]",
        "beta[Days]",
        "cov_Subject.(Intercept)",
        "cov_Subject.Days.(Intercept)",
        "cov_Subject.Days",
        "residual",
    ]
    # the natural scale of the same model equals the formula path's natural scale (same parameterisation)
    assert np.max(scaled_error(centred_fit.vcov("natural").to_numpy(), formula_fit.vcov("natural").to_numpy())) < 1e-5


def test_noncentred_gives_the_same_fit(noncentred_fit, centred_fit):
    np.testing.assert_allclose(noncentred_fit.loglik, centred_fit.loglik, rtol=1e-10)
    np.testing.assert_allclose(
        noncentred_fit.params("natural").to_numpy(), centred_fit.params("natural").to_numpy(), rtol=1e-5
    )
    for scale in ("natural", "unconstrained", "var", "sd"):
        got, want = noncentred_fit.vcov(scale).to_numpy(), centred_fit.vcov(scale).to_numpy()
        assert np.max(scaled_error(got, want)) < 1e-5, scale
    # the covariance is read from the deterministic u: its name and coordinates label the scales
    assert noncentred_fit.labels("sd")[2:5] == [
        "sd_(Intercept)|Subject",
        "cor_Days.(Intercept)|Subject",
        "sd_Days|Subject",
    ]


def test_independent_intercept_and_slope(ss):
    """(1 | Subject) + (0 + Days | Subject) written as two scalar random variables."""
    d, subj, days, y = ss
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        b0 = pm.Normal("b0", 0, 100)
        b1 = pm.Normal("b1", 0, 100)
        sd0 = pm.HalfNormal("sd0", 50.0)
        sd1 = pm.HalfNormal("sd1", 50.0)
        u0 = pm.Normal("u0", 0.0, sd0, dims="Subject")
        u1 = pm.Normal("u1", 0.0, sd1, dims="Subject")
        sigma = pm.HalfNormal("sigma", 50.0)
        pm.Normal("y", b0 + b1 * days + u0[subj] + u1[subj] * days, sigma, observed=y)
    fit = pmv.fit(model, random=["u0", "u1"])
    ref = pmv.lmm("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", d).fit("ML")
    np.testing.assert_allclose(fit.loglik, ref.loglik, rtol=1e-10)
    assert np.max(scaled_error(fit.vcov("var").to_numpy(), ref.vcov("var").to_numpy())) < 1e-5
    assert fit.labels("sd") == ["b0", "b1", "sd_u0|Subject", "sd_u1|Subject", "sigma"]
    # scores and sandwich through the same path
    np.testing.assert_allclose(
        fit.sandwich("var", adjust="CR1").to_numpy(), ref.sandwich("var", adjust="CR1").to_numpy(), rtol=1e-4
    )


def test_noncentred_sd_times_z(ss):
    d, subj, days, y = ss
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        b = pm.Normal("b", 0, 100, shape=2)
        sd = pm.HalfNormal("sd", 50.0)
        z = pm.Normal("z", 0.0, 1.0, dims="Subject")
        u = pm.Deterministic("u", z * sd, dims="Subject")
        sigma = pm.HalfNormal("sigma", 50.0)
        pm.Normal("y", b[0] + b[1] * days + u[subj], sigma, observed=y)
    fit = pmv.fit(model, random=["z"])
    ref = pmv.lmm("Reaction ~ Days + (1 | Subject)", d).fit("ML")
    np.testing.assert_allclose(fit.loglik, ref.loglik, rtol=1e-10)
    assert np.max(scaled_error(fit.vcov("sd").to_numpy(), ref.vcov("sd").to_numpy())) < 1e-5


def test_cluster_argument_is_the_default_of_sandwich(ss, centred_fit):
    d = ss[0]
    fit = pmv.fit(centred(*ss), random=["u"], cluster=d["Subject"].to_numpy())
    np.testing.assert_allclose(
        fit.sandwich("var", adjust="CR1").to_numpy(), centred_fit.sandwich("var", adjust="CR1").to_numpy(), rtol=1e-6
    )


# -- bad input ------------------------------------------------------------------------------------------
def test_random_name_not_a_free_variable(ss):
    with pytest.raises(pmv.MixVcovError, match="'v' in `random` is not a free variable"):
        pmv.fit(centred(*ss), random=["v"])


def test_random_variable_not_zero_mean_normal(ss):
    d, subj, days, y = ss
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        u = pm.StudentT("u", nu=4, mu=0, sigma=10, dims="Subject")
        pm.Normal("y", 250 + u[subj], 20.0, observed=y)
    with pytest.raises(pmv.MixVcovError, match="'u' has a StudentT prior.*zero-mean Normal or MvNormal"):
        pmv.fit(model, random=["u"])


def test_discrete_free_variable(ss):
    d, subj, days, y = ss
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        k = pm.Poisson("k", 3.0)
        sd = pm.HalfNormal("sd", 10.0)
        u = pm.Normal("u", 0, sd, dims="Subject")
        pm.Normal("y", 250 + k + u[subj], 20.0, observed=y)
    with pytest.raises(pmv.MixVcovError, match="'k' is discrete"):
        pmv.fit(model, random=["u"])


def test_random_variable_unused_by_the_likelihood(ss):
    d, subj, days, y = ss
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        sd = pm.HalfNormal("sd", 10.0)
        u = pm.Normal("u", 0, sd, dims="Subject")
        pm.Normal("v", 0, sd, dims="Subject")
        pm.Normal("y", 250 + u[subj], 20.0, observed=y)
    with pytest.raises(pmv.MixVcovError, match="'v' is not used by the likelihood"):
        pmv.fit(model, random=["u", "v"])


@pytest.mark.filterwarnings("ignore:Data in y contains missing values")
def test_observed_with_missing_values(ss):
    d, subj, days, y = ss
    y = y.copy()
    y[[3, 7]] = np.nan
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        sd = pm.HalfNormal("sd", 10.0)
        u = pm.Normal("u", 0, sd, dims="Subject")
        pm.Normal("y", 250 + u[subj], 20.0, observed=y)
    with pytest.raises(pmv.MixVcovError, match="missing values.*imput"):
        pmv.fit(model, random=["u"])


def test_no_observed_variable():
    with pm.Model(coords={"g": ["a", "b"]}) as model:
        sd = pm.HalfNormal("sd", 1.0)
        pm.Normal("u", 0, sd, dims="g")
    with pytest.raises(pmv.MixVcovError, match="no observed variable"):
        pmv.fit(model, random=["u"])


def test_random_variable_without_grouping_dimension(ss):
    d, subj, days, y = ss
    with pm.Model() as model:
        sd = pm.HalfNormal("sd", 10.0)
        u = pm.Normal("u", 0, sd, shape=18)
        pm.Normal("y", 250 + u[subj], 20.0, observed=y)
    with pytest.raises(pmv.MixVcovError, match="'u' has no grouping dimension"):
        pmv.fit(model, random=["u"])


def test_reml_of_non_gaussian_likelihood():
    with pm.Model(coords={"g": list("abcdef")}) as model:
        b = pm.Normal("b", 0, 1)
        sd = pm.HalfNormal("sd", 1.0)
        u = pm.Normal("u", 0, sd, dims="g")
        pm.Poisson("y", pm.math.exp(b + u[np.repeat(np.arange(6), 5)]), observed=np.arange(30) % 4)
    with pytest.raises(pmv.MixVcovError, match="REML is defined for Gaussian likelihoods only"):
        pmv.fit(model, random=["u"], method="REML")


def test_data_frame_not_needed_but_columns_need_one(centred_fit):
    with pytest.raises(pmv.MixVcovError, match="has no data frame"):
        centred_fit.sandwich(cluster="Subject")
    assert isinstance(centred_fit.scores("cluster"), pd.DataFrame)


def test_map_keeps_the_priors(ss, centred_fit):
    """MAP: the marginal posterior mode. With these weak priors it lies near the MLE, its
    log-likelihood is below the maximum, and its criterion's gradient (likelihood + prior) is 0."""
    fit = pmv.fit(centred(*ss), random=["u"], method="MAP")
    assert fit.converged and fit.method == "MAP"
    assert fit.loglik <= centred_fit.loglik + 1e-9
    ml, mp = centred_fit.params("sd"), fit.params("sd")
    se = centred_fit.se("sd")
    # the priors move each estimate by a fraction of its standard error
    assert np.all(np.abs(mp - ml) < 0.5 * se)
    info = fit._functions.information(fit.params("natural").to_numpy())
    sd = np.sqrt(np.diag(fit.vcov("natural")))
    assert np.max(np.abs(info["grad"]) * sd) < 1e-4
    # the MAP sandwich (tests/test_map_sandwich.py): the likelihood's scores, centred, sum to zero
    S = fit.scores("cluster", "natural").to_numpy()
    A = fit.information().to_numpy()
    Ainv = np.linalg.inv(A)
    Sc = S - S.mean(axis=0)
    want = 18 / 17 * Ainv @ Sc.T @ Sc @ Ainv  # CR1 with G = 18 subjects; same formula, so round-off only
    np.testing.assert_allclose(fit.sandwich("natural").to_numpy(), want, rtol=1e-8, atol=1e-10 * np.abs(want).max())


def test_potential_is_refused(ss):
    d, subj, days, y = ss
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        sd = pm.HalfNormal("sd", 10.0)
        u = pm.Normal("u", 0, sd, dims="Subject")
        pm.Normal("y", 250 + u[subj], 20.0, observed=y)
        pm.Potential("penalty", -sd)
    with pytest.raises(pmv.MixVcovError, match="pm.Potential terms \\(penalty\\)"):
        pmv.fit(model, random=["u"])


def test_crossed_random_effects_by_hand():
    """Penicillin, (1 | plate) + (1 | sample) written by hand: the same fit as the formula path."""
    d = pmv.datasets.load("penicillin")
    plate, sample = d["plate"].cat.codes.to_numpy(), d["sample"].cat.codes.to_numpy()
    coords = {"plate": list(d["plate"].cat.categories), "sample": list(d["sample"].cat.categories)}
    with pm.Model(coords=coords) as model:
        b = pm.Normal("b", 20, 10)
        sp = pm.HalfNormal("sd_plate", 5.0)
        ss_ = pm.HalfNormal("sd_sample", 5.0)
        up = pm.Normal("up", 0, sp, dims="plate")
        us = pm.Normal("us", 0, ss_, dims="sample")
        sigma = pm.HalfNormal("sigma", 5.0)
        pm.Normal("y", b + up[plate] + us[sample], sigma, observed=d["diameter"].to_numpy(float))
    fit = pmv.fit(model, random=["up", "us"])
    ref = pmv.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", d).fit("ML")
    np.testing.assert_allclose(fit.loglik, ref.loglik, rtol=1e-10)
    assert np.max(scaled_error(fit.vcov("var").to_numpy(), ref.vcov("var").to_numpy())) < 1e-5
    assert fit.n_clusters == 1


def test_noncentred_without_deterministic_is_explained(ss):
    d, subj, days, y = ss
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        sd = pm.HalfNormal("sd", 10.0)
        z = pm.Normal("z", 0, 1, dims="Subject")
        pm.Normal("y", 250 + z[subj] * sd, 20.0, observed=y)
    with pytest.raises(pmv.MixVcovError, match="noncentered=\\{'z': 'u'\\}"):
        pmv.fit(model, random=["z"])


def test_hand_built_covariance(ss, formula_fit):
    """MvNormal(cov=...) with a covariance built from two SDs and a correlation (Uniform(-1, 1))."""
    d, subj, days, y = ss
    with pm.Model(coords=_coords(d)) as model:
        beta = pm.Normal("beta", 0, 100, dims="fixed")
        sds = pm.HalfNormal("sds", 50.0, shape=2)
        rho = pm.Uniform("rho", -1, 1)
        cov = pm.math.stack([[sds[0] ** 2, rho * sds[0] * sds[1]], [rho * sds[0] * sds[1], sds[1] ** 2]])
        u = pm.MvNormal("u", mu=np.zeros(2), cov=cov, dims=("Subject", "effect"))
        sigma = pm.HalfNormal("sigma", 50.0)
        pm.Normal("y", beta[0] + beta[1] * days + u[subj, 0] + u[subj, 1] * days, sigma, observed=y)
    fit = pmv.fit(model, random=["u"])
    np.testing.assert_allclose(fit.loglik, formula_fit.loglik, rtol=1e-10)
    assert np.max(scaled_error(fit.vcov("sd").to_numpy(), formula_fit.vcov("sd").to_numpy())) < 1e-5
    # the model's own parameters: rho is the correlation
    np.testing.assert_allclose(
        fit.params("natural")["rho"], formula_fit.params("sd")["cor_Days.(Intercept)|Subject"], rtol=1e-5
    )
