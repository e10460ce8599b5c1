"""The coverage study of ``benchmarks/coverage_study.py``: its arithmetic, and a reduced run (slow).

Expected values:

* **Coverage arithmetic** (default suite; NumPy only): a hand-counted case, and the closed form
  of the coverage of ``est +- z s`` when ``est ~ N(theta, (r s)^2)`` with ``s`` known:
  ``P(|N(0, r^2)| <= z) = 2 Phi(z / r) - 1`` (0.95 at ``r = 1``, 0.8098 at ``r = 1.5``). With
  20,000 simulated intervals the study's coverage must lie within four of its own Monte Carlo SEs
  of the closed form (the seed is fixed, so the check is deterministic; four SEs would be missed by
  chance with probability 6e-5).
* **Reduced run** (slow): four replicates of three scenarios through the whole pipeline (nutpie
  or ``pm.sample``, MAP and ML fits). Checked: every method gives an interval in every replicate;
  coverages lie in [0, 1] with ``MC SE = sqrt(p (1 - p) / R)``; the Wald intervals are
  ``est +- 1.959964 se`` (the closed form, to round-off); the posterior columns equal those of
  ``pmv.compare`` for the same trace; and the standard errors behave as the theory of each
  scenario says, with margins of several sampling SDs for four replicates: in the correct LMM
  the CR1 and model-based SEs of the slope agree on average (ratio within [0.75, 1.25]: the CR1
  SE's relative sampling SD with 40 clusters is about ``1/sqrt(2 * 40) = 0.11``, 0.06 for a mean
  of four) and the posterior SD matches the Laplace SE (Bernstein-von Mises; within 10%, against
  about 3% of Monte Carlo error of a 1,000-draw SD and the prior's effect); with an omitted random
  slope the CR1 SE of the slope is well above the model-based one (mean ratio above 1.3: the
  slope's variance gains ``tau_1^2 / J``, which puts the ratio near 1.8 for this design).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

PATH = Path(__file__).parents[1] / "benchmarks" / "coverage_study.py"


def load_study():
    """The module ``benchmarks/coverage_study.py`` (registered, as its dataclasses need)."""
    if "coverage_study" not in sys.modules:
        spec = importlib.util.spec_from_file_location("coverage_study", PATH)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return sys.modules["coverage_study"]


def _synthetic(lower, upper, estimate, se, truth) -> pd.DataFrame:
    n = len(lower)
    return pd.DataFrame(
        {
            "scenario": "lmm_correct",
            "rep": np.arange(n),
            "parameter": "x",
            "method": "ML Wald",
            "estimate": estimate,
            "se": se,
            "lower": lower,
            "upper": upper,
            "truth": truth,
            "pseudo_true": truth,
            "converged": True,
        }
    )


def test_coverage_counts_intervals_holding_the_target():
    study = load_study()
    # four intervals hold 1.0, one does not, one is missing (a failed replicate: not counted)
    lower = np.array([0.0, 0.5, 1.0, -1.0, 3.0, np.nan])
    upper = np.array([2.0, 1.5, 1.2, 1.0, 4.0, np.nan])
    results = study.add_covers(_synthetic(lower, upper, (lower + upper) / 2, 0.1, 1.0))
    table = study.summarise(results)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["n"], row["failed"]) == (5, 1)
    np.testing.assert_allclose(row["coverage"], 4 / 5, rtol=1e-15)
    np.testing.assert_allclose(row["mc_se"], np.sqrt(0.8 * 0.2 / 5), rtol=1e-15)
    assert study.failed_too_often(table)  # 1 of 6 failed, above the 1% the study allows


@pytest.mark.parametrize("ratio", [1.0, 1.5])
def test_coverage_of_the_closed_form_case(ratio):
    """``est ~ N(theta, (r s)^2)``, interval ``est +- z s``: coverage ``2 Phi(z / r) - 1``."""
    study = load_study()
    rng = np.random.default_rng(11)
    reps, theta, s = 20_000, 0.5, 0.2
    z = norm.ppf(0.5 + study.LEVEL / 2)
    est = theta + ratio * s * rng.standard_normal(reps)
    results = study.add_covers(_synthetic(est - z * s, est + z * s, est, s, theta))
    row = study.summarise(results).iloc[0]
    want = 2 * norm.cdf(z / ratio) - 1
    assert abs(row["coverage"] - want) <= 4 * row["mc_se"], (row["coverage"], want, row["mc_se"])
    np.testing.assert_allclose(row["se_ratio"], 1 / ratio, rtol=0.03)  # SD of 20,000 normals: 0.5% relative


@pytest.mark.slow
def test_reduced_study_runs_and_makes_sense():
    import pymc_mixvcov as pmv

    study = load_study()
    reps = 4
    scenarios = ["lmm_correct", "lmm_slope", "glmm_slope"]
    results, info = study.run_study(reps=reps, seed=7, scenarios=scenarios)
    table = study.summarise(results)
    assert len(table) == len(scenarios) * len(study.PARAMETERS) * len(study.METHODS)
    assert (table["n"] == reps).all() and (table["failed"] == 0).all(), results.loc[results["error"] != "", "error"]
    assert table["coverage"].between(0, 1).all() and table["coverage_pseudo"].between(0, 1).all()
    p = table["coverage"].to_numpy()
    np.testing.assert_allclose(table["mc_se"], np.sqrt(p * (1 - p) / reps), rtol=1e-14)
    # every interval holds its own point estimate (posterior mean for NUTS)
    assert ((results["lower"] <= results["estimate"]) & (results["estimate"] <= results["upper"])).all()
    # Wald intervals in closed form
    z = norm.ppf(0.5 + study.LEVEL / 2)
    wald = results[results["method"].isin(["ML Wald", "MAP Laplace", "ML CR1", "MAP CR1"])]
    np.testing.assert_allclose(wald["lower"], wald["estimate"] - z * wald["se"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(wald["upper"], wald["estimate"] + z * wald["se"], rtol=1e-12, atol=1e-12)
    # the GLMM's pseudo-true values are recorded, the LMMs' targets are the generating values
    assert set(info["pseudo_true"]) == {"glmm_slope"}
    lmm = results[results["scenario"].str.startswith("lmm")]
    np.testing.assert_array_equal(lmm["pseudo_true"], lmm["truth"])

    def se(scenario, method):
        sel = results[(results["scenario"] == scenario) & (results["parameter"] == "x") & (results["method"] == method)]
        return sel.sort_values("rep")["se"].to_numpy()

    ratio_correct = np.mean(se("lmm_correct", "ML CR1") / se("lmm_correct", "ML Wald"))
    assert 0.75 <= ratio_correct <= 1.25, ratio_correct
    np.testing.assert_allclose(se("lmm_correct", "NUTS"), se("lmm_correct", "MAP Laplace"), rtol=0.1)
    for fit in ("ML", "MAP"):
        ratio_slope = np.mean(
            se("lmm_slope", f"{fit} CR1") / se("lmm_slope", "ML Wald" if fit == "ML" else "MAP Laplace")
        )
        assert ratio_slope > 1.3, (fit, ratio_slope)

    # the posterior columns are pmv.compare's for the same trace
    sc = study.SCENARIOS["lmm_correct"]
    design = study.make_design(sc.family, 7)
    x, y = sc.simulate(design, np.random.default_rng(1))
    model = study.build_model(design, x, y)
    trace = study.Sampler(model).sample(x, y, 1)
    ours = pd.DataFrame(study._posterior_intervals(trace, {})).set_index("parameter")
    theirs = pmv.compare(pmv.fit(model, random=["z"], method="MAP"), trace, vcov=None)
    theirs = theirs.rename(index={"b[(Intercept)]": "(Intercept)", "b[x]": "x"}).loc[list(study.PARAMETERS)]
    for mine, col in (("estimate", "posterior_mean"), ("se", "posterior_sd"), ("lower", "posterior_lower")):
        np.testing.assert_allclose(ours[mine], theirs[col], rtol=1e-12)
    np.testing.assert_allclose(ours["upper"], theirs["posterior_upper"], rtol=1e-12)
