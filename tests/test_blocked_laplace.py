"""The blocked Laplace engine (pymc_mixvcov/engines/blocked_laplace.py) for crossed GLMMs.

Checked against four independent routes:

1. The cluster Laplace engine (pymc_mixvcov/engines/jets.py, itself checked against pytensor's graph
   derivatives in test_jets.py) at the same parameters: the same Laplace value, gradient and
   Hessian with a dense ``s x s`` factor of the one cluster, so they agree to rounding (1e-10
   relative to the largest entry; measured 1e-14 to 1e-15). Several clusters (nested or one
   grouping factor): the observation scores summed within clusters are the cluster scores.
2. Central differences of the engine's own value and gradient (step 1e-5: truncation error
   about 1e-10 relative, and the inner modes' tolerance 1e-10 divided by the step: 1e-6 relative
   to the largest entry).
3. The dense linear algebra the blocked factor replaces: solves, ``log|H|``, the selected inverse
   and ``tr(H^-1 R_a H^-1 R_b)`` from NumPy's dense inverse, to rounding.
4. Separate fits by both engines (VerbAgg, grouseticks): the optima agree to the optimiser's
   tolerance (log-likelihood 1e-8 relative; covariances 1e-6 of the standard errors). InstEval's
   binary logit against glmmTMB (tests/reference/tmb_insteval_logit.json) with ``-m slow``.
"""

import numpy as np
import pandas as pd
import pytest
from conftest import central_differences, on_engine, ref_matrix, reference, scaled_error

import pymc_mixvcov as pmv
from pymc_mixvcov.compilation.derivatives import LaplaceFunctions
from pymc_mixvcov.engines import blocked_clusters
from pymc_mixvcov.engines.blocked_laplace import BlockedLaplaceFunctions, BlockedLaplaceLayout, SchurFactor
from pymc_mixvcov.engines.marginal import build_structure
from pymc_mixvcov.model.spec import inspect_model


@pytest.fixture(scope="module")
def crossed():
    """Simulated crossed design: 25 levels of ``a`` crossed with 9 of ``b`` (unbalanced, 300 rows),
    a covariate ``x`` with a random slope on ``b``; binary, count, overdispersed-count and
    positive responses from one linear predictor (seed 1)."""
    rng = np.random.default_rng(1)
    n = 300
    a = rng.integers(0, 25, n)
    b = rng.integers(0, 9, n)
    x = rng.normal(size=n)
    eta = -0.3 + 0.7 * x + 0.8 * rng.normal(size=25)[a] + 0.5 * rng.normal(size=9)[b] + 0.3 * rng.normal(size=9)[b] * x
    return pd.DataFrame(
        {
            "y": rng.binomial(1, 1 / (1 + np.exp(-eta))),
            "yc": rng.poisson(np.exp(0.2 * eta)),
            "yn": rng.poisson(np.exp(0.2 * eta) * rng.gamma(2.0, 0.5, n)),
            "yg": np.exp(0.2 * eta) * rng.gamma(3.0, 1 / 3.0, n),
            "x": x,
            "a": [f"a{k}" for k in a],
            "b": [f"b{k}" for k in b],
        }
    )


CASES = {
    "binomial, crossed": ("y ~ x + (1 | a) + (1 | b)", "binomial"),
    "binomial, vector first term": ("y ~ x + (1 + x | a) + (1 | b)", "binomial"),
    "poisson, vector second term": ("yc ~ x + (1 | a) + (1 + x | b)", "poisson"),
    "negative binomial, crossed": ("yn ~ x + (1 | a) + (1 | b)", "negative_binomial"),
    "gamma, three terms": ("yg ~ x + (1 | a) + (0 + x | b) + (1 | b)", "gamma"),
    "poisson, nested": ("yc ~ x + (1 | b) + (1 | a:b)", "poisson"),
    "poisson, one factor": ("yc ~ x + (x | a)", "poisson"),
}


def _engines(data, case):
    formula, family = CASES[case]
    model = pmv.glmm(formula, data, family=family)
    spec = inspect_model(model.model, model.random)
    structure = build_structure(spec)
    return spec, structure, LaplaceFunctions(spec, structure), BlockedLaplaceFunctions(spec, structure)


def _point(spec, fns, seed=1):
    """A point away from the optimum and from the default start (all derivatives nonzero)."""
    phi, _, _ = fns.map(np.asarray(spec.nat0, float), second=False)
    rng = np.random.default_rng(seed)
    return phi + 0.1 * rng.standard_normal(phi.size) + 0.05


@pytest.mark.parametrize("case", list(CASES))
def test_same_laplace_value_and_derivatives_as_the_cluster_engine(crossed, case):
    spec, structure, dense, blocked = _engines(crossed, case)
    phi = _point(spec, dense)
    ref = dense.jet.evaluate(phi, dense.modes(phi), 2)
    got = blocked.jet.evaluate(phi, blocked.modes(phi), 2, scores=True)
    assert dense.modes_converged and blocked.modes_converged
    want_ll = sum(float(np.sum(v)) for v in ref["loglik"])
    want_g = sum(np.sum(g, axis=0) for g in ref["grad"])
    want_h = sum(np.sum(h, axis=0) for h in ref["hess"])
    np.testing.assert_allclose(got["loglik"], want_ll, rtol=1e-12)
    np.testing.assert_allclose(got["grad"], want_g, rtol=0, atol=1e-10 * np.max(np.abs(want_g)))
    np.testing.assert_allclose(got["hess"], want_h, rtol=0, atol=1e-10 * np.max(np.abs(want_h)))
    # observation scores: they sum to the gradient, and within clusters to the cluster scores
    np.testing.assert_allclose(got["scores"].sum(0), got["grad"], rtol=0, atol=1e-10 * np.max(np.abs(want_g)))
    clusters = np.zeros((structure.n_clusters, phi.size))
    np.add.at(clusters, structure.obs_cluster, got["scores"])
    np.testing.assert_allclose(clusters, dense._by_cluster(ref["grad"]), rtol=0, atol=1e-10 * np.max(np.abs(want_g)))


def test_student_t_likelihood_with_two_own_parameters(crossed):
    """A hand-written Student-t likelihood (scale and degrees of freedom: two parameters ``psi``;
    not log-concave in ``eta``, so ``H`` may be indefinite away from the mode): the same value,
    gradient and Hessian as the cluster engine at a point."""
    import pymc as pm

    a = pd.Categorical(crossed["a"])
    b = pd.Categorical(crossed["b"])
    rng = np.random.default_rng(5)
    y = crossed["yg"].to_numpy() + rng.standard_t(3.0, size=len(crossed))
    with pm.Model(coords={"a": list(a.categories), "b": list(b.categories)}) as model:
        b0 = pm.Normal("b0", 0, 5)
        ua = pm.Normal("ua", 0, pm.HalfNormal("sd_a", 2.0), dims="a")
        ub = pm.Normal("ub", 0, pm.HalfNormal("sd_b", 2.0), dims="b")
        pm.StudentT(
            "y",
            nu=pm.Gamma("nu", 2.0, 0.1),
            mu=b0 + ua[a.codes] + ub[b.codes],
            sigma=pm.HalfNormal("s", 2.0),
            observed=y,
        )
    spec = inspect_model(model, ["ua", "ub"])
    structure = build_structure(spec)
    dense, blocked = LaplaceFunctions(spec, structure), BlockedLaplaceFunctions(spec, structure)
    assert spec.psi_index.size == 2
    phi, _, _ = dense.map(np.asarray(spec.nat0, float), second=False)
    phi = phi + np.array([0.1, 0.2, -0.1, 0.3, 0.1])
    ref = dense.jet.evaluate(phi, dense.modes(phi), 2)
    got = blocked.jet.evaluate(phi, blocked.modes(phi), 2)
    assert dense.modes_converged and blocked.modes_converged
    np.testing.assert_allclose(got["loglik"], float(np.sum(ref["loglik"][0])), rtol=1e-12)
    g, h = ref["grad"][0][0], ref["hess"][0][0]
    np.testing.assert_allclose(got["grad"], g, rtol=0, atol=1e-10 * np.max(np.abs(g)))
    np.testing.assert_allclose(got["hess"], h, rtol=0, atol=1e-10 * np.max(np.abs(h)))
    # from a start where H is indefinite, Levenberg steps reach the same mode
    jet = blocked.jet
    v_hat = blocked.modes(phi)
    v0 = 3.0 * rng.normal(size=v_hat.size)
    beta, theta, _ = jet._split(phi)
    t = jet._t(theta)
    with pytest.raises(np.linalg.LinAlgError):
        jet._factor(t, -jet._jet(2, jet._eta(beta, t, v0), phi)[2 + jet.m])
    v, ok = jet.modes(phi, v0)
    assert ok
    np.testing.assert_allclose(v, v_hat, rtol=0, atol=1e-8)


@pytest.mark.parametrize("case", ["binomial, vector first term", "gamma, three terms"])
def test_gradient_and_hessian_equal_central_differences(crossed, case):
    spec, _, dense, blocked = _engines(crossed, case)
    phi = _point(spec, dense, seed=2)

    def at(ph, order):
        return blocked.jet.evaluate(ph, blocked.modes(ph), order)

    res = at(phi, 2)
    g_fd = central_differences(lambda ph: at(ph, 0)["loglik"], phi)
    np.testing.assert_allclose(res["grad"], g_fd, rtol=0, atol=1e-6 * np.max(np.abs(res["grad"])))
    H_fd = central_differences(lambda ph: at(ph, 1)["grad"], phi)
    np.testing.assert_allclose(res["hess"], 0.5 * (H_fd + H_fd.T), rtol=0, atol=1e-6 * np.max(np.abs(res["hess"])))


@pytest.mark.parametrize("pairs", [True, False], ids=["edge pairs", "dense T S^-1"])
@pytest.mark.parametrize("formula", ["y ~ x + (1 | a) + (1 | b)", "y ~ x + (1 + x | a) + (1 + x | b)"])
def test_blocked_factor_equals_dense_linear_algebra(crossed, formula, pairs, monkeypatch):
    """``H = I + sum_i t_i W_i t_i^T`` with random weights on the layout of a crossed design:
    the factor's solve, log-determinant, selected inverse and trace products against the dense
    ``H^-1`` (NumPy); both routes to the selected inverse (through pairs of edges, and from the
    dense ``T S^-1`` used where there are more than ``PAIRS_MAX`` pairs)."""
    from pymc_mixvcov.engines import blocked_laplace

    if not pairs:
        monkeypatch.setattr(blocked_laplace, "PAIRS_MAX", 0)
    model = pmv.glmm(formula, crossed, family="binomial")
    lay = BlockedLaplaceLayout(inspect_model(model.model, model.random))
    assert lay.use_pairs == pairs
    rng = np.random.default_rng(3)
    t = lay.val * rng.uniform(0.5, 1.5, lay.R)

    def dense(Wi):
        out = np.zeros((lay.q, lay.q))
        for a in range(lay.R):
            for b in range(lay.R):
                ok = lay.used[:, a] & lay.used[:, b]
                np.add.at(out, (lay.pos[ok, a], lay.pos[ok, b]), Wi[ok, a, b])
        return out

    w = rng.uniform(0.1, 0.3, lay.n)
    Wi = w[:, None, None] * t[:, :, None] * t[:, None, :]
    b11, b12, b22 = lay.blocks(Wi[..., None])
    F = SchurFactor(lay, b11[..., 0] + np.eye(lay.r1), b12[..., 0], b22[0] + np.eye(lay.q2))
    H = np.eye(lay.q) + dense(Wi)
    Hinv = np.linalg.inv(H)
    np.testing.assert_allclose(F.logdet, np.linalg.slogdet(H)[1], rtol=1e-12)
    rhs = rng.normal(size=(lay.q, 3))
    np.testing.assert_allclose(F.solve(rhs), Hinv @ rhs, rtol=0, atol=1e-12 * np.abs(Hinv @ rhs).max())
    # the selected inverse at every observation's pairs of positions
    got = F.gather()
    want = Hinv[lay.pos[:, :, None], lay.pos[:, None, :]] * (lay.used[:, :, None] & lay.used[:, None, :])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    # tr(H^-1 R_a H^-1 R_b) for symmetric R_a on H's pattern
    P = 3
    Ri = rng.normal(size=(lay.n, lay.R, lay.R, P))
    Ri = Ri + np.swapaxes(Ri, 1, 2)
    Rs = [Hinv @ dense(Ri[..., k]) for k in range(P)]
    want_tr = np.array([[np.trace(Rs[a] @ Rs[b]) for b in range(P)] for a in range(P)])
    np.testing.assert_allclose(F.trace_pairs(*lay.blocks(Ri)), want_tr, rtol=1e-11)


@pytest.fixture(scope="module")
def verbagg_fits():
    va = pmv.datasets.load("verbagg")
    model = pmv.glmm("r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", va, family="binomial")
    return model.fit(engine="clusters"), model.fit()


def test_verbagg_engines_agree(verbagg_fits):
    """VerbAgg (316 subjects crossed with 24 items, one cluster of 340 effects): ``engine="auto"``
    picks the blocked engine; separate fits by both engines agree to the optimiser's tolerance."""
    dense, blocked = verbagg_fits
    assert dense.engine == "laplace" and blocked.engine == "blocked"
    assert blocked.to_datatree()["estimates"].attrs["engine"] == "blocked"
    assert dense.converged and blocked.converged
    np.testing.assert_allclose(blocked.loglik, dense.loglik, rtol=1e-8)
    for scale in ("sd", "var", "cholesky", "natural"):
        assert scaled_error(blocked.vcov(scale).to_numpy(), dense.vcov(scale).to_numpy()).max() < 1e-6
    pd.testing.assert_index_equal(blocked.summary().index, dense.summary().index)


def test_verbagg_multiway_sandwich(verbagg_fits):
    """Observation scores of the crossed design: they sum to the gradient (about 0 at the optimum),
    and give the two-way (subject, item) sandwich, which is the inclusion-exclusion of the one-way
    ones."""
    _, fit = verbagg_fits
    S = fit.scores("observation", scale="natural").to_numpy()
    info = fit._functions.information(fit._opt["nat"])
    scale = np.sqrt(np.diag(info["observed"]))
    np.testing.assert_allclose(S.sum(0) / scale, 0.0, atol=1e-6)
    va = pmv.datasets.load("verbagg")
    ids, items = va["id"].to_numpy(), va["item"].to_numpy()
    both = fit.sandwich("var", adjust="CR0", cluster=[ids, items]).to_numpy()
    one = [fit.sandwich("var", adjust="CR0", cluster=c).to_numpy() for c in (ids, items)]
    inter = fit.sandwich("var", adjust="CR0", cluster=np.arange(len(va))).to_numpy()
    np.testing.assert_allclose(both, one[0] + one[1] - inter, rtol=1e-10, atol=1e-14)
    with pytest.raises(pmv.MixVcovError, match="crossed"):
        fit.scores("cluster")


def test_one_factor_observation_scores_give_the_cluster_sandwich(poisson_slope_data):
    """One grouping factor on the blocked engine (forced): the observation scores summed by the
    grouping column are the cluster engine's cluster scores, so the sandwich clustered by that
    column is the cluster engine's default one; and so are the blocked engine's own cluster scores
    and CR3 (engines/blocked_clusters.py). Separate fits: to the optimiser's tolerance."""
    model = pmv.glmm("y ~ x + (x | g)", poisson_slope_data, family="poisson")
    dense, blocked = model.fit(engine="clusters"), model.fit(engine="blocked")
    assert blocked.engine == "blocked"
    np.testing.assert_allclose(blocked.loglik, dense.loglik, rtol=1e-8)
    want = dense.sandwich("var", adjust="CR1").to_numpy()
    got = blocked.sandwich("var", adjust="CR1", cluster=poisson_slope_data["g"].to_numpy()).to_numpy()
    assert scaled_error(got, want).max() < 1e-6
    # the model's clusters (one per level of g) on the blocked engine: cluster scores and CR3
    for adjust in ("CR1", "CR3"):
        want = dense.sandwich("var", adjust=adjust).to_numpy()
        assert scaled_error(blocked.sandwich("var", adjust=adjust).to_numpy(), want).max() < 1e-6


@pytest.fixture(scope="module")
def components():
    """Two disconnected crossed components (6 levels of ``a`` x 4 of ``b``, 100 rows each: 10 effects
    each) and 10 clusters of one level of each factor (3 to 5 rows each): 12 clusters (seed 3)."""
    rng = np.random.default_rng(3)
    a, b = [], []
    for comp in range(2):
        a += list(rng.integers(0, 6, 100) + 6 * comp)
        b += list(rng.integers(0, 4, 100) + 4 * comp)
    for k in range(10):
        m = int(rng.integers(3, 6))
        a += [12 + k] * m
        b += [8 + k] * m
    a, b = np.array(a), np.array(b)
    x = rng.normal(size=a.size)
    u, v, w = 0.8 * rng.normal(size=22), 0.7 * rng.normal(size=18), 0.4 * rng.normal(size=18)
    eta = -0.2 + 0.6 * x + u[a] + v[b] + w[b] * x
    return pd.DataFrame(
        {
            "y": rng.binomial(1, 1 / (1 + np.exp(-eta))),
            "yc": rng.poisson(np.exp(0.5 * eta)),
            "x": x,
            "a": [f"a{k:02d}" for k in a],
            "b": [f"b{k:02d}" for k in b],
        }
    )


@pytest.fixture(scope="module")
def nested():
    """10 levels of ``g``, 3 levels of ``h`` within each, 6 Poisson counts per cell (seed 3)."""
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(10), 18)
    h = np.tile(np.repeat(np.arange(3), 6), 10)
    x = rng.normal(size=g.size)
    eta = 0.3 + 0.5 * x + 0.6 * rng.normal(size=10)[g] + 0.5 * rng.normal(size=30)[g * 3 + h]
    return pd.DataFrame({"yc": rng.poisson(np.exp(eta)), "x": x, "g": [f"g{k}" for k in g], "h": [f"h{k}" for k in h]})


@pytest.fixture(scope="module")
def partial_counts():
    """A partially crossed design (seed 11): one crossed component (6 levels of ``a`` x 4 of ``b``,
    120 rows), 8 clusters of one level of each (5 rows each) and 4 clusters of a level of ``a``
    alone (5 rows each, ``w = 0``: no ``b`` effect, so rows whose later term is unused)."""
    rng = np.random.default_rng(11)
    a = list(rng.integers(0, 6, 120)) + list(np.repeat(np.arange(6, 14), 5)) + list(np.repeat(np.arange(14, 18), 5))
    b = list(rng.integers(0, 4, 120)) + list(np.repeat(np.arange(4, 12), 5)) + [0] * 20
    w = np.r_[np.ones(160), np.zeros(20)]
    a, b = np.array(a), np.array(b)
    x = rng.normal(size=a.size)
    eta = 0.3 + 0.5 * x + rng.normal(scale=0.7, size=18)[a] + w * rng.normal(scale=0.6, size=12)[b]
    return pd.DataFrame(
        {
            "yc": rng.poisson(np.exp(eta)),
            "x": x,
            "w": w,
            "a": [f"a{k:02d}" for k in a],
            "b": [f"b{k:02d}" for k in b],
        }
    )


SEVERAL = {
    "binomial, two crossed components": ("y ~ x + (1 | a) + (1 | b)", "binomial", "components"),
    "poisson, vector term, two crossed components": ("yc ~ x + (1 | a) + (1 + x | b)", "poisson", "components"),
    "poisson, nested": ("yc ~ x + (1 | g/h)", "poisson", "nested"),
    "poisson, partially crossed": ("yc ~ x + (1 | a) + (0 + w | b)", "poisson", "partial_counts"),
}


@pytest.fixture(scope="module")
def several_fits(components, nested, partial_counts):
    """The cases of ``SEVERAL`` fitted by the cluster Laplace engine (interior optima)."""
    data = {"components": components, "nested": nested, "partial_counts": partial_counts}
    out = {}
    for case, (formula, family, which) in SEVERAL.items():
        out[case] = pmv.glmm(formula, data[which], family=family).fit(engine="clusters")
        assert out[case].engine == "laplace" and out[case].converged and not out[case].at_bound.any()
    return out


@pytest.mark.parametrize("dense_max", [64, 5, 0], ids=["dense", "mixed", "blocked"])
@pytest.mark.parametrize("case", list(SEVERAL))
def test_per_cluster_pieces_of_several_clusters(several_fits, case, dense_max, monkeypatch):
    """A model of several clusters on the blocked Laplace engine: at the cluster engine's estimates
    every cluster's Laplace log-likelihood, score and observed information are the cluster engine's,
    by every route of engines/blocked_clusters.py (small clusters batched by jets.py at the
    restriction of the whole model's modes; ``DENSE_MAX = 5``: the crossed components' sub-models on
    the blocked engine; ``0``: every cluster's, those of ``a`` alone without the ``b`` term). The
    two engines' inner modes agree to their
    tolerance (1e-10), so the pieces to about that (measured 4e-11 relative); asserted 1e-8 of the
    standard errors, and so are the CR1 and CR3 sandwiches by the model's clusters (from the
    blocked engine's observation scores summed by cluster, against ``vcov_cluster`` of the cluster
    engine's pieces; the nested model's by its outer factor as well). They add up to the whole
    model's log-likelihood, gradient and information (evaluated at once) to rounding, and the
    observation scores sum within each cluster to its score (through the mode equation: to the
    modes' tolerance)."""
    from pymc_mixvcov.inference.sandwich import vcov_cluster

    monkeypatch.setattr(blocked_clusters, "DENSE_MAX", dense_max)
    ref = several_fits[case]
    nat = ref._opt["nat"]
    fns = BlockedLaplaceFunctions(ref.spec, ref.structure)
    got, want = fns.clusters(nat), ref._functions.clusters(nat)
    got_o, want_o = fns.cluster_observed(nat), ref._functions.cluster_observed(nat)
    info = fns.information(nat)
    A = info["observed"]
    s = np.sqrt(np.diag(A))
    S = np.outer(s, s)
    np.testing.assert_allclose(got["loglik"], want["loglik"], rtol=1e-10)
    np.testing.assert_allclose(got["scores"] / s, want["scores"] / s, rtol=0, atol=1e-8)
    np.testing.assert_allclose(got_o / S, want_o / S, rtol=0, atol=1e-8)
    # they add up
    assert got["loglik_free"] == 0.0
    np.testing.assert_allclose(got["loglik"].sum(), info["loglik"], rtol=1e-12)
    np.testing.assert_allclose(got["scores"].sum(0) / s, info["grad"] / s, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got_o.sum(0) / S, A / S, rtol=0, atol=1e-10)
    summed = np.zeros_like(got["scores"])
    np.add.at(summed, ref.structure.obs_cluster, fns.observation_scores(nat))
    # (an identity through the mode equation h_v = 0: to the modes' tolerance, 1e-10 relative)
    np.testing.assert_allclose(summed / s, got["scores"] / s, rtol=0, atol=1e-8)
    # sandwiches by the model's clusters, at the same point
    at = on_engine(ref, fns)
    # (CR3 of the vector-term model: without one crossed component the slope's covariance is not
    # identified, A - A_g is indefinite and CR3 refuses, whichever engine)
    for adjust in ("CR1",) if "vector" in case else ("CR1", "CR3"):
        want_v = vcov_cluster(ref._information("observed"), want["scores"], adjust, want_o)
        got_v = at.sandwich("natural", adjust=adjust, cluster=ref.structure.obs_cluster).to_numpy()
        assert scaled_error(got_v, want_v).max() < 1e-8, adjust
        if case == "poisson, nested":  # the outer factor names the clusters: the results' default
            want_v = ref.sandwich("var", adjust=adjust).to_numpy()
            assert scaled_error(at.sandwich("var", adjust=adjust).to_numpy(), want_v).max() < 1e-8, adjust


def test_several_clusters_fit_by_the_blocked_laplace_engine(several_fits):
    """The nested Poisson model fitted by the blocked Laplace engine (forced) on its own: its
    cluster scores sum to ~0 at its optimum, its cluster log-likelihoods to its log-likelihood, and
    its CR1 and CR3 sandwiches are the cluster engine's to the optimiser's tolerance (1e-6 of the
    standard errors)."""
    ref = several_fits["poisson, nested"]
    fit = pmv.glmm("yc ~ x + (1 | g/h)", ref.data, family="poisson").fit(engine="blocked")
    assert fit.engine == "blocked" and fit.converged and fit.n_clusters == 10
    S = fit.scores("cluster", "natural")
    s = np.sqrt(np.diag(fit._information("observed")))
    assert np.max(np.abs(S.sum(axis=0).to_numpy() / s)) < 1e-3
    np.testing.assert_allclose(fit.loglik_contributions().sum(), fit.loglik, rtol=1e-12)
    for adjust in ("CR1", "CR3"):
        want = ref.sandwich("var", adjust=adjust).to_numpy()
        assert scaled_error(fit.sandwich("var", adjust=adjust).to_numpy(), want).max() < 1e-6, adjust


@pytest.fixture(scope="module")
def grouseticks():
    g = pmv.datasets.load("grouseticks")
    model = pmv.glmm("TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)", g, family="poisson")
    return model, model.fit()


def test_grouseticks_same_information_at_the_optimum(grouseticks):
    """grouseticks (Poisson, three crossed and nested factors, 63 clusters; lme4's data): at the
    cluster engine's optimum the blocked engine's log-likelihood, gradient and observed
    information agree with it to rounding."""
    _, dense = grouseticks
    assert dense.engine == "laplace"
    nat = dense._opt["nat"]
    want = dense._functions.information(nat)
    got = BlockedLaplaceFunctions(dense.spec, dense.structure).information(nat)
    np.testing.assert_allclose(got["loglik"], want["loglik"], rtol=1e-12)
    s = np.sqrt(np.diag(want["observed"]))
    np.testing.assert_allclose(got["grad"] / s, want["grad"] / s, rtol=0, atol=1e-8)
    np.testing.assert_allclose(got["observed"] / np.outer(s, s), want["observed"] / np.outer(s, s), rtol=0, atol=1e-10)


@pytest.mark.slow
def test_grouseticks_engines_agree(grouseticks):
    """Forced onto the blocked engine, the grouseticks fit agrees with the cluster engine's to the
    optimiser's tolerance (slow: 40 Laplace evaluations, whose LAPACK calls on a 181 x 181 Schur
    complement stall when other processes hold the cores)."""
    model, dense = grouseticks
    blocked = model.fit(engine="blocked")
    assert blocked.engine == "blocked"
    np.testing.assert_allclose(blocked.loglik, dense.loglik, rtol=1e-8)
    for scale in ("sd", "natural"):
        assert scaled_error(blocked.vcov(scale).to_numpy(), dense.vcov(scale).to_numpy()).max() < 1e-6


def test_auto_engine_choice_and_refusals(crossed):
    # 25 x 9 crossed levels: one cluster of 34 effects (<= 64): the cluster engine
    assert pmv.glmm("y ~ x + (1 | a) + (1 | b)", crossed, family="binomial").fit().engine == "laplace"
    # 60 x 20 crossed levels: one cluster of 80 effects: the blocked engine
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 60, 600), rng.integers(0, 20, 600)
    eta = 0.5 * rng.normal(size=60)[a] + 0.5 * rng.normal(size=20)[b]
    data = pd.DataFrame({"y": rng.poisson(np.exp(eta)), "a": a.astype(str), "b": b.astype(str)})
    model = pmv.glmm("y ~ 1 + (1 | a) + (1 | b)", data, family="poisson")
    assert model.fit().engine == "blocked"
    with pytest.raises(pmv.MixVcovError, match="nAGQ=1"):
        model.fit(nAGQ=3, engine="blocked")


def test_rows_without_random_effects():
    """Rows that use no random effect (design value 0), which the cluster engine refuses
    (test_glmm.py): on the blocked engine they add their GLM log-density at ``eta = x beta``, so the
    log-likelihood is the cluster engine's on the other rows plus theirs (Poisson, closed form).
    Per cluster, the clusters' log-likelihoods, scores and information are the cluster engine's on
    the other rows, and the free rows' log-likelihood is returned apart."""
    import pymc as pm
    from scipy.special import gammaln

    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(6), 5)
    mask = np.ones(g.size)
    mask[-3:] = 0.0
    y = rng.poisson(np.exp(0.7 + 0.8 * rng.normal(size=6)[g] * mask))

    def model_of(rows):
        with pm.Model(coords={"g": np.arange(6)}) as model:
            b0 = pm.Normal("b0", 0, 5)
            sd = pm.HalfNormal("sd", 1)
            u = pm.Normal("u", 0, sd, dims="g")
            pm.Poisson("y", pm.math.exp(b0 + u[g[rows]] * mask[rows]), observed=y[rows])
        return model

    fit = pmv.fit(model_of(np.arange(g.size)), random=["u"], engine="blocked")
    assert fit.converged and fit.engine == "blocked"
    part = model_of(np.arange(g.size - 3))
    spec = inspect_model(part, ["u"])
    rest = LaplaceFunctions(spec, build_structure(spec))
    for nat in (fit._opt["nat"], np.array([0.3, 0.9])):
        mu = np.exp(nat[0])
        free = np.sum(y[-3:] * np.log(mu) - mu - gammaln(y[-3:] + 1.0))
        np.testing.assert_allclose(fit._functions.loglik(nat), rest.loglik(nat) + free, rtol=1e-12)
        # per cluster: the clusters' pieces are those of the model without the free rows, whose
        # log-likelihood is apart
        got, want = fit._functions.clusters(nat), rest.clusters(nat)
        np.testing.assert_allclose(got["loglik"], want["loglik"], rtol=1e-10)
        np.testing.assert_allclose(got["loglik_free"], free, rtol=1e-12)
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=0, atol=1e-8 * np.abs(want["scores"]).max())
        go, wo = fit._functions.cluster_observed(nat), rest.cluster_observed(nat)
        np.testing.assert_allclose(go, wo, rtol=0, atol=1e-8 * np.abs(wo).max())


def test_gaussian_observation_scores_are_merderivs():
    """Penicillin's crossed Gaussian model with the likelihood written as a ``CustomDist`` goes
    through the blocked Laplace engine (exact there): at the same parameters its observation
    scores' ``beta`` and ``theta`` columns are the Gaussian blocked engine's merDeriv casewise
    scores (``s_i = r_i [V^-1 X]_i``, ...; test_crossed.py checks those against the cluster engine),
    to rounding; the ``sigma`` column is split differently, with the same sum."""
    import pymc as pm

    d = pmv.datasets.load("penicillin")
    plate, sample = d["plate"].cat.codes.to_numpy(), d["sample"].cat.codes.to_numpy()
    y = d["diameter"].to_numpy(float)
    coords = {"plate": list(d["plate"].cat.categories), "sample": list(d["sample"].cat.categories)}

    def normal_logp(value, mu, sigma):
        return -0.5 * ((value - mu) / sigma) ** 2 - pm.math.log(sigma) - 0.5 * np.log(2 * np.pi)

    def build(custom):
        with pm.Model(coords=coords) as model:
            b = pm.Normal("b", 20, 10)
            up = pm.Normal("up", 0, pm.HalfNormal("sd_plate", 5.0), dims="plate")
            us = pm.Normal("us", 0, pm.HalfNormal("sd_sample", 5.0), dims="sample")
            sigma = pm.HalfNormal("sigma", 5.0)
            mu = b + up[plate] + us[sample]
            if custom:
                pm.CustomDist("y", mu, sigma, logp=normal_logp, observed=y)
            else:
                pm.Normal("y", mu, sigma, observed=y)
        return model

    gauss = pmv.fit(build(False), random=["up", "us"], engine="blocked")
    laplace = pmv.fit(build(True), random=["up", "us"], engine="blocked")
    assert laplace.spec.family != "gaussian" and laplace.engine == "blocked"
    nat = gauss._opt["nat"]
    want = gauss._functions.observation_scores(nat)
    got = laplace._functions.observation_scores(nat)
    scale = np.abs(want).max(axis=0)
    np.testing.assert_allclose(got[:, :3] / scale[:3], want[:, :3] / scale[:3], rtol=0, atol=1e-8)
    np.testing.assert_allclose(got.sum(0), want.sum(0), rtol=0, atol=1e-8 * scale.max())


@pytest.mark.parametrize("method", ["ML", "MAP"])
def test_handwritten_crossed_model(crossed, method):
    """A crossed Poisson model written by hand in PyMC (SDs as HalfNormal parameters), ML and MAP:
    the blocked engine works on ``phi`` and the model map carries it to the model's own parameters,
    as for the cluster engine; separate fits agree to the optimiser's tolerance."""
    import pymc as pm

    a = pd.Categorical(crossed["a"])
    b = pd.Categorical(crossed["b"])
    coords = {"a": list(a.categories), "b": list(b.categories)}
    with pm.Model(coords=coords) as model:
        b0 = pm.Normal("b0", 0, 5)
        b1 = pm.Normal("b1", 0, 5)
        ua = pm.Normal("ua", 0, pm.HalfNormal("sd_a", 2.0), dims="a")
        ub = pm.Normal("ub", 0, pm.HalfNormal("sd_b", 2.0), dims="b")
        eta = b0 + b1 * crossed["x"].to_numpy() + ua[a.codes] + ub[b.codes]
        pm.Poisson("yc", pm.math.exp(eta), observed=crossed["yc"].to_numpy())
    fit = pmv.fit(model, random=["ua", "ub"], method=method, engine="blocked")
    ref = pmv.fit(model, random=["ua", "ub"], method=method, engine="clusters")
    assert fit.engine == "blocked" and fit.converged
    np.testing.assert_allclose(fit.loglik, ref.loglik, rtol=1e-8)
    for scale in ("natural", "sd"):
        assert scaled_error(fit.vcov(scale).to_numpy(), ref.vcov(scale).to_numpy()).max() < 1e-6


@pytest.mark.slow
def test_insteval_binary_against_glmmtmb():
    """InstEval, ``I(y >= 4) ~ service + (1 | s) + (1 | d)``, binomial (73,421 rows, 4,100 crossed
    effects), against tests/reference/tmb_insteval_logit.json (glmmTMB 1.1.5, same Laplace
    approximation): log-likelihood within 1e-4 (the issue's target; glmmTMB's optimum), estimates
    to its optimiser's tolerance (1e-4), and ``vcov(full = TRUE)`` on (beta, log SDs) mapped to
    the SD scale with the exact Jacobian of the log, within 5e-3 of the SEs."""
    ref = reference("tmb_insteval_logit")
    data = pmv.datasets.load("insteval")
    data["yb"] = (data["y"] >= 4).astype(int)
    fit = pmv.glmm("yb ~ service + (1 | s) + (1 | d)", data, family="binomial").fit()
    assert fit.engine == "blocked" and fit.converged
    np.testing.assert_allclose(fit.loglik, ref["logLik"], atol=1e-4)
    sd = np.exp(ref["log_sd"])
    np.testing.assert_allclose(fit.params("sd").to_numpy(), np.r_[ref["beta"], sd], atol=1e-4)
    J = np.diag(np.r_[np.ones(len(ref["beta"])), sd])
    want = J @ ref_matrix(ref, "vcov_full").to_numpy() @ J
    assert scaled_error(fit.vcov("sd").to_numpy(), want).max() < 5e-3
