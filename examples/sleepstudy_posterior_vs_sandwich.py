"""The posterior of the formula-built sleepstudy model next to its ML fit: Wald and sandwich intervals.

The same ``pm.Model`` is sampled with NUTS and fitted by maximum likelihood. The posterior
draws (``beta``, the LKJ Cholesky factor ``chol_Subject``, ``sigma``) are mapped to SDs and the
correlation by the map that gives the fit's estimates, and set next to the model-based (Wald)
and cluster-robust (CR1) intervals. The frequentist groups join the sampler's DataTree, and the
normal approximation is drawn in the same layout for ArviZ.

Run: ``python examples/sleepstudy_posterior_vs_sandwich.py [plot.png]`` (about a minute on
two cores; the plot goes to ``docs/sleepstudy_posterior_vs_sandwich.png`` by default).
"""

import sys
from pathlib import Path

import arviz as az
import pandas as pd
import pymc as pm

import pymc_mixvcov as pmv

out = (
    Path(sys.argv[1])
    if len(sys.argv) > 1
    else Path(__file__).parents[1] / "docs" / "sleepstudy_posterior_vs_sandwich.png"
)

data = pmv.datasets.load("sleepstudy")
model = pmv.lmm("Reaction ~ Days + (Days | Subject)", data)
fit = model.fit(method="ML")

idata = pm.sample(
    model=model.model, draws=1000, tune=1000, chains=2, cores=2, target_accept=0.9, random_seed=2024, progressbar=False
)
idata.update(fit.to_datatree())  # estimates, vcov_<scale>, scores, optimizer_stats next to the posterior
print("groups:", ", ".join(idata.children))
print("divergent transitions:", int(idata["sample_stats"]["diverging"].sum()))

table = pmv.compare(fit, idata, scale="sd", prob=0.95, vcov="CR1")
with pd.option_context("display.width", 220, "display.max_columns", 20):
    print("\nML fit (Wald: inverse observed information; sandwich: CR1 by Subject) vs NUTS posterior, 95%")
    print(table.round(3))

normal = fit.sample_normal(1000, scale="sd", vcov="CR1", random_seed=1)
print("\nDraws from the normal approximation N(estimate, CR1), summarised by ArviZ:")
print(az.summary(normal, kind="stats"))

pmv.plot_compare(fit, idata, scale="sd", prob=0.95, filename=out)
print(f"\nplot written to {out}")
