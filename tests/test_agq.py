"""Adaptive Gauss-Hermite quadrature (``nAGQ > 1``): values against numerical integration,
estimates against lme4's glmer, exact derivatives, and the cases it refuses.

References: tests/reference/cbpp_glmmtmb.json (lme4 1.1-31 glmer with nAGQ = 25), scipy's
adaptive quadrature (``integrate.quad`` / ``dblquad``) of each cluster's likelihood.
"""

import numpy as np
import pandas as pd
import pytest
from conftest import reference
from scipy import integrate, stats
from test_laplace import _check_exact_hessian

import pymc_mixvcov as pmv

FORMULA = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def cbpp():
    return pmv.datasets.load("cbpp")


@pytest.fixture(scope="module")
def agq25(cbpp):
    return pmv.glmm(FORMULA, cbpp, family="binomial").fit(nAGQ=25)


def test_agq25_equals_numerical_integration(cbpp, agq25):
    """Each herd's log-likelihood at the estimates equals scipy quad of
    ``prod_i Binom(k_i | n_i, logit^-1(x_i beta + u)) N(u | 0, sd^2)`` (relative tolerance 1e-11
    asked of quad; 25 Gauss-Hermite points integrate this smooth, near-Gaussian integrand to ~1e-12)."""
    est = agq25.params("sd").to_numpy()
    beta, sd = est[:4], est[4]
    X = pd.get_dummies(cbpp["period"], drop_first=True).to_numpy(float)
    X = np.column_stack([np.ones(len(cbpp)), X])
    want = []
    for herd in cbpp["herd"].cat.categories:
        r = (cbpp["herd"] == herd).to_numpy()
        eta, k, n = X[r] @ beta, cbpp["incidence"].to_numpy()[r], cbpp["size"].to_numpy()[r]

        def f(u, eta=eta, k=k, n=n):
            return np.exp(np.sum(stats.binom.logpmf(k, n, 1 / (1 + np.exp(-(eta + u))))) + stats.norm.logpdf(u, 0, sd))

        val, _ = integrate.quad(f, -12 * sd, 12 * sd, epsabs=0, epsrel=1e-11, limit=200)
        want.append(np.log(val))
    got = agq25.loglik_contributions().to_numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(agq25.loglik, np.sum(want), atol=1e-8)


def test_agq25_matches_lme4(cbpp, agq25):
    """lme4's glmer(nAGQ = 25) estimates agree to its optimiser's tolerance (measured 1e-5,
    allowed 5e-5). lme4's logLik for nAGQ > 1 is built from deviance residuals: it is the
    marginal log-likelihood minus the saturated model's ``sum_i log Binom(k_i | n_i, k_i / n_i)``;
    ours is the marginal log-likelihood itself."""
    ref = reference("cbpp_glmmtmb")["glmer_nAGQ25"]
    assert agq25.converged and agq25.nagq == 25
    est = agq25.params("sd").to_numpy()
    np.testing.assert_allclose(est, np.r_[ref["beta"], ref["theta"]], atol=5e-5)
    n, k = cbpp["size"].to_numpy(), cbpp["incidence"].to_numpy()
    saturated = np.sum(stats.binom.logpmf(k, n, k / n))
    # at estimates 1e-5 apart the log-likelihood differs at second order only (measured 1.7e-9)
    np.testing.assert_allclose(agq25.loglik - saturated, ref["logLik"], atol=1e-6)
    # AGQ moves the estimates away from Laplace's by more than the tolerance above
    lap = reference("cbpp_glmmtmb")["glmer_nAGQ1"]
    assert abs(ref["theta"] - lap["theta"]) > 1e-3


def test_agq25_exact_derivatives_and_scores(agq25):
    """Hessian equals central differences of the exact gradient; cluster scores sum to ~0."""
    _check_exact_hessian(agq25)
    S = agq25.scores("cluster", "natural").to_numpy()
    se = np.sqrt(np.diag(agq25.vcov("natural")))
    assert np.max(np.abs(S.sum(0)) * se) < 1e-4


def test_vector_random_effects_agq_equals_2d_integration(poisson_slope_data):
    """``(x | g)`` with 11 points per dimension (121 nodes): each cluster's log-likelihood equals
    scipy dblquad of the Poisson likelihood times the bivariate normal density (1e-7: the product
    rule's error here; the total log-likelihood moves by 5e-7 from 11 to 21 points)."""
    fit = pmv.glmm("y ~ x + (x | g)", poisson_slope_data, family="poisson").fit(nAGQ=11)
    assert fit.converged
    beta = fit.params("sd").to_numpy()[:2]
    var = fit.params("var")
    cov = np.array(
        [
            [var["cov_g.(Intercept)"], var["cov_g.x.(Intercept)"]],
            [var["cov_g.x.(Intercept)"], var["cov_g.x"]],
        ]
    )
    assert list(var.index[2:]) == ["cov_g.(Intercept)", "cov_g.x.(Intercept)", "cov_g.x"]
    mvn = stats.multivariate_normal(np.zeros(2), cov)
    sd = np.sqrt(np.diag(cov))
    want = []
    for j in poisson_slope_data["g"].cat.categories:
        d = poisson_slope_data[poisson_slope_data["g"] == j]
        x, y = d["x"].to_numpy(), d["y"].to_numpy()

        def f(b, a, x=x, y=y):
            lam = np.exp(beta[0] + beta[1] * x + a + b * x)
            return np.exp(np.sum(stats.poisson.logpmf(y, lam)) + mvn.logpdf([a, b]))

        val, _ = integrate.dblquad(f, -9 * sd[0], 9 * sd[0], -9 * sd[1], 9 * sd[1], epsabs=0, epsrel=1e-10)
        want.append(np.log(val))
    np.testing.assert_allclose(fit.loglik_contributions().to_numpy(), want, rtol=0, atol=1e-7)
    _check_exact_hessian(fit)


# -- bad input -------------------------------------------------------------------------------------
def test_agq_refuses_crossed_gaussian_and_bad_values(cbpp):
    df = cbpp.assign(obs=pd.Categorical(np.arange(len(cbpp))))
    crossed = pmv.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)", df, family="binomial")
    with pytest.raises(pmv.MixVcovError, match="nAGQ=5: .*one grouping factor.*herd, obs"):
        crossed.fit(nAGQ=5)
    m = pmv.glmm(FORMULA, cbpp, family="binomial")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(pmv.MixVcovError, match="nAGQ must be a positive integer"):
            m.fit(nAGQ=bad)
    ss = pmv.datasets.load("sleepstudy")
    with pytest.raises(pmv.MixVcovError, match="Gaussian marginal likelihood is integrated exactly"):
        pmv.lmm("Reaction ~ Days + (1 | Subject)", ss).fit(nAGQ=3)
