"""lme4 syntax in the formula front end."""

import numpy as np
import pandas as pd
import pymc as pm

import pymc_mixvcov as pmv


def test_model_is_an_ordinary_pymc_model(sleepstudy):
    m = pmv.lmm("Reaction ~ Days + (Days | Subject)", sleepstudy)
    assert isinstance(m.model, pm.Model)
    assert m.random == ["u_Subject"]
    assert m.fixed_labels == ["(Intercept)", "Days"]
    # it evaluates like any PyMC model
    assert np.isfinite(m.model.compile_logp()(m.model.initial_point()))


def test_independent_terms_on_one_factor(sleepstudy):
    fit = pmv.lmm("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", sleepstudy).fit()
    assert fit.labels("var") == ["(Intercept)", "Days", "cov_Subject.(Intercept)", "cov_Subject.Days", "residual"]
    assert fit.labels("sd")[2:] == ["sd_(Intercept)|Subject", "sd_Days|Subject", "sigma"]
    # lme4 1.1-31: logLik(lmer(Reaction ~ Days + (1|Subject) + (0+Days|Subject), REML=FALSE)) = -876.0016
    np.testing.assert_allclose(fit.loglik, -876.0016, atol=1e-3)


def test_nested_and_interaction_factor():
    pastes = pmv.datasets.load("pastes")
    nested = pmv.lmm("strength ~ 1 + (1 | batch/cask)", pastes).fit()
    # lme4 names the inner factor cask:batch and puts it first (more levels)
    assert nested.labels("var")[1:] == ["cov_cask:batch.(Intercept)", "cov_batch.(Intercept)", "residual"]
    assert nested.n_clusters == 10  # one cluster per batch
    explicit = pmv.lmm("strength ~ 1 + (1 | batch) + (1 | batch:cask)", pastes).fit()
    np.testing.assert_allclose(explicit.loglik, nested.loglik, rtol=1e-10)
    # lme4 1.1-31: logLik(lmer(strength ~ 1 + (1|batch/cask), Pastes, REML=FALSE)) = -123.9972
    np.testing.assert_allclose(nested.loglik, -123.9972, atol=1e-3)


def test_categorical_fixed_effects_and_interactions():
    rng = np.random.default_rng(1)
    n, g = 240, 12
    df = pd.DataFrame(
        {
            "g": pd.Categorical(np.repeat([f"g{i}" for i in range(g)], n // g)),
            "f": pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["a", "b", "c"]),
            "x": rng.normal(size=n),
        }
    )
    df["y"] = 1 + df["x"] + (df["f"] == "b") + rng.normal(size=n) + np.repeat(rng.normal(size=g), n // g)
    m = pmv.lmm("y ~ x * f + (1 | g)", df)
    assert m.fixed_labels == ["(Intercept)", "x", "fb", "fc", "x:fb", "x:fc"]
    fit = m.fit()
    assert fit.converged
    # fixed effects are GLS at the variance estimates: equal to the generic optimum
    assert fit.vcov("var").shape == (8, 8)


def test_crossed_labels(penicillin_ml):
    assert penicillin_ml.labels("sd") == ["(Intercept)", "sd_(Intercept)|plate", "sd_(Intercept)|sample", "sigma"]
    assert penicillin_ml.n_clusters == 1
