"""Derived quantities: fit.derived, fit.icc, fit.mor.

References: tests/reference/inference_icc.json and inference_mor.json (glmmTMB 1.1.5, numDeriv
2016.8-1.1, by generate_derived.R): the delta-method SE of the ICC (sleepstudy ``(1 | Subject)``,
ML) and of the median odds ratio (cbpp, binomial) from numDeriv's gradient and glmmTMB's
``vcov(full = TRUE)``. The delta method does not depend on the parameterisation, so glmmTMB's
(log-SD) scale and our sd scale give the same SE. Tolerances: estimates 1e-5 relative (the two
optima agree to about 1e-6); SEs 1e-3 relative, since glmmTMB's covariance inverts a Hessian
that ``optimHess`` forms by finite differences of TMB's gradient, good to about 1e-4 (measured
here: 7e-7 for both). Everything else is checked against closed forms with the fit's own
covariance, to rounding.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytensor.tensor as pt
import pytest
from conftest import reference
from scipy.stats import norm

import pymc_mixvcov as pmv
from pymc_mixvcov.errors import MixVcovError

SD_INT = "sd_(Intercept)|Subject"


@pytest.fixture(scope="module")
def sleep_ri(sleepstudy):
    return pmv.lmm("Reaction ~ Days + (1 | Subject)", sleepstudy).fit("ML")


# -- anchors ------------------------------------------------------------------------------------------
def test_icc_sleepstudy_matches_glmmtmb(sleep_ri):
    ref = reference("inference_icc")
    got = sleep_ri.icc()
    assert list(got.index) == ["ICC"] and list(got.columns) == ["estimate", "se"]
    np.testing.assert_allclose(got.loc["ICC", "estimate"], ref["icc"], rtol=1e-5)
    np.testing.assert_allclose(got.loc["ICC", "se"], ref["se"], rtol=1e-3)
    # the closed form from the estimates
    p = sleep_ri.params("sd")
    np.testing.assert_allclose(
        got.loc["ICC", "estimate"], p[SD_INT] ** 2 / (p[SD_INT] ** 2 + p["sigma"] ** 2), rtol=1e-12
    )


def test_mor_cbpp_matches_glmmtmb(cbpp_fit):
    ref = reference("inference_mor")
    got = cbpp_fit.mor()
    np.testing.assert_allclose(got.loc["MOR", "estimate"], ref["mor"], rtol=1e-5)
    np.testing.assert_allclose(got.loc["MOR", "se"], ref["se"], rtol=1e-3)
    # closed form: d MOR / d s = MOR sqrt(2) Phi^-1(0.75), so se(MOR) = MOR sqrt(2) Phi^-1(0.75) se(s)
    s, se_s = cbpp_fit.params("sd").iloc[-1], cbpp_fit.se("sd").iloc[-1]
    mor = np.exp(np.sqrt(2) * s * norm.ppf(0.75))
    np.testing.assert_allclose(got.loc["MOR", "estimate"], mor, rtol=1e-12)
    np.testing.assert_allclose(got.loc["MOR", "se"], mor * np.sqrt(2) * norm.ppf(0.75) * se_s, rtol=1e-10)


def test_icc_of_a_logit_glmm_is_on_the_latent_scale(cbpp_fit):
    """Residual variance pi^2/3 (standard logistic); se from the closed-form derivative in s."""
    s, se_s = cbpp_fit.params("sd").iloc[-1], cbpp_fit.se("sd").iloc[-1]
    r = np.pi**2 / 3
    got = cbpp_fit.icc()
    np.testing.assert_allclose(got.loc["ICC", "estimate"], s**2 / (s**2 + r), rtol=1e-12)
    np.testing.assert_allclose(got.loc["ICC", "se"], 2 * s * r / (s**2 + r) ** 2 * se_s, rtol=1e-10)


def test_adjusted_icc_of_crossed_intercepts(penicillin_ml):
    """Nakagawa et al. (2017): all random-effect variance over that plus the residual variance."""
    v = penicillin_ml.params("var")
    num = v["cov_plate.(Intercept)"] + v["cov_sample.(Intercept)"]
    got = penicillin_ml.icc(level=0.9)
    np.testing.assert_allclose(got.loc["ICC", "estimate"], num / (num + v["residual"]), rtol=1e-12)
    # the same function written on the var scale: the delta method is invariant to the scale
    same = penicillin_ml.derived(
        lambda p: (
            (p["cov_plate.(Intercept)"] + p["cov_sample.(Intercept)"])
            / (p["cov_plate.(Intercept)"] + p["cov_sample.(Intercept)"] + p["residual"])
        ),
        scale="var",
    )
    np.testing.assert_allclose(got["se"].to_numpy(), same["se"].to_numpy(), rtol=1e-8)
    q = norm.ppf(0.95)
    np.testing.assert_allclose(got["lower"], got["estimate"] - q * got["se"], rtol=1e-14)
    np.testing.assert_allclose(got["upper"], got["estimate"] + q * got["se"], rtol=1e-14)


# -- derived: closed forms with the fit's own covariance ------------------------------------------------
def test_linear_function_equals_the_vcov_combination(sleep_ml):
    c = pd.Series({"(Intercept)": 1.0, "Days": 10.0, "sigma": -0.5, "cor_Days.(Intercept)|Subject": 3.0})
    got = sleep_ml.derived(lambda p: sum(w * p[k] for k, w in c.items()))
    V = sleep_ml.vcov("sd").loc[c.index, c.index].to_numpy()
    est = sleep_ml.params("sd")[c.index].to_numpy()
    assert list(got.index) == ["fn"]
    np.testing.assert_allclose(got["estimate"].iloc[0], c.to_numpy() @ est, rtol=1e-14)
    np.testing.assert_allclose(got["se"].iloc[0], np.sqrt(c.to_numpy() @ V @ c.to_numpy()), rtol=1e-12)


def test_vector_function_rows_and_names(sleep_ml):
    se = sleep_ml.se("sd")
    labels = [SD_INT, "sigma", "Days"]
    got = sleep_ml.derived(lambda p: [p[k] for k in labels])
    assert list(got.index) == ["fn[0]", "fn[1]", "fn[2]"]
    np.testing.assert_allclose(got["se"].to_numpy(), se[labels].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(got["estimate"].to_numpy(), sleep_ml.params("sd")[labels].to_numpy(), rtol=1e-14)
    # a stacked vector, a mapping (names the rows) and a NumPy array of scalars give the same numbers
    stacked = sleep_ml.derived(lambda p: pt.stack([p[k] for k in labels]), names=["a", "b", "c"])
    assert list(stacked.index) == ["a", "b", "c"]
    named = sleep_ml.derived(lambda p: {"var_int": p[SD_INT] ** 2, "log_sigma": np.log(p["sigma"])})
    assert list(named.index) == ["var_int", "log_sigma"]
    np.testing.assert_allclose(
        named["se"].to_numpy(),
        se[[SD_INT, "sigma"]] * [2 * sleep_ml.params("sd")[SD_INT], 1 / sleep_ml.params("sd")["sigma"]],
        rtol=1e-12,
    )
    arr = sleep_ml.derived(lambda p: np.array([p[k] for k in labels]))
    np.testing.assert_allclose(arr["se"].to_numpy(), got["se"].to_numpy(), rtol=1e-14)


def test_numpy_and_pytensor_functions_agree(cbpp_fit):
    s = cbpp_fit.labels("sd")[-1]
    a = cbpp_fit.derived(lambda p: np.exp(np.sqrt(2 * p[s] ** 2) * norm.ppf(0.75)))
    b = cbpp_fit.derived(lambda p: pt.exp(pt.sqrt(2 * p[s] ** 2) * norm.ppf(0.75)))
    np.testing.assert_allclose(a.to_numpy(), cbpp_fit.mor().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(b.to_numpy(), cbpp_fit.mor().to_numpy(), rtol=1e-12)


def test_sandwich_covariance(sleep_ml):
    c = np.array([1.0, 7.0])
    lab = ["(Intercept)", "Days"]

    def fn(p):
        return c[0] * p[lab[0]] + c[1] * p[lab[1]]

    for adjust in ("CR0", "CR1", "CR3"):
        S = sleep_ml.sandwich("sd", adjust=adjust).loc[lab, lab].to_numpy()
        got = sleep_ml.derived(fn, vcov=adjust)
        np.testing.assert_allclose(got["se"].iloc[0], np.sqrt(c @ S @ c), rtol=1e-12)
    G = sleep_ml.n_clusters
    ratio = sleep_ml.derived(fn, vcov="CR1")["se"].iloc[0] / sleep_ml.derived(fn, vcov="CR0")["se"].iloc[0]
    np.testing.assert_allclose(ratio, np.sqrt(G / (G - 1)), rtol=1e-12)
    # a covariance given as a labelled DataFrame
    V = sleep_ml.vcov("sd") * 4.0
    np.testing.assert_allclose(
        sleep_ml.derived(fn, vcov=V)["se"].iloc[0], 2 * sleep_ml.derived(fn)["se"].iloc[0], rtol=1e-12
    )


def test_icc_sandwich_equals_derived_with_the_sandwich(sleep_ri):
    got = sleep_ri.icc("CR1")
    want = sleep_ri.derived(lambda p: p[SD_INT] ** 2 / (p[SD_INT] ** 2 + p["sigma"] ** 2), vcov="CR1")
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-12)
    assert got.loc["ICC", "se"] != sleep_ri.icc().loc["ICC", "se"]


# -- refusals -------------------------------------------------------------------------------------------
def test_unknown_label_lists_the_valid_ones(sleep_ml):
    want = "'sd_(Intercept)|Subjects' is not a parameter label on the 'sd' scale"
    with pytest.raises(MixVcovError, match=re.escape(want)) as exc:
        sleep_ml.derived(lambda p: p["sd_(Intercept)|Subjects"])
    msg = str(exc.value)
    assert "closest: 'sd_(Intercept)|Subject'" in msg
    for lab in sleep_ml.labels("sd"):
        assert repr(lab) in msg
    with pytest.raises(MixVcovError, match="'residual'"):
        sleep_ml.derived(lambda p: p["sigma"], scale="var")


def test_non_differentiable_functions_are_refused(sleep_ml):
    with pytest.raises(MixVcovError, match="derivative of 'fn' is 0 at the estimates.*locally constant"):
        sleep_ml.derived(lambda p: pt.floor(p["sigma"]))
    with pytest.raises(MixVcovError, match="bool values.*not differentiable"):
        sleep_ml.derived(lambda p: p["sigma"] > 10)
    with pytest.raises(MixVcovError, match="could not be evaluated on the symbolic parameters.*pt.switch"):
        sleep_ml.derived(lambda p: p["sigma"] if p["sigma"] > 10 else 0.0)
    with pytest.raises(MixVcovError, match="Python's math module"):
        sleep_ml.derived(lambda p: math.exp(p["sigma"]))
    with pytest.raises(MixVcovError, match="fn raised ZeroDivisionError when evaluated on the symbolic parameters"):
        sleep_ml.derived(lambda p: p["sigma"] + 1 / 0)
    with pytest.raises(MixVcovError, match="derivative of 'fn' is not finite.*'sigma'"):
        sleep_ml.derived(lambda p: pt.sqrt(p["sigma"] - sleep_ml.params("sd")["sigma"]))


def test_non_scalar_results_are_refused(sleep_ml):
    with pytest.raises(MixVcovError, match="2-dimensional array"):
        sleep_ml.derived(lambda p: pt.outer(pt.stack([p["sigma"], p["Days"]]), pt.stack([p["sigma"], p["Days"]])))
    with pytest.raises(MixVcovError, match="list holding a non-scalar"):
        sleep_ml.derived(lambda p: [p["sigma"], [p["Days"], p["sigma"]]])
    with pytest.raises(MixVcovError, match="does not depend on the parameters"):
        sleep_ml.derived(lambda p: 3.0)
    with pytest.raises(MixVcovError, match="returned a str"):
        sleep_ml.derived(lambda p: "sigma")
    with pytest.raises(MixVcovError, match="2 names given for the 3 quantities"):
        sleep_ml.derived(lambda p: [p["sigma"], p["Days"], p[SD_INT]], names=["a", "b"])


def test_bad_options(sleep_ml):
    with pytest.raises(MixVcovError, match="unknown vcov 'HC1'; valid values are: None, 'model', 'CR0', 'CR1'"):
        sleep_ml.derived(lambda p: p["sigma"], vcov="HC1")
    with pytest.raises(MixVcovError, match="unknown scale"):
        sleep_ml.derived(lambda p: p["sigma"], scale="log")
    with pytest.raises(MixVcovError, match="level must be between 0 and 1"):
        sleep_ml.derived(lambda p: p["sigma"], level=95)
    with pytest.raises(MixVcovError, match="labelled with the 'sd' scale's labels"):
        sleep_ml.derived(lambda p: p["sigma"], vcov=sleep_ml.vcov("var"))


def test_icc_and_mor_refusals(sleep_ml, sleep_ri, cbpp):
    with pytest.raises(
        MixVcovError, match=r"random intercepts only; the Subject term \(\(Intercept\), Days\) has several effects"
    ):
        sleep_ml.icc()
    with pytest.raises(MixVcovError, match="logit.*this fit has a Gaussian model"):
        sleep_ri.mor()
    probit = pmv.glmm(
        "cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial", link="probit"
    ).fit()
    with pytest.raises(MixVcovError, match="the median odds ratio is defined for binomial.*logit link"):
        probit.mor()
    with pytest.raises(MixVcovError, match="latent-scale residual variance is a modelling choice"):
        probit.icc()


def test_quantities_of_a_parameter_held_at_the_boundary_get_a_nan_se():
    """Data without between-group variation: sd_(Intercept)|g is held at 0 and its variance is NaN
    (tests/test_bad_input.py); quantities that use it get a NaN SE, the others their usual one."""
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(10), 8)
    y = rng.normal(size=g.size)
    y = y - pd.Series(y).groupby(g).transform("mean").to_numpy()
    with pytest.warns(pmv.SingularFitWarning):
        fit = pmv.lmm("y ~ 1 + (1 | g)", pd.DataFrame({"y": y, "g": pd.Categorical(g)})).fit()
    icc = fit.icc()
    np.testing.assert_allclose(icc.loc["ICC", "estimate"], 0.0, atol=1e-12)
    assert np.isnan(icc.loc["ICC", "se"])
    got = fit.derived(lambda p: {"a": p["sigma"] + 2 * p["(Intercept)"], "b": p["sigma"] + p["sd_(Intercept)|g"]})
    V = fit.vcov("sd")
    want = np.sqrt(
        V.loc["sigma", "sigma"] + 4 * V.loc["(Intercept)", "(Intercept)"] + 4 * V.loc["sigma", "(Intercept)"]
    )
    np.testing.assert_allclose(got.loc["a", "se"], want, rtol=1e-12)
    assert np.isnan(got.loc["b", "se"])


def test_hand_written_logit_model_gives_the_formula_models_mor(cbpp, cbpp_fit):
    """A non-centred hand-written cbpp model (cell means, ``p = invlogit(eta)``): the logit link is
    recognised from its log-density, and the MOR and ICC equal the formula-built model's (same
    likelihood; the SE of the herd SD agrees with glmmTMB's to 1e-6, tests/test_glmm.py)."""
    import pymc as pm

    herd = cbpp["herd"].cat.codes.to_numpy()
    X = np.eye(4)[cbpp["period"].cat.codes.to_numpy()]
    with pm.Model(coords={"herd": list(cbpp["herd"].cat.categories)}) as model:
        b = pm.Normal("b", 0, 5, shape=4)
        s = pm.HalfNormal("s", 2.0)
        z = pm.Normal("z", 0, 1, dims="herd")
        u = pm.Deterministic("u", z * s, dims="herd")
        pm.Binomial(
            "y", n=cbpp["size"].to_numpy(), p=pm.math.invlogit(X @ b + u[herd]), observed=cbpp["incidence"].to_numpy()
        )
    fit = pmv.fit(model, random=["z"])
    np.testing.assert_allclose(fit.mor().to_numpy(), cbpp_fit.mor().to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(fit.icc().to_numpy(), cbpp_fit.icc().to_numpy(), rtol=1e-5)
