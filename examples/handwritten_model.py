"""A hand-written PyMC model, fitted by maximum likelihood with pmv.fit.

sleepstudy with a non-centred random intercept and slope per subject, written the way one
writes it for NUTS: standardised effects ``z`` and ``u = z @ chol.T`` as a deterministic. The
engine integrates ``z`` out exactly (Gaussian likelihood), reads the random-effect covariance
from the deterministic ``u``, and reports:

* the full covariance matrix of all parameters on the SD scale (SDs and the correlation);
* the CR1 cluster-robust (sandwich) covariance, clustered by subject;
* a summary table with model-based and robust intervals;
* the same model with a Student-t residual (a Laplace fit), for comparison.

Run: ``python examples/handwritten_model.py``.
"""

import warnings

import numpy as np
import pandas as pd
import pymc as pm

import pymc_mixvcov as pmv

warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")

data = pmv.datasets.load("sleepstudy")
subject = data["Subject"].cat.codes.to_numpy()
days = data["Days"].to_numpy(float)
reaction = data["Reaction"].to_numpy(float)
coords = {"Subject": list(data["Subject"].cat.categories), "effect": ["(Intercept)", "Days"]}


def build(likelihood: str) -> pm.Model:
    with pm.Model(coords=coords) as model:
        intercept = pm.Normal("intercept", 250, 100)
        slope = pm.Normal("slope", 0, 50)
        chol, _, _ = pm.LKJCholeskyCov("chol", n=2, eta=2.0, sd_dist=pm.HalfNormal.dist(30.0, shape=2))
        z = pm.Normal("z", 0.0, 1.0, dims=("Subject", "effect"))
        u = pm.Deterministic("u", z @ chol.T, dims=("Subject", "effect"))
        sigma = pm.HalfNormal("sigma", 30.0)
        mu = intercept + slope * days + u[subject, 0] + u[subject, 1] * days
        if likelihood == "normal":
            pm.Normal("reaction", mu, sigma, observed=reaction)
        else:
            pm.StudentT("reaction", nu=4.0, mu=mu, sigma=sigma, observed=reaction)
    return model


fit = pmv.fit(build("normal"), random=["z"], method="ML")
print(f"Gaussian fit: log-likelihood {fit.loglik:.4f} (lme4: -875.9697), converged: {fit.converged}\n")
with pd.option_context("display.width", 160, "display.precision", 5):
    print("Full covariance matrix, SD scale (inverse observed information):")
    print(fit.vcov(scale="sd").to_string(), "\n")
    robust = fit.sandwich(scale="sd", adjust="CR1")
    print("CR1 sandwich, SD scale, clustered by Subject:")
    print(robust.to_string(), "\n")
    print("Summary with CR1 standard errors (SD intervals on the log scale, correlation on Fisher's):")
    print(fit.summary(vcov="CR1", scale="sd").to_string(), "\n")

    tfit = pmv.fit(build("student"), random=["z"], method="ML")
    table = pd.DataFrame(
        {
            "normal": fit.params("sd"),
            "se normal": fit.se("sd"),
            "student-t (nu=4)": tfit.params("sd"),
            "se student-t": tfit.se("sd"),
            "se CR1 student-t": np.sqrt(np.diag(tfit.sandwich("sd", adjust="CR1"))),
        }
    )
    print(f"Student-t residual (Laplace): log-likelihood {tfit.loglik:.4f}, converged: {tfit.converged}")
    print(table.to_string())
