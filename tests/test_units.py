"""Units, row order and cluster labels do not change the answer (property tests).

Under ``y -> k y`` a Gaussian log-likelihood changes by exactly ``-n log k`` (ML) or
``-(n - p) log k`` (REML: the flat prior on ``beta`` contributes ``k^p``), the fixed effects, SDs and
``sigma`` are multiplied by ``k`` and correlations stay; under ``x -> k x`` the log-likelihood is
unchanged and ``x``'s coefficient and random-effect SD are divided by ``k``. Reference values are
lme4 1.1-31's (tests/reference/sleepstudy_*.json). Tolerances: the optimiser stops at a Newton
decrement below 1e-6, so estimates agree to about 1e-6 relative; 1e-5 leaves room for the
conditioning of the rescaled problem. The log-likelihood is flat at the optimum: 1e-7 absolute
after the exact unit correction.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pymc as pm
import pytest
from conftest import reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pymc_mixvcov as pmv

FORMULA = "Reaction ~ Days + (Days | Subject)"
SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# sd-scale rows: (Intercept), Days, sd_(Intercept), cor, sd_Days, sigma
RESPONSE_POWER = np.array([1, 1, 1, 0, 1, 1])  # how each sd-scale parameter scales with y
DAYS_POWER = np.array([0, -1, 0, 0, -1, 0])  # ... and with Days


def _fit_quietly(model, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = model.fit(**kwargs)
    return fit, [w for w in caught if issubclass(w.category, (RuntimeWarning, pmv.MixVcovWarning))]


@pytest.fixture(scope="module")
def base_fits(sleepstudy):
    return {m: pmv.lmm(FORMULA, sleepstudy).fit(method=m) for m in ("ML", "REML")}


@SETTINGS
@given(exponent=st.floats(-9.0, 9.0), method=st.sampled_from(["ML", "REML"]))
def test_response_units(sleepstudy, base_fits, exponent, method):
    k = 10.0**exponent
    data = sleepstudy.assign(Reaction=sleepstudy["Reaction"] * k)
    fit, caught = _fit_quietly(pmv.lmm(FORMULA, data), method=method)
    assert fit.converged and not caught, [str(w.message) for w in caught]
    n, p = fit.nobs, 2
    corrected = fit.loglik + (n if method == "ML" else n - p) * np.log(k)
    ref = reference("sleepstudy_ml" if method == "ML" else "sleepstudy_reml")["logLik"]
    np.testing.assert_allclose(corrected, ref, rtol=0, atol=1e-6)  # lme4 1.1-31, R's optimiser tolerance
    base = base_fits[method].params("sd").to_numpy()
    np.testing.assert_allclose(fit.params("sd").to_numpy(), base * k**RESPONSE_POWER, rtol=1e-5)
    assert not fit.singular


@SETTINGS
@given(exponent=st.floats(-6.0, 6.0))
def test_predictor_units(sleepstudy, base_fits, exponent):
    k = 10.0**exponent
    data = sleepstudy.assign(Days=sleepstudy["Days"] * k)
    fit, caught = _fit_quietly(pmv.lmm(FORMULA, data), method="ML")
    assert fit.converged and not caught, [str(w.message) for w in caught]
    np.testing.assert_allclose(fit.loglik, reference("sleepstudy_ml")["logLik"], rtol=0, atol=1e-6)
    base = base_fits["ML"].params("sd").to_numpy()
    np.testing.assert_allclose(fit.params("sd").to_numpy(), base * k**DAYS_POWER, rtol=1e-5)
    assert not fit.singular


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_row_order_and_cluster_labels(sleepstudy, base_fits, seed):
    """Rows shuffled and subjects renamed (in another category order): the same fit, and the same
    cluster scores once matched by subject."""
    rng = np.random.default_rng(seed)
    old = list(sleepstudy["Subject"].cat.categories)
    new_names = {s: f"s{v}" for s, v in zip(old, rng.permutation(len(old)), strict=True)}
    data = sleepstudy.iloc[rng.permutation(len(sleepstudy))].reset_index(drop=True)
    data["Subject"] = pd.Categorical(
        data["Subject"].map(new_names).astype(str), categories=[new_names[s] for s in rng.permutation(old)]
    )
    fit, caught = _fit_quietly(pmv.lmm(FORMULA, data), method="ML")
    assert fit.converged and not caught
    base = base_fits["ML"]
    np.testing.assert_allclose(fit.loglik, base.loglik, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fit.params("sd").to_numpy(), base.params("sd").to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(fit.vcov("sd").to_numpy(), base.vcov("sd").to_numpy(), rtol=1e-4, atol=1e-10)
    scores = fit.scores(level="cluster")
    want = base.scores(level="cluster").rename(index=new_names).loc[scores.index]
    scale = np.max(np.abs(want.to_numpy()), axis=0)
    np.testing.assert_allclose(scores.to_numpy() / scale, want.to_numpy() / scale, rtol=0, atol=1e-4)


def _handwritten(data, k_y: float, k_days: float):
    subj = data["Subject"].cat.codes.to_numpy()
    days = data["Days"].to_numpy(float) * k_days
    coords = {"Subject": list(data["Subject"].cat.categories), "effect": ["(Intercept)", "Days"]}
    with pm.Model(coords=coords) as model:  # priors on the scale of the original units
        b = pm.Normal("b", 0, 100, shape=2)
        chol, _, _ = pm.LKJCholeskyCov("chol", n=2, eta=1.0, sd_dist=pm.HalfNormal.dist(50.0, shape=2))
        z = pm.Normal("z", 0.0, 1.0, dims=("Subject", "effect"))
        u = pm.Deterministic("u", z @ chol.T, dims=("Subject", "effect"))
        sigma = pm.HalfNormal("sigma", 50.0)
        pm.Normal("y", b[0] + b[1] * days + u[subj, 0] + u[subj, 1] * days, sigma,
                  observed=data["Reaction"].to_numpy() * k_y)  # fmt: skip
    return model


@pytest.mark.parametrize(("k_y", "k_days"), [(1e-5, 1.0), (1e5, 1.0), (1.0, 1e4), (1.0, 1e-4)])
def test_handwritten_priors_on_another_scale(sleepstudy, base_fits, k_y, k_days):
    """A hand-written model whose priors (and so PyMC's initial point) are on the original units."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = pmv.fit(_handwritten(sleepstudy, k_y, k_days), random=["z"], method="ML")
    caught = [w for w in caught if issubclass(w.category, (RuntimeWarning, pmv.MixVcovWarning))]
    assert fit.converged and not caught
    corrected = fit.loglik + fit.nobs * np.log(k_y)
    np.testing.assert_allclose(corrected, reference("sleepstudy_ml")["logLik"], rtol=0, atol=1e-6)
    powers = RESPONSE_POWER * np.log10(k_y) + DAYS_POWER * np.log10(k_days)
    base = base_fits["ML"].params("sd").to_numpy()
    np.testing.assert_allclose(fit.params("sd").to_numpy(), base * 10.0**powers, rtol=1e-5)


@pytest.fixture(scope="module")
def gamma_data():
    """A simulated Gamma GLMM with a log link and a random slope (30 clusters of 10)."""
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(30), 10)
    x = rng.normal(size=g.size)
    eta = 1.0 + 0.5 * x + rng.normal(0, 0.5, 30)[g] + rng.normal(0, 0.3, 30)[g] * x
    return pd.DataFrame(
        {
            "y": rng.gamma(3.0, np.exp(eta) / 3.0),
            "c": rng.poisson(np.exp(eta)),
            "x": x,
            "g": pd.Categorical(g.astype(str)),
        }
    )


@pytest.fixture(scope="module")
def gamma_base(gamma_data):
    return pmv.glmm("y ~ x + (x | g)", gamma_data, family="gamma").fit()


@pytest.mark.parametrize(("column", "k"), [("y", 1e-6), ("y", 1e6), ("x", 1e-4), ("x", 1e4)])
def test_gamma_glmm_units(gamma_data, gamma_base, column, k):
    """Gamma, log link: ``y -> k y`` shifts the intercept by ``log k`` and the log-likelihood by
    ``-n log k``; ``x -> k x`` divides ``x``'s coefficient and SD by ``k``. Rows of ``params("sd")``:
    (Intercept), x, sd_(Intercept), cor, sd_x, shape."""
    data = gamma_data.assign(**{column: gamma_data[column] * k})
    fit, caught = _fit_quietly(pmv.glmm("y ~ x + (x | g)", data, family="gamma"))
    assert fit.converged and not caught, [str(w.message) for w in caught]
    base = gamma_base.params("sd").to_numpy()
    if column == "y":
        np.testing.assert_allclose(fit.loglik + fit.nobs * np.log(k), gamma_base.loglik, rtol=0, atol=1e-7)
        want = base + np.array([np.log(k), 0, 0, 0, 0, 0])
    else:
        np.testing.assert_allclose(fit.loglik, gamma_base.loglik, rtol=0, atol=1e-7)
        want = base * k ** np.array([0, -1, 0, 0, -1, 0], float)
    np.testing.assert_allclose(fit.params("sd").to_numpy(), want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("k", [1e-4, 1e4])
def test_poisson_glmm_predictor_units(gamma_data, k):
    base = pmv.glmm("c ~ x + (x | g)", gamma_data, family="poisson").fit()
    fit, caught = _fit_quietly(pmv.glmm("c ~ x + (x | g)", gamma_data.assign(x=gamma_data["x"] * k), family="poisson"))
    assert fit.converged and not caught, [str(w.message) for w in caught]
    np.testing.assert_allclose(fit.loglik, base.loglik, rtol=0, atol=1e-7)
    powers = np.array([0, -1, 0, 0, -1], float)
    np.testing.assert_allclose(fit.params("sd").to_numpy(), base.params("sd").to_numpy() * k**powers, rtol=1e-5)


# -- fits that have no maximum are not reported as converged -------------------------------------
@pytest.fixture(scope="module")
def separated():
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(20), 10)
    x = rng.normal(size=g.size)
    return pd.DataFrame({"y": (x > 0).astype(int), "x": x, "g": pd.Categorical(g.astype(str))})


@pytest.mark.parametrize(("family", "response"), [("binomial", "separated"), ("poisson", "zero"), ("binomial", "zero")])
def test_drifting_estimates_are_not_converged(separated, family, response):
    """Complete separation (``y = [x > 0]``) or an all-zero response: the likelihood has no
    maximum, the estimates drift to infinity while the gradient vanishes."""
    data = separated if response == "separated" else separated.assign(y=0)
    with pytest.warns(pmv.ConvergenceWarning, match="separation"):
        fit = pmv.glmm("y ~ x + (1 | g)", data, family=family).fit()
    assert not fit.converged
    assert fit.message.startswith("not converged")


@pytest.mark.parametrize("response", ["constant", "linear"])
def test_exact_gaussian_response_is_refused(sleepstudy, response):
    y = 5.0 if response == "constant" else 2.0 + 3.0 * sleepstudy["Days"]
    with pytest.raises(pmv.MixVcovError, match="no maximum likelihood"):
        pmv.lmm("Reaction ~ Days + (1 | Subject)", sleepstudy.assign(Reaction=y)).fit()
