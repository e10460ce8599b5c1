"""Satterthwaite and Kenward-Roger tests of fixed effects against lmerTest 3.1-3 and pbkrtest 0.5.2.

References: tests/reference/inference_sleepstudy_reml.json and inference_orthodont_reml.json (by
generate_inference.R: lme4 1.1-31, lmerTest 3.1-3, pbkrtest 0.5.2, R 4.2.2) and
ddf_sleepstudy_unbalanced*.json (by generate_ddf.R, same versions).

Tolerances. Our REML/ML optimum and lme4's differ by a few 1e-6 relative in the standard errors
(lme4 stops its optimiser earlier), which moves t and F by as much. df, F, se and t: 1e-4
relative (the agreement asked of the method; measured 2e-5 at most on sleepstudy). p-values:
1e-4 relative where ``|d log p / d t| dt`` stays below that; the sleepstudy intercept (t = 37,
p ~ 1e-17) has ``d log p / d t ~ 0.5`` and a large ``d log p / d df``, so the differences of t
(2e-4 to 7e-4) and df (4e-5 relative) move p by up to 1.5e-3 relative: there 1e-3 (balanced) and
5e-3 (unbalanced; its Days p, 4e-6, moves by 3e-4 with t and df: 5e-4); joint F tests with p ~ 1e-17:
1e-3. Orthodont: lme4's optimum is further from the maximum (our REML log-likelihood
is higher, tested below), its se differ from ours by 3e-4 relative and lmerTest's
numerical-derivative Satterthwaite df is 25.008 where the balanced design gives 25 (pbkrtest:
25.0000000000064): 1e-3 relative there, and for its p-values of 1e-14 and 2e-9
(``d log p / d t ~ 1.5``, t differs by 3e-4 relative) 2e-2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import reference
from numpy.testing import assert_allclose

import pymc_mixvcov as pmv
from pymc_mixvcov.errors import MixVcovError
from pymc_mixvcov.inference.ddf import parse_hypothesis


@pytest.fixture(scope="module")
def unbalanced():
    d = pmv.datasets.load("sleepstudy")
    return d.drop(index=d.index[6::7]).reset_index(drop=True)  # R rows 7, 14, ..., 175 dropped


@pytest.fixture(scope="module")
def unbal_reml(unbalanced):
    return pmv.lmm("Reaction ~ Days + (Days | Subject)", unbalanced).fit("REML")


@pytest.fixture(scope="module")
def orthodont():
    return pmv.lmm("distance ~ age * Sex + (age | Subject)", pmv.datasets.load("orthodont")).fit("REML")


def _check(got: pd.DataFrame, want: dict, p_rtol, rtol=1e-4):
    assert list(got.index) == want["names"]
    for col in ("estimate", "se", "df", "t"):
        assert_allclose(got[col], want[col], rtol=rtol, err_msg=col)
    for g, w, tol in zip(got["p"], want["p"], np.broadcast_to(p_rtol, len(want["p"])), strict=True):
        assert_allclose(g, w, rtol=tol, err_msg="p")


def test_sleepstudy_satterthwaite_and_kr(sleep_reml):
    ref = reference("inference_sleepstudy_reml")
    _check(sleep_reml.ttest("satterthwaite"), ref["satterthwaite"], p_rtol=[1e-3, 1e-4])
    _check(sleep_reml.ttest("kenward-roger"), ref["kenward_roger"], p_rtol=[1e-3, 1e-4])
    for ddf, key in (("satterthwaite", "anova_satt"), ("kenward-roger", "anova_kr")):
        a = sleep_reml.anova(ddf=ddf)
        assert list(a.index) == ["Days"] and a["ndf"].iloc[0] == 1
        assert_allclose(a["F"].iloc[0], ref[key]["F"], rtol=1e-4)
        assert_allclose(a["ddf"].iloc[0], ref[key]["ddf"], rtol=1e-4)


def test_unbalanced_reml_matches_lmertest_and_pbkrtest(unbal_reml):
    ref = reference("ddf_sleepstudy_unbalanced")
    _check(unbal_reml.ttest("satterthwaite"), ref["satterthwaite"], p_rtol=[5e-3, 5e-4])
    _check(unbal_reml.ttest("kenward-roger"), ref["kenward_roger"], p_rtol=[5e-3, 5e-4])
    assert_allclose(unbal_reml.vcov_kr().to_numpy(), ref["vcov_kr"], rtol=1e-4)
    for ddf, key in (("satterthwaite", "joint_satt"), ("kenward-roger", "joint_kr")):
        got = unbal_reml.test(np.eye(2), ddf=ddf).iloc[0]
        assert got["ndf"] == ref[key]["ndf"] == 2
        assert_allclose([got["F"], got["ddf"]], [ref[key]["F"], ref[key]["ddf"]], rtol=1e-4)
        assert_allclose(got["p"], ref[key]["p"], rtol=1e-3)  # p ~ 1e-17, d log p / d F ~ 0.9 / F
    for ddf, key in (("satterthwaite", "contrast_satt"), ("kenward-roger", "contrast_kr")):
        got = unbal_reml.test("(Intercept) + 5 Days = 300", ddf=ddf).iloc[0]
        want = ref[key]
        assert_allclose(
            [got["estimate"], got["se"], got["ddf"], got["t"], got["p"]],
            [want["estimate"], want["se"], want["df"], want["t"], want["p"]],
            rtol=1e-4,
        )
        assert_allclose(got["F"], want["t"] ** 2, rtol=1e-4)


def test_unbalanced_ml_satterthwaite(unbalanced):
    fit = pmv.lmm("Reaction ~ Days + (Days | Subject)", unbalanced).fit("ML")
    _check(fit.ttest("satterthwaite"), reference("ddf_sleepstudy_unbalanced_ml")["satterthwaite"], p_rtol=[5e-3, 5e-4])
    with pytest.raises(MixVcovError, match="REML"):
        fit.ttest("kenward-roger")


def test_orthodont(orthodont):
    ref = reference("inference_orthodont_reml")
    # lme4's optimum is the less converged one (see the module docstring)
    assert orthodont.loglik > reference("factor_coding")["orthodont_reml"]["logLik"]
    _check(orthodont.ttest("satterthwaite"), ref["satterthwaite"], p_rtol=[2e-2, 2e-2, 2e-3, 2e-3], rtol=1e-3)
    _check(orthodont.ttest("kenward-roger"), ref["kenward_roger"], p_rtol=[2e-2, 2e-2, 2e-3, 2e-3], rtol=1e-3)
    assert_allclose(orthodont.ttest("kenward-roger")["df"], 25.0, rtol=1e-6)  # pbkrtest: 25 to 3e-13
    # the Sex and age:Sex rows of lmerTest's anova are the tests of their single coefficients
    for ddf, key in (("satterthwaite", "anova_satt"), ("kenward-roger", "anova_kr")):
        for label, k in (("SexFemale", 1), ("age:SexFemale", 2)):
            got = orthodont.test(f"{label} = 0", ddf=ddf).iloc[0]
            assert_allclose([got["F"], got["ddf"]], [ref[key]["F"][k], ref[key]["ddf"][k]], rtol=1e-3)
    # lmerTest's type III and II tables (age is contained in age:Sex; Sex is not: Sex has no numeric variable)
    types = reference("ddf_anova_types")["orthodont"]
    for ddf, tag in (("satterthwaite", "satt"), ("kenward-roger", "kr")):
        for kind in ("III", "II"):
            got, want = orthodont.anova(ddf=ddf, type=kind), types[f"{kind}_{tag}"]
            assert list(got.index) == want["terms"] and list(got["ndf"]) == want["ndf"]
            assert_allclose(got[["F", "ddf"]].to_numpy().T, [want["F"], want["ddf"]], rtol=1e-3)
            assert_allclose(got["p"], want["p"], rtol=2e-2)


@pytest.fixture(scope="module")
def phase(unbalanced):
    d = unbalanced.assign(
        phase=pd.Categorical(
            np.where(unbalanced["Days"] <= 2, "early", np.where(unbalanced["Days"] <= 5, "mid", "late")),
            categories=["early", "mid", "late"],
        )
    )
    return pmv.lmm("Reaction ~ Days * phase + (Days | Subject)", d).fit("REML")


@pytest.mark.parametrize("ddf", ["satterthwaite", "kenward-roger"])
@pytest.mark.parametrize("kind", ["III", "II"])
def test_anova_types_with_contained_terms(phase, ddf, kind):
    """Unbalanced sleepstudy with a 3-level factor: 2-df F tests, Days contained in Days:phase."""
    ref = reference("ddf_anova_types")["phase"]
    want = ref[f"{kind}_{'satt' if ddf == 'satterthwaite' else 'kr'}"]
    got = phase.anova(ddf=ddf, type=kind)
    assert list(got.index) == want["terms"] and list(got["ndf"]) == want["ndf"]
    assert_allclose(got[["F", "ddf", "p"]].to_numpy().T, [want["F"], want["ddf"], want["p"]], rtol=1e-4)


def test_string_contrast_between_levels(phase):
    ref = reference("ddf_anova_types")["phase"]
    for ddf, key in (("satterthwaite", "mid_vs_late_satt"), ("kenward-roger", "mid_vs_late_kr")):
        got = phase.test("phasemid = phaselate", ddf=ddf).iloc[0]
        assert_allclose([got["t"], got["ddf"], got["p"]], [ref[key]["t"], ref[key]["df"], ref[key]["p"]], rtol=1e-4)


def test_no_correction_is_the_wald_test(sleep_reml):
    got = sleep_reml.ttest(None)
    se = np.sqrt(np.diag(sleep_reml.vcov("var").to_numpy()))[:2]
    assert_allclose(got["se"], se, rtol=1e-12)
    assert np.all(np.isinf(got["df"]))
    from scipy.stats import norm

    assert_allclose(got["p"], 2 * norm.sf(np.abs(got["estimate"] / se)), rtol=1e-12)


def test_parse_hypothesis():
    labels = ["(Intercept)", "phasemid", "phaselate", "age:SexFemale"]
    L, r = parse_hypothesis("phasemid = phaselate", labels)
    assert_allclose(L, [[0, 1, -1, 0]])
    assert_allclose(r, [0])
    L, r = parse_hypothesis("2*(Intercept) - 0.5 age:SexFemale + 1 = 3; phaselate", labels)
    assert_allclose(L, [[2, 0, 0, -0.5], [0, 0, 1, 0]])
    assert_allclose(r, [2, 0])
    L, r = parse_hypothesis(pd.DataFrame({"phasemid": [1.0]}), labels)
    assert_allclose(L, [[0, 1, 0, 0]])
    for bad, msg in (
        ("__import__('os')", "does not start with a fixed-effect label"),
        ("phasemid = = 1", "more than one"),
        ("phasemid - phasemid = 0", "no fixed effect"),
        ("phasemid phaselate", "expected \\+ or -"),
        (np.ones(3), "4 columns"),
    ):
        with pytest.raises(MixVcovError, match=msg):
            parse_hypothesis(bad, labels)


def test_bad_input(sleep_reml):
    with pytest.raises(MixVcovError, match="unknown ddf 'KR'.*'satterthwaite', 'kenward-roger'"):
        sleep_reml.ttest("KR")
    with pytest.raises(MixVcovError, match="unknown type 'I'"):
        sleep_reml.anova(type="I")
    with pytest.raises(MixVcovError, match="labels are"):
        sleep_reml.test("Day = 0")


def test_non_gaussian_refused():
    cbpp = pmv.datasets.load("cbpp")
    g = pmv.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp).fit()
    with pytest.raises(MixVcovError, match="Gaussian"):
        g.ttest()


def test_summary_with_ddf(unbal_reml):
    ref = reference("ddf_sleepstudy_unbalanced")["kenward_roger"]
    tab = unbal_reml.summary(ddf="kenward-roger")
    assert list(tab.columns[:5]) == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    fixed = tab.iloc[:2]
    assert_allclose(fixed["df"], ref["df"], rtol=1e-4)
    assert_allclose(fixed["Std. Error"], ref["se"], rtol=1e-4)
    from scipy.stats import t as student

    q = student.ppf(0.975, fixed["df"].to_numpy())
    assert_allclose(fixed["2.5 %"], fixed["Estimate"] - q * fixed["Std. Error"], rtol=1e-12)
    assert np.all(np.isinf(tab["df"].iloc[2:]))
    plain = unbal_reml.summary()
    assert_allclose(tab["Pr(>|t|)"].iloc[2:], plain["Pr(>|z|)"].iloc[2:], rtol=1e-12)
    with pytest.raises(MixVcovError, match="cannot be combined with vcov='CR1'"):
        unbal_reml.summary(vcov="CR1", ddf="satterthwaite")


def test_closed_forms_against_the_symbolic_derivative(unbal_reml):
    """The cluster engine's var_scale_pieces: X'V^-1X and its first derivatives agree with its xtvx,
    pytensor's derivative of the GLS graph (carried to the model's parameters by each scale's
    Jacobian), to rounding; its second derivatives agree with central differences of its first
    ones (step 1e-4 relative: truncation ~1e-8, rounding ~1e-12 relative)."""
    fns = unbal_reml._functions
    p = fns.sig.p
    nat = unbal_reml._opt["nat"]
    phi, J, _ = fns.map(nat, second=False)
    XtVX, P, H = fns.var_scale_pieces(phi)
    X_sym, D = fns.xtvx(phi)
    assert_allclose(XtVX, X_sym, rtol=1e-12)
    d_sym = np.einsum("kab,kv->vab", np.asarray(D), J[p:][:, fns.vi])
    d_closed = np.einsum("kab,kv->vab", P, unbal_reml._opt["jac_var"][p:][:, fns.vi])
    assert_allclose(d_closed, d_sym, rtol=1e-10, atol=1e-12 * np.abs(d_sym).max())

    def pieces_at(vs):  # the var scale (G lower triangle column-major, sigma^2) -> (theta, sigma)
        G = np.array([[vs[0], vs[1]], [vs[1], vs[2]]])
        Lc = np.linalg.cholesky(G)
        return fns.var_scale_pieces(np.concatenate([phi[:p], [Lc[0, 0], Lc[1, 0], Lc[1, 1], np.sqrt(vs[3])]]))

    vs = np.asarray(unbal_reml._opt["value_var"])[p:]
    for i in range(vs.size):
        h = 1e-4 * abs(vs[i])
        up, down = vs.copy(), vs.copy()
        up[i] += h
        down[i] -= h
        fd = (pieces_at(up)[1] - pieces_at(down)[1]) / (2 * h)
        assert_allclose(H[i], fd, rtol=1e-6, atol=1e-6 * np.abs(H[i]).max())


# penicillin compiles the dense graphs of a 30-effect cluster (over a minute on a first run): slow
@pytest.mark.parametrize("case", [pytest.param("penicillin", marks=pytest.mark.slow), "uncorrelated"])
def test_several_random_terms(case, unbalanced):
    """Crossed terms (one cluster holding both factors) and two terms on one factor."""
    if case == "penicillin":
        fit = pmv.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", pmv.datasets.load("penicillin")).fit("REML")
    else:
        fit = pmv.lmm("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", unbalanced).fit("REML")
    ref = reference("ddf_several_terms")[case]
    for ddf, key in (("satterthwaite", "satterthwaite"), ("kenward-roger", "kenward_roger")):
        want = {k: list(np.atleast_1d(v)) for k, v in ref[key].items()}
        _check(fit.ttest(ddf), want, p_rtol=[5e-3, 5e-4][: len(want["p"])])


def test_hand_written_model_is_parameterisation_invariant(sleep_reml):
    """The LKJ-parameterised sleepstudy model: the same df, t and p as the formula model (whose
    parameters differ), and one anova row for the fixed-effect vector."""
    import pymc as pm

    d = pmv.datasets.load("sleepstudy")
    subj, days = d["Subject"].cat.codes.to_numpy(), d["Days"].to_numpy(float)
    coords = {"Subject": list(d["Subject"].cat.categories), "effect": ["a", "b"], "fixed": ["(Intercept)", "Days"]}
    with pm.Model(coords=coords) as model:
        beta = pm.Normal("beta", 0, 100, dims="fixed")
        chol, _, _ = pm.LKJCholeskyCov("chol", n=2, eta=1.0, sd_dist=pm.HalfNormal.dist(50.0, shape=2))
        u = pm.MvNormal("u", mu=np.zeros(2), chol=chol, dims=("Subject", "effect"))
        sigma = pm.HalfNormal("sigma", 50.0)
        pm.Normal("y", beta[0] + beta[1] * days + u[subj, 0] + u[subj, 1] * days, sigma, observed=d["Reaction"])
    fit = pmv.fit(model, random=["u"], method="REML")
    assert fit.labels("natural") != sleep_reml.labels("natural")
    for ddf in ("satterthwaite", "kenward-roger"):
        got, want = fit.ttest(ddf), sleep_reml.ttest(ddf)
        assert_allclose(got[["se", "df", "t"]].to_numpy(), want[["se", "df", "t"]].to_numpy(), rtol=1e-5)
    a = fit.anova()
    assert len(a) == 1 and a["ndf"].iloc[0] == 2
    assert_allclose(a["F"].iloc[0], fit.test(np.eye(2)).iloc[0]["F"], rtol=1e-12)


def test_anova_with_polynomial_contrasts():
    """lme4's cake (ordered temperature, contr.poly; recipe contained in recipe:temperature): lmerTest
    maps the type III hypotheses of the treatment-coded design back to the fitted one. 2-, 5- and
    10-df F tests; the p of temperature (~1e-16) moves with F by ``d log p / d F ~ 1.6``: 1e-3."""
    fit = pmv.lmm("angle ~ recipe * temperature + (1 | recipe:replicate)", pmv.datasets.load("cake")).fit("REML")
    ref = reference("ddf_cake")["cake"]
    for kind in ("III", "II"):
        for ddf, tag in (("satterthwaite", "satt"), ("kenward-roger", "kr")):
            got, want = fit.anova(ddf=ddf, type=kind), ref[f"{kind}_{tag}"]
            assert list(got.index) == want["terms"] and list(got["ndf"]) == want["ndf"]
            assert_allclose(got[["F", "ddf"]].to_numpy().T, [want["F"], want["ddf"]], rtol=1e-4)
            assert_allclose(got["p"], want["p"], rtol=1e-3)


def test_kenward_roger_refuses_a_singular_fit():
    """A correlation estimated at +1 (tests/reference/boundary_cor.csv): V is not an interior point of
    the var scale, and Kenward-Roger refuses; Satterthwaite, with the boundary parameter known, answers."""
    import warnings

    from conftest import REF

    from pymc_mixvcov.errors import SingularFitWarning

    data = pd.read_csv(REF / "boundary_cor.csv")
    data["g"] = pd.Categorical(data["g"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        fit = pmv.lmm("y_pos ~ x + (x | g)", data).fit("REML")
    assert fit.singular
    with pytest.raises(MixVcovError, match="singular"):
        fit.ttest("kenward-roger")
    assert np.all(np.isfinite(fit.ttest("satterthwaite")[["df", "p"]].to_numpy()))
