"""Prior weights: lme4's ``weights =`` (pymc_mixvcov.model.weights).

Reference: tests/reference/weights.json, made by generate_weights.R (R 4.2.2, lme4 1.1-31, lmerTest
3.1-3, numDeriv 2016.8-1.1, glmmTMB 1.1.5). Gaussian cases are lmer fits with precision weights
(tight bobyqa tolerances); their full covariance comes from the weighted marginal likelihood written
out densely in R, which reproduces lme4's logLik to 3e-13 at lme4's estimates: the observed one by
numDeriv's Richardson Hessian (allowed 1e-4 after scaling by the standard errors, the project's
bound for numerical-Hessian anchors; measured below 6e-7), the expected one, the scores and the
sandwich in closed form at lme4's estimates, which lie within 5e-7 standard errors of ours (hence
1e-5 after scaling, measured below 2e-6).
"""

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt
import pytest
from conftest import reference, scaled_error

import pymc_mixvcov as pmv
from pymc_mixvcov.errors import MixVcovError

SLEEP = "Reaction ~ Days + (Days | Subject)"
PENICILLIN = "diameter ~ 1 + (1 | plate) + (1 | sample)"


def _matrix(m: dict) -> pd.DataFrame:
    return pd.DataFrame(np.array(m["values"], float), index=m.get("rownames"), columns=m["colnames"])


@pytest.fixture(scope="module")
def ref():
    return reference("weights")


def _data(ref, case: str) -> pd.DataFrame:
    r = ref[case]
    if case.startswith("penicillin"):
        d = pmv.datasets.load("penicillin")
    else:
        d = pmv.datasets.load("sleepstudy")
        if "dropped_rows_1based" in r:
            keep = np.setdiff1d(np.arange(len(d)), np.asarray(r["dropped_rows_1based"]) - 1)
            d = d.iloc[keep].reset_index(drop=True)
    return d.assign(w=np.asarray(r["weights"], float))


_FITS: dict = {}


def _fit(ref, case: str, engine: str = "auto"):
    key = (case, engine)
    if key not in _FITS:
        formula = PENICILLIN if case.startswith("penicillin") else SLEEP
        method = "REML" if case.endswith("reml") else "ML"
        _FITS[key] = pmv.lmm(formula, _data(ref, case), weights="w").fit(method, engine=engine)
    return _FITS[key]


GAUSSIAN = [
    ("sleepstudy_ml", "clusters"),
    ("sleepstudy_ml", "blocked"),
    ("sleepstudy_reml", "clusters"),
    ("sleepstudy_reml", "blocked"),
    ("unbalanced_ml", "clusters"),
    ("unbalanced_ml", "blocked"),
    ("unbalanced_reml", "clusters"),
    ("unbalanced_reml", "blocked"),
    ("penicillin_ml", "blocked"),
    pytest.param("penicillin_ml", "clusters", marks=pytest.mark.slow),  # compiles a 30-effect cluster graph
]


@pytest.mark.parametrize(("case", "engine"), GAUSSIAN)
def test_gaussian_against_lme4(ref, case, engine):
    """logLik (with lme4's sum(log w)/2; measured 5e-11 apart), estimates (fixed effects to 1e-6
    relative, all within 1e-5 SE; measured 2e-6 and 4e-7), lme4's vcov() of the fixed effects (the
    inverse of X' V^-1 X: the beta block of the expected information; 1e-6, measured 4e-7)."""
    r = ref[case]
    fit = _fit(ref, case, engine)
    assert fit.converged and fit.engine == engine
    np.testing.assert_allclose(fit.loglik, r["logLik"], rtol=1e-12, atol=1e-8)
    p = fit.params("var")
    want = pd.Series(r["params_var"])
    assert list(p.index) == list(want.index)
    k = len(r["beta"]) if isinstance(r["beta"], list) else 1
    np.testing.assert_allclose(p.iloc[:k], want.iloc[:k], rtol=1e-6)
    np.testing.assert_allclose(((p - want) / fit.se("var")).to_numpy(), 0.0, atol=1e-5)
    vb = _matrix(r["vcov_beta"])
    got = fit.vcov("var", "expected").loc[vb.columns, vb.columns]
    np.testing.assert_allclose(got.to_numpy(), vb.to_numpy(), rtol=1e-6)


@pytest.mark.parametrize(("case", "engine"), GAUSSIAN)
def test_gaussian_full_vcov(ref, case, engine):
    """Observed information against numDeriv (1e-4 scaled, measured 6e-7) and expected
    information against its closed form (1e-5 scaled, measured 3e-7); REML: lme4's beta block and
    the REML criterion's Hessian in the variance parameters, zero cross block."""
    r = ref[case]
    fit = _fit(ref, case, engine)
    for info, tol in (("observed", 1e-4), ("expected", 1e-5)):
        got = fit.vcov("var", info)
        want = _matrix(r[f"vcov_{info}_var"]).set_axis(r[f"vcov_{info}_var"]["colnames"], axis=0)
        want = want.loc[got.index, got.columns]
        assert scaled_error(got.to_numpy(), want.to_numpy()).max() < tol


@pytest.mark.parametrize("case", ["sleepstudy_ml", "unbalanced_ml"])
def test_scores_loglik_contributions_and_sandwich(ref, case):
    """Cluster and casewise scores (merDeriv's decomposition of the weighted model), per-Subject
    log-likelihoods and the CR0 sandwich, against their closed forms at lme4's estimates: 1e-5 of
    each column's RMS (measured 1.6e-6), 1e-6 absolute (measured 3.5e-7), 1e-5 scaled (4e-7); by
    the cluster engine and by the blocked engine."""
    r = ref[case]
    fit = _fit(ref, case, "clusters")
    S = fit.scores("cluster", "var")
    want = _matrix(r["scores_cluster_var"])[S.columns]
    assert list(S.index.astype(str)) == list(want.index)
    rms = np.sqrt((want**2).mean()).to_numpy()
    np.testing.assert_allclose(S.to_numpy() / rms, want.to_numpy() / rms, atol=1e-5)
    obs = fit.scores("observation", "var")
    want_o = _matrix(r["scores_observation_var"])[obs.columns]
    rms_o = np.sqrt((want_o**2).mean()).to_numpy()
    np.testing.assert_allclose(obs.to_numpy() / rms_o, want_o.to_numpy() / rms_o, atol=1e-5)
    ll = fit.loglik_contributions()
    np.testing.assert_allclose(ll.to_numpy(), list(r["loglik_cluster"].values()), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ll.sum(), fit.loglik, rtol=1e-12)
    sw = fit.sandwich(scale="var", adjust="CR0")
    want_s = _matrix(r["sandwich_observed_var_CR0"]).set_axis(r["sandwich_observed_var_CR0"]["colnames"], axis=0)
    assert scaled_error(sw.to_numpy(), want_s.loc[sw.index, sw.columns].to_numpy()).max() < 1e-5
    # the blocked engine's casewise scores are the same
    bfit = _fit(ref, case, "blocked")
    blocked = bfit.scores("observation", "var")
    np.testing.assert_allclose(blocked.to_numpy() / rms_o, obs.to_numpy() / rms_o, atol=1e-6)
    # and so are its cluster scores, per-Subject log-likelihoods and CR0 sandwich (a model of 18
    # clusters on the blocked engine: engines/blocked_clusters.py), against the same references
    Sb = bfit.scores("cluster", "var")
    np.testing.assert_allclose(Sb.to_numpy() / rms, want.to_numpy() / rms, atol=1e-5)
    llb = bfit.loglik_contributions()
    np.testing.assert_allclose(llb.to_numpy(), list(r["loglik_cluster"].values()), rtol=0, atol=1e-6)
    swb = bfit.sandwich(scale="var", adjust="CR0")
    assert scaled_error(swb.to_numpy(), want_s.loc[swb.index, swb.columns].to_numpy()).max() < 1e-5


@pytest.mark.parametrize("case", ["sleepstudy_reml", "unbalanced_reml"])
def test_satterthwaite_against_lmertest(ref, case):
    """lmerTest 3.1-3's t-table of the weighted REML fit: its Satterthwaite df come from a
    numerical Hessian of lme4's deviance function (which carries the weights), ours in closed
    form; df to 1e-4 relative, SEs and t to 1e-6."""
    want = _matrix(ref[case]["lmerTest_coefficients"])
    got = _fit(ref, case, "clusters").ttest("satterthwaite")
    np.testing.assert_allclose(got["se"].to_numpy(), want["Std. Error"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["df"].to_numpy(), want["df"].to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(got["t"].to_numpy(), want["t value"].to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("case", ["sleepstudy_reml", "unbalanced_reml"])
def test_kenward_roger_against_pbkrtest(ref, case):
    """pbkrtest 0.5.2 ignores lme4's weights (its V is Z G Z' + sigma^2 I), so the anchor is its
    Kenward-Roger covariance and t-table (through lmerTest 3.1-3) of the weighted model written as
    an unweighted one, every row scaled by sqrt(w): the same REML likelihood up to sum(log w)/2
    (checked in R to 1e-12). Tolerances as tests/test_ddf.py: 1e-4."""
    r = ref[case]
    fit = _fit(ref, case, "clusters")
    np.testing.assert_allclose(r["whitened_logLik"] + 0.5 * np.log(r["weights"]).sum(), fit.loglik, rtol=1e-12)
    np.testing.assert_allclose(fit.vcov_kr().to_numpy(), _matrix(r["kenward_roger_vcov"]).to_numpy(), rtol=1e-4)
    want = _matrix(r["kenward_roger_coefficients"])
    got = fit.ttest("kenward-roger")
    np.testing.assert_allclose(got["se"].to_numpy(), want["Std. Error"].to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(got["df"].to_numpy(), want["df"].to_numpy(), rtol=1e-4)


# -- identities -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sleepstudy():
    return pmv.datasets.load("sleepstudy")


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_unit_weights_are_no_weights(sleepstudy, method):
    """Weights of 1 go through the weighted path (scaled rows, sum(log w)/2 = 0) and give the
    unweighted fit to rounding."""
    plain = pmv.lmm(SLEEP, sleepstudy).fit(method)
    ones = pmv.lmm(SLEEP, sleepstudy, weights=np.ones(len(sleepstudy))).fit(method)
    assert ones.spec.weights is not None and plain.spec.weights is None
    np.testing.assert_allclose(ones.loglik, plain.loglik, rtol=1e-12)
    np.testing.assert_allclose(ones.params("var"), plain.params("var"), rtol=1e-8)
    for info in ("observed", "expected"):
        np.testing.assert_allclose(ones.vcov("sd", info), plain.vcov("sd", info), rtol=1e-6)
    if method == "ML":
        np.testing.assert_allclose(ones.scores("observation"), plain.scores("observation"), rtol=1e-6, atol=1e-9)


def test_scaled_weights(ref):
    """Weights c w: the residual variances sigma'^2 / (c w_i) are those of the fit with weights w
    when sigma'^2 = c sigma^2, so the maximum is the same model (closed form): the same
    log-likelihood (the density of y is unchanged: sum(log w)/2 grows by n log(c)/2 and
    -log|V|/2 falls by as much), the same beta and random-effect (co)variances, sigma times
    sqrt(c), the residual's row and column of the var-scale covariance times c, its scores over c."""
    c = 3.7
    d = _data(ref, "unbalanced_ml")
    a = _fit(ref, "unbalanced_ml", "clusters")
    b = pmv.lmm(SLEEP, d.assign(w=c * d["w"]), weights="w").fit("ML")
    np.testing.assert_allclose(b.loglik, a.loglik, rtol=1e-12)
    scale = np.r_[np.ones(5), c]
    np.testing.assert_allclose(b.params("var"), a.params("var") * scale, rtol=1e-6)
    np.testing.assert_allclose(b.params("sd")["sigma"], a.params("sd")["sigma"] * np.sqrt(c), rtol=1e-6)
    D = np.outer(scale, scale)
    for info in ("observed", "expected"):
        assert scaled_error(b.vcov("var", info).to_numpy(), a.vcov("var", info).to_numpy() * D).max() < 1e-6
    np.testing.assert_allclose(
        b.scores("cluster", "var").to_numpy(), a.scores("cluster", "var").to_numpy() / scale, rtol=1e-5, atol=1e-8
    )


def test_scores_sum_to_zero_at_the_optimum(ref):
    """At the MLE the cluster scores sum to the gradient, ~0 (relative to their spread), and the
    casewise scores sum within clusters to the cluster scores."""
    fit = _fit(ref, "unbalanced_ml", "clusters")
    S = fit.scores("cluster", "var")
    spread = np.sqrt((S**2).sum()).to_numpy()
    np.testing.assert_allclose(S.sum().to_numpy() / spread, 0.0, atol=1e-6)
    obs = fit.scores("observation", "var")
    by = obs.groupby(_data(ref, "unbalanced_ml")["Subject"].to_numpy(), observed=True).sum()
    np.testing.assert_allclose(by.to_numpy(), S.to_numpy(), rtol=1e-8, atol=1e-8 * spread.max())


def _handwritten(d: pd.DataFrame, sd_of):
    subj = d["Subject"].cat.codes.to_numpy()
    days = d["Days"].to_numpy(float)
    coords = {"Subject": list(d["Subject"].cat.categories), "effect": ["(Intercept)", "Days"]}
    with pm.Model(coords=coords) as model:
        b = pm.Normal("b", 0, 100, shape=2)
        chol, _, _ = pm.LKJCholeskyCov("chol", n=2, eta=1.0, sd_dist=pm.HalfNormal.dist(50.0, shape=2))
        z = pm.Normal("z", 0.0, 1.0, dims=("Subject", "effect"))
        u = pm.Deterministic("u", z @ chol.T, dims=("Subject", "effect"))
        sigma = pm.HalfNormal("sigma", 50.0)
        mu = b[0] + b[1] * days + u[subj, 0] + u[subj, 1] * days
        pm.Normal("y", mu, sd_of(sigma), observed=d["Reaction"].to_numpy())
    return model


@pytest.mark.parametrize(
    "form",
    [
        "divide_sqrt",  # sigma / pt.sqrt(w): w read exactly
        "times_inverse",  # sigma * (1 / np.sqrt(w)): w = 1 / c^2
        "data",  # sigma / pt.sqrt(pm.Data(...))
    ],
)
def test_handwritten_precision_weights(ref, form):
    """A hand-written pm.Model with a residual SD sigma / sqrt(w) is the model of lmm(weights=):
    the same log-likelihood (lme4's, 1e-8) and estimates (1e-5 SE)."""
    d = _data(ref, "sleepstudy_ml")
    w = d["w"].to_numpy()
    if form == "divide_sqrt":
        model = _handwritten(d, lambda s: s / pt.sqrt(w))
    elif form == "times_inverse":
        model = _handwritten(d, lambda s: s * (1.0 / np.sqrt(w)))
    else:

        def sd_of(s):
            return s / pt.sqrt(pm.Data("w", w))

        model = _handwritten(d, sd_of)
    fit = pmv.fit(model, random=["z"], method="ML")
    r = ref["sleepstudy_ml"]
    np.testing.assert_allclose(fit.loglik, r["logLik"], rtol=1e-12, atol=1e-8)
    np.testing.assert_allclose(fit.spec.weights, w, rtol=1e-14 if form != "times_inverse" else 1e-12)
    p = fit.params("var")
    want = np.asarray(list(r["params_var"].values()))
    np.testing.assert_allclose((p.to_numpy() - want) / fit.se("var").to_numpy(), 0.0, atol=1e-5)
    assert p.index[-1] == "residual"


# -- binomial proportions ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cbpp_props():
    d = pmv.datasets.load("cbpp")
    return d.assign(prop=d["incidence"] / d["size"])


@pytest.fixture(scope="module")
def cbpp_prop(cbpp_props):
    return pmv.glmm("prop ~ period + (1 | herd)", cbpp_props, family="binomial", weights="size").fit()


def test_binomial_proportions_are_the_cbind_model(cbpp_props, cbpp_prop, cbpp_fit):
    """glmer(prop ~ ..., weights = size) is glmer(cbind(k, n - k) ~ ...): the same model here,
    identical numbers (lme4 1.1-31 also reports identical logLik and estimates, checked below)."""
    assert np.array_equal(cbpp_prop.spec.y, cbpp_props["incidence"].to_numpy(float))
    np.testing.assert_allclose(cbpp_prop.loglik, cbpp_fit.loglik, rtol=1e-13)
    np.testing.assert_allclose(cbpp_prop.params("sd"), cbpp_fit.params("sd"), rtol=1e-10)
    np.testing.assert_allclose(cbpp_prop.vcov("sd"), cbpp_fit.vcov("sd"), rtol=1e-8)
    np.testing.assert_allclose(cbpp_prop.scores("cluster"), cbpp_fit.scores("cluster"), rtol=1e-8, atol=1e-10)


def _against_glmmtmb_and_glmer(fit, r):
    """A cbpp fit (four fixed effects, one SD) against ``r``: glmmTMB 1.1.5 (logLik 1e-8 absolute,
    estimates 1e-5, full covariance 5e-3 scaled by the SEs, log-SD carried to the SD by the delta
    method) and glmer (logLik 5e-4, fixed effects 1e-3: its Laplace value sits 2.8e-4 below)."""
    np.testing.assert_allclose(fit.loglik, r["glmmTMB_logLik"], atol=1e-8)
    sd = np.exp(r["glmmTMB_log_sd"])
    np.testing.assert_allclose(fit.params("sd").to_numpy(), np.r_[r["glmmTMB_beta"], sd], atol=1e-5)
    J = np.diag([1.0, 1.0, 1.0, 1.0, sd])
    want = J @ np.array(r["glmmTMB_vcov_full_beta_logsd"]["values"]) @ J
    assert scaled_error(fit.vcov("sd").to_numpy(), want).max() < 5e-3
    np.testing.assert_allclose(fit.loglik, r["logLik"], atol=5e-4)
    np.testing.assert_allclose(fit.params("sd").to_numpy()[:4], r["beta"], atol=1e-3)


def test_binomial_proportions_against_lme4_and_glmmtmb(ref, cbpp_prop):
    """glmmTMB (same Laplace approximation, AD Hessian): logLik 1e-8 (measured 5e-12), estimates
    1e-5, full covariance 5e-3 scaled (as tests/test_glmm.py). glmer's Laplace logLik sits 2.8e-4
    below the exact value (tests/test_glmm.py): 5e-4 and 1e-3 there; its proportion and cbind fits agree."""
    r = ref["cbpp_proportions"]
    assert r["logLik"] == r["cbind_logLik"] and r["beta"] == r["cbind_beta"]
    _against_glmmtmb_and_glmer(cbpp_prop, r)


def test_bernoulli_rows_with_trials(cbpp_props):
    """A 0/1 response with weights n is n successes (or failures) out of n, glmer's reading."""
    d = cbpp_props.assign(any=(cbpp_props["incidence"] > 0).astype(float))
    a = pmv.glmm("any ~ period + (1 | herd)", d, family="binomial", weights="size")
    b = pmv.glmm("cbind(any * size, size - any * size) ~ period + (1 | herd)", d, family="binomial")
    fa, fb = a.fit(), b.fit()
    np.testing.assert_allclose(fa.loglik, fb.loglik, rtol=1e-13)
    np.testing.assert_allclose(fa.params("sd"), fb.params("sd"), rtol=1e-10)


def test_poisson_prior_weights_handwritten(ref):
    """glmer's Poisson prior weights multiply each observation's log-likelihood; as a hand-written
    model, pm.Potential("loglik", (w * logp).sum()). Against glmmTMB 1.1.5 (logLik 1e-8 absolute,
    estimates 1e-5, full covariance 5e-3 scaled, as for cbpp) and glmer (5e-4, 1e-3: its Laplace
    value, as above)."""
    r = ref["cbpp_poisson_prior_weights"]
    d = pmv.datasets.load("cbpp")
    w = np.asarray(r["weights"], float)
    herd = d["herd"].cat.codes.to_numpy()
    X = np.column_stack([np.ones(len(d))] + [(d["period"] == k).to_numpy(float) for k in "234"])
    with pm.Model(coords={"herd": list(d["herd"].cat.categories)}) as model:
        b = pm.Normal("b", 0, 10, shape=4)
        sd = pm.HalfNormal("sd", 1.0)
        u = pm.Normal("u", 0.0, sd, dims="herd")
        eta = pt.dot(X, b) + u[herd]
        pm.Potential("loglik", (w * pm.logp(pm.Poisson.dist(pt.exp(eta)), d["incidence"].to_numpy())).sum())
    fit = pmv.fit(model, random=["u"])
    _against_glmmtmb_and_glmer(fit, r)


# -- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-1.0, "weights column 'w' has 1 negative value"),
        (np.nan, "weights column 'w' has 1 missing"),
        (np.inf, "weights column 'w' has 1 infinite"),
        (0.0, "weights column 'w' has 1 zero value.*drop those rows"),
    ],
)
def test_bad_weights_name_the_column(sleepstudy, value, match):
    w = np.ones(len(sleepstudy))
    w[4] = value
    with pytest.raises(MixVcovError, match=match + r".*rows \[4\]" if "zero" not in match else match):
        pmv.lmm(SLEEP, sleepstudy.assign(w=w), weights="w")


def test_weights_length_column_and_type(sleepstudy):
    with pytest.raises(MixVcovError, match="179 values for 180 observations"):
        pmv.lmm(SLEEP, sleepstudy, weights=np.ones(179))
    with pytest.raises(MixVcovError, match="'wt' is not a column"):
        pmv.lmm(SLEEP, sleepstudy, weights="wt")
    with pytest.raises(MixVcovError, match="weights column 'Subject' is not numeric"):
        pmv.lmm(SLEEP, sleepstudy, weights="Subject")


def test_binomial_weights_errors(cbpp_props):
    cbpp = cbpp_props
    d = cbpp.copy()
    d.loc[0, "prop"] += 0.01
    with pytest.raises(MixVcovError, match=r"not a whole number at 1 row\(s\), rows \[0\]"):
        pmv.glmm("prop ~ period + (1 | herd)", d, family="binomial", weights="size")
    with pytest.raises(MixVcovError, match="must be whole numbers"):
        pmv.glmm("prop ~ period + (1 | herd)", cbpp, family="binomial", weights=cbpp["size"] + 0.5)
    with pytest.raises(MixVcovError, match=r"proportion in \[0, 1\]"):
        pmv.glmm("incidence ~ period + (1 | herd)", cbpp, family="binomial", weights="size")
    with pytest.raises(MixVcovError, match="trials are already in"):
        pmv.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, weights="size")
    with pytest.raises(MixVcovError, match="not weights for family .poisson.*pm.Potential"):
        pmv.glmm("incidence ~ period + (1 | herd)", cbpp, family="poisson", weights="size")
    with pytest.raises(MixVcovError, match="weights column 'size' has 1 zero"):
        pmv.glmm("prop ~ period + (1 | herd)", cbpp.assign(size=cbpp["size"].where(cbpp.index != 3, 0)), weights="size")


def test_residual_sd_other_forms_refused(ref):
    """A residual SD that varies with a parameter, or precision weights through tau, is not
    read as weights: the error says which form is."""
    d = _data(ref, "sleepstudy_ml")
    w = d["w"].to_numpy()
    model = _handwritten(d, lambda s: s * pt.exp(0.1 * pm.Normal("g", 0, 1) * d["Days"].to_numpy()))
    with pytest.raises(MixVcovError, match=r"sigma / pt.sqrt\(w\)"):
        pmv.fit(model, random=["z"])
    model = _handwritten(d, lambda s: (s**-2 * w) ** -0.5)
    with pytest.raises(MixVcovError, match=r"sigma / pt.sqrt\(w\)"):
        pmv.fit(model, random=["z"])


def test_anova_sees_different_weights(ref):
    """Models with different weights are not nested: no boundary-corrected p."""
    d = _data(ref, "sleepstudy_ml")
    small = pmv.lmm("Reaction ~ Days + (1 | Subject)", d).fit()
    large = pmv.lmm(SLEEP, d, weights="w").fit()
    table = pmv.anova(small, large)
    assert np.isnan(table["p_boundary"].iloc[1])
    assert "the models have different weights" in list(table.attrs["notes"].values())[1]
