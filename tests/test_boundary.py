"""Boundary (singular) fits: the warning says what is at the boundary.

A zero diagonal entry of a term's relative Cholesky factor is an SD of 0 only when the whole
row of the factor is 0; otherwise the effect is a linear combination of the others and the
term's covariance is rank-deficient (for two effects: a correlation of +-1).

Reference: tests/reference/boundary.json, written by tests/reference/generate_boundary.R with
lme4 1.1-31 (R 4.2.2) from the simulated data next to it (boundary_cor.csv: a random intercept
and slope with correlation +1 and -1; boundary_rank.csv: a 3 x 3 covariance of rank 2 with no
correlation of +-1). lme4 reports all three fits singular with the same rank and no SD at 0.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import REF, reference

import pymc_mixvcov as pmv

#: lme4 and this package stop at different points of a likelihood that is flat along the
#: boundary (lme4's theta_g.x is 1.4e-5 where ours is 0): the SDs, correlations and residual SD
#: agree to 6.4e-5 relative at most (measured), and our log-likelihood is higher by at most 1.9e-7;
#: 1e-3 leaves room for other platforms' optimiser paths.
RTOL_LME4 = 1e-3


@pytest.fixture(scope="module")
def boundary_ref():
    return reference("boundary")


def _fit(formula: str, data: pd.DataFrame):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = pmv.lmm(formula, data).fit("ML")
    messages = [str(w.message) for w in caught if issubclass(w.category, pmv.SingularFitWarning)]
    assert len(messages) == 1, messages
    return fit, messages[0]


def _check_against_lme4(fit, ref: dict) -> None:
    sd = fit.params("sd")
    for label, want in ref["sdcor"].items():
        np.testing.assert_allclose(sd[label], want, rtol=RTOL_LME4, err_msg=label)
    np.testing.assert_allclose(fit.loglik, ref["logLik"], rtol=0, atol=1e-6)  # a flat optimum: 1e-6 of 203
    assert ref["isSingular"]


@pytest.mark.parametrize(("case", "response", "sign"), [("cor_pos", "y_pos", "+1"), ("cor_neg", "y_neg", "-1")])
def test_correlation_at_one_is_named_not_a_zero_sd(boundary_ref, case, response, sign):
    data = pd.read_csv(REF / "boundary_cor.csv")
    data["g"] = pd.Categorical(data["g"])
    fit, message = _fit(f"{response} ~ x + (x | g)", data)
    ref = boundary_ref[case]
    _check_against_lme4(fit, ref)
    assert ref["rank"]["g"] == 1
    sd = fit.params("sd")
    # theta_g.x is 0, so cor = L10 / |L10| = +-1 exactly (closed form), and sd_x|g = |L10| sigma is not 0
    assert fit.params("cholesky")["theta_g.x"] == 0.0
    np.testing.assert_allclose(sd["cor_x.(Intercept)|g"], float(sign), rtol=0, atol=1e-12)
    assert sd["sd_x|g"] > 0.25
    assert f"cor_x.(Intercept)|g estimated at {sign}" in message
    assert "the covariance of the g term ((Intercept), x) has rank 1 of 2" in message
    assert f"sd_x|g = {sd['sd_x|g']:.4g}" in message
    assert "sd_x|g estimated at 0" not in message and "sd_(Intercept)|g estimated at 0" not in message
    assert fit.singular


def test_rank_deficient_covariance_without_a_correlation_at_one(boundary_ref):
    data = pd.read_csv(REF / "boundary_rank.csv")
    data["g"] = pd.Categorical(data["g"])
    fit, message = _fit("y ~ x + z + (x + z | g)", data)
    ref = boundary_ref["rank"]
    _check_against_lme4(fit, ref)
    assert ref["rank"]["g"] == 2
    sd = fit.params("sd")
    cors = sd[[lab for lab in sd.index if lab.startswith("cor_")]].to_numpy()
    assert np.max(np.abs(cors)) < 0.9  # lme4: 0.186, 0.823, 0.712
    assert "the covariance of the g term ((Intercept), x, z) has rank 2 of 3" in message
    assert "no correlation is at +-1, but a linear combination of the effects has variance 0" in message
    assert f"sd_z|g = {sd['sd_z|g']:.4g}" in message
    assert "estimated at 0" not in message


def test_a_zero_sd_is_still_named_as_one():
    """No between-group variation at all: the SD itself is 0, and the warning says so (and no rank)."""
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(10), 8)
    y = rng.normal(size=g.size)
    y = y - pd.Series(y).groupby(g).transform("mean").to_numpy()
    fit, message = _fit("y ~ 1 + (1 | g)", pd.DataFrame({"y": y, "g": pd.Categorical(g)}))
    np.testing.assert_allclose(fit.params("sd")["sd_(Intercept)|g"], 0.0, rtol=0, atol=1e-8)
    assert message.startswith("boundary (singular) fit: sd_(Intercept)|g estimated at 0")
    assert "rank" not in message
