"""lme4's double bar ``(x || g)``: uncorrelated random effects.

References: lme4 1.1-31 (R 4.2.2) fits in tests/reference/uncorrelated.json, made by
tests/reference/generate_uncorrelated.R. lme4 expands ``(Days || Subject)`` to
``(1 | Subject) + (0 + Days | Subject)`` (``expandDoubleVerts``; Bates et al. 2015, J. Stat.
Softw. 67(1), Table 2), prints the groups as ``Subject`` and ``Subject.1`` and names theta
``Subject.(Intercept)``, ``Subject.Days``.
"""

import numpy as np
import pandas as pd
import pytest
from conftest import reference

import pymc_mixvcov as pmv
from pymc_mixvcov.model.formula import _expand_double_bars

SD_LABELS = ["(Intercept)", "Days", "sd_(Intercept)|Subject", "sd_Days|Subject", "sigma"]


@pytest.fixture(scope="module")
def double_bar(sleepstudy):
    return pmv.lmm("Reaction ~ Days + (Days || Subject)", sleepstudy)


@pytest.fixture(scope="module")
def double_bar_ml(double_bar):
    return double_bar.fit("ML")


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_double_bar_sleepstudy_against_lme4(double_bar, double_bar_ml, method):
    ref = reference("uncorrelated")[f"sleepstudy_{method.lower()}"]
    fit = double_bar_ml if method == "ML" else double_bar.fit("REML")
    assert fit.converged
    # lme4's ||-model and its explicit (1|Subject) + (0+Days|Subject) have the same logLik (to 1e-12)
    np.testing.assert_allclose(ref["explicit_logLik"], ref["logLik"], rtol=1e-12)
    # measured: 2.4e-9 (ML), 8.7e-11 (REML); the logLik is flat at the optimum, so lme4's
    # optimiser tolerance (1e-5 relative on theta) moves it by far less than 1e-6
    np.testing.assert_allclose(fit.loglik, ref["logLik"], atol=1e-6)
    p = fit.params("sd")
    assert list(p.index) == SD_LABELS
    # beta is the GLS estimate given theta: 1e-6 relative (measured 2e-14)
    np.testing.assert_allclose(p.iloc[:2], ref["beta"], rtol=1e-6)
    # SDs: lme4 stops within about 1e-5 relative of the optimum (measured up to 1.4e-5)
    np.testing.assert_allclose(p.iloc[2:], ref["sdcor"], rtol=1e-4)
    chol = fit.params("cholesky")
    assert list(chol.index[2:4]) == [f"theta_{name}" for name in ref["theta_names"]]
    np.testing.assert_allclose(chol.iloc[2:4], ref["theta"], rtol=1e-4)
    # lme4's vcov of beta (its expected information); measured 1.9e-5 relative
    want = np.array(ref["vcov_beta"]["values"])
    np.testing.assert_allclose(fit.vcov("sd").iloc[:2, :2].to_numpy(), want, rtol=1e-4)


def test_double_bar_block_names_as_lme4_prints_them(double_bar):
    ref = reference("uncorrelated")["sleepstudy_ml"]
    # VarCorr's groups: "Subject", "Subject.1" (then "Residual")
    assert double_bar.random == [f"u_{g}" for g in ref["groups"][:2]]
    assert [b.effects for b in double_bar.blocks] == [["(Intercept)"], ["Days"]]
    assert double_bar.formula == "Reaction ~ Days + (Days || Subject)"


def test_double_bar_equals_explicit_blocks(sleepstudy, double_bar_ml):
    explicit = pmv.lmm("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", sleepstudy).fit("ML")
    assert explicit.labels("sd") == double_bar_ml.labels("sd")
    # the same model, the same graph: the same optimum up to the optimiser's own noise
    np.testing.assert_allclose(double_bar_ml.loglik, explicit.loglik, atol=1e-9)
    np.testing.assert_allclose(double_bar_ml.params("sd"), explicit.params("sd"), rtol=1e-7)
    v, w = double_bar_ml.vcov("sd"), explicit.vcov("sd")
    np.testing.assert_allclose(v.to_numpy(), w.to_numpy(), rtol=1e-6, atol=1e-9 * np.abs(w.to_numpy()).max())


def test_double_bar_glmm_cbpp_against_lme4():
    ref = reference("uncorrelated")["cbpp_ml"]
    cbpp = pmv.datasets.load("cbpp")
    cbpp = cbpp.assign(p=cbpp["period"].astype(float) - 2.5)  # as in generate_uncorrelated.R
    fit = pmv.glmm("cbind(incidence, size - incidence) ~ p + (p || herd)", cbpp).fit("ML")
    assert fit.converged
    # both Laplace approximations of the same likelihood; measured difference 1e-7
    np.testing.assert_allclose(fit.loglik, ref["logLik"], atol=1e-5)
    p = fit.params("sd")
    assert list(p.index) == ["(Intercept)", "p", "sd_(Intercept)|herd", "sd_p|herd"]
    np.testing.assert_allclose(p.iloc[:2], ref["beta"], rtol=1e-4)  # measured 4e-6
    np.testing.assert_allclose(p.iloc[2:], ref["sdcor"], rtol=1e-4)  # measured 1e-5
    # lme4's vcov(glmer) inverts a finite-difference Hessian: 1e-4 relative (measured 2.6e-5)
    want = np.array(ref["vcov_beta"]["values"])
    np.testing.assert_allclose(fit.vcov("sd").iloc[:2, :2].to_numpy(), want, rtol=1e-4)


@pytest.mark.parametrize(
    ("formula", "expanded"),
    [
        ("y ~ Days + (Days || Subject)", "y ~ Days + (1 | Subject) + (0 + Days | Subject)"),
        ("y ~ (0 + x || g) + (1 | h)", "y ~ (0 + x | g) + (1 | h)"),
        ("y ~ (1 || g)", "y ~ (1 | g)"),
        # R's terms(): ordered by degree, interactions expanded
        ("y ~ (x:z + x || g)", "y ~ (1 | g) + (0 + x | g) + (0 + x:z | g)"),
        ("y ~ (x * z || g)", "y ~ (1 | g) + (0 + x | g) + (0 + z | g) + (0 + x:z | g)"),
        ("y ~ (x - 1 || a/b)", "y ~ (0 + x | a/b)"),
        # a bar inside a quoted string is not a double bar
        ("y ~ (C(f, Treatment('a||b')) || g)", "y ~ (1 | g) + (0 + C(f, Treatment('a||b')) | g)"),
    ],
)
def test_double_bar_expansion(formula, expanded):
    assert _expand_double_bars(formula) == expanded


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("y ~ x || g", "must stand in parentheses"),
        ("y ~ (0 || g)", "has no term"),
        ("y ~ (x || )", "needs one grouping factor"),
        ("y ~ (x || a | b)", "needs one grouping factor"),
    ],
)
def test_double_bar_errors(formula, message):
    data = pd.DataFrame({"y": np.arange(6.0), "x": np.arange(6.0), "g": list("aabbcc")})
    with pytest.raises(pmv.MixVcovError, match=message):
        pmv.lmm(formula, data)


def test_noncentred_terms_with_mean_kept_as_deterministic(sleepstudy, double_bar_ml):
    """bambi's layout by hand: non-centred terms ``x|g = x|g_offset * x|g_sigma`` and the linear
    predictor kept as a deterministic ``mu`` (shape n), which every random effect reaches; the
    random effects' maps are the per-level deterministics, not ``mu``."""
    import pymc as pm

    subj = sleepstudy["Subject"].cat.codes.to_numpy()
    days = sleepstudy["Days"].to_numpy(float)
    coords = {"Subject__factor_dim": list(sleepstudy["Subject"].cat.categories)}
    with pm.Model(coords=coords) as model:
        b0 = pm.Normal("Intercept", 0, 1000)
        b1 = pm.Normal("Days", 0, 100)
        s0 = pm.HalfNormal("1|Subject_sigma", 50)
        z0 = pm.Normal("1|Subject_offset", 0, 1, dims="Subject__factor_dim")
        u0 = pm.Deterministic("1|Subject", z0 * s0, dims="Subject__factor_dim")
        s1 = pm.HalfNormal("Days|Subject_sigma", 10)
        z1 = pm.Normal("Days|Subject_offset", 0, 1, dims="Subject__factor_dim")
        u1 = pm.Deterministic("Days|Subject", z1 * s1, dims="Subject__factor_dim")
        mu = pm.Deterministic("mu", b0 + b1 * days + u0[subj] + u1[subj] * days)
        pm.Normal("Reaction", mu, pm.HalfNormal("sigma", 100), observed=sleepstudy["Reaction"].to_numpy())
    fit = pmv.fit(model, random=["1|Subject_offset", "Days|Subject_offset"])
    assert [t.name for t in fit.spec.terms] == ["1|Subject", "Days|Subject"]
    # the same model as (Days || Subject): the same optimum (Newton decrement < 1e-6)
    np.testing.assert_allclose(fit.loglik, double_bar_ml.loglik, atol=1e-8)
    np.testing.assert_allclose(fit.params("sd").to_numpy(), double_bar_ml.params("sd").to_numpy(), rtol=1e-5)
