"""REML observed information: the fixed/variance cross block, ``reml_cross="zero"`` or merDeriv's ``"ml"``.

References: tests/reference/sleepstudy_reml_observed.json and
sleepstudy_unbalanced_reml_observed.json (lme4 1.1-31, merDeriv 0.2-6 sourced, R 4.2.2, by
generate_reml_observed.R). The unbalanced case is sleepstudy without every 7th row (R's rows
1, 8, 15, ...): there the ML cross derivative at the REML estimates does not vanish. Both options
are also checked against a dense NumPy evaluation of the closed-form information matrices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import ref_matrix, reference, scaled_error

import pymc_mixvcov as pmv
from pymc_mixvcov.errors import MixVcovError

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def unbalanced(sleepstudy):
    ref = reference("sleepstudy_unbalanced_reml_observed")
    drop = np.array(ref["dropped_rows_1based"]) - 1
    data = sleepstudy.drop(index=sleepstudy.index[drop]).reset_index(drop=True)
    return data, pmv.lmm(FORMULA, data).fit(method="REML")


def _dense_information(data: pd.DataFrame, fit, cross: bool) -> np.ndarray:
    """The REML observed information on the var scale, dense, from its closed form.

    ``V = Z G Z^T + s2 I`` at the fit's estimates; ``V_j = dV / d psi_j`` for
    ``psi = (G11, G21, G22, s2)``; ``P = V^-1 - V^-1 X (X^T V^-1 X)^-1 X^T V^-1``, ``r = y - X beta``.
    Variance block ``-1/2 tr(P V_i P V_j) + r^T V^-1 V_i P V_j V^-1 r`` (the negative Hessian of
    the REML criterion, ``V`` linear in ``psi``), fixed block ``X^T V^-1 X``, cross block
    ``X^T V^-1 V_j V^-1 r`` (merDeriv) or zero.
    """
    est = fit.params("var").to_numpy()
    beta, (g11, g21, g22, s2) = est[:2], est[2:]
    X = np.column_stack([np.ones(len(data)), data["Days"].to_numpy(float)])
    codes = pd.factorize(data["Subject"])[0]
    Z = np.zeros((len(data), 2 * codes.max() + 2))
    Z[np.arange(len(data)), 2 * codes] = 1.0
    Z[np.arange(len(data)), 2 * codes + 1] = data["Days"].to_numpy(float)
    q = codes.max() + 1

    def zgz(G):
        return Z @ np.kron(np.eye(q), G) @ Z.T

    dV = [zgz(np.array([[1.0, 0], [0, 0]])), zgz(np.array([[0, 1.0], [1.0, 0]])), zgz(np.array([[0, 0], [0, 1.0]]))]
    dV.append(np.eye(len(data)))
    V = zgz(np.array([[g11, g21], [g21, g22]])) + s2 * np.eye(len(data))
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    P = Vi - Vi @ X @ np.linalg.solve(XtViX, X.T @ Vi)
    Vr = Vi @ (data["Reaction"].to_numpy(float) - X @ beta)
    H = np.array([[-0.5 * np.trace(P @ a @ P @ b) + Vr @ a @ P @ b @ Vr for b in dV] for a in dV])
    C = np.array([X.T @ Vi @ a @ Vr for a in dV]) if cross else np.zeros((4, 2))
    return np.block([[XtViX, C.T], [C, H]])


def test_unbalanced_fit_is_lme4s(unbalanced):
    _, fit = unbalanced
    ref = reference("sleepstudy_unbalanced_reml_observed")
    # lme4 stops its optimiser early: 1e-3 on logLik, 1e-6 relative on beta as in test_lmm_reference
    np.testing.assert_allclose(fit.loglik, ref["logLik"], atol=1e-3)
    np.testing.assert_allclose(fit.params("var").iloc[:2], ref["beta"], rtol=1e-6)


def test_ml_cross_reproduces_merderiv_unbalanced(unbalanced):
    _, fit = unbalanced
    want = ref_matrix(reference("sleepstudy_unbalanced_reml_observed"), "merDeriv_vcov_observed_var")
    got = fit.vcov("var", "observed", reml_cross="ml")
    assert list(got.columns) == list(want.columns)
    # 2e-3 scaled, as for every merDeriv comparison: lme4's optimum is within its tolerance of ours
    assert scaled_error(got.to_numpy(), want.to_numpy()).max() < 2e-3


def test_zero_cross_is_block_diagonal_and_differs_from_merderiv_unbalanced(unbalanced):
    _, fit = unbalanced
    want = ref_matrix(reference("sleepstudy_unbalanced_reml_observed"), "merDeriv_vcov_observed_var").to_numpy()
    got = fit.vcov("var", "observed").to_numpy()
    assert np.all(got[:2, 2:] == 0)
    # the fixed block is then lme4's vcov(fit) = (X^T V^-1 X)^-1
    lme4 = ref_matrix(reference("sleepstudy_unbalanced_reml_observed"), "vcov_beta").to_numpy()
    np.testing.assert_allclose(got[:2, :2], lme4, rtol=1e-4)  # lme4's optimum tolerance, as for ML
    # merDeriv's cross block is not zero here: the options differ by far more than the tolerance
    assert scaled_error(got, want)[:2, 2:].max() > 5e-3


@pytest.mark.parametrize("reml_cross", ["zero", "ml"])
def test_reml_observed_matches_dense_closed_form(unbalanced, reml_cross):
    data, fit = unbalanced
    want = np.linalg.inv(_dense_information(data, fit, cross=reml_cross == "ml"))
    got = fit.vcov("var", "observed", reml_cross=reml_cross).to_numpy()
    # same estimates, exact formulas both: rounding of a dense 154 x 154 inverse, and the REML
    # gradient left by the optimiser in the delta method (the natural -> var map's second
    # derivatives times the gradient): with a Newton decrement g' A^-1 g below 1e-12 the gradient is
    # below 1e-6 in standard-error units, and so is the error it leaves, scaled by the SEs
    assert scaled_error(got, want).max() < 1e-6


def test_balanced_sleepstudy_cross_block_vanishes(sleep_reml):
    ref = reference("sleepstudy_reml_observed")
    want = ref_matrix(ref, "merDeriv_vcov_observed_var").to_numpy()
    np.testing.assert_allclose(sleep_reml.loglik, ref["logLik"], atol=1e-3)
    zero = sleep_reml.vcov("var", "observed").to_numpy()
    ml = sleep_reml.vcov("var", "observed", reml_cross="ml").to_numpy()
    # every subject has the same design and Z = X: the cross block is zero up to rounding
    assert scaled_error(ml, zero).max() < 1e-9
    for got in (zero, ml):
        assert scaled_error(got, want).max() < 2e-3


def test_information_cross_block_is_the_ml_hessians(unbalanced, sleepstudy):
    """On the natural scale, ``"ml"`` puts in the ML observed information's cross block."""
    data, fit = unbalanced
    ml_fit = pmv.lmm(FORMULA, data).fit(method="ML")
    A = fit.information("observed", reml_cross="ml").to_numpy()
    A0 = fit.information("observed").to_numpy()
    M = ml_fit._functions.clusters(fit.params("natural").to_numpy())["observed"]
    fi, vi = fit.spec.fixed_index, fit.spec.variance_index
    np.testing.assert_array_equal(A[np.ix_(fi, vi)], M[np.ix_(fi, vi)])
    np.testing.assert_array_equal(A[np.ix_(vi, vi)], A0[np.ix_(vi, vi)])
    np.testing.assert_array_equal(A0[np.ix_(fi, vi)], 0.0)


def test_se_and_summary_pass_reml_cross(unbalanced):
    _, fit = unbalanced
    V = fit.vcov("sd", "observed", reml_cross="ml").to_numpy()
    se = fit.se("sd", reml_cross="ml")
    np.testing.assert_array_equal(se.to_numpy(), np.sqrt(np.diag(V)))
    table = fit.summary(reml_cross="ml")
    np.testing.assert_array_equal(table["Std. Error"].to_numpy(), se.to_numpy())
    assert not np.array_equal(se.to_numpy(), fit.se("sd").to_numpy())


def test_reml_cross_has_no_effect_on_ml_fits_and_expected_information(sleep_ml, unbalanced):
    _, fit = unbalanced
    for f, info in ((sleep_ml, "observed"), (sleep_ml, "expected"), (fit, "expected")):
        np.testing.assert_array_equal(f.vcov("var", info, reml_cross="ml"), f.vcov("var", info))


def test_unknown_reml_cross_is_refused(sleep_reml):
    for call in (
        lambda: sleep_reml.vcov("var", reml_cross="merDeriv"),
        lambda: sleep_reml.se(reml_cross="ML"),
        lambda: sleep_reml.summary(reml_cross=None),
        lambda: sleep_reml.information(reml_cross="one"),
    ):
        with pytest.raises(MixVcovError, match="valid values are: 'zero', 'ml'"):
            call()
