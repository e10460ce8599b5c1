"""Satterthwaite and Kenward-Roger tests on the blocked engine (crossed designs).

Two kinds of reference:

* the cluster engine, which computes the same quantities by another route (pytensor's derivative
  of the cluster-statistics graph of ``X^T V^{-1} X``, the closed forms of
  ``engines/cluster_ddf.py`` per cluster): at the same parameters the two agree to rounding. The
  fits compared are the cluster engine's and a copy of it whose every piece (information,
  scales, ``X^T V^{-1} X`` and its derivatives) comes from the blocked engine at the same optimum:
  1e-8 relative (rounding in ~1e3-conditioned solves is ~1e-12; 1e-8 leaves room for the
  df's division by small ``g^T A^{-1} g``). Separate fits agree to the optimisers' tolerance
  (Newton decrement below 1e-6 at worst; parameters to ~1e-6 of their standard errors): 1e-5.
* lmerTest 3.1-3 and pbkrtest 0.5.2 (R 4.2.2, lme4 1.1-31) on a simulated subject x item design,
  ``tests/reference/ddf_crossed.csv`` / ``ddf_crossed.json`` (``generate_ddf_crossed.R``; lme4
  fitted by bobyqa to ``rhoend = 1e-12``): 1e-4 relative (the agreement asked of the method;
  measured 1.1e-6 at most).

The pieces themselves: the blocked engine's derivatives of ``X^T V^{-1} X`` against central
differences of its own ``X^T V^{-1} X``, and its var-scale ``P_i``, ``H_ij`` against the cluster
engine's closed forms at the same parameters.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from conftest import REF, central_differences, reference
from numpy.testing import assert_allclose

import pymc_mixvcov as pmv
from pymc_mixvcov.engines.blocked import BlockedLMMFunctions, blocked_data
from pymc_mixvcov.engines.blocked_ddf import var_scale_pieces, xtvx
from pymc_mixvcov.engines.cluster_ddf import var_scale_pieces as cluster_pieces
from pymc_mixvcov.engines.marginal import build_structure, signature_of
from pymc_mixvcov.model.spec import inspect_model

SXI = "y ~ group * cond + (1 | subj) + (1 + cond | item)"


@pytest.fixture(scope="module")
def sxi_data():
    """20 subjects x 10 items, one row each: a three-level between-subject factor ``group``, a
    two-level ``cond`` varying within items (and subjects); see generate_ddf_crossed.R."""
    return pd.read_csv(REF / "ddf_crossed.csv")


@pytest.fixture(scope="module")
def free_rows():
    """Crossed slopes on an indicator: the rows with ``d = 0`` use no random effect (the cluster
    engine's ``structure.free``; zero rows of ``Z`` in the blocked layout)."""
    rng = np.random.default_rng(3)
    n = 120
    g, h = rng.integers(0, 9, n), rng.integers(0, 7, n)
    x, dd = rng.normal(size=n), (rng.uniform(size=n) < 0.7).astype(float)
    y = 1 + 0.4 * x + dd * (0.8 * rng.normal(size=9)[g] + 0.6 * rng.normal(size=7)[h]) + 0.5 * rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "d": dd, "g": [f"g{k}" for k in g], "h": [f"h{k}" for k in h]})


def _spec(formula: str, data: pd.DataFrame):
    model = pmv.lmm(formula, data)
    return inspect_model(model.model, model.random)


def _ts_from_var(d, vs: np.ndarray) -> np.ndarray:
    """``(theta, sigma)`` (absolute Cholesky factors, lower triangles column-major) from the var
    scale ``(vech G_k, sigma^2)`` in the same order."""
    ts = np.zeros(d.n_theta + 1)
    for bt in d.terms:
        G = np.zeros((bt.r, bt.r))
        for a, (i, j) in enumerate(bt.lower()):
            G[i, j] = G[j, i] = vs[bt.theta_off + a]
        L = np.linalg.cholesky(G)
        for a, (i, j) in enumerate(bt.lower()):
            ts[bt.theta_off + a] = L[i, j]
    ts[-1] = np.sqrt(vs[-1])
    return ts


def _var_from_ts(d, ts: np.ndarray) -> np.ndarray:
    vs = np.zeros(d.n_theta + 1)
    for bt, L in zip(d.terms, d.factors(ts[:-1]), strict=True):
        G = L @ L.T
        for a, (i, j) in enumerate(bt.lower()):
            vs[bt.theta_off + a] = G[i, j]
    vs[-1] = ts[-1] ** 2
    return vs


def _design(name, crossed_vector, sxi_data, free_rows):
    return {
        "crossed_vector": ("y ~ x + (1 + x | g) + (1 | h)", crossed_vector),
        "pastes": ("strength ~ 1 + (1 | batch/cask)", pmv.datasets.load("pastes")),
        # a scalar first term (20 subjects) and a vector term in block 2 (10 items x 2)
        "subject_item": (SXI, sxi_data),
        "free_rows": ("y ~ x + (0 + d | g) + (0 + d | h)", free_rows),
    }[name]


DESIGNS = ["crossed_vector", "pastes", "subject_item", "free_rows"]


def _point(d, rng) -> np.ndarray:
    """An interior point: every term's covariance positive definite, sigma around 0.7."""
    vs = np.zeros(d.n_theta + 1)
    for bt in d.terms:
        A = rng.normal(size=(bt.r, bt.r))
        G = 0.3 * A @ A.T + 0.4 * np.eye(bt.r)
        for a, (i, j) in enumerate(bt.lower()):
            vs[bt.theta_off + a] = G[i, j]
    vs[-1] = 0.5
    return _ts_from_var(d, vs)


@pytest.mark.parametrize("design", DESIGNS)
def test_xtvx_derivatives_against_central_differences(design, crossed_vector, sxi_data, free_rows):
    """d(X'V^-1X)/d(theta, sigma) in closed form against central differences of X'V^-1X (step 1e-5:
    truncation ~1e-10, rounding ~1e-11 relative), and its value against the cluster engine's."""
    formula, data = _design(design, crossed_vector, sxi_data, free_rows)
    spec = _spec(formula, data)
    d = blocked_data(spec)
    ts = _point(d, np.random.default_rng(1))
    XtVX, D = xtvx(d, ts)
    fd = central_differences(lambda x: xtvx(d, x)[0], ts, 1e-5)
    assert_allclose(D, fd, rtol=1e-6, atol=1e-7 * np.abs(D).max())
    st = build_structure(spec)
    want = cluster_pieces(st, signature_of(st), ts[:-1], ts[-1])[0]
    assert_allclose(XtVX, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("design", DESIGNS)
def test_var_scale_pieces_match_the_cluster_engine(design, crossed_vector, sxi_data, free_rows):
    """P_i and H_ij on the var scale: the blocked engine's against the cluster engine's closed
    forms at the same (interior) parameters, to rounding (1e-10 relative to the largest entry);
    P against central differences of X'V^-1X on the var scale and H against those of P (step
    1e-5 relative: truncation ~1e-10)."""
    formula, data = _design(design, crossed_vector, sxi_data, free_rows)
    spec = _spec(formula, data)
    d = blocked_data(spec)
    st = build_structure(spec)
    if design == "free_rows":
        assert st.free[3] > 0  # rows that use no random effect
    ts = _point(d, np.random.default_rng(2))
    got = var_scale_pieces(d, ts)
    want = cluster_pieces(st, signature_of(st), ts[:-1], ts[-1])
    for g, w, name in zip(got, want, ("XtVX", "P", "H"), strict=True):
        assert g.shape == w.shape, name
        assert_allclose(g, w, rtol=1e-10, atol=1e-10 * np.abs(w).max(), err_msg=name)
    vs = _var_from_ts(d, ts)
    fdP = central_differences(lambda v: var_scale_pieces(d, _ts_from_var(d, v))[0], vs, 1e-5)
    assert_allclose(got[1], fdP, rtol=1e-6, atol=1e-7 * np.abs(got[1]).max())
    fdH = central_differences(lambda v: var_scale_pieces(d, _ts_from_var(d, v))[1], vs, 1e-5)
    assert_allclose(got[2], fdH, rtol=1e-6, atol=1e-7 * np.abs(got[2]).max())


def _blocked_twin(fit):
    """``fit`` (by the cluster engine) with every piece from the blocked engine at the same optimum:
    the information, the scales' values and Jacobians, ``X'V^-1X`` and its derivatives."""
    twin = copy.copy(fit)
    fns = BlockedLMMFunctions(fit.spec, fit.structure, fit.method)
    nat = fit._opt["nat"]
    opt = {k: v for k, v in fit._opt.items() if k not in ("observed", "expected", "observed_ml_cross")}
    twin._opt = {**opt, **fns.information(nat), **fns.scales(nat), "nat": nat}
    twin._functions, twin.engine = fns, "blocked"
    twin._vcov_nat, twin._cache = {}, {}
    return twin


#: what each design tests besides the t tables: anova (formula terms) and a hypothesis
HYPOTHESES = {
    "pastes": (False, ["(Intercept) = 60"]),
    "crossed_vector": (True, ["x = 0.3", "(Intercept) = 0; x = 0"]),
    "subject_item": (True, ["groupB = groupC", "groupB = 0; groupC = 0", "condb + groupC:condb = 0.5"]),
}


def _compare(got, want, rtol, anova: bool, hypotheses: list[str]):
    for ddf in ("satterthwaite", "kenward-roger"):
        g, w = got.ttest(ddf), want.ttest(ddf)
        pd.testing.assert_index_equal(g.index, w.index)
        assert_allclose(g.to_numpy(), w.to_numpy(), rtol=rtol, err_msg=ddf)
        if anova:
            for kind in ("III", "II"):
                g, w = got.anova(ddf=ddf, type=kind), want.anova(ddf=ddf, type=kind)
                pd.testing.assert_index_equal(g.index, w.index)
                assert_allclose(g.to_numpy(), w.to_numpy(), rtol=rtol, err_msg=f"{ddf} {kind}")
        for h in hypotheses:
            g, w = got.test(h, ddf=ddf), want.test(h, ddf=ddf)
            assert_allclose(g.to_numpy(), w.to_numpy(), rtol=rtol, err_msg=f"{ddf} {h}")
    assert_allclose(got.vcov_kr().to_numpy(), want.vcov_kr().to_numpy(), rtol=rtol)
    s_got, s_want = got.summary(ddf="satterthwaite"), want.summary(ddf="satterthwaite")
    assert_allclose(s_got["df"].to_numpy(), s_want["df"].to_numpy(), rtol=rtol)


# crossed_vector and the subject x item design compile the cluster engine's graphs of one 22- and
# one 40-effect cluster (a minute or more each on a first run): slow; Pastes' clusters are small
@pytest.mark.parametrize(
    "design",
    [
        "pastes",
        pytest.param("crossed_vector", marks=pytest.mark.slow),
        pytest.param("subject_item", marks=pytest.mark.slow),
    ],
)
def test_same_tests_as_the_cluster_engine(design, crossed_vector, sxi_data, free_rows):
    formula, data = _design(design, crossed_vector, sxi_data, free_rows)
    model = pmv.lmm(formula, data)
    dense = model.fit("REML", engine="clusters")
    twin = _blocked_twin(dense)
    anova, hyps = HYPOTHESES[design]
    _compare(twin, dense, 1e-8, anova, hyps)
    blocked = model.fit("REML", engine="blocked")
    assert blocked.engine == "blocked"
    _compare(blocked, dense, 1e-5, anova, hyps)


@pytest.fixture(scope="module")
def sxi_fit(sxi_data):
    return pmv.lmm(SXI, sxi_data).fit("REML", engine="blocked")


def _check(got: pd.DataFrame, want: dict, rtol: float = 1e-4):
    assert list(got.index) == want["names"]
    for col in ("estimate", "se", "df", "t", "p"):
        assert_allclose(got[col], want[col], rtol=rtol, err_msg=col)


def test_crossed_design_against_lmertest_and_pbkrtest(sxi_fit):
    """t tables, pbkrtest's vcovAdj, type III and II anova, a contrast and a joint test of the
    subject x item design by the blocked engine against lmerTest / pbkrtest (1e-4 relative; p-values
    here have ``|d log p / d t| < 5``, so they move by less than 1e-4 too)."""
    ref = reference("ddf_crossed")
    assert sxi_fit.engine == "blocked"
    assert_allclose(sxi_fit.loglik, ref["logLik"], rtol=1e-9)
    _check(sxi_fit.ttest("satterthwaite"), ref["satterthwaite"])
    _check(sxi_fit.ttest("kenward-roger"), ref["kenward_roger"])
    assert_allclose(sxi_fit.vcov_kr().to_numpy(), ref["vcov_kr"], rtol=1e-4)
    for kind in ("III", "II"):
        for ddf, tag in (("satterthwaite", "satt"), ("kenward-roger", "kr")):
            got, want = sxi_fit.anova(ddf=ddf, type=kind), ref[f"{kind}_{tag}"]
            assert list(got.index) == want["terms"] and list(got["ndf"]) == want["ndf"]
            assert_allclose(got[["F", "ddf", "p"]].to_numpy().T, [want["F"], want["ddf"], want["p"]], rtol=1e-4)
    for ddf, tag in (("satterthwaite", "satt"), ("kenward-roger", "kr")):
        got, want = sxi_fit.test("groupB = groupC", ddf=ddf).iloc[0], ref[f"contrast_{tag}"]
        assert_allclose(
            [got["estimate"], got["se"], got["ddf"], got["t"], got["p"]],
            [want["estimate"], want["se"], want["df"], want["t"], want["p"]],
            rtol=1e-4,
        )
        got, want = sxi_fit.test("groupB = 0; groupC = 0", ddf=ddf).iloc[0], ref[f"joint_{tag}"]
        assert got["ndf"] == want["ndf"] == 2
        assert_allclose([got["F"], got["ddf"], got["p"]], [want["F"], want["ddf"], want["p"]], rtol=1e-4)


# InstEval: 73,421 rows, a fit of 2-3 s and 0.8 GB
@pytest.mark.slow
def test_insteval_satterthwaite_against_lmertest():
    """InstEval REML by the blocked engine against lmerTest's Satterthwaite t-table
    (tests/reference/ddf_insteval.json): df, se and t to 1e-4 relative (measured 6e-6); the
    intercept's p (~1e-38, t = 93, df = 30) has ``|d log p / d df| ~ 2.8`` and moves by about
    5e-4 with lme4's df: 2e-3 there, 1e-4 for ``service1``."""
    ref = reference("ddf_insteval")
    fit = pmv.lmm("y ~ service + (1 | s) + (1 | d) + (1 | dept:service)", pmv.datasets.load("insteval")).fit("REML")
    assert fit.engine == "blocked"
    assert_allclose(fit.loglik, ref["logLik"], rtol=1e-9)
    got, want = fit.ttest("satterthwaite"), ref["satterthwaite"]
    assert list(got.index) == want["names"]
    for col in ("estimate", "se", "df", "t"):
        assert_allclose(got[col], want[col], rtol=1e-4, err_msg=col)
    assert_allclose(got["p"].iloc[0], want["p"][0], rtol=2e-3)
    assert_allclose(got["p"].iloc[1], want["p"][1], rtol=1e-4)
    # no R reference for Kenward-Roger here; the blocked engine's pieces at this size: finite answers
    assert np.all(np.isfinite(fit.ttest("kenward-roger").to_numpy()))
