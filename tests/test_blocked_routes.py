"""The blocked engine's components: its routes to the same exact numbers agree with each other.

* the Hessian's traces through ``K = I - sigma^2 M^{-1}`` (:class:`FactorTraces`), with near-singular
  terms of block 2 solved for, and from the dense ``M^{-1}`` (:class:`DenseTraces`), at interior
  points, near a zero variance and at one (each route is exact; they differ by rounding only);
* the gradient (always through the factor, without dividing by a covariance factor) against
  central differences of the engine's own criterion, a variance at 0 included;
* the weighted cross products of :mod:`pymc_mixvcov.engines.crossprod` (SciPy, compiled kernel,
  dense BLAS), and the factor built with each;
* the model map's affine shortcut and the moment start of the optimiser.
"""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import central_differences

import pymc_mixvcov as pmv
from pymc_mixvcov.engines.blocked import blocked_data, criterion, ml_derivatives, profile, reml_derivatives
from pymc_mixvcov.engines.blocked_factor import BlockedFactor
from pymc_mixvcov.engines.crossprod import weighted_crossprods
from pymc_mixvcov.model.spec import inspect_model


def _design(formula, data):
    m = pmv.lmm(formula, data)
    return blocked_data(inspect_model(m.model, m.random))


@pytest.fixture(scope="module")
def two_vector_terms():
    """Crossed design with a vector first term (g: intercept and slope, 8 levels), a vector term
    in block 2 (k: 7 levels) and a scalar one (h: 6 levels), n = 144: every route of the traces."""
    rng = np.random.default_rng(14)
    g = np.repeat(np.arange(8), 18)
    h = np.tile(np.repeat(np.arange(6), 3), 8)
    k = rng.integers(0, 7, 144)
    x = rng.normal(size=144)
    y = 1.0 + 0.5 * x + rng.normal(size=8)[g] + 0.6 * rng.normal(size=8)[g] * x + rng.normal(size=7)[k]
    y = y + 0.4 * rng.normal(size=7)[k] * x + 0.7 * rng.normal(size=6)[h] + rng.normal(scale=0.8, size=144)
    labels = {name: [f"{name}{i}" for i in codes] for name, codes in (("g", g), ("k", k), ("h", h))}
    data = pd.DataFrame({"y": y, "x": x, **labels})
    return _design("y ~ x + (1 + x | g) + (1 + x | k) + (1 | h)", data)


@pytest.fixture(scope="module")
def scalar_terms():
    """The first 3,000 rows of InstEval, ``(1 | s) + (1 | d)``: two scalar terms, 878 effects."""
    return _design("y ~ service + (1 | s) + (1 | d)", pmv.datasets.load("insteval").iloc[:3000].reset_index(drop=True))


def _phi(d, rng, small: dict | None = None):
    phi = np.concatenate([rng.normal(size=d.p), 0.4 + 0.4 * rng.random(d.n_theta), [0.9]])
    for a, v in (small or {}).items():
        phi[d.p + a] = v
    return phi


def _close(a, b, what):
    """Agreement to rounding, relative to the matrix's scale (all entries of the routes are exact)."""
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * np.max(np.abs(b)), err_msg=what)


# entries of theta: the first term's L[0, 0], L[1, 0], L[1, 1]; then k's, then h's
@pytest.mark.parametrize(
    "small",
    [{}, {3: 1e-5}, {5: 1e-6}, {6: 1e-7}, {6: 0.0}, {3: 0.0, 4: 0.0, 5: 0.0}, {2: 1e-6}, {0: 1e-3}],
    ids=["interior", "k-near0", "k-slope-near0", "h-near0", "h-zero", "k-zero", "g-slope-near0", "g-small"],
)
def test_hessian_routes_agree(two_vector_terms, small):
    d = two_vector_terms
    phi = _phi(d, np.random.default_rng(1), small)
    want = ml_derivatives(d, phi, expected=True, how="dense")
    for how in ("auto", "solve") + (("factor",) if not small else ()):
        got = ml_derivatives(d, phi, expected=True, how=how)
        np.testing.assert_allclose(got["loglik"], want["loglik"], rtol=1e-13)
        _close(got["grad"], want["grad"], f"grad {how}")
        _close(got["hess"], want["hess"], f"hess {how}")
        _close(got["expected"], want["expected"], f"expected {how}")
        got_r, want_r = (reml_derivatives(d, phi[d.p :], expected=True, how=h) for h in (how, "dense"))
        _close(got_r["hess"], want_r["hess"], f"REML hess {how}")
        _close(got_r["expected"], want_r["expected"], f"REML expected {how}")


@pytest.mark.parametrize("small", [1.0, 1e-4, 1e-8, 0.0])
def test_scalar_first_term_near_zero(scalar_terms, small):
    """A scalar first term's lambda_1 is divided out exactly: no loss of digits as it goes to 0."""
    d = scalar_terms
    phi = np.array([3.2, 0.1, 0.5 * small, 0.35, 1.15])
    got = ml_derivatives(d, phi, how="auto")
    want = ml_derivatives(d, phi, how="dense")
    _close(got["hess"], want["hess"], "hess")


@pytest.mark.parametrize("zero", [None, 3, 6])
def test_profiled_gradient_against_central_differences(two_vector_terms, zero):
    """The profiled gradient at an interior point and with a variance at 0 (there the criterion
    is differentiable in theta: V depends on L L^T), against central differences (h = 1e-5:
    truncation ~1e-10, rounding ~1e-11 / h of the criterion's size)."""
    d = two_vector_terms
    ts = _phi(d, np.random.default_rng(2), {zero: 0.0} if zero is not None else None)[d.p :]
    for method in ("ML", "REML"):
        _, g, _ = profile(d, ts, method)
        g_fd = central_differences(lambda t, m=method: profile(d, t, m)[0], ts, 1e-5)
        np.testing.assert_allclose(g, g_fd, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            criterion(d, np.concatenate([profile(d, ts, method)[2], ts]), method), profile(d, ts, method)[0], rtol=1e-12
        )


def test_weighted_crossprods_three_ways():
    rng = np.random.default_rng(3)
    G = sp.random(400, 90, density=0.08, random_state=4, format="csr")
    w = rng.random((3, 400))
    want = [(G.T @ sp.diags_array(wi) @ G).toarray() for wi in w]
    for kw in ({"compiled": False}, {"compiled": True}, {"dense": G.toarray()}):
        for a, b in zip(weighted_crossprods(G, w, **kw), want, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * np.abs(b).max())
            np.testing.assert_array_equal(a, a.T)


def test_factor_with_the_compiled_kernel(scalar_terms):
    """The factor (log-determinant, solves, the gradient's traces) from the compiled cross products
    and from SciPy's: the same to rounding."""
    d = scalar_terms
    theta, sigma = np.array([0.5, 0.35]), 1.15
    a = BlockedFactor(d, theta, sigma, level=2, compiled=True)
    b = BlockedFactor(d, theta, sigma, level=2, compiled=False)
    np.testing.assert_allclose(a.logdet, b.logdet, rtol=1e-14)
    v = np.random.default_rng(5).normal(size=d.q)
    np.testing.assert_allclose(a.solve(v), b.solve(v), rtol=0, atol=1e-12 * np.abs(b.solve(v)).max())
    for ua, ub in zip(a.usum(), b.usum(), strict=True):
        np.testing.assert_allclose(ua, ub, rtol=1e-12)


def test_affine_model_map():
    """A formula's map to the core parameters (SDs of scalar terms, fixed effects, sigma) is affine:
    evaluated as ``J nat + b`` after its first evaluation, equal to the graph's values, with T = 0;
    a correlated term's (Cholesky factor through LKJ) map is not."""
    from pymc_mixvcov.compilation.derivatives import ModelMap
    from pymc_mixvcov.engines.marginal import Signature

    data = pmv.datasets.load("insteval").iloc[:3000].reset_index(drop=True)
    m = pmv.lmm("y ~ service + (1 | s) + (1 | d)", data)
    spec = inspect_model(m.model, m.random)
    mm = ModelMap(spec, Signature(2, (1, 1), ()))
    first, second, _ = mm._functions()
    assert mm._affine
    rng = np.random.default_rng(6)
    mm(np.abs(rng.normal(size=spec.n_params)) + 0.1)
    for _ in range(3):
        nat = np.abs(rng.normal(size=spec.n_params)) + 0.1
        phi, J, T = mm(nat)
        phi_g, J_g, _ = first(nat)
        np.testing.assert_allclose(phi, phi_g, rtol=1e-14, atol=1e-15)
        np.testing.assert_array_equal(J, J_g)
        np.testing.assert_array_equal(second(nat)[0], 0.0)
        assert not T.any()
    sleep = pmv.lmm("Reaction ~ Days + (Days | Subject)", pmv.datasets.load("sleepstudy"))
    spec2 = inspect_model(sleep.model, sleep.random)
    mm2 = ModelMap(spec2, Signature(2, (2,), ()))
    mm2._functions()
    assert not mm2._affine


def test_moment_start():
    """Moment estimates of the SDs: defined for all-scalar Gaussian models only; on InstEval within
    a few per cent of the ML estimates of lme4 (sd_s 0.3247, sd_d 0.5124, sigma 1.1768; the small
    dept:service SD 0.1046 within 50%)."""
    from pymc_mixvcov.optimise.start import moment_start

    ie = pmv.lmm("y ~ service + (1 | s) + (1 | d) + (1 | dept:service)", pmv.datasets.load("insteval"))
    got = moment_start(inspect_model(ie.model, ie.random))
    np.testing.assert_allclose(got[[0, 1, 3]], [0.3247, 0.5124, 1.1768], rtol=0.05)
    np.testing.assert_allclose(got[2], 0.1046, rtol=0.5)
    sleep = pmv.lmm("Reaction ~ Days + (Days | Subject)", pmv.datasets.load("sleepstudy"))
    assert moment_start(inspect_model(sleep.model, sleep.random)) is None


@pytest.mark.parametrize("r", [(1, 1), (2, 1), (3, 2)])
def test_closed_form_scales_match_the_graph(r):
    """The blocked engine's scale values and Jacobians in closed form equal the pytensor graph's
    (symbolic derivatives) to rounding, a zero SD (boundary fit) included."""
    from pymc_mixvcov.compilation.derivatives import core_function
    from pymc_mixvcov.engines.blocked_scales import closed_form_scales
    from pymc_mixvcov.engines.marginal import Signature

    sig = Signature(2, r, ())
    graph = core_function("scales", sig)
    rng = np.random.default_rng(7)
    for zero in (False, True):
        phi = np.concatenate([rng.normal(size=2), rng.normal(size=sig.n_theta), [0.8]])
        if zero:
            phi[2] = 0.0  # the first term's first SD
        for got, want in zip(closed_form_scales(phi, 2, r), graph(phi), strict=True):
            np.testing.assert_allclose(got, np.asarray(want), rtol=1e-12, atol=1e-12)
