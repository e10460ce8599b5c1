"""Parametric bootstrap (pymc_mixvcov/inference/bootstrap.py, engines/response.py, optimise/warm.py).

References: tests/reference/bootstrap.json, written by tests/reference/generate_bootstrap.R (R 4.2.2,
lme4 1.1-31, boot 1.3-28.1): boot.ci's percentile endpoints on fixed vectors, and lme4's bootMer
(1,000 replicates each) of sleepstudy (ML) and cbpp (binomial).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import reference
from scipy.special import expit

import pymc_mixvcov as pmv
from pymc_mixvcov.inference import bootstrap as boot

SLEEP = "Reaction ~ Days + (Days | Subject)"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def sleep_boot(sleep_ml):
    return sleep_ml.bootstrap(40, seed=11, n_jobs=1, progress=False)


# -- reproducibility ---------------------------------------------------------------------------------
def test_same_replicates_whatever_the_processes(sleep_ml, sleep_boot):
    """Replicate b draws from SeedSequence(seed).spawn(n)[b]: one process or two (other chunks, other
    processes) give the same numbers, bit for bit; so does the first part of a longer run."""
    two = sleep_ml.bootstrap(12, seed=11, n_jobs=2, progress=False)
    np.testing.assert_array_equal(two.dataset["estimate"].values, sleep_boot.dataset["estimate"].values[:12])
    np.testing.assert_array_equal(two.dataset["loglik"].values, sleep_boot.dataset["loglik"].values[:12])


def test_seed_none_records_its_entropy(sleep_ml):
    first = sleep_ml.bootstrap(3, n_jobs=1, progress=False)
    again = sleep_ml.bootstrap(3, seed=int(first.dataset.attrs["seed_entropy"]), n_jobs=1, progress=False)
    np.testing.assert_array_equal(first.dataset["estimate"].values, again.dataset["estimate"].values)


@pytest.mark.filterwarnings("ignore::pymc_mixvcov.SingularFitWarning")  # the cold fit of a boundary replicate
def test_replicates_refit_the_simulated_responses(sleep_ml, sleep_boot, sleepstudy):
    """Row b of fit.simulate(n, seed) is replicate b's response, and the warm-started refit equals a
    fit from scratch to it (both stop at a Newton decrement below 1e-12: rtol 1e-6 on the sd scale is
    far above the error that leaves, far below a standard error)."""
    ys = sleep_ml.simulate(40, seed=11)
    est = sleep_boot.estimates(converged_only=False)
    cor = est["cor_Days.(Intercept)|Subject"].to_numpy()
    # the first three, and the replicate with the largest correlation (the nearest to a boundary)
    for b in [0, 1, 2, int(np.argmax(cor))]:
        data = sleepstudy.assign(Reaction=ys[b])
        cold = pmv.lmm(SLEEP, data).fit(method="ML")
        np.testing.assert_allclose(est.iloc[b].to_numpy(), cold.params("sd").to_numpy(), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(sleep_boot.dataset["loglik"].values[b], cold.loglik, rtol=1e-10)


def test_reml_replicates_equal_cold_fits(sleep_reml, sleepstudy):
    res = sleep_reml.bootstrap(3, seed=2, n_jobs=1, progress=False)
    ys = sleep_reml.simulate(3, seed=2)
    for b in range(3):
        cold = pmv.lmm(SLEEP, sleepstudy.assign(Reaction=ys[b])).fit(method="REML")
        got = res.estimates(converged_only=False).iloc[b].to_numpy()
        np.testing.assert_allclose(got, cold.params("sd").to_numpy(), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(res.dataset["loglik"].values[b], cold.loglik, rtol=1e-10)


# -- the engines' functions on a new response --------------------------------------------------------
def test_cluster_statistics_of_a_new_response(sleep_ml):
    """ResponseSwap's sparse maps give the statistics build_structure computes for the new response."""
    from pymc_mixvcov.engines.marginal import build_structure, data_values
    from pymc_mixvcov.engines.response import ResponseSwap, StackedResponses

    y = sleep_ml.simulate(2, seed=1)
    fns, spec = ResponseSwap(sleep_ml._functions)(y[0])
    want = data_values(build_structure(replace(sleep_ml.spec, y=y[0])))
    assert len(fns.data) == len(want)
    for got, w in zip(fns.data, want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-13, atol=1e-9)
    assert spec.y is y[0] or np.array_equal(spec.y, y[0])
    assert sleep_ml._functions.data[2] is not fns.data[2]  # the fit's own data are untouched
    # many responses at once: each one's information is its own fit's
    stack = StackedResponses(ResponseSwap(sleep_ml._functions), y)
    nat = sleep_ml._opt["nat"]
    for b, info in enumerate(stack.information(np.array([1, 0]), np.stack([nat, nat * 1.01]))):
        one = ResponseSwap(sleep_ml._functions)(y[1 - b])[0].information(nat * (1.0 + 0.01 * b))
        np.testing.assert_allclose(info["loglik"], one["loglik"], rtol=1e-12)
        np.testing.assert_allclose(info["grad"], one["grad"], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(info["observed"], one["observed"], rtol=1e-9, atol=1e-9)


def test_blocked_and_laplace_engines_take_a_new_response(cbpp_fit):
    from pymc_mixvcov.engines.blocked import blocked_data
    from pymc_mixvcov.engines.response import ResponseSwap

    pen = pmv.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", pmv.datasets.load("penicillin")).fit(engine="blocked")
    y = pen.simulate(1, seed=4)[0]
    fns, _ = ResponseSwap(pen._functions)(y)
    want = blocked_data(replace(pen.spec, y=y))
    for key in ("Zy", "Xy", "yy", "y"):
        np.testing.assert_allclose(getattr(fns.data, key), getattr(want, key), rtol=1e-13, atol=1e-9)
    y = cbpp_fit.simulate(1, seed=4)[0]
    fns, _ = ResponseSwap(cbpp_fit._functions)(y)
    np.testing.assert_array_equal(fns.data[2], y)
    np.testing.assert_array_equal(fns.jet.y, y)
    assert cbpp_fit._functions.jet.y is not fns.jet.y


def test_sd_values_are_the_sd_scale(sleep_ml, cbpp_fit):
    for fit in (sleep_ml, cbpp_fit):
        phi = fit._functions.map(fit._opt["nat"], second=False)[0]
        np.testing.assert_allclose(boot.sd_values(phi, fit.spec), fit.params("sd").to_numpy(), rtol=1e-12)


# -- simulation: the model's moments -----------------------------------------------------------------
def _z_scores(sample: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """(sample mean - mean) / its Monte Carlo SE, per column."""
    return (sample.mean(0) - mean) / np.sqrt(var / sample.shape[0])


def test_gaussian_simulation_has_the_marginal_moments(sleep_ml, sleepstudy):
    """y ~ N(X beta, Z G Z^T + sigma^2 I) at the estimates (closed form). 4,000 draws; every mean
    within 4.5 Monte Carlo SEs (180 comparisons: P(any |z| > 4.5) < 1e-3 for exact moments), every
    variance and within-subject covariance likewise (SE of a sample variance sqrt(2 / N) var, of a
    sample covariance sqrt((v1 v2 + c^2) / N), normal data)."""
    p = sleep_ml.params("sd")
    b0, b1 = p["(Intercept)"], p["Days"]
    s0, s1, sigma = p["sd_(Intercept)|Subject"], p["sd_Days|Subject"], p["sigma"]
    rho = p["cor_Days.(Intercept)|Subject"]
    G = np.array([[s0**2, rho * s0 * s1], [rho * s0 * s1, s1**2]])
    days = sleepstudy["Days"].to_numpy(float)
    Z = np.stack([np.ones_like(days), days], 1)
    mean = b0 + b1 * days
    var = np.einsum("ij,jk,ik->i", Z, G, Z) + sigma**2
    ys = sleep_ml.simulate(4000, seed=3)
    N = ys.shape[0]
    assert np.max(np.abs(_z_scores(ys, mean, var))) < 4.5
    v_hat = ys.var(0, ddof=1)
    assert np.max(np.abs(v_hat - var) / (np.sqrt(2.0 / N) * var)) < 4.5
    # rows 0 and 9: days 0 and 9 of the first subject
    c = Z[0] @ G @ Z[9]
    c_hat = np.cov(ys[:, 0], ys[:, 9])[0, 1]
    assert abs(c_hat - c) / np.sqrt((var[0] * var[9] + c**2) / N) < 4.5
    # different subjects are independent
    c_other = np.cov(ys[:, 0], ys[:, 10])[0, 1]
    assert abs(c_other) / np.sqrt(var[0] * var[10] / N) < 4.5


def test_binomial_simulation_has_the_marginal_moments(cbpp_fit, cbpp):
    """y_i = Binomial(n_i, expit(x_i beta + u)), u ~ N(0, s^2): E y_i = n_i E p, Var y_i =
    n_i E[p (1 - p)] + n_i^2 Var p, the expectations over u by 60-point Gauss-Hermite quadrature
    (error below 1e-12 here). 4,000 draws, 4.5 Monte Carlo SEs as above; the draws are counts in 0..n_i."""
    p = cbpp_fit.params("sd")
    s = p["sd_(Intercept)|herd"]
    period = cbpp["period"].astype(str).to_numpy()
    eta = p["(Intercept)"] + sum(np.where(period == k, p[f"period{k}"], 0.0) for k in ("2", "3", "4"))
    n = cbpp["size"].to_numpy(float)
    x, w = np.polynomial.hermite_e.hermegauss(60)
    w = w / w.sum()
    pr = expit(eta[:, None] + s * x[None, :])
    Ep, Ep2, Epq = pr @ w, (pr**2) @ w, (pr * (1 - pr)) @ w
    mean, var = n * Ep, n * Epq + n**2 * (Ep2 - Ep**2)
    ys = cbpp_fit.simulate(4000, seed=5)
    assert np.all(ys == np.round(ys)) and np.all((ys >= 0) & (ys <= n))
    assert np.max(np.abs(_z_scores(ys, mean, var))) < 4.5


def test_poisson_simulation_has_the_marginal_moments(poisson_slope_data):
    """log mu = x beta + u0 + u1 x with (u0, u1) ~ N(0, G): eta's random part has variance
    v = (1, x) G (1, x)^T, so E y = exp(x beta + v / 2) and Var y = E y + (e^v - 1) (E y)^2
    (lognormal-Poisson, closed form). 4,000 draws, 4.5 Monte Carlo SEs."""
    fit = pmv.glmm("y ~ x + (x | g)", poisson_slope_data, family="poisson").fit()
    p = fit.params("sd")
    s0, s1, rho = p["sd_(Intercept)|g"], p["sd_x|g"], p["cor_x.(Intercept)|g"]
    x = poisson_slope_data["x"].to_numpy(float)
    v = s0**2 + 2 * rho * s0 * s1 * x + s1**2 * x**2
    mean = np.exp(p["(Intercept)"] + p["x"] * x + v / 2)
    var = mean + np.expm1(v) * mean**2
    ys = fit.simulate(4000, seed=6)
    assert np.max(np.abs(_z_scores(ys, mean, var))) < 4.5


# -- intervals and summaries -------------------------------------------------------------------------
@pytest.mark.parametrize("case", range(8))
def test_percentile_interval_is_boot_ci_perc(case):
    """boot::boot.ci(type = "perc") (boot 1.3-28.1) on t_j = qnorm(j / (R + 1)) + 0.3 sin(j): integer
    (R + 1) a (R = 39, 999) and interpolated ones (R = 50, 123), levels 0.95 and 0.9. R prints 7
    significant digits in neither: the JSON has full double precision, so rtol 1e-12."""
    from scipy.special import ndtri

    ref = reference("bootstrap")["percentile"][case]
    R = ref["R"]
    j = np.arange(1, R + 1)
    t = ndtri(j / (R + 1)) + 0.3 * np.sin(j)
    np.random.default_rng(0).shuffle(t)
    lo, hi = boot.percentile_interval(t, ref["conf"])
    np.testing.assert_allclose([lo, hi], [ref["lower"], ref["upper"]], rtol=1e-12)


def test_confint_uses_the_percentile_rule_per_parameter(sleep_boot):
    ci = sleep_boot.confint(0.9)
    est = sleep_boot.estimates()
    assert list(ci.index) == list(est.columns) == list(sleep_boot.dataset["param_sd"].values)
    for label in ci.index:
        np.testing.assert_allclose(ci.loc[label].to_numpy(), boot.percentile_interval(est[label].to_numpy(), 0.9))
    assert np.all(ci["lower"] <= ci["upper"])
    summ = sleep_boot.summary()
    np.testing.assert_allclose(summ["se"].to_numpy(), est.std(ddof=1).to_numpy())
    np.testing.assert_allclose(summ["bias"].to_numpy(), (est.mean() - summ["estimate"]).to_numpy())


def test_result_layout(sleep_ml, sleep_boot):
    ds = sleep_boot.dataset
    assert ds["estimate"].dims == ("replicate", "param_sd")
    assert list(ds["param_sd"].values) == list(sleep_ml.vcov(scale="sd").index)
    assert ds.sizes["replicate"] == 40 and ds["converged"].dtype == bool
    np.testing.assert_allclose(ds["fit_estimate"].values, sleep_ml.params("sd").to_numpy())
    assert np.all(np.isfinite(ds["loglik"].values)) and np.all(ds["converged"].values)
    assert "bootstrap" in sleep_boot.to_datatree().children
    assert "40 replicates" in repr(sleep_boot)


def test_bootstrap_sds_near_wald_ses(sleep_boot, sleep_ml):
    """Fixed effects and sigma: their sampling distributions are close to normal, and the bootstrap
    SD estimates the Wald SE. With R = 40 replicates the SD's relative Monte Carlo SE is about
    1 / sqrt(2 (R - 1)) = 0.113 (normal data): 3 of them, 0.34, is the tolerance (the slow test
    checks 1,000 replicates against lme4's bootMer much more tightly)."""
    wald = sleep_ml.se("sd")
    se = sleep_boot.se()
    tol = 3.0 / np.sqrt(2 * (sleep_boot.n - 1))
    for label in ("(Intercept)", "Days", "sigma"):
        assert abs(se[label] / wald[label] - 1.0) < tol, (label, se[label], wald[label])


# -- GLMMs, failures, errors -------------------------------------------------------------------------
def test_glmm_bootstrap(cbpp_fit):
    res = cbpp_fit.bootstrap(10, seed=1, n_jobs=1, progress=False)
    est = res.estimates(converged_only=False)
    assert res.converged.all() and np.all(np.isfinite(est.to_numpy()))
    assert list(est.columns) == cbpp_fit.labels("sd")
    assert res.dataset.attrs["family"] == "Binomial"
    # a replicate's refit is the cold fit of its response
    y = cbpp_fit.simulate(1, seed=1)[0]
    data = pmv.datasets.load("cbpp")
    data["incidence"] = y.astype(int)
    cold = pmv.glmm(CBPP, data, family="binomial").fit()
    np.testing.assert_allclose(est.iloc[0].to_numpy(), cold.params("sd").to_numpy(), rtol=1e-5, atol=1e-7)


def test_failed_replicates_are_kept_and_reported(sleep_ml, monkeypatch):
    from pymc_mixvcov.optimise import warm

    real = warm.warm_refit
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise pmv.MixVcovError("simulated failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(warm, "warm_refit", flaky)
    with pytest.warns(pmv.ConvergenceWarning, match=r"2 of 6 bootstrap replicates did not converge \(2 of them failed"):
        res = sleep_ml.bootstrap(6, seed=3, n_jobs=1, progress=False)
    ds = res.dataset
    assert ds.sizes["replicate"] == 6
    np.testing.assert_array_equal(ds["failed"].values, [False, False, True, False, False, True])
    assert np.all(np.isnan(ds["estimate"].values[ds["failed"].values]))
    assert "simulated failure" in str(ds["message"].values[2])
    assert len(res.estimates()) == 4 and len(res.estimates(converged_only=False)) == 6
    assert np.all(np.isfinite(res.confint().to_numpy()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be a positive integer"),
        ({"n": 2.5}, "n must be a positive integer"),
        ({"n": True}, "n must be a positive integer"),
        ({"n": 2, "seed": -1}, "seed must be a non-negative integer"),
        ({"n": 2, "seed": "a"}, "seed must be a non-negative integer"),
        ({"n": 2, "seed": 1.5}, "seed must be a non-negative integer"),
        ({"n": 2, "n_jobs": 0}, "n_jobs must be a non-zero integer"),
        ({"n": 2, "client": "localhost:8786"}, "client must be a dask.distributed.Client"),
        ({"n": 2, "client": object(), "n_jobs": 2}, "either n_jobs .* or client"),
        ({"n": 2, "progress": "yes"}, "progress must be True, False or None"),
    ],
)
def test_bad_arguments(sleep_ml, kwargs, match):
    n = kwargs.pop("n")
    with pytest.raises(pmv.MixVcovError, match=match):
        sleep_ml.bootstrap(n, **kwargs)


def test_bad_level(sleep_boot):
    for level in (0, 1, 1.5, "0.9", True):
        with pytest.raises(pmv.MixVcovError, match="level must be a number in"):
            sleep_boot.confint(level)


def test_likelihood_without_sampler_is_refused():
    import pymc as pm

    data = pmv.datasets.load("sleepstudy")
    subj = data["Subject"].cat.codes.to_numpy()

    def logp(value, mu, sigma):
        return pm.logp(pm.Normal.dist(mu, sigma), value)

    with pm.Model(coords={"Subject": data["Subject"].cat.categories}) as model:
        b = pm.Normal("b", 0, 100, shape=2)
        sd = pm.HalfNormal("sd", 50)
        sigma = pm.HalfNormal("sigma", 50)
        u = pm.Normal("u", 0, sd, dims="Subject")
        mu = b[0] + b[1] * data["Days"].to_numpy() + u[subj]
        pm.CustomDist("y", mu, sigma, logp=logp, observed=data["Reaction"].to_numpy())
    fit = pmv.fit(model, ["u"])
    with pytest.raises(pmv.MixVcovError, match="cannot simulate from the likelihood of 'y'"):
        fit.bootstrap(2, seed=1, n_jobs=1, progress=False)


def test_progress_line_appears_after_the_delay(sleep_ml, monkeypatch, capsys):
    monkeypatch.setattr(boot, "PROGRESS_DELAY", 0.0)
    monkeypatch.setattr(boot, "MAX_CHUNK", 1)
    sleep_ml.bootstrap(3, seed=1, n_jobs=1, progress=True)
    assert "bootstrap" in capsys.readouterr().err
    sleep_ml.bootstrap(3, seed=1, n_jobs=1, progress=False)
    assert capsys.readouterr().err == ""


def test_dask_client(sleep_ml, sleep_boot):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        res = sleep_ml.bootstrap(10, seed=11, client=client, progress=False)
    np.testing.assert_array_equal(res.dataset["estimate"].values, sleep_boot.dataset["estimate"].values[:10])


# -- against lme4's bootMer (slow) -------------------------------------------------------------------
def _against_bootmer(res, ref, sd_tol: float, heavy: tuple[str, ...] = ()):
    """Two independent bootstraps of the same fitted model (other random numbers):

    - means within 4 Monte Carlo SEs of their difference, sqrt(sd1^2 / R1 + sd2^2 / R2);
    - SDs within ``sd_tol`` relative (parameters in ``heavy``, whose long tails make an SD's Monte
      Carlo error much larger than the normal one, excepted);
    - percentile endpoints (a = 0.025, 0.975) within 4 Monte Carlo SEs of their difference: a sample
      a-quantile's SE is sqrt(a (1 - a) / R) / f(q_a), with the density at q_a taken as normal with the
      replicates' robust scale (IQR / 1.349): sqrt(a (1 - a)) / phi(z_a) s sqrt(1 / R1 + 1 / R2).
    """
    from scipy.special import ndtri

    est = res.estimates()[ref["labels"]]
    R1, R2 = len(est), ref["R"]
    sd2 = np.asarray(ref["sd"])
    se_diff = np.sqrt(est.std().to_numpy() ** 2 / R1 + sd2**2 / R2)
    assert np.all(np.abs(est.mean().to_numpy() - np.asarray(ref["mean"])) < 4 * se_diff)
    light = [k for k, lab in enumerate(ref["labels"]) if lab not in heavy]
    np.testing.assert_allclose(est.std().to_numpy()[light], sd2[light], rtol=sd_tol)
    ci = res.confint(0.95).loc[ref["labels"]]
    q = est.quantile([0.25, 0.75]).to_numpy()
    s = (q[1] - q[0]) / 1.349
    a = 0.025
    phi = np.exp(-0.5 * ndtri(a) ** 2) / np.sqrt(2 * np.pi)
    tol = 4 * np.sqrt(a * (1 - a)) / phi * s * np.sqrt(1 / R1 + 1 / R2)
    assert np.all(np.abs(ci["lower"].to_numpy() - np.asarray(ref["lower"])) <= tol)
    assert np.all(np.abs(ci["upper"].to_numpy() - np.asarray(ref["upper"])) <= tol)


@pytest.mark.slow
def test_sleepstudy_against_bootmer(sleep_ml):
    """1,000 replicates each. The SD of R = 1,000 normal replicates has relative MC SE 2.2%; the
    difference of two such, 3.2%: 4 of those, 13%, for the SDs. The fits agree to lme4's optimiser
    tolerance (3e-5 relative on the intercept's SD; its logLik is 1e-8 lower), hence rtol 1e-4."""
    ref = reference("bootstrap")["sleepstudy_ml"]
    np.testing.assert_allclose(sleep_ml.params("sd")[ref["labels"]].to_numpy(), ref["t0"], rtol=1e-4)
    res = sleep_ml.bootstrap(1000, seed=2026, n_jobs=2, progress=False)
    assert res.converged.mean() > 0.99
    _against_bootmer(res, ref, 0.13)


@pytest.mark.slow
def test_cbpp_against_bootmer(cbpp_fit):
    """500 replicates here against bootMer's 1,000: SDs' relative MC SE of the difference
    sqrt(1 / 998 + 1 / 2000) = 3.9%, tolerance 4 of them, 16%. period4 (few cases: a replicate with
    almost none pushes its estimate far down, quasi-separation) has a long left tail, bootMer's SD
    0.66 for a 95% interval of width 1.6: its SD is not compared, its mean and interval are."""
    ref = reference("bootstrap")["cbpp"]
    np.testing.assert_allclose(cbpp_fit.params("sd")[ref["labels"]].to_numpy(), ref["t0"], rtol=1e-3)
    res = cbpp_fit.bootstrap(500, seed=2026, n_jobs=2, progress=False)
    assert res.converged.mean() > 0.98
    _against_bootmer(res, ref, 0.16, heavy=("period4",))


def test_handwritten_model_with_a_nonlinear_map(sleepstudy):
    """A hand-written model whose random-effect SD is exp(log_sd): the model map is not affine, so
    the stacked evaluations map every replicate's parameters themselves. Replicates equal fits from
    scratch (rtol 1e-6 as above)."""
    import pymc as pm

    subj = sleepstudy["Subject"].cat.codes.to_numpy()
    days = sleepstudy["Days"].to_numpy(float)

    def build(y):
        with pm.Model(coords={"Subject": sleepstudy["Subject"].cat.categories}) as model:
            b = pm.Normal("b", 0, 100, shape=2)
            log_sd = pm.Normal("log_sd", 0, 3)
            sigma = pm.HalfNormal("sigma", 50)
            u = pm.Normal("u", 0, pm.math.exp(log_sd), dims="Subject")
            pm.Normal("y", b[0] + b[1] * days + u[subj], sigma, observed=y)
        return model

    fit = pmv.fit(build(sleepstudy["Reaction"].to_numpy()), ["u"])
    res = fit.bootstrap(3, seed=2, n_jobs=1, progress=False)
    ys = fit.simulate(3, seed=2)
    for b in range(2):
        cold = pmv.fit(build(ys[b]), ["u"])
        got = res.estimates(converged_only=False).iloc[b].to_numpy()
        np.testing.assert_allclose(got, cold.params("sd").to_numpy(), rtol=1e-6)
        np.testing.assert_allclose(res.dataset["loglik"].values[b], cold.loglik, rtol=1e-10)


def test_precision_weights(sleepstudy):
    """lme4's weights = w (residual variance sigma^2 / w_i, pymc_mixvcov.model.weights): the
    simulated residuals are scaled by w_i^{-1/2} (each observation's variance (Z G Z^T)_ii +
    sigma^2 / w_i, within 4.5 Monte Carlo SEs over 4,000 draws as above), the statistics of a new
    response are those of its scaled rows, and replicates equal weighted fits from scratch."""
    from pymc_mixvcov.engines.marginal import build_structure, data_values
    from pymc_mixvcov.engines.response import ResponseSwap

    data = sleepstudy.assign(w=1.0 + (sleepstudy["Days"].to_numpy() % 3))
    fit = pmv.lmm(SLEEP, data, weights="w").fit(method="ML")
    p = fit.params("sd")
    s0, s1, sigma = p["sd_(Intercept)|Subject"], p["sd_Days|Subject"], p["sigma"]
    rho = p["cor_Days.(Intercept)|Subject"]
    G = np.array([[s0**2, rho * s0 * s1], [rho * s0 * s1, s1**2]])
    Z = np.stack([np.ones(len(data)), data["Days"].to_numpy(float)], 1)
    var = np.einsum("ij,jk,ik->i", Z, G, Z) + sigma**2 / data["w"].to_numpy()
    ys = fit.simulate(4000, seed=8)
    assert np.max(np.abs(ys.var(0, ddof=1) - var) / (np.sqrt(2.0 / ys.shape[0]) * var)) < 4.5
    fns, _ = ResponseSwap(fit._functions)(ys[0])
    want = data_values(build_structure(replace(fit.spec, y=ys[0])))
    for got, w in zip(fns.data, want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-13, atol=1e-9)
    res = fit.bootstrap(2, seed=8, n_jobs=1, progress=False)
    for b in range(2):
        cold = pmv.lmm(SLEEP, data.assign(Reaction=ys[b]), weights="w").fit(method="ML")
        got = res.estimates(converged_only=False).iloc[b].to_numpy()
        np.testing.assert_allclose(got, cold.params("sd").to_numpy(), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(res.dataset["loglik"].values[b], cold.loglik, rtol=1e-10)


def test_blocked_laplace_engine(cbpp):
    """The blocked Laplace engine (crossed GLMMs) takes a new response too: cbpp fitted by it, a
    replicate equals the cold fit of its response by the same engine (rtol 1e-5: the Laplace fits
    stop at a Newton decrement below 1e-6)."""
    fit = pmv.glmm(CBPP, cbpp, family="binomial").fit(engine="blocked")
    assert fit.engine == "blocked"
    res = fit.bootstrap(2, seed=3, n_jobs=1, progress=False)
    assert res.converged.all()
    y = fit.simulate(1, seed=3)[0]
    cold = pmv.glmm(CBPP, cbpp.assign(incidence=y.astype(int)), family="binomial").fit(engine="blocked")
    got = res.estimates(converged_only=False).iloc[0].to_numpy()
    np.testing.assert_allclose(got, cold.params("sd").to_numpy(), rtol=1e-5, atol=1e-7)
