"""A response with a large mean on the cluster engine: the fit of ``y + c`` is that of ``y``.

Truth: with an intercept, ``y -> y + c`` is a reparameterisation (``beta_0 -> beta_0 + c``); the
log-likelihood, the variance estimates, their covariance, the scores and the sandwich do not change
(lme4 1.1-31 keeps logLik to 6e-9 at c = 1e8). The cluster statistics ``y^T y``, ``X^T y``, ``Z^T y``
of such a response used to cancel in ``r^T r``: on sleepstudy (ML) logLik was off by 3.5e-5 at
c = 1e6 and by 0.15 at c = 1e8, REML's slope/intercept correlation by 129 % at c = 1e8; every test
here failed on those statistics. The statistics are now those of ``y - X b0``
(``b0`` the least-squares fit, :mod:`pymc_mixvcov.engines.marginal`).

Tolerances: ``y + 1e8`` is rounded to ``7.5e-9`` per value, which moves a log-likelihood of ``n``
residuals of SD ``sigma`` by about ``sqrt(n) 4e-9 / sigma`` (below 1e-8 here), and the two fits stop
at their own Newton decrements (1e-12); measured after the fix: logLik 6e-10, SDs 4e-10 relative,
intercept 3e-9. The bounds below (1e-7 on the logLik, 1e-6 relative elsewhere) leave a margin of
over 100 and are far below what the cancellation gave.
"""

import warnings

import numpy as np
import pytest
from conftest import scaled_error
from numpy.testing import assert_allclose

import pymc_mixvcov as pmv

SLEEP = "Reaction ~ Days + (Days | Subject)"
SHIFTS = (1e6, 1e8)


def _fit(formula, data, method="ML", engine="clusters", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return pmv.lmm(formula, data, **kw).fit(method, engine=engine)


def _close_columns(S, S0, rtol):
    """``S`` within ``rtol`` of ``S0``, relative to the largest entry of each of ``S0``'s columns."""
    scale = np.abs(S0).max(axis=0)
    assert_allclose(S / scale, S0 / scale, rtol=0, atol=rtol)


def _same_fit(f, f0, c, method):
    """``f`` (of ``y + c``) is ``f0`` (of ``y``) with the intercept moved by ``c``."""
    assert_allclose(f.loglik, f0.loglik, rtol=0, atol=1e-7)
    sd, sd0 = f.params("sd"), f0.params("sd")
    assert_allclose(sd.iloc[0] - c, sd0.iloc[0], rtol=0, atol=1e-6)
    assert_allclose(sd.iloc[1:], sd0.iloc[1:], rtol=1e-6)
    V, V0 = f.vcov("sd").to_numpy(), f0.vcov("sd").to_numpy()
    assert np.max(scaled_error(V, V0)) < 1e-6
    if method == "ML":
        E, E0 = f.vcov("sd", information="expected").to_numpy(), f0.vcov("sd", information="expected").to_numpy()
        assert np.max(scaled_error(E, E0)) < 1e-6


@pytest.fixture(scope="module")
def sleepstudy_data():
    return pmv.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def fits(sleepstudy_data):
    d = sleepstudy_data
    out = {}
    for method in ("ML", "REML"):
        out[method, 0.0] = _fit(SLEEP, d, method)
        for c in SHIFTS:
            out[method, c] = _fit(SLEEP, d.assign(Reaction=d.Reaction + c), method)
    return out


@pytest.mark.parametrize("method", ["ML", "REML"])
@pytest.mark.parametrize("c", SHIFTS)
def test_sleepstudy_shifted(fits, method, c):
    f0, f = fits[method, 0.0], fits[method, c]
    assert f.engine == f0.engine == "clusters"
    _same_fit(f, f0, c, method)


@pytest.mark.parametrize("c", SHIFTS)
def test_scores_and_sandwich_shifted(fits, c):
    """Cluster and observation scores (merDeriv's casewise decomposition) and the CR1 sandwich are
    those of the unshifted fit; scores relative to their largest entry per column."""
    f0, f = fits["ML", 0.0], fits["ML", c]
    for level in ("cluster", "observation"):
        S, S0 = f.scores(level).to_numpy(), f0.scores(level).to_numpy()
        _close_columns(S, S0, 1e-6)
    W, W0 = f.sandwich("sd", adjust="CR1").to_numpy(), f0.sandwich("sd", adjust="CR1").to_numpy()
    assert np.max(scaled_error(W, W0)) < 1e-6


def test_satterthwaite_shifted(fits):
    """Satterthwaite's t-tests: the same SEs and denominator degrees of freedom (the intercept's
    estimate moves by c; only the slope's row is compared whole)."""
    f0, f = fits["REML", 0.0], fits["REML", 1e8]
    t, t0 = f.ttest(), f0.ttest()
    num = t0.select_dtypes("number").columns
    assert_allclose(t.loc[t.index[1], num].to_numpy(float), t0.loc[t0.index[1], num].to_numpy(float), rtol=1e-6)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_bootstrap_of_shifted_fit(fits, method):
    """The same seed simulates ``y* + c`` from the shifted fit (row b of simulate is replicate b's
    response): the replicates' SD estimates equal the unshifted fit's. ML replicates go through
    StackedResponses, REML ones through ResponseSwap, each response centred by its own fit."""
    f0, f = fits[method, 0.0], fits[method, 1e8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b0 = f0.bootstrap(3, seed=7, n_jobs=1, progress=False)
        b1 = f.bootstrap(3, seed=7, n_jobs=1, progress=False)
    e0, e1 = b0.estimates(converged_only=False), b1.estimates(converged_only=False)
    assert_allclose(e1.iloc[:, 0].to_numpy() - 1e8, e0.iloc[:, 0].to_numpy(), rtol=0, atol=1e-6)
    assert_allclose(e1.iloc[:, 1:].to_numpy(), e0.iloc[:, 1:].to_numpy(), rtol=1e-6)
    assert_allclose(b1.dataset["loglik"].values, b0.dataset["loglik"].values, rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_weighted_shifted(sleepstudy_data, method):
    """Prior weights (lme4's ``weights``; rows scaled by sqrt(w)): the centring is the weighted
    least-squares fit, and ``y + c`` is still a reparameterisation."""
    d = sleepstudy_data.assign(w=1.0 + 0.5 * (np.arange(len(sleepstudy_data)) % 3))
    f0 = _fit(SLEEP, d, method, weights="w")
    f = _fit(SLEEP, d.assign(Reaction=d.Reaction + 1e8), method, weights="w")
    _same_fit(f, f0, 1e8, method)


def test_crossed_shifted(crossed_vector):
    """A crossed design (one cluster of 14 random effects) with residual SD 0.8 at c = 1e8."""
    d = crossed_vector
    formula = "y ~ x + (1 | g) + (1 | h)"
    f0 = _fit(formula, d)
    f = _fit(formula, d.assign(y=d.y + 1e8))
    _same_fit(f, f0, 1e8, "ML")


def test_blocked_engine_cluster_pieces_shifted(fits, sleepstudy_data):
    """The blocked engine's per-cluster pieces of small clusters (engines.dense_clusters, on cluster
    statistics) give the same scores and sandwich for ``y + 1e8``."""
    d = sleepstudy_data
    f0 = _fit(SLEEP, d, engine="blocked")
    f = _fit(SLEEP, d.assign(Reaction=d.Reaction + 1e8), engine="blocked")
    assert f.engine == "blocked"
    S, S0 = f.scores().to_numpy(), f0.scores().to_numpy()
    _close_columns(S, S0, 1e-6)
    assert_allclose(f.loglik_contributions().to_numpy(), f0.loglik_contributions().to_numpy(), rtol=0, atol=1e-7)
    W, W0 = f.sandwich("sd").to_numpy(), f0.sandwich("sd").to_numpy()
    assert np.max(scaled_error(W, W0)) < 1e-6
    # and the cluster engine's own scores of the same model agree with the blocked engine's
    _close_columns(fits["ML", 0.0].scores().to_numpy(), S0, 1e-5)
