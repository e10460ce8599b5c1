"""A random-effect SD at 0 that is a saddle, not the optimum: the fit must leave it.

An SD enters the likelihood through its square, so the profiled criterion's gradient in it is 0
at SD = 0 for any data. In the two data sets of ``tests/reference/saddle.csv`` (the coverage
study's heteroscedastic LMM, ``benchmarks/coverage_study.py``) the start of the SD (the
least-squares residual SD, about 2.4) lies far above the optimum (about 0.75); L-BFGS-B's first
step crossed the whole interior to 0 and stopped there with a zero projected gradient, at a
log-likelihood 7 and 11 units below lme4's, and the fit reported a boundary (singular) fit. It
was found in 68 of 200 replicates of that scenario.

Reference: lme4 1.1-31 (``tests/reference/generate_saddle.R``, ``saddle.json``): the ML fit and
the log-likelihood at ``theta = 0``. Tolerances as for lme4 fits elsewhere
(``test_uncorrelated.py``): lme4's optimiser stops within about 1e-5 relative of the optimum, where
the log-likelihood is flat (1e-6 absolute on it).
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import REF, reference

import pymc_mixvcov as pmv


@pytest.mark.parametrize("case", ["a", "b"])
def test_fit_leaves_a_saddle_at_zero_sd(case):
    ref = reference("saddle")[case]
    raw = pd.read_csv(REF / "saddle.csv")
    data = pd.DataFrame({"y": raw[f"y_{case}"], "x": raw[f"x_{case}"], "g": pd.Categorical(raw["g"])})
    with warnings.catch_warnings():
        warnings.simplefilter("error", pmv.SingularFitWarning)  # the optimum is interior
        fit = pmv.lmm("y ~ x + (1 | g)", data).fit("ML")
    assert fit.converged
    # the boundary point is where the optimiser used to stop: the fit is far above it
    assert fit.loglik > ref["logLik_theta0"] + 5
    np.testing.assert_allclose(fit.loglik, ref["logLik"], atol=1e-6)
    np.testing.assert_allclose(fit.params("sd").iloc[:2], list(ref["beta"].values()), rtol=1e-5)
    np.testing.assert_allclose(fit.params("sd").iloc[2:], list(ref["sdcor"].values()), rtol=1e-5)
