"""A Bayesian workflow with frequentist checks: posterior, MAP (Laplace and sandwich) and ML side by side.

For a PyMC user: write the sleepstudy model by hand in PyMC, sample it with NUTS (nutpie when
installed, else ``pm.sample``), fit the same model by its marginal posterior mode (MAP) and by
maximum likelihood (ML) with pymc_mixvcov, put the three next to each other with
``pmv.compare`` and draw them with ``pmv.plot_compare``. With bambi installed, the same is done
for a bambi model. ``docs/bayesian_workflow.md`` shows this script's output and reads the plots.

Run: ``python examples/bayesian_workflow.py [output folder]`` (figures go to ``docs/`` by
default; about a minute with nutpie, a few minutes with ``pm.sample``, on two cores).
"""

# %% Imports and data
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pymc as pm

import pymc_mixvcov as pmv

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "docs"
pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 20)

data = pmv.datasets.load("sleepstudy")  # 180 rows: Reaction (ms) of 18 Subjects over Days 0-9
subject = data["Subject"].cat.codes.to_numpy()
days = data["Days"].to_numpy(float)


# %% Sampling: nutpie when installed (compiles once, then samples in about a second), else pm.sample
def sample(model: pm.Model, seed: int):
    """NUTS draws of ``model``, 4 chains of 1,000 after 1,000 tuning steps, as an ArviZ DataTree."""
    try:
        import nutpie
    except ImportError:
        return pm.sample(model=model, draws=1000, tune=1000, chains=4, random_seed=seed, progressbar=False)
    compiled = nutpie.compile_pymc_model(model)
    return nutpie.sample(compiled, draws=1000, tune=1000, chains=4, seed=seed, progress_bar=False)


# %% 1. The model, written by hand in PyMC
# Random intercept and slope per Subject, correlated (LKJ prior on their correlation),
# non-centred: u = z @ chol.T with z ~ N(0, 1). Weakly informative priors in the data's units.
coords = {"Subject": list(data["Subject"].cat.categories), "effect": ["(Intercept)", "Days"]}
with pm.Model(coords=coords) as model:
    b = pm.Normal("b", mu=[300.0, 0.0], sigma=[100.0, 25.0], dims="effect")
    chol, _, _ = pm.LKJCholeskyCov("chol", n=2, eta=2.0, sd_dist=pm.HalfNormal.dist([50.0, 25.0], shape=2))
    z = pm.Normal("z", 0.0, 1.0, dims=("Subject", "effect"))
    u = pm.Deterministic("u", z @ chol.T, dims=("Subject", "effect"))
    sigma = pm.HalfNormal("sigma", 50.0)
    mu = b[0] + u[subject, 0] + (b[1] + u[subject, 1]) * days
    pm.Normal("Reaction", mu, sigma, observed=data["Reaction"].to_numpy(float))

# %% 2. Sample the posterior
idata = sample(model, seed=2024)
print("divergent transitions:", int(idata["sample_stats"]["diverging"].sum()))

# %% 3. Fit the same model by MAP and by ML
# random=["z"]: the variable to integrate out (z is found to enter through u = z @ chol.T).
# MAP keeps the priors: the mode of the marginal posterior of (b, chol, sigma), its Laplace
# covariance (inverse negative Hessian of the log marginal posterior) and its sandwich.
# ML drops them.
fit_map = pmv.fit(model, random=["z"], method="MAP")
fit_ml = pmv.fit(model, random=["z"], method="ML")
print(fit_map)
print(fit_ml)

# %% 4. Compare: one row per parameter, on the scale of SDs and correlations
cmp_map = pmv.compare(fit_map, idata, scale="sd", prob=0.95, vcov="CR1")
cmp_ml = pmv.compare(fit_ml, idata, scale="sd", prob=0.95, vcov="CR1")
POINT = ["estimate", "se_model", "se_sandwich", "posterior_mean", "posterior_sd"]
INTERVALS = ["wald_lower", "wald_upper", "sandwich_lower", "sandwich_upper", "posterior_lower", "posterior_upper"]
print("\nMAP fit (se_model: Laplace; se_sandwich: MAP sandwich, CR1 by Subject) and the NUTS posterior:")
print(cmp_map[POINT].round(3))
print("\n95% intervals: Laplace (wald_*), MAP sandwich (sandwich_*), posterior (equal-tailed):")
print(cmp_map[INTERVALS].round(2))

# The standard errors side by side: posterior SD, Laplace, MAP sandwich, ML Wald, ML sandwich
ses = pd.DataFrame(
    {
        "posterior_sd": cmp_map["posterior_sd"],
        "laplace": cmp_map["se_model"],
        "map_CR1": cmp_map["se_sandwich"],
        "ml_wald": cmp_ml["se_model"],
        "ml_CR1": cmp_ml["se_sandwich"],
    }
)
ses["CR1 / laplace"] = ses["map_CR1"] / ses["laplace"]
print("\nstandard errors:")
print(ses.round(3))

# %% 5. Plot
pmv.plot_compare(fit_map, idata, scale="sd", prob=0.95, filename=out / "bayesian_workflow_map.png")
pmv.plot_compare(fit_ml, idata, scale="sd", prob=0.95, filename=out / "bayesian_workflow_ml.png")
print(f"\nplots written to {out / 'bayesian_workflow_map.png'} and {out / 'bayesian_workflow_ml.png'}")

# %% 6. The same with bambi (when installed: pip install "pymc-mixvcov[bambi]")
try:
    import bambi as bmb
except ImportError:
    bmb = None
    print("\nbambi is not installed: skipping the bambi model")
if bmb is not None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # bambi's own deprecation notices
        bambi_model = bmb.Model("Reaction ~ Days + (Days | Subject)", data)  # uncorrelated: lme4's (Days || Subject)
        fit_bambi = pmv.fit(bambi_model, method="ML")  # bambi's terms, family and link; lme4's labels
        try:
            import nutpie  # noqa: F401

            method = "nutpie"
        except ImportError:
            method = "pymc"
        idata_bambi = bambi_model.fit(
            draws=1000, tune=1000, chains=4, random_seed=2024, inference_method=method, progressbar=False
        )
    cmp_bambi = pmv.compare(fit_bambi, idata_bambi, scale="sd", vcov="CR1")
    print("\nbambi model, ML fit next to bambi's posterior (its own priors):")
    print(cmp_bambi[POINT].round(3))
    print(cmp_bambi[INTERVALS].round(2))
    pmv.plot_compare(fit_bambi, idata_bambi, filename=out / "bayesian_workflow_bambi.png")
    print(f"plot written to {out / 'bayesian_workflow_bambi.png'}")

# %% 7. A number to act on: how far the sandwich is from the model-based SE
ratio = ses["CR1 / laplace"]
flag = ratio[(ratio > 1.5) | (ratio < 1 / 1.5)]
print(
    "\nparameters whose sandwich SE differs from the model-based one by more than a factor 1.5: "
    + (", ".join(f"{k} ({v:.2f})" for k, v in flag.items()) or "none")
)
assert np.isfinite(ses.to_numpy()).all()
