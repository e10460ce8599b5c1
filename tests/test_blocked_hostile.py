"""The blocked engines under inputs that real users give: invariances and degenerate designs.

Each test names its truth: an invariance of the model (the likelihood of ``y + c`` with an
intercept, of ``c y``, of shuffled rows, relabelled levels, reordered terms, factors given as
integers or as categoricals with unused levels), or what the model itself implies (two terms that
the data cannot tell apart, a likelihood unbounded as sigma -> 0). All fits use
``engine="blocked"`` on small data.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

import pymc_mixvcov as pmv
from pymc_mixvcov.errors import ConvergenceWarning, SingularFitWarning


def _crossed(seed=5, na=8, nb=6, n=80, slope=False):
    """``y = 1 + 0.5 x + a + b (+ slope on a) + e``: 8 levels of ``a`` crossed with 6 of ``b``."""
    rng = np.random.default_rng(seed)
    a, b, x = rng.integers(0, na, n), rng.integers(0, nb, n), rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=na)[a] + 0.7 * rng.normal(size=nb)[b] + rng.normal(scale=0.8, size=n)
    if slope:
        y = y + 0.5 * rng.normal(size=na)[a] * x
    return pd.DataFrame({"y": y, "x": x, "a": [f"a{k}" for k in a], "b": [f"b{k}" for k in b]})


def _fit(formula, data, method="ML"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return pmv.lmm(formula, data).fit(method, engine="blocked")


FORMULA = "y ~ x + (1 + x | a) + (1 | b)"


@pytest.fixture(scope="module")
def data():
    return _crossed(seed=3, slope=True)


@pytest.fixture(scope="module")
def base(data):
    return _fit(FORMULA, data)


# -- a response with a large mean --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_response_shifted_by_a_constant(method):
    """With an intercept, ``y + c`` has the same log-likelihood and variance estimates, the intercept
    moves by ``c`` (lme4 1.1-31 keeps logLik to 6e-9 at c = 1e8). The engine's moments of ``y``
    used to cancel: at ``c = 1e6`` logLik was off by 5.5e-3 and the SDs by 8e-5 (relative), at
    ``c = 1e8`` by 76. Tolerances: the optimiser's (Newton decrement 1e-6 on the loglik; measured
    after the fix 1.6e-8 at c = 1e8)."""
    d = _crossed()
    f0 = _fit("y ~ x + (1 | a) + (1 | b)", d, method)
    for c in (1e6, 1e8):
        f = _fit("y ~ x + (1 | a) + (1 | b)", d.assign(y=d.y + c), method)
        assert_allclose(f.loglik, f0.loglik, rtol=0, atol=1e-6)
        assert_allclose(f.params("sd").iloc[1:], f0.params("sd").iloc[1:], rtol=1e-6)
        assert_allclose(f.params("sd").iloc[0] - c, f0.params("sd").iloc[0], rtol=0, atol=1e-6)
        assert_allclose(f.se(scale="sd"), f0.se(scale="sd"), rtol=1e-5)


def test_new_response_is_centred(base):
    """The bootstrap's new responses (ResponseSwap) are centred as the fit's: the profiled criterion
    of ``y + 1e8`` equals that of ``y``, with the intercept moved by 1e8 (and the fit's cached
    criteria are not those of the new response). Tolerance: ``y + 1e8`` is rounded to 1.5e-8 per
    value, which moves the log-likelihood by about 1e-7 (measured 1.4e-7; before the response was
    centred, 76)."""
    from pymc_mixvcov.engines.response import ResponseSwap

    fns = base._functions
    vv = np.asarray(base._opt["nat"], float)[fns.vi] * 1.1
    f0, g0, nat0 = fns.profile(vv)
    swapped, _ = ResponseSwap(fns)(np.asarray(base.spec.y, float) + 1e8)
    f1, g1, nat1 = swapped.profile(vv)
    assert_allclose(f1, f0, rtol=0, atol=1e-6)
    assert_allclose(g1, g0, rtol=0, atol=1e-5 * np.max(np.abs(g0)))
    assert_allclose(nat1[fns.fi] - nat0[fns.fi], [1e8, 0.0], rtol=0, atol=1e-6)


# -- invariances -------------------------------------------------------------------------------------
def _relabel(d):
    d = d.copy()
    d["a"] = d["a"].map(lambda s: "z" + s[::-1])
    d["b"] = d["b"].map({f"b{k}": f"B{5 - k}" for k in range(6)})
    return d


def _categorical(d):
    d = d.copy()
    d["a"] = pd.Categorical(d["a"], categories=["unused", *sorted(d["a"].unique()), "unused2"])
    d["b"] = d["b"].str[1:].astype(int)  # integer codes
    return d


CHANGES = {
    "rows shuffled": (FORMULA, lambda d: d.sample(frac=1.0, random_state=1).reset_index(drop=True)),
    "levels relabelled": (FORMULA, _relabel),
    "terms swapped": ("y ~ x + (1 | b) + (1 + x | a)", lambda d: d),
    "categorical with unused levels, int codes": (FORMULA, _categorical),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_same_model_same_numbers(data, base, change):
    """The same model written or ordered otherwise: the same log-likelihood, estimates and covariance
    (matched by label) to rounding and the optimiser's tolerance."""
    formula, how = CHANGES[change]
    f = _fit(formula, how(data))
    assert_allclose(f.loglik, base.loglik, rtol=1e-10)
    labels = base.labels("sd")
    assert_allclose(f.params("sd")[labels], base.params("sd"), rtol=1e-6, atol=1e-9)
    V, V0 = f.vcov(scale="sd").loc[labels, labels], base.vcov(scale="sd")
    assert_allclose(V.to_numpy(), V0.to_numpy(), rtol=1e-5, atol=1e-10)


def test_response_in_other_units(data, base):
    """``c y``: every estimate except the slope's correlation and the fixed effects' ratios scales
    by ``c``, logLik shifts by ``-n log c``, standard errors scale as their estimates."""
    c = 1000.0
    f = _fit(FORMULA, data.assign(y=data.y * c))
    assert_allclose(f.loglik, base.loglik - len(data) * np.log(c), rtol=1e-10)
    unit = np.array([0.0 if lab.startswith("cor_") else 1.0 for lab in base.labels("sd")])
    factor = c**unit
    assert_allclose(f.params("sd"), base.params("sd") * factor, rtol=1e-6)
    assert_allclose(f.se(scale="sd"), base.se(scale="sd") * factor, rtol=1e-5)


# -- degenerate designs -----------------------------------------------------------------------------
def test_terms_that_cannot_be_told_apart_are_named():
    """A factor relabelled as a second term, or a nested factor with one sub-level per level: the
    likelihood depends on the two intercept variances only through their sum. The fit used to
    report standard errors of about 2,000 for both with no warning."""
    d = _crossed()
    d["b_copy"] = d["a"] + "_copy"
    with pytest.warns(SingularFitWarning, match=r"sd_\(Intercept\)\|a and sd_\(Intercept\)\|b_copy are not separately"):
        _fit("y ~ x + (1 | a) + (1 | b_copy)", d)
    d["sub"] = "s1"  # one sub-level per level of a: a:sub is a again
    with pytest.warns(SingularFitWarning, match="not separately identified"):
        _fit("y ~ x + (1 | a) + (1 | a:sub) + (1 | b)", d)


def test_a_repeated_term_gets_lme4s_unique_group_name():
    """``(1 | a) + (1 | a)``: the second block's parameters carry ``a.1`` (R's ``make.unique``, as
    lme4 names the blocks) on every scale, so no two parameters share a label; a second block on
    the same factor with other effects keeps the factor's name (``(1 | a) + (0 + x | a)``)."""
    d = _crossed()
    with pytest.warns(SingularFitWarning, match=r"sd_\(Intercept\)\|a and sd_\(Intercept\)\|a\.1"):
        f = _fit("y ~ x + (1 | a) + (1 | a)", d)
    assert f.labels("sd")[-3:] == ["sd_(Intercept)|a", "sd_(Intercept)|a.1", "sigma"]
    assert f.labels("var")[-3:] == ["cov_a.(Intercept)", "cov_a.1.(Intercept)", "residual"]
    for scale in ("sd", "var", "cholesky"):
        assert f.vcov(scale).index.is_unique
    g = _fit("y ~ x + (1 | a) + (0 + x | a)", d)
    assert g.labels("sd")[-3:] == ["sd_(Intercept)|a", "sd_x|a", "sigma"]


@pytest.mark.parametrize(
    "formula",
    ["y ~ x + (1 | a) + (1 | b)", "y ~ x + (1 | a) + (1 | ab)", "y ~ x + (1 | a) + (0 + x | a)"],
    ids=["crossed", "nested, finer", "uncorrelated slope"],
)
def test_identified_terms_are_not_named(formula):
    from pymc_mixvcov.inference.scales import ScaleMaps
    from pymc_mixvcov.model.identification import unidentified_terms
    from pymc_mixvcov.model.spec import inspect_model

    d = _crossed()
    d["ab"] = d["a"] + d["b"]
    m = pmv.lmm(formula, d)
    spec = inspect_model(m.model, m.random)
    assert unidentified_terms(spec, ScaleMaps(spec, None).labels("sd")) == []


def test_exact_fit_is_not_a_linear_algebra_crash():
    """A response that the random effects reproduce exactly (no residual): the likelihood grows
    without bound as sigma -> 0. The blocked factor is then not numerically positive definite;
    that used to escape as numpy's LinAlgError from the optimiser, it is now a step back and a
    non-converged fit with a warning (as the cluster engine reports it)."""
    d = _crossed()
    rng = np.random.default_rng(0)
    d["y"] = 1 + rng.normal(size=8)[d.a.str[1:].astype(int)] + rng.normal(size=6)[d.b.str[1:].astype(int)]
    with pytest.warns(ConvergenceWarning):
        f = _fit("y ~ 1 + (1 | a) + (1 | b)", d)
    assert not f.converged
