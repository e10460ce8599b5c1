"""Bad input gets a clear error or a warning that names the parameter."""

import numpy as np
import pandas as pd
import pymc as pm
import pytest
from conftest import reference

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


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # PyMC's cast of 1e19
def test_count_beyond_integer_range_refused():
    # a float count of 1e19 does not fit int64 (it used to become -2**63 silently)
    cbpp = pmv.datasets.load("cbpp")
    big = cbpp.assign(incidence=cbpp["incidence"].astype(float))
    big.loc[3, "incidence"] = 1e19
    with pytest.raises(pmv.MixVcovError, match=r"response 'incidence': 1 row\(s\) .*below 2\*\*63.*rows \[3\]"):
        pmv.glmm("incidence ~ period + (1 | herd)", big, family="poisson")
    with pytest.raises(pmv.MixVcovError, match=r"response 'cbind\(incidence, size\)'.*below 2\*\*63.*rows \[3\]"):
        pmv.glmm("cbind(incidence, size) ~ period + (1 | herd)", big, family="binomial")
    # the same count in a model written by hand: PyMC has cast it already; the cast value is refused
    with pm.Model(coords={"g": list("abcdef")}) as model:
        sd = pm.HalfNormal("sd", 1.0)
        u = pm.Normal("u", 0, sd, dims="g")
        b = pm.Normal("b", 0, 1)
        counts = (np.arange(30) % 4).astype(float)
        counts[7] = 1e19
        pm.Poisson("y", pm.math.exp(b + u[np.repeat(np.arange(6), 5)]), observed=counts)
    with pytest.raises(pmv.MixVcovError, match=r"observed variable 'y' holds -9223372036854775808 at rows \[7\]"):
        pmv.fit(model, random=["u"])


def test_model_without_fixed_effects(sleepstudy):
    # lme4 1.1-31: logLik(lmer(Reaction ~ 0 + (1 | Subject), sleepstudy, REML = FALSE)) = -992.839845471499,
    # SDs 300.505237400923 and 44.2590690372944 (generate_factors.R); at an optimum the log-likelihood
    # is flat to first order (1e-6), the SDs agree to the optimisers' tolerance (1e-5 relative)
    ref = reference("factor_coding")["sleepstudy_no_fixed_ml"]
    fit = pmv.lmm("Reaction ~ 0 + (1 | Subject)", sleepstudy).fit("ML")
    assert fit.labels("sd") == ["sd_(Intercept)|Subject", "sigma"]
    np.testing.assert_allclose(fit.loglik, ref["logLik"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fit.params("sd").to_numpy(), [ref["sd1"], ref["sd2"]], rtol=1e-5)


def test_data_must_be_a_data_frame(sleepstudy):
    with pytest.raises(
        pmv.MixVcovError, match=r"data must be a data frame \(pandas, polars, \.\.\.\), got dict \(build one"
    ):
        pmv.lmm("Reaction ~ Days + (1 | Subject)", sleepstudy.to_dict("list"))
    with pytest.raises(pmv.MixVcovError, match=r"data must be a data frame \(pandas, polars, \.\.\.\), got dict"):
        pmv.glmm("incidence ~ period + (1 | herd)", pmv.datasets.load("cbpp").to_dict("list"), family="poisson")


def test_fit_names_the_expected_types(sleepstudy):
    m = pmv.lmm("Reaction ~ Days + (1 | Subject)", sleepstudy)
    with pytest.raises(pmv.MixVcovError, match="model must be a pymc.Model, got DataFrame"):
        pmv.fit(sleepstudy, random=["u_Subject"])
    with pytest.raises(pmv.MixVcovError, match=r"model must be a pymc.Model, got MixedModel; pass its .model"):
        pmv.fit(m, random=["u_Subject"])
    with pytest.raises(pmv.MixVcovError, match="random must be a list of variable names"):
        pmv.fit(m.model, random="u_Subject")
    with pytest.raises(pmv.MixVcovError, match=r"data must be a data frame \(pandas, polars, \.\.\.\), got dict"):
        pmv.fit(m.model, random=["u_Subject"], data={"Subject": sleepstudy["Subject"]})


def test_nullable_dtypes_work_as_numpy(sleepstudy):
    # the same numbers in pandas' nullable dtypes give the same fit (up to rounding order: 1e-10)
    nullable = sleepstudy.assign(
        Days=sleepstudy["Days"].astype("Int64"), Reaction=sleepstudy["Reaction"].astype("Float64")
    )
    formula = "Reaction ~ Days + (Days | Subject)"
    np.testing.assert_allclose(
        pmv.lmm(formula, nullable).fit().loglik, pmv.lmm(formula, sleepstudy).fit().loglik, rtol=1e-10
    )
    late = sleepstudy.assign(late=sleepstudy["Days"] > 4)
    as_boolean = late.assign(late=late["late"].astype("boolean"))
    for f in ("late ~ Reaction + (1 | Subject)", "Reaction ~ late + (1 | Subject)"):
        build = (lambda d, f=f: pmv.glmm(f, d)) if f.startswith("late") else (lambda d, f=f: pmv.lmm(f, d))
        np.testing.assert_allclose(build(as_boolean).fit().loglik, build(late).fit().loglik, rtol=1e-10)
    cbpp = pmv.datasets.load("cbpp")
    counts = cbpp.assign(incidence=cbpp["incidence"].astype("Int64"))
    np.testing.assert_allclose(
        pmv.glmm("incidence ~ period + (1 | herd)", counts, family="poisson").fit().loglik,
        pmv.glmm("incidence ~ period + (1 | herd)", cbpp, family="poisson").fit().loglik,
        rtol=1e-10,
    )


def test_misspelled_function_is_named(sleepstudy):
    with pytest.raises(pmv.MixVcovError, match="unknown function or variable 'lgo'"):
        pmv.lmm("Reaction ~ lgo(Days) + (1 | Subject)", sleepstudy)
    with pytest.raises(pmv.MixVcovError, match="unknown function or variable 'lg'") as err:
        pmv.glmm("incidence ~ lg(size) + (1 | herd)", pmv.datasets.load("cbpp"), family="poisson")
    assert "'incidence ~ lg(size) + (1 | herd)'" in str(err.value)


def test_internal_names_never_shown():
    cbpp = pmv.datasets.load("cbpp")
    with pytest.raises(pmv.MixVcovError, match=r"\['perod'\] that are not in the data") as err:
        pmv.glmm("incidence ~ perod + (1 | herd)", cbpp, family="poisson")
    assert "response__" not in str(err.value)
    assert "'incidence ~ perod + (1 | herd)'" in str(err.value)


def test_row_numbers_print_as_integers(sleepstudy):
    cbpp = pmv.datasets.load("cbpp")
    gaps = cbpp.assign(incidence=cbpp["incidence"].astype(float).where(~cbpp.index.isin([4, 9])))
    with pytest.raises(pmv.MixVcovError, match=r"at rows \[4, 9\]$"):
        pmv.glmm("incidence ~ period + (1 | herd)", gaps, family="poisson")
    negative = cbpp.assign(incidence=cbpp["incidence"].where(~cbpp.index.isin([2, 5]), -1))
    with pytest.raises(pmv.MixVcovError, match=r"rows \[2, 5\]$"):
        pmv.glmm("incidence ~ period + (1 | herd)", negative, family="poisson")
    d = sleepstudy.copy()
    d.index = d.index + 100  # positions, not the index labels, are reported
    d.loc[[103, 107], "Days"] = np.nan
    with pytest.raises(pmv.MixVcovError, match=r"rows \[3, 7\];"):
        pmv.lmm("Reaction ~ Days + (1 | Subject)", d)


def test_missing_cluster_rows_print_as_integers(sleep_ml):
    labels = pd.Series(np.arange(180) % 9, dtype=float).where(lambda s: ~s.index.isin([2, 5]))
    with pytest.raises(pmv.MixVcovError, match=r"\(rows \[2, 5\]\)"):
        sleep_ml.sandwich(cluster=labels)


def test_call_with_a_literal_argument(sleepstudy):
    # formulae lists the literal 2 of I(Days**2) as a variable named "": not a missing column.
    # lme4 1.1-31: lmer(Reaction ~ Days + I(Days^2) + (1 | Subject), REML = FALSE) (generate_factors.R);
    # log-likelihood at an optimum: 1e-6; fixed effects are GLS at the variance estimates: 1e-5 relative
    ref = reference("factor_coding")["sleepstudy_quadratic_ml"]
    fit = pmv.lmm("Reaction ~ Days + I(Days**2) + (1 | Subject)", sleepstudy).fit("ML")
    np.testing.assert_allclose(fit.loglik, ref["logLik"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fit.params("var").iloc[:3], ref["estimate"], rtol=1e-5)


def test_fit_without_random_names_it():
    with pm.Model() as model:
        pm.Normal("y", pm.Normal("b", 0, 1), 1, observed=np.zeros(3))
    with pytest.raises(pmv.MixVcovError, match="random is missing"):
        pmv.fit(model)
