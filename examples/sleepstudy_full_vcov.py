"""Full covariance of fixed effects and variance components for sleepstudy, on every scale.

Run: ``python examples/sleepstudy_full_vcov.py``
"""

import pandas as pd

import pymc_mixvcov as pmv

data = pmv.datasets.load("sleepstudy")
model = pmv.lmm("Reaction ~ Days + (Days | Subject)", data)
print(model.model)  # an ordinary pm.Model: pm.sample(model=model.model) works

fit = model.fit(method="ML")
print(fit, "\n")
with pd.option_context("display.width", 200, "display.max_columns", 10):
    for scale in ("var", "sd", "cholesky"):
        print(f"--- scale = {scale!r} (inverse observed information)")
        print(fit.vcov(scale=scale).round(4), "\n")
    print(
        pd.DataFrame(
            {
                "estimate": fit.params("sd"),
                "se observed": fit.se("sd"),
                "se expected": fit.se("sd", information="expected"),
            }
        )
    )
