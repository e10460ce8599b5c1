"""The glmer question: the full covariance of fixed AND random-effect parameters of a GLMM.

cbpp, ``cbind(incidence, size - incidence) ~ period + (1 | herd)``, binomial, Laplace. Prints the
full covariance matrix on every scale, and next to it lme4's recipe: invert the Hessian of the
deviance that ``glmer`` stores (``fit@optinfo$derivs$Hessian``, a finite-difference Hessian in
``(theta, beta)``) and double it, ``2 H^-1``. The values come from tests/reference/cbpp_binomial.json.

Why they differ: lme4's Hessian is a finite-difference approximation computed by its optimiser
wrapper at the end of the fit, with a step size chosen for optimisation, not for second
derivatives; ours is the exact symbolic Hessian of the same Laplace log-likelihood (the mode of
the random effects differentiated implicitly), so the difference is lme4's numerical error.
glmmTMB, whose Hessian differentiates an automatic-differentiation gradient
(tests/reference/cbpp_glmmtmb.json), agrees with ours to about 1e-6 of the standard errors; the
script prints that comparison last.

Run: ``python examples/cbpp_full_vcov.py``.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import pymc_mixvcov as pmv

warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")

data = pmv.datasets.load("cbpp")
fit = pmv.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", data, family="binomial").fit()
print(f"Laplace logLik {fit.loglik:.6f}, converged: {fit.converged}\n")
with pd.option_context("display.width", 160, "display.precision", 6):
    for scale in ("sd", "var", "cholesky", "unconstrained"):
        print(f"Full covariance, {scale} scale (inverse observed information, exact Hessian):")
        print(fit.vcov(scale=scale).to_string(), "\n")

    ref = json.loads((Path(__file__).parents[1] / "tests" / "reference" / "cbpp_binomial.json").read_text())
    H = np.array(ref["lme4_hessian_deviance_theta_beta"])  # (theta, beta) order
    lme4 = 2 * np.linalg.inv(H)
    order = [1, 2, 3, 4, 0]  # to (beta, theta)
    lme4 = lme4[np.ix_(order, order)]
    ours = fit.vcov(scale="cholesky").to_numpy()
    labels = fit.labels("cholesky")
    d = np.sqrt(np.outer(np.diag(ours), np.diag(ours)))
    print("lme4's recipe 2 H^-1 on the same (cholesky = theta) scale:")
    print(pd.DataFrame(lme4, index=labels, columns=labels).to_string(), "\n")
    print("difference (lme4 - exact) scaled by sqrt(v_ii v_jj):")
    print(pd.DataFrame((lme4 - ours) / d, index=labels, columns=labels).round(4).to_string())
    print(f"\nSEs, exact: {np.sqrt(np.diag(ours)).round(5)}")
    print(f"SEs, lme4 : {np.sqrt(np.diag(lme4)).round(5)}")

    tmb = json.loads((Path(__file__).parents[1] / "tests" / "reference" / "cbpp_glmmtmb.json").read_text())
    sd = np.exp(tmb["log_sd"])
    J = np.diag([1.0, 1.0, 1.0, 1.0, sd])  # glmmTMB's (beta, log SD) -> (beta, SD), exactly
    V_tmb = J @ np.array(tmb["vcov_full_beta_logsd"]["values"]) @ J
    ours_sd = fit.vcov(scale="sd").to_numpy()
    d_sd = np.sqrt(np.outer(np.diag(ours_sd), np.diag(ours_sd)))
    worst = np.max(np.abs(V_tmb - ours_sd) / d_sd)
    print(f"\nglmmTMB 1.1.5, sd scale: largest |glmmTMB - exact| / sqrt(v_ii v_jj) = {worst:.2e}")
    print(f"SEs, glmmTMB: {np.sqrt(np.diag(V_tmb)).round(5)}; exact (sd scale): {np.sqrt(np.diag(ours_sd)).round(5)}")
