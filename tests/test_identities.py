"""Identities that hold whatever the reference: stationarity, symbolic = numeric derivatives, round trips."""

import numpy as np
import pymc as pm
import pytest

import pymc_mixvcov as pmv


def _grad(fit, nat):
    return fit._functions.information(nat)["grad"]


def test_gradient_zero_at_optimum(sleep_ml):
    g = _grad(sleep_ml, sleep_ml.params("natural").to_numpy())
    # scaled by the SEs: |g_i| * se_i is the log-likelihood change per SE, ~0 at the MLE
    se = np.sqrt(np.diag(sleep_ml.vcov("natural")))
    assert np.max(np.abs(g) * se) < 1e-4


@pytest.mark.parametrize("which", ["sleep_ml", "penicillin_ml"])
def test_symbolic_hessian_equals_finite_differences(which, request):
    fit = request.getfixturevalue(which)
    nat = fit.params("natural").to_numpy()
    A = fit.information("observed").to_numpy()
    h = 1e-5 * np.maximum(np.abs(nat), 1.0)
    fd = np.empty_like(A)
    for i in range(nat.size):
        e = np.zeros_like(nat)
        e[i] = h[i]
        fd[:, i] = -(_grad(fit, nat + e) - _grad(fit, nat - e)) / (2 * h[i])
    d = np.sqrt(np.outer(np.diag(A), np.diag(A)))
    # central differences: error O(h^2) ~ 1e-8 relative, plus rounding ~1e-9 / h
    np.testing.assert_allclose(fd / d, A / d, atol=1e-5)


def test_scales_round_trip(sleep_ml):
    """var <-> sd: values through the closed form; covariances through its Jacobian (numerical, test only)."""
    sd, var = sleep_ml.params("sd").to_numpy(), sleep_ml.params("var").to_numpy()

    def to_var(s):
        return np.array([s[0], s[1], s[2] ** 2, s[3] * s[2] * s[4], s[4] ** 2, s[5] ** 2])

    np.testing.assert_allclose(to_var(sd), var, rtol=1e-12)
    J = np.empty((6, 6))
    for i in range(6):
        e = np.zeros(6)
        e[i] = 1e-6 * max(abs(sd[i]), 1e-3)
        J[:, i] = (to_var(sd + e) - to_var(sd - e)) / (2 * e[i])
    back = J @ sleep_ml.vcov("sd").to_numpy() @ J.T
    want = sleep_ml.vcov("var").to_numpy()
    d = np.sqrt(np.outer(np.diag(want), np.diag(want)))
    np.testing.assert_allclose(back / d, want / d, atol=1e-7)


def test_cholesky_scale_values(sleep_ml):
    th = sleep_ml.params("cholesky").to_numpy()
    var = sleep_ml.params("var").to_numpy()
    L = np.array([[th[2], 0], [th[3], th[4]]]) * th[5]
    G = L @ L.T
    np.testing.assert_allclose([G[0, 0], G[1, 0], G[1, 1], th[5] ** 2], var[2:], rtol=1e-12)


def test_natural_and_unconstrained(sleep_ml):
    nat = sleep_ml.params("natural")
    assert list(nat.index) == [
        "beta[(Intercept)]",
        "beta[Days]",
        "chol_Subject[0]",
        "chol_Subject[1]",
        "chol_Subject[2]",
        "sigma",
    ]
    unc = sleep_ml.params("unconstrained")
    np.testing.assert_allclose(unc["sigma_log__"], np.log(nat["sigma"]), rtol=1e-12)
    V = sleep_ml.vcov("unconstrained")
    # d log(sigma) = d sigma / sigma
    np.testing.assert_allclose(
        V.loc["sigma_log__", "sigma_log__"],
        sleep_ml.vcov("natural").loc["sigma", "sigma"] / nat["sigma"] ** 2,
        rtol=1e-10,
    )


def test_hand_written_model_matches_formula(sleepstudy, sleep_ml):
    """A hand-built pm.Model takes the same path and gives the same fit."""
    subj = sleepstudy["Subject"].cat.codes.to_numpy()
    days = sleepstudy["Days"].to_numpy(float)
    coords = {
        "Subject": list(sleepstudy["Subject"].cat.categories),
        "effect": ["(Intercept)", "Days"],
        "fixed": ["(Intercept)", "Days"],
    }
    with pm.Model(coords=coords) as model:
        beta = pm.Normal("beta", 0, 100, dims="fixed")
        chol, _, _ = pm.LKJCholeskyCov("chol", n=2, eta=2.0, sd_dist=pm.Exponential.dist(0.1, shape=2))
        u = pm.MvNormal("u", 0, chol=chol, dims=("Subject", "effect"))
        sigma = pm.Exponential("sigma", 0.05)
        mu = beta[0] + beta[1] * days + u[subj, 0] + u[subj, 1] * days
        pm.Normal("y", mu, sigma, observed=sleepstudy["Reaction"].to_numpy())
    fit = pmv.fit(model, random=["u"], method="ML")
    np.testing.assert_allclose(fit.loglik, sleep_ml.loglik, atol=1e-6)
    assert fit.labels("var")[:2] == ["beta[(Intercept)]", "beta[Days]"]
    a, b = fit.vcov("var").to_numpy(), sleep_ml.vcov("var").to_numpy()
    d = np.sqrt(np.outer(np.diag(b), np.diag(b)))
    np.testing.assert_allclose(a / d, b / d, atol=1e-5)
