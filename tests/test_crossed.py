"""The blocked engine (pymc_mixvcov/blocked.py) for crossed designs.

Checked against the cluster engine (dense factors, pytensor-differentiated graphs) on the same
models at the same parameters, against its own criterion by central differences, and against
lme4 1.1-31 / merDeriv 0.2-4 (penicillin_crossed_ml.json), glmmTMB (tmb_insteval_lmm.json) and numDeriv
(kb07_numderiv.json). The engine's routes among themselves: test_blocked_routes.py.
"""

import numpy as np
import pandas as pd
import pytest
from conftest import ref_matrix, reference, scaled_error

import pymc_mixvcov as pmv
from pymc_mixvcov.engines.blocked import BlockedLMMFunctions, blocked_data, ml_derivatives, profile, reml_derivatives


@pytest.fixture(scope="module")
def crossed_vector():
    """Simulated crossed design with a correlated vector term: 8 g-levels (intercept and slope)
    crossed with 6 h-levels, 3 replicates per cell, n = 144."""
    rng = np.random.default_rng(14)
    g = np.repeat(np.arange(8), 18)
    h = np.tile(np.repeat(np.arange(6), 3), 8)
    x = rng.normal(size=g.size)
    G = np.array([[1.0, 0.3], [0.3, 0.5]])
    u = rng.multivariate_normal(np.zeros(2), G, size=8)
    v = rng.normal(scale=0.7, size=6)
    y = 1.0 + 0.5 * x + u[g, 0] + u[g, 1] * x + v[h] + rng.normal(scale=0.8, size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{k}" for k in g], "h": [f"h{k}" for k in h]})


CASES = {
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", lambda _: pmv.datasets.load("penicillin")),
    "pastes": ("strength ~ 1 + (1 | batch/cask)", lambda _: pmv.datasets.load("pastes")),
    "crossed_vector": ("y ~ x + (1 + x | g) + (1 | h)", lambda d: d),
}


#: the cases every run compares; the others compile the dense engine's graphs of 30- to 50-effect
#: clusters (20-40 s each on a first run) and run with -m slow
DEFAULT_CASES = {("pastes", "ML"), ("pastes", "REML"), ("crossed_vector", "ML")}


@pytest.fixture(
    scope="module",
    params=[
        (c, m) if (c, m) in DEFAULT_CASES else pytest.param((c, m), marks=pytest.mark.slow)
        for c in CASES
        for m in ("ML", "REML")
    ],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def both_engines(request, crossed_vector):
    case, method = request.param
    formula, load = CASES[case]
    model = pmv.lmm(formula, load(crossed_vector))
    return model.fit(method, engine="clusters"), model.fit(method, engine="blocked")


def test_engine_is_reported(both_engines):
    dense, blocked = both_engines
    assert dense.engine == "clusters" and blocked.engine == "blocked"
    assert blocked.to_datatree()["estimates"].attrs["engine"] == "blocked"


def test_same_information_at_the_same_point(both_engines):
    """Both engines evaluate the same exact formulas: at the cluster engine's optimum the blocked
    engine's criterion, gradient and (observed and expected) information agree to rounding."""
    dense, blocked = both_engines
    nat = dense._opt["nat"]
    a = dense._functions.information(nat, expected=True)
    b = BlockedLMMFunctions(dense.spec, dense.structure, dense.method).information(nat, expected=True)
    np.testing.assert_allclose(b["loglik"], a["loglik"], rtol=1e-10)
    scale = np.sqrt(np.abs(np.diag(a["observed"])))
    np.testing.assert_allclose(b["grad"] / scale, a["grad"] / scale, atol=1e-8)
    for k in ("observed", "expected"):
        s = np.sqrt(np.abs(np.diag(a[k])))
        np.testing.assert_allclose(b[k] / np.outer(s, s), a[k] / np.outer(s, s), atol=1e-8)


@pytest.mark.parametrize("information", ["observed", "expected"])
def test_fits_agree(both_engines, information):
    """Separate fits: the optima agree to the optimiser's tolerance (Newton decrement < 1e-6 at
    worst, usually ~1e-12), so the log-likelihood to 1e-8 relative and the covariances to 1e-5 of
    the standard errors; the REML cross block both ways."""
    dense, blocked = both_engines
    assert dense.converged and blocked.converged
    np.testing.assert_allclose(blocked.loglik, dense.loglik, rtol=1e-8)
    for scale in ("sd", "var", "cholesky", "natural"):
        for cross in ("zero", "ml"):
            want = dense.vcov(scale, information, reml_cross=cross).to_numpy()
            got = blocked.vcov(scale, information, reml_cross=cross).to_numpy()
            assert scaled_error(got, want).max() < 1e-5, (scale, cross)
    pd.testing.assert_index_equal(blocked.summary().index, dense.summary().index)


@pytest.mark.parametrize("information", ["observed", "expected"])
def test_penicillin_against_merderiv(information):
    fit = pmv.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", pmv.datasets.load("penicillin")).fit(engine="blocked")
    ref = reference("penicillin_crossed_ml")
    # lme4's optimiser stops within ~1e-6 of the maximum (its printed logLik), ours at a Newton decrement < 1e-6
    np.testing.assert_allclose(fit.loglik, ref["logLik"], rtol=1e-8)
    for scale in ("var", "sd"):
        want = ref_matrix(ref, f"merDeriv_vcov_{information}_{scale}")
        got = fit.vcov(scale, information)
        if scale == "var":
            assert list(got.index) == list(want.index)
        # merDeriv's ML information is exact; 2e-3 of the SEs covers lme4's optimum (as test_lmm_reference)
        assert scaled_error(got.to_numpy(), want.to_numpy()).max() < 2e-3


def _central(f, x, h):
    out = []
    for k in range(x.size):
        e = np.zeros_like(x)
        e[k] = h * max(1.0, abs(x[k]))
        out.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * e[k]))
    return np.array(out)


@pytest.fixture(scope="module")
def vector_data(crossed_vector):
    model = pmv.lmm("y ~ x + (1 + x | g) + (1 | h)", crossed_vector)
    from pymc_mixvcov.model.spec import inspect_model

    spec = inspect_model(model.model, model.random)
    return blocked_data(spec)


# an interior point away from the optimum: beta, theta (L_g lower triangle, L_h), sigma
PHI = np.array([0.9, 0.4, 0.8, 0.2, 0.6, 0.5, 0.9])


def test_ml_gradient_and_hessian_against_central_differences(vector_data):
    d = vector_data
    res = ml_derivatives(d, PHI)
    # central differences with h = 1e-5: truncation error O(h^2 f''') ~ 1e-9, rounding ~1e-11 / h
    g_fd = _central(lambda x: ml_derivatives(d, x)["loglik"], PHI, 1e-5)
    np.testing.assert_allclose(res["grad"], g_fd, rtol=1e-6, atol=1e-6)
    H_fd = _central(lambda x: ml_derivatives(d, x)["grad"], PHI, 1e-5)
    np.testing.assert_allclose(res["hess"], 0.5 * (H_fd + H_fd.T), rtol=1e-6, atol=1e-6)


def test_reml_and_profile_gradients_against_central_differences(vector_data):
    d = vector_data
    ts = PHI[2:]
    for method in ("ML", "REML"):
        f, g, _ = profile(d, ts, method)
        g_fd = _central(lambda x, m=method: profile(d, x, m)[0], ts, 1e-5)
        np.testing.assert_allclose(g, g_fd, rtol=1e-6, atol=1e-6)
    res = reml_derivatives(d, ts)
    np.testing.assert_allclose(res["loglik"], profile(d, ts, "REML")[0], rtol=1e-12)
    H_fd = _central(lambda x: reml_derivatives(d, x)["grad"], ts, 1e-5)
    np.testing.assert_allclose(res["hess"], 0.5 * (H_fd + H_fd.T), rtol=1e-6, atol=1e-6)


def test_auto_engine_choice(crossed_vector):
    # Penicillin: one cluster of 30 effects (<= 64): the cluster engine
    small = pmv.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", pmv.datasets.load("penicillin")).fit()
    assert small.engine == "clusters"
    # 40 x 30 crossed levels: one cluster of 70 effects: the blocked engine
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 40, 400), rng.integers(0, 30, 400)
    y = rng.normal(size=400) + 0.5 * rng.normal(size=40)[a] + 0.5 * rng.normal(size=30)[b]
    data = pd.DataFrame({"y": y, "a": a.astype(str), "b": b.astype(str)})
    big = pmv.lmm("y ~ 1 + (1 | a) + (1 | b)", data).fit()
    assert big.engine == "blocked"
    with pytest.raises(pmv.MixVcovError, match="unknown engine 'dense'; valid engines are: 'auto', 'clusters'"):
        pmv.lmm("y ~ 1 + (1 | a) + (1 | b)", data).fit(engine="dense")


@pytest.mark.filterwarnings("ignore:only 6 clusters for 7 parameters")  # the simulated design's 6 h-levels
def test_observation_scores_and_multiway_sandwich(both_engines):
    """Casewise scores (merDeriv's decomposition) agree with the cluster engine's at the same point
    to rounding, and the two-way sandwich of the separate fits to the optimiser's tolerance."""
    dense, blocked = both_engines
    if dense.method != "ML":
        with pytest.raises(pmv.MixVcovError, match="maximum-likelihood fits"):
            blocked.scores("observation")
        return
    nat = dense._opt["nat"]
    a = dense._functions.observation_scores(nat)
    b = BlockedLMMFunctions(dense.spec, dense.structure, "ML").observation_scores(nat)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-10 * np.abs(a).max())
    # the scores sum to the gradient, ~0 at the optimum
    info = dense._functions.information(nat)
    np.testing.assert_allclose(b.sum(0), info["grad"], rtol=0, atol=1e-8 * np.abs(a).max())
    cl = [dense.spec.terms[0].codes, dense.spec.terms[-1].codes]
    want = dense.sandwich("var", cluster=cl).to_numpy()
    got = blocked.sandwich("var", cluster=cl).to_numpy()
    assert scaled_error(got, want).max() < 1e-5


def test_per_cluster_pieces_of_several_clusters_raise(both_engines):
    dense, blocked = both_engines
    if blocked.method != "ML" or blocked.n_clusters == 1:
        pytest.skip("a model of several clusters (Pastes) fitted by ML")
    with pytest.raises(pmv.MixVcovError, match="per cluster are not yet available on the blocked engine"):
        blocked.scores("cluster")


def test_handwritten_crossed_model_on_the_blocked_engine():
    """Penicillin written by hand in PyMC (SDs as HalfNormal parameters): the blocked engine works on
    ``phi`` and the model map carries it to the model's own parameters, as for the cluster engine."""
    import pymc as pm

    d = pmv.datasets.load("penicillin")
    plate, sample = d["plate"].cat.codes.to_numpy(), d["sample"].cat.codes.to_numpy()
    coords = {"plate": list(d["plate"].cat.categories), "sample": list(d["sample"].cat.categories)}
    with pm.Model(coords=coords) as model:
        b = pm.Normal("b", 20, 10)
        up = pm.Normal("up", 0, pm.HalfNormal("sd_plate", 5.0), dims="plate")
        us = pm.Normal("us", 0, pm.HalfNormal("sd_sample", 5.0), dims="sample")
        sigma = pm.HalfNormal("sigma", 5.0)
        pm.Normal("y", b + up[plate] + us[sample], sigma, observed=d["diameter"].to_numpy(float))
    fit = pmv.fit(model, random=["up", "us"], engine="blocked")
    ref = pmv.fit(model, random=["up", "us"], engine="clusters")
    assert fit.engine == "blocked"
    np.testing.assert_allclose(fit.loglik, ref.loglik, rtol=1e-8)
    for scale in ("natural", "sd"):
        for information in ("observed", "expected"):
            want = ref.vcov(scale, information).to_numpy()
            assert scaled_error(fit.vcov(scale, information).to_numpy(), want).max() < 1e-5


@pytest.mark.slow
def test_insteval_against_glmmtmb():
    """InstEval (73,421 rows, 4,128 crossed effects) against glmmTMB's logLik and vcov(full = TRUE)
    on (beta, log sigma^2, log SDs), mapped to the SD scale with the exact Jacobian of the log."""
    ref = reference("tmb_insteval_lmm")
    fit = pmv.lmm("y ~ service + (1 | s) + (1 | d) + (1 | dept:service)", pmv.datasets.load("insteval")).fit()
    assert fit.engine == "blocked" and fit.converged
    np.testing.assert_allclose(fit.loglik, ref["logLik"], rtol=1e-6)
    np.testing.assert_allclose(fit.loglik, ref["lme4_logLik"], rtol=1e-6)
    V = ref_matrix(ref, "vcov_full").to_numpy()
    got = fit.vcov("sd")
    # ours: beta, sd_s, sd_d, sd_dept:service, sigma; glmmTMB: beta, log sigma^2, then the log SDs
    order = [0, 1, 3, 4, 5, 2]
    est = fit.params("sd").to_numpy()
    jac = np.array([1.0, 1.0, est[2], est[3], est[4], est[5] / 2.0])  # d(ours)/d(TMB's), in our order
    want = V[np.ix_(order, order)] * np.outer(jac, jac)
    assert scaled_error(got.to_numpy(), want).max() < 2e-3


@pytest.mark.slow  # a first run compiles the scale maps of two 4 x 4 terms (about 15 s)
def test_kb07_against_numderiv():
    """A kb07-shaped crossed design with correlated 4 x 4 terms for subjects and items (1,789 rows,
    ``benchmarks/_data.py`` kb07, kept as ``tests/reference/kb07_sim.csv``), against
    ``kb07_numderiv.json`` (``generate_kb07.R``: lme4 1.1-31's ML fit by bobyqa to ``rhoend = 1e-10``,
    and minus the inverse of numDeriv's Richardson Hessian of the exact log-likelihood, mapped to
    the var scale by the exact Jacobian; merDeriv is not installable here). Tolerances: the
    log-likelihood to 1e-9 (both optimisers converge far below it); the covariance to 2e-4 of the
    SEs, ten times the reference's own finite-difference error (1.8e-5 measured; a central-difference
    Hessian of this engine's criterion agrees with its exact one to 6e-5)."""
    from conftest import REF

    ref = reference("kb07_numderiv")
    data = pd.read_csv(REF / "kb07_sim.csv")
    data["subj"], data["item"] = data["subj"].astype("category"), data["item"].astype("category")
    fit = pmv.lmm("rt ~ S + T + U + (1 + S + T + U | subj) + (1 + S + T + U | item)", data).fit()
    assert fit.engine == "blocked" and fit.converged
    np.testing.assert_allclose(fit.loglik, ref["lme4_logLik"], rtol=1e-9)
    want = ref_matrix(ref, "vcov_var_numderiv")
    got = fit.vcov("var")
    assert list(got.index) == list(want.index)
    assert scaled_error(got.to_numpy(), want.to_numpy()).max() < 2e-4
