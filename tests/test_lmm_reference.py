"""The LMM engine against lme4 1.1-31 / merDeriv 0.2-4 (tests/reference, made by generate.R)."""

import numpy as np
import pytest
from conftest import ref_matrix, reference, scaled_error

SLEEP_LABELS = [
    "(Intercept)",
    "Days",
    "cov_Subject.(Intercept)",
    "cov_Subject.Days.(Intercept)",
    "cov_Subject.Days",
    "residual",
]


def test_sleepstudy_ml_loglik(sleep_ml):
    ref = reference("sleepstudy_ml")
    assert sleep_ml.converged
    # lme4 prints -875.9697; tolerance 1e-3 as required (lme4 stops its optimiser early)
    np.testing.assert_allclose(sleep_ml.loglik, ref["logLik"], atol=1e-3)


def test_sleepstudy_ml_estimates(sleep_ml):
    ref = reference("sleepstudy_ml")
    p = sleep_ml.params("var")
    assert list(p.index) == SLEEP_LABELS
    np.testing.assert_allclose(p.iloc[:2], ref["beta"], rtol=1e-6)
    vc = [r["vcov"] for r in ref["varcorr"]]
    # lme4's optimum is within its own convergence tolerance of ours: 1e-4 relative on variances
    np.testing.assert_allclose(p.iloc[2:], vc, rtol=1e-4)


@pytest.mark.parametrize("information", ["observed", "expected"])
def test_sleepstudy_ml_full_vcov_var(sleep_ml, information):
    ref = ref_matrix(reference("sleepstudy_ml"), f"merDeriv_vcov_{information}_var")
    got = sleep_ml.vcov(scale="var", information=information)
    assert list(got.index) == list(ref.index) == SLEEP_LABELS
    # merDeriv's lmer var scale is exact (DESIGN.md); 2e-3 scaled covers lme4's optimum tolerance
    assert scaled_error(got.to_numpy(), ref.to_numpy()).max() < 2e-3


def test_sleepstudy_reml_expected(sleep_reml):
    ref = reference("sleepstudy_reml")
    np.testing.assert_allclose(sleep_reml.loglik, ref["logLik"], atol=1e-3)  # lme4: -871.8141
    want = ref_matrix(ref, "merDeriv_vcov_expected_var")
    got = sleep_reml.vcov("var", "expected")
    assert scaled_error(got.to_numpy(), want.to_numpy()).max() < 2e-3


def test_fixed_block_is_lme4_vcov(sleep_ml):
    ref = ref_matrix(reference("sleepstudy_ml"), "vcov_beta")
    got = sleep_ml.vcov("var", "expected").iloc[:2, :2]
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=1e-4)


def test_correlation_se_uses_full_jacobian(sleep_ml):
    se = sleep_ml.se("sd")
    assert list(se.index) == [
        "(Intercept)",
        "Days",
        "sd_(Intercept)|Subject",
        "cor_Days.(Intercept)|Subject",
        "sd_Days|Subject",
        "sigma",
    ]
    # exact SE of the correlation: 0.3235 (merDeriv's diagonal shortcut prints 0.3154)
    np.testing.assert_allclose(se["cor_Days.(Intercept)|Subject"], 0.3235, atol=5e-5)


def test_cholesky_block_is_twice_inverse_profiled_hessian(sleep_ml):
    ref = reference("sleepstudy_ml")
    H = np.array(ref["lme4_theta_hessian_deviance"])
    want = 2 * np.linalg.inv(H)
    got = sleep_ml.vcov("cholesky").iloc[2:5, 2:5].to_numpy()
    assert list(sleep_ml.labels("cholesky")[2:5]) == [
        "theta_Subject.(Intercept)",
        "theta_Subject.Days.(Intercept)",
        "theta_Subject.Days",
    ]
    # lme4's Hessian is a finite-difference approximation stored in single precision; 1e-2 scaled
    assert scaled_error(got, want).max() < 1e-2
    np.testing.assert_allclose(sleep_ml.params("cholesky").iloc[2:5], ref["theta"], rtol=2e-4)


@pytest.mark.parametrize("information", ["observed", "expected"])
def test_penicillin_crossed(penicillin_ml, information):
    ref = reference("penicillin_crossed_ml")
    np.testing.assert_allclose(penicillin_ml.loglik, ref["logLik"], atol=1e-3)
    want = ref_matrix(ref, f"merDeriv_vcov_{information}_var")
    got = penicillin_ml.vcov("var", information)
    assert list(got.index) == ["(Intercept)", "cov_plate.(Intercept)", "cov_sample.(Intercept)", "residual"]
    assert scaled_error(got.to_numpy(), want.to_numpy()).max() < 2e-3


def test_glmmtmb_sleepstudy_loglik(sleep_ml):
    # glmmTMB 1.1.5 reaches the same maximum
    np.testing.assert_allclose(sleep_ml.loglik, reference("tmb_sleepstudy_ml")["logLik"], atol=1e-3)
