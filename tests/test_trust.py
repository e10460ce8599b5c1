"""The trust-region subproblem and method of pymc_mixvcov.optimise.trust, against their optimality conditions."""

import numpy as np
import pytest

from pymc_mixvcov.optimise.trust import subproblem_step, trust_region_newton


def _kkt(g, H, p, radius):
    """Moré-Sorensen conditions: (H + mu I) p = -g, mu >= 0, mu (radius - ||p||) = 0, H + mu I psd."""
    r = -(H @ p + g)
    # mu from the residual along p (p != 0 here)
    mu = float(r @ p / (p @ p))
    np.testing.assert_allclose(r, mu * p, atol=1e-8 * (1 + np.linalg.norm(g)))
    assert mu >= -1e-10
    if mu > 1e-8:
        np.testing.assert_allclose(np.linalg.norm(p), radius, rtol=1e-8)
    assert np.linalg.eigvalsh(H + mu * np.eye(len(g)))[0] >= -1e-8


@pytest.mark.parametrize("seed", range(5))
def test_positive_definite_interior_step_is_newton(seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(4, 4))
    H = A @ A.T + 4 * np.eye(4)
    g = rng.normal(size=4)
    p = subproblem_step(g, H, radius=1e6)
    np.testing.assert_allclose(p, -np.linalg.solve(H, g), rtol=1e-10)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shift", [4.0, -3.0])  # positive definite, indefinite
def test_boundary_step_meets_the_optimality_conditions(seed, shift):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(5, 5))
    H = A @ A.T / 5 + shift * np.eye(5)
    g = rng.normal(size=5)
    radius = 0.1
    p = subproblem_step(g, H, radius)
    assert np.linalg.norm(p) <= radius * (1 + 1e-8)
    _kkt(g, H, p, radius)


def test_hard_case_reaches_the_boundary():
    # g orthogonal to the eigenvector of the negative eigenvalue: the step must still use it
    H = np.diag([-1.0, 2.0, 3.0])
    g = np.array([0.0, 1.0, 1.0])
    p = subproblem_step(g, H, radius=2.0)
    np.testing.assert_allclose(np.linalg.norm(p), 2.0, rtol=1e-8)
    _kkt(g, H, p, 2.0)


def test_minimises_rosenbrock_with_value_only_at_trial_points():
    # closed-form minimum at (1, 1); counts how often the Hessian is asked for
    calls = {"full": 0, "value": 0}

    def value(z):
        calls["value"] += 1
        x, y = z
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    def full(z):
        calls["full"] += 1
        x, y = z
        g = np.array([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])
        H = np.array([[2 - 400 * (y - x**2) + 800 * x**2, -400 * x], [-400 * x, 200.0]])
        return value(z), g, H

    def done(f, g, H):
        return float(np.linalg.norm(g)) < 1e-10

    res = trust_region_newton(full, value, np.array([-1.2, 1.0]), done=done)
    np.testing.assert_allclose(res.z, [1.0, 1.0], atol=1e-8)
    assert res.message == "converged"
    # one value per iteration at its trial point; the Hessian at the start and at accepted
    # points only, so rejected trial points (there are some from this start) cost no Hessian
    trials = calls["value"] - calls["full"]
    assert trials == res.iterations
    assert calls["full"] < res.iterations + 1
