"""Bad input gets a clear error or a warning that names the parameter."""

import numpy as np
import pandas as pd
import pymc as pm
import pytest

import pymc_mixvcov as pmv


def test_missing_values_named(sleepstudy):
    d = sleepstudy.copy()
    d.loc[[3, 17], "Days"] = np.nan
    with pytest.raises(pmv.MixVcovError, match=r"column 'Days' has 2 missing .* rows \[3, 17\]"):
        pmv.lmm("Reaction ~ Days + (Days | Subject)", d)


def test_infinite_values_named(sleepstudy):
    d = sleepstudy.copy()
    d.loc[5, "Reaction"] = np.inf
    with pytest.raises(pmv.MixVcovError, match="column 'Reaction'"):
        pmv.lmm("Reaction ~ Days + (Days | Subject)", d)


def test_unknown_column(sleepstudy):
    with pytest.raises(pmv.MixVcovError, match=r"\['Dayz'\] that are not in the data"):
        pmv.lmm("Reaction ~ Dayz + (1 | Subject)", sleepstudy)


def test_single_level_factor(sleepstudy):
    d = sleepstudy.assign(one="a")
    with pytest.raises(pmv.MixVcovError, match="'one' has a single level"):
        pmv.lmm("Reaction ~ Days + (1 | one)", d)


def test_no_random_term(sleepstudy):
    with pytest.raises(pmv.MixVcovError, match="no random-effect term"):
        pmv.lmm("Reaction ~ Days", sleepstudy)


def test_unknown_scale_and_information(sleep_ml):
    with pytest.raises(pmv.MixVcovError, match="valid scales are: 'sd', 'var', 'cholesky', 'natural'"):
        sleep_ml.vcov(scale="variance")
    with pytest.raises(pmv.MixVcovError, match="valid values are: 'observed', 'expected'"):
        sleep_ml.vcov(information="fisher")
    with pytest.raises(pmv.MixVcovError, match="valid methods are: 'ML', 'REML'"):
        pmv.lmm("Reaction ~ Days + (1 | Subject)", pmv.datasets.load("sleepstudy")).fit(method="MLE")


def test_reml_of_non_gaussian_model():
    with pm.Model(coords={"g": list("abcdef")}) as model:
        sd = pm.HalfNormal("sd", 1.0)
        u = pm.Normal("u", 0, sd, dims="g")
        b = pm.Normal("b", 0, 1)
        pm.Poisson("y", pm.math.exp(b + u[np.repeat(np.arange(6), 5)]), observed=np.arange(30) % 4)
    with pytest.raises(pmv.MixVcovError, match="REML is defined for Gaussian likelihoods only"):
        pmv.fit(model, random=["u"], method="REML")


def test_singular_fit_warns_and_names_parameter():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(10), 8)
    y = rng.normal(size=g.size)
    y = y - pd.Series(y).groupby(g).transform("mean").to_numpy()  # no between-group variation at all
    df = pd.DataFrame({"y": y, "g": pd.Categorical(g)})
    with pytest.warns(pmv.SingularFitWarning, match=r"sd_\(Intercept\)\|g"):
        fit = pmv.lmm("y ~ 1 + (1 | g)", df).fit()
    assert fit.singular
    np.testing.assert_allclose(fit.params("sd")["sd_(Intercept)|g"], 0.0, atol=1e-8)
    V = fit.vcov("sd")
    assert np.isnan(V.loc["sd_(Intercept)|g", "sd_(Intercept)|g"])
    # the others are computed with the boundary parameter held at 0: finite
    assert np.isfinite(V.loc["sigma", "sigma"]) and np.isfinite(V.loc["(Intercept)", "(Intercept)"])


def test_random_name_not_in_model(sleepstudy):
    m = pmv.lmm("Reaction ~ Days + (1 | Subject)", sleepstudy)
    with pytest.raises(pmv.MixVcovError, match="'v' in `random` is not a free variable"):
        pmv.fit(m.model, random=["v"])
