"""The MAP sandwich: scores, sandwiches and summaries of marginal-posterior-mode fits.

Sources of the expected values:

* **Flat priors** (``pm.Flat`` for the fixed effects, ``pm.HalfFlat`` for the SDs: their log
  densities are identically 0 on the support, so the prior's gradient and Hessian vanish
  exactly; checked below). The MAP criterion is then the log-likelihood itself and the MAP
  sandwich is the ML sandwich. The two fits differ only in where their optimisers stop (ML
  profiles ``beta`` out, MAP optimises all parameters; both stop at a Newton decrement below
  ``1e-6``), so they are compared as two fits of the same model are in test_handwritten.py:
  ``1e-5`` after scaling by ``sqrt(v_ii v_jj)`` (measured: about ``3e-10``).
* **Real priors** (Normal and HalfNormal): the prior's gradient and Hessian in closed form, and
  the sandwich formulas recomputed with NumPy from the fit's public scores and information. The
  NumPy computation does the same arithmetic in another order (``np.linalg.solve`` instead of
  a Cholesky factor): ``1e-9`` relative to the standard errors (the correlation-scaled
  information has a condition number below ``1e3``, so round-off stays near ``1e-13``).
* Simulated posteriors for :func:`pymc_mixvcov.output.compare`, as in test_arviz.py: every posterior
  column is a statistic of NumPy draws, to round-off (``1e-10``).
"""

from __future__ import annotations

import itertools

import numpy as np
import pymc as pm
import pytest
import xarray as xr
from conftest import reference, scaled_error
from scipy.stats import halfnorm, norm

import pymc_mixvcov as pmv

#: Two fits of the same criterion by this package's two optimisers (see the module docstring).
TOL_FIT = 1e-5
#: The same formula computed twice in floating point (see the module docstring).
TOL_ARITH = 1e-9

#: Prior of the "real prior" model: beta ~ Normal(MU, 5), sd0 ~ HalfNormal(10),
#: sd1 ~ HalfNormal(3), sigma ~ HalfNormal(30); natural parameters in this order.
MU = np.array([250.0, 0.0])
PRIOR_SCALE = np.array([5.0, 5.0, 10.0, 3.0, 30.0])


def _sleep_model(sleepstudy, prior: str) -> pm.Model:
    """sleepstudy with uncorrelated random intercepts and slopes (lme4's ``(Days || Subject)``)."""
    d = sleepstudy
    subj = d["Subject"].cat.codes.to_numpy()
    days = d["Days"].to_numpy(float)
    coords = {"Subject": list(d["Subject"].cat.categories), "fixed": ["(Intercept)", "Days"]}
    with pm.Model(coords=coords) as model:
        if prior == "flat":
            beta = pm.Flat("beta", dims="fixed")
            sd0, sd1, sigma = pm.HalfFlat("sd0"), pm.HalfFlat("sd1"), pm.HalfFlat("sigma")
        else:
            beta = pm.Normal("beta", MU, PRIOR_SCALE[0], dims="fixed")
            sd0 = pm.HalfNormal("sd0", PRIOR_SCALE[2])
            sd1 = pm.HalfNormal("sd1", PRIOR_SCALE[3])
            sigma = pm.HalfNormal("sigma", PRIOR_SCALE[4])
        u0 = pm.Normal("u0", 0.0, sd0, dims="Subject")
        u1 = pm.Normal("u1", 0.0, sd1, dims="Subject")
        mu = beta[0] + beta[1] * days + u0[subj] + u1[subj] * days
        pm.Normal("y", mu, sigma, observed=d["Reaction"].to_numpy(float))
    return model


@pytest.fixture(scope="module")
def flat_ml(sleepstudy):
    return pmv.fit(_sleep_model(sleepstudy, "flat"), random=["u0", "u1"], method="ML", data=sleepstudy)


@pytest.fixture(scope="module")
def flat_map(sleepstudy):
    return pmv.fit(_sleep_model(sleepstudy, "flat"), random=["u0", "u1"], method="MAP", data=sleepstudy)


@pytest.fixture(scope="module")
def prior_map(sleepstudy):
    return pmv.fit(_sleep_model(sleepstudy, "prior"), random=["u0", "u1"], method="MAP", data=sleepstudy)


def _prior_grad_hess(nat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form gradient and Hessian of the log prior of the "prior" model at ``nat``.

    ``log N(b; m, s) = -(b - m)^2 / (2 s^2) + c`` and ``log HalfNormal(x; s) = -x^2 / (2 s^2) + c``
    (``x > 0``): gradients ``-(b - m)/s^2``, ``-x/s^2``; Hessian ``-1/s^2`` on the diagonal.
    """
    centre = np.concatenate([MU, np.zeros(3)])
    return -(nat - centre) / PRIOR_SCALE**2, np.diag(-1.0 / PRIOR_SCALE**2)


def _cr_numpy(A: np.ndarray, S: np.ndarray, adjust: str) -> np.ndarray:
    """``A^{-1} B A^{-1}`` with ``B = S^T S`` (times ``G/(G-1)`` for CR1), by np.linalg.solve."""
    Ainv = np.linalg.solve(A, np.eye(A.shape[0]))
    V = Ainv @ S.T @ S @ Ainv
    G = S.shape[0]
    return V * G / (G - 1) if adjust == "CR1" else V


# -- flat prior: the MAP sandwich is the ML sandwich -----------------------------------------------
def test_flat_prior_contributes_nothing(flat_map, flat_ml):
    nat = flat_map.params("natural").to_numpy()
    lp, g, H = flat_map._functions.prior(nat)
    assert lp == 0.0 and np.all(g == 0.0) and np.all(H == 0.0)
    # the same maximiser: lme4 1.1-31's logLik for Reaction ~ Days + (1 | Subject) + (0 + Days | Subject),
    # ML (tests/reference/generate_sleepstudy_uncorrelated.R); 1e-6: lme4's optimiser tolerance
    np.testing.assert_allclose(flat_ml.loglik, reference("sleepstudy_uncorrelated_ml")["logLik"], atol=1e-6)
    assert scaled_error(flat_map.vcov("natural").to_numpy(), flat_ml.vcov("natural").to_numpy()).max() < TOL_FIT


@pytest.mark.parametrize(
    ("adjust", "cluster"),
    [("CR0", None), ("CR1", None), ("CR3", None), ("CR1", "Subject"), ("CR3", "Subject"), ("CR1", ["Subject", "Days"])],
)
def test_flat_prior_map_sandwich_equals_ml(flat_map, flat_ml, adjust, cluster):
    for scale in ("natural", "sd"):
        got = flat_map.sandwich(scale, adjust=adjust, cluster=cluster).to_numpy()
        want = flat_ml.sandwich(scale, adjust=adjust, cluster=cluster).to_numpy()
        assert scaled_error(got, want).max() < TOL_FIT, (scale, adjust, cluster)
    got = flat_map.scores("cluster", "natural").to_numpy()
    want = flat_ml.scores("cluster", "natural").to_numpy()
    scale_of_scores = np.sqrt(np.sum(want**2, axis=0))
    assert np.max(np.abs(got - want) / scale_of_scores) < TOL_FIT


def test_flat_prior_glmm_map_sandwich_equals_ml(poisson_slope_data):
    """The Laplace engine's path (per-cluster information for CR3 from the likelihood alone)."""
    d = poisson_slope_data
    g = d["g"].cat.codes.to_numpy()

    def model():
        with pm.Model(coords={"g": list(d["g"].cat.categories)}) as m:
            b = pm.Flat("b", shape=2)
            sd = pm.HalfFlat("sd")
            u = pm.Normal("u", 0.0, sd, dims="g")
            pm.Poisson("y", pm.math.exp(b[0] + b[1] * d["x"].to_numpy() + u[g]), observed=d["y"].to_numpy())
        return m

    ml = pmv.fit(model(), random=["u"], method="ML")
    mp = pmv.fit(model(), random=["u"], method="MAP")
    for adjust in ("CR1", "CR3"):
        got, want = mp.sandwich("sd", adjust=adjust).to_numpy(), ml.sandwich("sd", adjust=adjust).to_numpy()
        assert scaled_error(got, want).max() < TOL_FIT, adjust
    np.testing.assert_allclose(mp.summary(vcov="CR1")["Std. Error"], ml.summary(vcov="CR1")["Std. Error"], rtol=TOL_FIT)


# -- a real prior: scores, centring, CR3, multi-way -------------------------------------------------------
def test_map_scores_are_the_likelihoods(prior_map):
    """The cluster scores are the log-likelihood's: at the posterior mode they sum to
    ``-grad log p``, and the clusters' information contributions sum to ``A + H_prior``."""
    fit = prior_map
    assert fit.converged
    nat = fit.params("natural").to_numpy()
    g_prior, H_prior = _prior_grad_hess(nat)
    S = fit.scores("cluster", "natural").to_numpy()
    A = fit.information().to_numpy()
    # the criterion's gradient sum_g s_g + g_prior has Newton decrement below 1e-6 at convergence,
    # and |e_i^T g| <= sqrt(A_ii) sqrt(g^T A^{-1} g) (Cauchy-Schwarz in the metric A)
    assert np.all(np.abs(S.sum(axis=0) + g_prior) <= 1e-3 * np.sqrt(np.diag(A)))
    # the prior's pull is not negligible: the sums are far from 0 in the same metric
    assert np.all(np.abs(S.sum(axis=0)) > 1e-2 * np.sqrt(np.diag(A)))
    # bread = likelihood information + prior curvature; A_g the likelihood's alone
    Ag = fit._cluster_information("observed")
    assert scaled_error(A - Ag.sum(axis=0), -H_prior).max() < TOL_ARITH
    np.testing.assert_allclose(fit.loglik_contributions().sum(), fit.loglik, rtol=1e-12)
    # loglik is the log-likelihood at the mode, priors excluded: the criterion minus the log prior
    log_prior = norm.logpdf(nat[:2], MU, PRIOR_SCALE[:2]).sum() + halfnorm.logpdf(nat[2:], 0, PRIOR_SCALE[2:]).sum()
    np.testing.assert_allclose(fit._opt["log_posterior"] - fit.loglik, log_prior, rtol=1e-10)


@pytest.mark.parametrize("adjust", ["CR0", "CR1"])
def test_map_sandwich_centres_the_scores(prior_map, adjust):
    fit = prior_map
    S = fit.scores("cluster", "natural").to_numpy()
    A = fit.information().to_numpy()
    want = _cr_numpy(A, S - S.mean(axis=0), adjust)
    got = fit.sandwich("natural", adjust=adjust).to_numpy()
    assert scaled_error(got, want).max() < TOL_ARITH
    # without centring the meat would be larger by G s_bar s_bar^T, visibly so here
    uncentred = _cr_numpy(A, S, adjust)
    assert scaled_error(uncentred, want).max() > 1e-2
    # the same through observation-level scores summed within the same clusters
    by_column = fit.sandwich("natural", adjust=adjust, cluster="Subject").to_numpy()
    assert scaled_error(by_column, want).max() < TOL_ARITH


def test_map_cr3_is_the_centred_one_step_jackknife(prior_map):
    """CR3 for MAP: ``d_g = (A - A_g)^{-1} (s_g - s_bar)``, ``A`` the posterior's information,
    ``A_g`` cluster ``g``'s likelihood information, ``V = (G-1)/G sum_g d_g d_g^T``."""
    fit = prior_map
    S = fit.scores("cluster", "natural").to_numpy()
    A = fit.information().to_numpy()
    Ag = fit._cluster_information("observed")
    Sc = S - S.mean(axis=0)
    G = S.shape[0]
    D = np.stack([np.linalg.solve(A - Ag[k], Sc[k]) for k in range(G)])
    want = (G - 1) / G * D.T @ D
    got = fit.sandwich("natural", adjust="CR3").to_numpy()
    assert scaled_error(got, want).max() < TOL_ARITH
    D_raw = np.stack([np.linalg.solve(A - Ag[k], S[k]) for k in range(G)])
    assert scaled_error((G - 1) / G * D_raw.T @ D_raw, want).max() > 1e-2  # the centring matters


def test_map_multiway_centres_every_clustering(prior_map, sleepstudy):
    fit = prior_map
    S_obs = fit.scores("observation", "natural").to_numpy()
    A = fit.information().to_numpy()
    codes = [sleepstudy["Subject"].cat.codes.to_numpy(), sleepstudy["Days"].to_numpy()]
    want = np.zeros_like(A)
    for size in (1, 2):
        for subset in itertools.combinations(range(2), size):
            _, inv = np.unique(np.stack([codes[i] for i in subset], axis=1), axis=0, return_inverse=True)
            S = np.zeros((inv.max() + 1, A.shape[0]))
            np.add.at(S, inv.ravel(), S_obs)
            want += (-1) ** (size + 1) * _cr_numpy(A, S - S.mean(axis=0), "CR1")
    got = fit.sandwich("natural", adjust="CR1", cluster=["Subject", "Days"]).to_numpy()
    assert scaled_error(got, want).max() < TOL_ARITH


def test_map_summary_with_a_sandwich(prior_map):
    fit = prior_map
    table = fit.summary(vcov="CR1")
    np.testing.assert_allclose(table["Estimate"], fit.params("sd"), rtol=0)
    se = np.sqrt(np.diag(fit.sandwich("sd", adjust="CR1").to_numpy()))
    np.testing.assert_allclose(table["Std. Error"], se, rtol=1e-12)
    laplace = fit.summary()["Std. Error"].to_numpy()
    assert np.all(np.isfinite(se)) and np.max(np.abs(se / laplace - 1)) > 0.1  # two different SEs
    np.testing.assert_allclose(fit.covariance("CR3", "sd"), fit.sandwich("sd", adjust="CR3"), rtol=0)


def test_map_expected_information_is_refused(prior_map):
    with pytest.raises(pmv.MixVcovError, match="not defined for MAP fits.*information='observed'"):
        prior_map.sandwich(information="expected")
    with pytest.raises(pmv.MixVcovError, match="not defined for MAP fits"):
        prior_map.vcov(information="expected")


def test_map_datatree_holds_the_sandwich(prior_map):
    fit = prior_map
    tree = fit.to_datatree()
    for scale in ("sd", "natural"):
        group = tree[f"vcov_{scale}"]
        for adjust in ("CR0", "CR1", "CR3"):
            np.testing.assert_array_equal(group[adjust].values, fit.sandwich(scale, adjust=adjust).to_numpy())
        np.testing.assert_array_equal(group["observed"].values, fit.vcov(scale).to_numpy())
        assert "expected" not in group and "not defined for MAP fits" in group.attrs["unavailable_expected"]
        np.testing.assert_array_equal(tree["scores"][f"scores_{scale}"].values, fit.scores("cluster", scale).to_numpy())
    np.testing.assert_array_equal(tree["scores"]["loglik"].values, fit.loglik_contributions().to_numpy())
    assert tree.attrs["method"] == "MAP"


# -- compare: Laplace and sandwich SEs side by side -----------------------------------------------------
def _simulated_posterior(fit, draws: int = 2000, seed: int = 11):
    """Draws of the model's variables from N(mode, SPREAD^2) on the natural scale, laid out as
    a ``draw``-only Dataset (means at least 5 SDs inside the support)."""
    rng = np.random.default_rng(seed)
    spread = np.array([3.0, 1.0, 2.0, 0.5, 1.5])
    nat = fit.params("natural").to_numpy() + spread * rng.standard_normal((draws, 5))
    ds = xr.Dataset(
        {
            "beta": (("draw", "fixed"), nat[:, :2]),
            "sd0": (("draw",), nat[:, 2]),
            "sd1": (("draw",), nat[:, 3]),
            "sigma": (("draw",), nat[:, 4]),
        },
        coords={"draw": np.arange(draws), "fixed": ["(Intercept)", "Days"]},
    )
    return nat, ds


def test_compare_map_fit_shows_laplace_and_sandwich_se(prior_map, tmp_path):
    fit = prior_map
    nat, ds = _simulated_posterior(fit)
    table = pmv.compare(fit, ds, scale="sd", vcov="CR1")
    assert table.attrs["method"] == "MAP"
    np.testing.assert_allclose(table["estimate"], fit.params("sd"), rtol=0)
    np.testing.assert_allclose(table["se_model"], fit.se("sd"), rtol=1e-12)  # Laplace
    sandwich_se = np.sqrt(np.diag(fit.sandwich("sd", adjust="CR1").to_numpy()))
    np.testing.assert_allclose(table["se_sandwich"], sandwich_se, rtol=1e-12)
    assert table[["se_model", "se_sandwich", "sandwich_lower", "sandwich_upper"]].notna().all().all()
    np.testing.assert_allclose(table["posterior_mean"], nat.mean(0), rtol=1e-10)
    np.testing.assert_allclose(table["posterior_sd"], nat.std(0, ddof=1), rtol=1e-10)
    fig = pmv.plot_compare(fit, ds, scale="sd", filename=tmp_path / "map.png")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["posterior", "Laplace (model)", "sandwich (CR1)"]
