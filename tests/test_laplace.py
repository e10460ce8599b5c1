"""Non-Gaussian likelihoods of hand-written PyMC models: the Laplace engine.

Checks that need no external reference:
* a Gaussian likelihood written as ``pm.CustomDist`` goes through the Laplace engine, where the
  approximation is exact (the integrand is Gaussian in the random effects), so it must reproduce
  the exact LMM fit: log-likelihood and full covariance (lme4 1.1-31 logLik -875.969672 for ML);
* the Laplace log-likelihood of a Student-t model agrees with numerical integration (scipy
  ``quad``) of each cluster's likelihood to the accuracy of the Laplace approximation;
* the symbolic gradient and Hessian equal central differences of the criterion and of the
  gradient (test only), and the scores sum to ~0 at the optimum.
"""

import numpy as np
import pymc as pm
import pytest
import scipy.stats as st
from conftest import scaled_error
from scipy import integrate

import pymc_mixvcov as pmv


@pytest.fixture(scope="module")
def ss():
    d = pmv.datasets.load("sleepstudy")
    return d, d["Subject"].cat.codes.to_numpy(), d["Days"].to_numpy(float), d["Reaction"].to_numpy(float)


def _check_exact_hessian(fit):
    """The symbolic observed information equals central differences of the exact gradient (test
    only; O(h^2) truncation, inner modes solved to 1e-10), and the gradient is ~0 at the optimum."""
    nat = fit.params("natural").to_numpy()
    fns = fit._functions
    A = fit.information("observed").to_numpy()
    fd = np.empty_like(A)
    for i in range(nat.size):
        h = 1e-5 * max(abs(nat[i]), 1.0)
        e = np.zeros_like(nat)
        e[i] = h
        fd[:, i] = -(fns.value(nat + e)[1] - fns.value(nat - e)[1]) / (2 * h)
    dd = np.sqrt(np.outer(np.diag(A), np.diag(A)))
    np.testing.assert_allclose(fd / dd, A / dd, atol=1e-5)
    se = np.sqrt(np.diag(fit.vcov("natural")))
    assert np.max(np.abs(fns.value(nat)[1]) * se) < 1e-4


def _normal_logp(value, mu, sigma):
    return -0.5 * ((value - mu) / sigma) ** 2 - pm.math.log(sigma) - 0.5 * np.log(2 * np.pi)


@pytest.fixture(scope="module")
def custom_fit(ss):
    d, subj, days, y = ss
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        b = pm.Normal("b", 0, 100, shape=2)
        sd = pm.HalfNormal("sd", 50.0)
        u = pm.Normal("u", 0.0, sd, dims="Subject")
        sigma = pm.HalfNormal("sigma", 50.0)
        pm.CustomDist("y", b[0] + b[1] * days + u[subj], sigma, logp=_normal_logp, observed=y)
    return pmv.fit(model, random=["u"])


def test_custom_gaussian_likelihood_reproduces_the_exact_fit(custom_fit, ss):
    exact = pmv.lmm("Reaction ~ Days + (1 | Subject)", ss[0]).fit("ML")
    assert custom_fit.spec.family != "gaussian"  # went through the Laplace engine
    assert custom_fit.converged
    np.testing.assert_allclose(custom_fit.loglik, exact.loglik, rtol=1e-9)
    # natural parameters of both models: b[0], b[1], sd, sigma in the same order
    got, want = custom_fit.vcov("natural").to_numpy(), exact.vcov("natural").to_numpy()
    assert np.max(scaled_error(got, want)) < 1e-5
    assert custom_fit.labels("sd") == ["b[0]", "b[1]", "sd_u|Subject", "sigma"]


def test_custom_scores_and_sandwich(custom_fit, ss):
    exact = pmv.lmm("Reaction ~ Days + (1 | Subject)", ss[0]).fit("ML")
    S = custom_fit.scores("cluster", "natural").to_numpy()
    se = np.sqrt(np.diag(custom_fit.vcov("natural")))
    assert np.max(np.abs(S.sum(0)) * se) < 1e-4
    np.testing.assert_allclose(S, exact.scores("cluster", "natural").to_numpy(), rtol=1e-4, atol=1e-6 * np.abs(S).max())
    for adjust in ("CR1", "CR3"):
        got = custom_fit.sandwich("natural", adjust=adjust).to_numpy()
        want = exact.sandwich("natural", adjust=adjust).to_numpy()
        assert np.max(scaled_error(got, want)) < 1e-4, adjust
    with pytest.raises(pmv.MixVcovError, match="casewise decomposition.*fitted by the cluster Laplace engine"):
        custom_fit.scores(level="observation")
    with pytest.raises(pmv.MixVcovError, match="expected information is available for Gaussian models only"):
        custom_fit.vcov(information="expected")


@pytest.fixture(scope="module")
def student(ss):
    d, subj, days, y = ss
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        b = pm.Normal("b", 0, 100, shape=2)
        sd = pm.HalfNormal("sd", 50.0)
        u = pm.Normal("u", 0.0, sd, dims="Subject")
        sigma = pm.HalfNormal("sigma", 50.0)
        pm.StudentT("y", nu=4.0, mu=b[0] + b[1] * days + u[subj], sigma=sigma, observed=y)
    return model


def test_student_t_fit_and_exact_hessian(student, ss):
    fit = pmv.fit(student, random=["u"])
    assert fit.converged
    _check_exact_hessian(fit)
    nat = fit.params("natural").to_numpy()
    # Laplace against numerical integration of three clusters' likelihoods at the estimate
    d_, subj, days, y = ss
    b0, b1, sd, sigma = nat
    ll = fit.loglik_contributions().to_numpy()
    for c in range(3):
        m = subj == c
        top = np.sum(st.t.logpdf(y[m], 4.0, loc=b0 + b1 * days[m], scale=sigma))

        def f(u, m=m, top=top):
            return np.exp(np.sum(st.t.logpdf(y[m], 4.0, loc=b0 + b1 * days[m] + u, scale=sigma)) - top)

        val, _ = integrate.quad(lambda u, f=f: f(u) * st.norm.pdf(u, 0, sd), -8 * sd, 8 * sd, limit=200)
        # the Laplace error for 10 t-distributed observations per cluster: well below 0.05
        np.testing.assert_allclose(ll[c], np.log(val) + top, atol=0.05)


def test_potential_likelihood_reproduces_the_exact_fit(ss):
    """The likelihood as pm.Potential(name, terms.sum()): Laplace is exact for Gaussian terms."""
    d, subj, days, y = ss
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        b = pm.Normal("b", 0, 100, shape=2)
        sd = pm.HalfNormal("sd", 50.0)
        u = pm.Normal("u", 0.0, sd, dims="Subject")
        sigma = pm.HalfNormal("sigma", 50.0)
        pm.Potential("loglik", _normal_logp(y, b[0] + b[1] * days + u[subj], sigma).sum())
    fit = pmv.fit(model, random=["u"])
    exact = pmv.lmm("Reaction ~ Days + (1 | Subject)", d).fit("ML")
    np.testing.assert_allclose(fit.loglik, exact.loglik, rtol=1e-9)
    assert np.max(scaled_error(fit.vcov("natural").to_numpy(), exact.vcov("natural").to_numpy())) < 1e-5


def test_custom_likelihood_hessian_equals_finite_differences(custom_fit):
    _check_exact_hessian(custom_fit)


def test_binomial_glmm_matches_lme4_laplace():
    """cbpp, cbind(incidence, size - incidence) ~ period + (1 | herd), written by hand.

    Reference: tests/reference/cbpp_binomial.json (lme4 1.1-31 glmer, Laplace): logLik
    -92.0265663895303 (binomial constants included), beta, theta. An independent Laplace
    computation (scipy's scalar minimiser for each herd's mode, the closed-form Hessian
    1 + sd^2 sum n p (1 - p)) gives -92.0262862 at lme4's own estimates, 2.8e-4 above the logLik
    lme4 prints for them (its penalised IRLS stops early), so lme4's value is matched within
    5e-4 and its estimates within 1e-3; the independent computation within 1e-7.
    """
    from conftest import reference
    from scipy import optimize, special, stats

    ref = reference("cbpp_binomial")
    d = pmv.datasets.load("cbpp")
    herd = d["herd"].cat.codes.to_numpy()
    period = d["period"].cat.codes.to_numpy()
    X = np.eye(4)[period]
    X[:, 0] = 1.0
    with pm.Model(
        coords={"herd": list(d["herd"].cat.categories), "fixed": ["(Intercept)", "period2", "period3", "period4"]}
    ) as model:
        beta = pm.Normal("beta", 0, 5, dims="fixed")
        sd = pm.HalfNormal("sd", 2.0)
        u = pm.Normal("u", 0.0, sd, dims="herd")
        pm.Binomial(
            "y", n=d["size"].to_numpy(), logit_p=pm.math.dot(X, beta) + u[herd], observed=d["incidence"].to_numpy()
        )
    fit = pmv.fit(model, random=["u"])
    assert fit.converged and fit.spec.family == "Binomial"
    np.testing.assert_allclose(fit.loglik, ref["logLik"], atol=5e-4)
    nat = fit.params("natural").to_numpy()
    np.testing.assert_allclose(nat[:4], ref["beta"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fit.params("sd")["sd_u|herd"], ref["theta"], rtol=1e-3)
    y, size = d["incidence"].to_numpy(), d["size"].to_numpy()
    total = 0.0
    for h in range(15):
        m = herd == h
        eta0 = X[m] @ nat[:4]

        def negh(v, m=m, eta0=eta0):
            return -(stats.binom.logpmf(y[m], size[m], special.expit(eta0 + nat[4] * v)).sum() - 0.5 * v**2)

        r = optimize.minimize_scalar(negh, bounds=(-10, 10), method="bounded", options={"xatol": 1e-12})
        p = special.expit(eta0 + nat[4] * r.x)
        total += -r.fun - 0.5 * np.log(1 + nat[4] ** 2 * np.sum(size[m] * p * (1 - p)))
    np.testing.assert_allclose(fit.loglik, total, atol=1e-7)
    S = fit.scores("cluster", "natural").to_numpy()
    se = np.sqrt(np.diag(fit.vcov("natural")))
    assert np.max(np.abs(S.sum(0)) * se) < 1e-4


def _count_model(family: str):
    """Simulated grouped data (seeded) for the count and positive families."""
    rng = np.random.default_rng(7)
    G, m = 30, 12
    g = np.repeat(np.arange(G), m)
    x = rng.normal(size=G * m)
    eta = 0.5 + 0.4 * x + rng.normal(0, 0.6, size=G)[g]
    if family == "poisson":
        y = rng.poisson(np.exp(eta))
    elif family == "negbin":
        y = rng.negative_binomial(3.0, 3.0 / (3.0 + np.exp(eta)))
    else:
        y = rng.gamma(4.0, np.exp(eta) / 4.0)
    with pm.Model(coords={"g": [f"g{i}" for i in range(G)]}) as model:
        b = pm.Normal("b", 0, 5, shape=2)
        sd = pm.HalfNormal("sd", 2.0)
        u = pm.Normal("u", 0.0, sd, dims="g")
        mu = pm.math.exp(b[0] + b[1] * x + u[g])
        if family == "poisson":
            pm.Poisson("y", mu, observed=y)
        elif family == "negbin":
            alpha = pm.HalfNormal("alpha", 10.0)
            pm.NegativeBinomial("y", mu=mu, alpha=alpha, observed=y)
        else:
            shape = pm.HalfNormal("shape", 10.0)
            pm.Gamma("y", alpha=shape, beta=shape / mu, observed=y)
    return model


def test_poisson_glmm():
    fit = pmv.fit(_count_model("poisson"), random=["u"])
    assert fit.converged and fit.spec.family == "Poisson"
    _check_exact_hessian(fit)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["negbin", "gamma"])
def test_negative_binomial_and_gamma_glmms(family):
    fit = pmv.fit(_count_model(family), random=["u"])
    assert fit.converged
    _check_exact_hessian(fit)
    # the dispersion / shape parameter is a likelihood parameter, reported as it is on every scale
    assert fit.labels("var")[-1] == ("alpha" if family == "negbin" else "shape")
