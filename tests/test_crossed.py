"""The blocked engine (pymc_mixvcov/blocked.py) for crossed designs.

Checked against the cluster engine (dense factors, pytensor-differentiated graphs) on the same
models at the same parameters, against its own criterion by central differences, and against
lme4 1.1-31 / merDeriv 0.2-4 (penicillin_crossed_ml.json), glmmTMB (tmb_insteval_lmm.json) and numDeriv
(kb07_numderiv.json). The engine's routes among themselves: test_blocked_routes.py.
"""

import numpy as np
import pandas as pd
import pytest
from conftest import central_differences, on_engine, ref_matrix, reference, scaled_error

import pymc_mixvcov as pmv
from pymc_mixvcov.engines import blocked_clusters
from pymc_mixvcov.engines.blocked import BlockedLMMFunctions, blocked_data, ml_derivatives, profile, reml_derivatives

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
    g_fd = central_differences(lambda x: ml_derivatives(d, x)["loglik"], PHI, 1e-5)
    np.testing.assert_allclose(res["grad"], g_fd, rtol=1e-6, atol=1e-6)
    H_fd = central_differences(lambda x: ml_derivatives(d, x)["grad"], PHI, 1e-5)
    np.testing.assert_allclose(res["hess"], 0.5 * (H_fd + H_fd.T), rtol=1e-6, atol=1e-6)


def test_reml_and_profile_gradients_against_central_differences(vector_data):
    d = vector_data
    ts = PHI[2:]
    for method in ("ML", "REML"):
        f, g, _ = profile(d, ts, method)
        g_fd = central_differences(lambda x, m=method: profile(d, x, m)[0], ts, 1e-5)
        np.testing.assert_allclose(g, g_fd, rtol=1e-6, atol=1e-6)
    res = reml_derivatives(d, ts)
    np.testing.assert_allclose(res["loglik"], profile(d, ts, "REML")[0], rtol=1e-12)
    H_fd = central_differences(lambda x: reml_derivatives(d, x)["grad"], ts, 1e-5)
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


@pytest.mark.parametrize("route", ["dense", "blocked"])
def test_per_cluster_pieces_of_several_clusters(both_engines, route, monkeypatch):
    """Pastes (10 clusters of 4 effects) on the blocked engine: at the cluster engine's estimates
    every cluster's log-likelihood, score and observed and expected information are the cluster
    engine's (pytensor graphs) to rounding, by either route of engines/blocked_clusters.py (small
    clusters batched with dense matrices; every cluster's sub-model on the blocked engine,
    ``DENSE_MAX = 0``): measured 1e-13 relative, asserted 1e-10 (log-likelihoods) and 1e-8 of the
    standard errors; so are the CR1 and CR3 sandwiches on both informations and the cluster
    log-likelihoods of the result. REML fits get the ML pieces, as from the cluster engine."""
    dense, blocked = both_engines
    if blocked.n_clusters == 1:
        pytest.skip("a model of several clusters (Pastes)")
    if route == "blocked":
        monkeypatch.setattr(blocked_clusters, "DENSE_MAX", 0)
    nat = dense._opt["nat"]
    fns = BlockedLMMFunctions(dense.spec, blocked.structure, dense.method)
    got, want = fns.clusters(nat), dense._functions.clusters(nat)
    got_e, want_e = fns.clusters_expected(nat), dense._functions.clusters_expected(nat)
    s = np.sqrt(np.diag(want["observed"]))
    S = np.outer(s, s)
    np.testing.assert_allclose(got["loglik"], want["loglik"], rtol=1e-10)
    np.testing.assert_allclose(got["loglik_free"], want["loglik_free"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["scores"] / s, want["scores"] / s, rtol=0, atol=1e-8)
    np.testing.assert_allclose(got["observed_clusters"] / S, want["observed_clusters"] / S, rtol=0, atol=1e-8)
    np.testing.assert_allclose(got_e["expected_clusters"] / S, want_e["expected_clusters"] / S, rtol=0, atol=1e-8)
    at = on_engine(dense, fns)
    if dense.method != "ML":
        with pytest.raises(pmv.MixVcovError, match="maximum-likelihood fits"):
            at.scores("cluster")
        return
    for information in ("observed", "expected"):
        for adjust in ("CR1", "CR3"):
            want_v = dense.sandwich("var", information, adjust=adjust).to_numpy()
            got_v = at.sandwich("var", information, adjust=adjust).to_numpy()
            assert scaled_error(got_v, want_v).max() < 1e-8, (information, adjust)
    pd.testing.assert_series_equal(at.loglik_contributions(), dense.loglik_contributions(), rtol=1e-10)
    pd.testing.assert_frame_equal(at.scores("cluster", "natural"), dense.scores("cluster", "natural"), atol=1e-8)


def test_per_cluster_pieces_add_up(both_engines):
    """The blocked fit's own per-cluster pieces (Pastes, ML) at its estimates: log-likelihoods,
    scores and information contributions sum to the whole model's (evaluated at once) to rounding;
    the scores sum to ~0 there (the optimiser stops at a Newton decrement below 1e-6, so
    ``|g_k| / sqrt(A_kk) < 1e-3``; measured 5e-7); merDeriv's casewise scores (observation level)
    sum within each cluster to its score."""
    _, blocked = both_engines
    if blocked.method != "ML" or blocked.n_clusters == 1:
        pytest.skip("a model of several clusters (Pastes) fitted by ML")
    fns, nat = blocked._functions, blocked._opt["nat"]
    c, e = fns.clusters(nat), fns.clusters_expected(nat)
    s = np.sqrt(np.diag(c["observed"]))
    S = np.outer(s, s)
    np.testing.assert_allclose(c["loglik"].sum() + c["loglik_free"], blocked.loglik, rtol=1e-12)
    np.testing.assert_allclose(blocked.loglik_contributions().sum(), blocked.loglik, rtol=1e-12)
    np.testing.assert_allclose(c["scores"].sum(0) / s, c["grad"] / s, rtol=0, atol=1e-10)
    assert np.max(np.abs(c["scores"].sum(0) / s)) < 1e-3
    np.testing.assert_allclose(c["observed_clusters"].sum(0) / S, c["observed"] / S, rtol=0, atol=1e-10)
    np.testing.assert_allclose(e["expected_clusters"].sum(0) / S, e["expected"] / S, rtol=0, atol=1e-10)
    summed = np.zeros_like(c["scores"])
    np.add.at(summed, blocked.structure.obs_cluster, fns.observation_scores(nat))
    np.testing.assert_allclose(summed / s, c["scores"] / s, rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def partial_design():
    """A partially crossed design (seed 11): one crossed component (6 levels of ``a`` x 4 of ``b``,
    60 rows: 10 effects), 8 clusters of one level of each factor (4 rows each), 4 clusters of a
    level of ``a`` alone (3 rows each, ``w = 0``: they use no ``b`` effect), and 5 rows that use no
    random effect (``z = w = 0``)."""
    rng = np.random.default_rng(11)
    a, b, z, w = [], [], [], []
    for _ in range(60):
        a.append(rng.integers(0, 6)), b.append(rng.integers(0, 4)), z.append(1.0), w.append(1.0)
    for k in range(8):
        for _ in range(4):
            a.append(6 + k), b.append(4 + k), z.append(1.0), w.append(1.0)
    for k in range(4):
        for _ in range(3):
            a.append(14 + k), b.append(0), z.append(1.0), w.append(0.0)
    for _ in range(5):
        a.append(0), b.append(0), z.append(0.0), w.append(0.0)
    a, b, z, w = map(np.array, (a, b, z, w))
    x = rng.normal(size=a.size)
    u, v = rng.normal(scale=0.8, size=18), rng.normal(scale=0.6, size=12)
    y = 1.0 + 0.5 * x + z * u[a] + w * v[b] + rng.normal(scale=0.7, size=a.size)
    return pd.DataFrame({"y": y, "x": x, "z": z, "w": w, "a": [f"a{k:02d}" for k in a], "b": [f"b{k:02d}" for k in b]})


PARTIAL = "y ~ x + (0 + z | a) + (0 + w | b)"


def _free_pieces(fns, nat, rows):
    """Log-likelihood, gradient, observed and expected information of the rows without random
    effects on the natural scale, in closed form: ``-n/2 log(2 pi sigma^2) - |y - X beta|^2 / (2 sigma^2)``
    in ``phi = (beta, theta, sigma)`` (derivatives by hand), carried by the model map."""
    phi, J, T = fns.map(nat)
    X, y = np.asarray(fns.spec.X, float)[rows], np.asarray(fns.spec.y, float)[rows]
    p, sg = fns.sig.p, phi.size - 1
    beta, sigma = phi[:p], phi[-1]
    r = y - X @ beta
    n, rr = rows.size, r @ r
    g = np.zeros(phi.size)
    g[:p], g[sg] = X.T @ r / sigma**2, -n / sigma + rr / sigma**3
    H = np.zeros((phi.size, phi.size))
    H[:p, :p] = -X.T @ X / sigma**2
    H[:p, sg] = H[sg, :p] = -2.0 * X.T @ r / sigma**3
    H[sg, sg] = n / sigma**2 - 3.0 * rr / sigma**4
    E = np.zeros_like(H)
    E[:p, :p], E[sg, sg] = X.T @ X / sigma**2, 2.0 * n / sigma**2
    ll = -0.5 * n * np.log(2 * np.pi * sigma**2) - rr / (2 * sigma**2)
    return ll, J.T @ g, -(J.T @ H @ J + np.einsum("k,kij->ij", g, T)), J.T @ E @ J


def test_partially_crossed_design_with_free_rows(partial_design, monkeypatch):
    """The routes of engines/blocked_clusters.py give the same pieces to rounding (1e-10): all
    clusters batched dense; the crossed component's sub-model on the blocked engine and the rest
    dense (``DENSE_MAX = 4``); every cluster on the blocked engine (``DENSE_MAX = 0``: the clusters of
    ``a`` alone drop the ``b`` term). At a point away from the optimum (all scores nonzero), the
    clusters' pieces plus the free rows' (closed form) are the whole model's, evaluated at once,
    and the casewise scores sum within each cluster to its score (rows that leave the ``b`` term
    unused included)."""
    fit = pmv.lmm(PARTIAL, partial_design).fit("ML", engine="blocked")
    st = fit.structure
    assert st.n_clusters == 13 and st.free[3] == 5 and sorted(st.sizes)[-1] == 10
    nat = fit._opt["nat"] * 1.1 + 0.05
    got = {}
    for dense_max in (64, 4, 0):
        monkeypatch.setattr(blocked_clusters, "DENSE_MAX", dense_max)
        fns = BlockedLMMFunctions(fit.spec, st, "ML")
        got[dense_max] = {**fns.clusters(nat), **fns.clusters_expected(nat)}
    c = got[64]
    s = np.sqrt(np.diag(c["observed"]))
    S = np.outer(s, s)
    for other in (got[4], got[0]):
        np.testing.assert_allclose(other["loglik"], c["loglik"], rtol=1e-10)
        np.testing.assert_allclose(other["scores"] / s, c["scores"] / s, rtol=0, atol=1e-10)
        for k in ("observed_clusters", "expected_clusters"):
            np.testing.assert_allclose(other[k] / S, c[k] / S, rtol=0, atol=1e-10)
    ll, g, H, E = _free_pieces(fns, nat, np.flatnonzero(st.obs_cluster < 0))
    np.testing.assert_allclose(c["loglik_free"], ll, rtol=1e-12)
    np.testing.assert_allclose(c["loglik"].sum() + ll, c["loglik_total"], rtol=1e-12)
    np.testing.assert_allclose((c["scores"].sum(0) + g) / s, c["grad"] / s, rtol=0, atol=1e-10)
    np.testing.assert_allclose((c["observed_clusters"].sum(0) + H) / S, c["observed"] / S, rtol=0, atol=1e-10)
    np.testing.assert_allclose((c["expected_clusters"].sum(0) + E) / S, c["expected"] / S, rtol=0, atol=1e-10)
    # merDeriv's casewise scores: summed within each cluster its score, over the free rows theirs
    obs = fns.observation_scores(nat)
    oc = st.obs_cluster
    summed = np.zeros_like(c["scores"])
    np.add.at(summed, oc[oc >= 0], obs[oc >= 0])
    np.testing.assert_allclose(summed / s, c["scores"] / s, rtol=0, atol=1e-10)
    np.testing.assert_allclose(obs[oc < 0].sum(0) / s, g / s, rtol=0, atol=1e-10)


def test_partially_crossed_cluster_rows_are_refused_with_the_reason(partial_design):
    """Without the rows that use no random effect the partially crossed design has 13 clusters, none
    of them named by one grouping factor: cluster-level rows are refused with that reason (not as a
    design of one cluster), and observation-level scores still sum to ~0 at the optimum."""
    data = partial_design[partial_design["z"] > 0].reset_index(drop=True)
    fit = pmv.lmm(PARTIAL, data).fit("ML", engine="blocked")
    assert fit.structure.n_clusters == 13 and fit.structure.free[3] == 0
    with pytest.raises(pmv.MixVcovError, match="partially crossed: its 13 independent clusters"):
        fit.scores("cluster")
    S = fit.scores("observation", "natural").to_numpy()
    np.testing.assert_allclose(S.sum(0) * fit.se("natural").to_numpy(), 0, atol=1e-4)


@pytest.mark.slow  # the cluster engine compiles graphs of clusters of 1, 2 and 10 effects (about 60 s on a first run)
def test_partially_crossed_design_against_the_cluster_engine(partial_design):
    """The same design fitted by the cluster engine: at its estimates the blocked engine's pieces
    (the component on the blocked engine with ``DENSE_MAX = 4`` as well) are its to rounding, the
    free rows' log-likelihood included, and so are the casewise scores."""
    dense = pmv.lmm(PARTIAL, partial_design).fit("ML", engine="clusters")
    nat = dense._opt["nat"]
    want, want_e = dense._functions.clusters(nat), dense._functions.clusters_expected(nat)
    s = np.sqrt(np.diag(want["observed"]))
    S = np.outer(s, s)
    for dense_max in (64, 4):
        blocked_clusters.DENSE_MAX, keep = dense_max, blocked_clusters.DENSE_MAX
        try:
            fns = BlockedLMMFunctions(dense.spec, dense.structure, "ML")
            got, got_e = fns.clusters(nat), fns.clusters_expected(nat)
        finally:
            blocked_clusters.DENSE_MAX = keep
        np.testing.assert_allclose(got["loglik"], want["loglik"], rtol=1e-10)
        np.testing.assert_allclose(got["loglik_free"], want["loglik_free"], rtol=1e-12)
        np.testing.assert_allclose(got["scores"] / s, want["scores"] / s, rtol=0, atol=1e-8)
        np.testing.assert_allclose(got["observed_clusters"] / S, want["observed_clusters"] / S, rtol=0, atol=1e-8)
        np.testing.assert_allclose(got_e["expected_clusters"] / S, want_e["expected_clusters"] / S, rtol=0, atol=1e-8)
    want_o = dense._functions.observation_scores(nat)
    got_o = BlockedLMMFunctions(dense.spec, dense.structure, "ML").observation_scores(nat)
    np.testing.assert_allclose(got_o / s, want_o / s, rtol=0, atol=1e-10)


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
