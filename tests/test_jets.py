"""The closed-form Laplace derivatives (pymc_mixvcov/jets.py) against two independent routes.

1. Central differences, for every family and structure: the gradient equals differences of the
   value, the Hessian differences of the gradient, to the differences' truncation error (1e-6
   relative to the largest entry; step 1e-4: the truncation error is 1e-8, and smaller steps
   amplify the 1e-10 tolerance of the inner modes).
2. The graph route (pymc_mixvcov/laplace.py, used for quadrature with ``nAGQ > 1`` and with
   ``nAGQ = 1`` here): pytensor's own gradient and Hessian of the Laplace formula evaluated
   after two symbolic Newton steps from the mode. Same quantities, different algebra: they
   agree to rounding (1e-9 relative to the largest entry). Its graphs take minutes to build,
   so this comparison is a slow test, on one grouping factor (for a crossed design, a cluster
   of 17 effects, the graph route's Hessian takes longer than 40 minutes to build).
"""

import numpy as np
import pytest

import pymc_mixvcov as pmv
from pymc_mixvcov.compilation.derivatives import LaplaceFunctions
from pymc_mixvcov.engines.marginal import build_structure
from pymc_mixvcov.model.spec import inspect_model


def _functions(model):
    spec = inspect_model(model.model, model.random, None)
    return spec, LaplaceFunctions(spec, build_structure(spec))


def _point(spec, fns, seed=1):
    """A point away from the optimum and from the default start (all derivatives nonzero)."""
    phi, _, _ = fns.map(np.asarray(spec.nat0, float), second=False)
    rng = np.random.default_rng(seed)
    return phi + 0.1 * rng.standard_normal(phi.size) * (np.abs(phi) > 0) + 0.05


CASES = {
    "binomial, scalar": lambda d: pmv.glmm(
        "cbind(incidence, size - incidence) ~ period + (1 | herd)", pmv.datasets.load("cbpp"), family="binomial"
    ),
    "poisson, correlated slope": lambda d: pmv.glmm("y ~ x + (x | g)", d, family="poisson"),
    "poisson, crossed": lambda d: pmv.glmm("y ~ x + (1 | g) + (0 + x | h)", d, family="poisson"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["binomial, scalar", "poisson, correlated slope"])
def test_closed_form_equals_graph_derivatives(case, poisson_slope_data):
    spec, fns = _functions(CASES[case](poisson_slope_data))
    phi = _point(spec, fns)
    vs = fns.modes(phi)
    jet = fns.jet.evaluate(phi, vs, 2)
    nb = len(vs)
    val = fns._fn("value")(phi, *vs, *fns.data)
    scores = fns._fn("scores")(phi, *vs, *fns.data)
    hessians = fns._fn("cluster_hessians")(phi, *vs, *fns.data)
    for k in range(nb):
        np.testing.assert_allclose(jet["loglik"][k], val[k], rtol=1e-10)
        g = np.asarray(scores[k])
        np.testing.assert_allclose(jet["grad"][k], g, rtol=0, atol=1e-9 * np.max(np.abs(g)))
        h = np.asarray(hessians[k])
        np.testing.assert_allclose(jet["hess"][k], h, rtol=0, atol=1e-9 * np.max(np.abs(h)))


FD_CASES = {
    **CASES,
    "negative binomial (dispersion)": lambda d: pmv.glmm("y ~ x + (x | g)", d, family="negative_binomial"),
    "gamma (shape)": lambda d: pmv.glmm("y ~ x + (x | g)", d.assign(y=d["y"] + 1.0), family="gamma"),
}


@pytest.mark.parametrize("case", list(FD_CASES))
def test_closed_form_equals_differences(case, poisson_slope_data):
    spec, fns = _functions(FD_CASES[case](poisson_slope_data))
    phi = _point(spec, fns)

    def total(ph, order):
        out = fns.jet.evaluate(ph, fns.modes(ph), order)
        return sum(np.sum(a) for a in out["loglik"]), sum(np.sum(g, 0) for g in out.get("grad", [0.0]))

    out = fns.jet.evaluate(phi, fns.modes(phi), 2)
    g0 = sum(np.sum(g, 0) for g in out["grad"])
    H0 = sum(np.sum(h, 0) for h in out["hess"])
    fd_g, fd_H = np.empty_like(g0), np.empty_like(H0)
    for i in range(phi.size):
        e = np.zeros_like(phi)
        e[i] = 1e-4 * max(abs(phi[i]), 1.0)
        (fp, gp), (fm, gm) = total(phi + e, 1), total(phi - e, 1)
        fd_g[i] = (fp - fm) / (2 * e[i])
        fd_H[:, i] = (gp - gm) / (2 * e[i])
    np.testing.assert_allclose(g0, fd_g, rtol=0, atol=1e-6 * np.max(np.abs(g0)))
    np.testing.assert_allclose(H0, fd_H, rtol=0, atol=1e-6 * np.max(np.abs(H0)))


@pytest.mark.parametrize(
    "formula",
    ["y ~ x + (1 | g) + (0 + x | h)", "y ~ x + (x | g) + (1 | h)"],
    ids=["scalar terms", "vector and scalar term"],
)
def test_crossed_term_blocks_equal_the_dense_product(formula, poisson_slope_data):
    """The crossed cluster's ``R_a H^{-1}`` by blocks of terms gives the Hessian of the dense ``s x s``
    product (same sums in another order: 1e-12 relative to the largest Hessian entry)."""
    spec, fns = _functions(pmv.glmm(formula, poisson_slope_data, family="poisson"))
    jet = fns.jet
    assert [b is not None for b in jet._blocks] == [True]  # one crossed cluster, by blocks
    phi = _point(spec, fns)
    vs = fns.modes(phi)
    blocked = jet.evaluate(phi, vs, 2)["hess"][0]
    b = jet.batches[0]
    uw = b.row[:, None, None] * (jet.P * b.s * b.s) + b.pos[:, :, None] * b.s + b.pos[:, None, :]
    jet._blocks[0], jet._r_cells[0] = None, uw[..., None] + np.arange(jet.P) * (b.s * b.s)
    dense = jet.evaluate(phi, vs, 2)["hess"][0]
    np.testing.assert_allclose(blocked, dense, rtol=0, atol=1e-12 * np.max(np.abs(dense)))
