"""Simulation check of the Laplace GLMM engine: the survival frailty model (slow).

``benchmarks/frailty_simulation.py``: replicates of 100 clusters of 20 from
``examples/frailty_survival.py``'s ``simulate`` (seed 2026), each fitted as a Poisson GLMM with
``offset(log(time))``, a random intercept and an independent random slope. Targets (from the
issue): at least 99% of the replicates converge with a positive definite information or with a
warning that names the boundary parameter, and the 95% Wald intervals of the fixed effects cover
the truth in [0.92, 0.98] of the replicates, with model-based and with CR1 standard errors.

The test runs 1,000 replicates (about 2 minutes), not the issue's 200: with 200 the band is
two Monte Carlo SEs (0.015) wide on each side, and among six coverage figures one falls
outside it by chance with probability 0.1-0.3 even when every interval is exact; the reported
200-replicate study (seed 2026) has one such figure, Z's CR1 coverage 0.910, where the
1,000-replicate study gives 0.944 (MC SE 0.007). With 1,000 the band is four MC SEs wide and
a miss means a real shortfall. Both studies' figures are in benchmarks/README.md.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).parents[1] / "benchmarks" / "frailty_simulation.py"


def load_study():
    """The module ``benchmarks/frailty_simulation.py`` (registered, as its dataclass needs)."""
    if "frailty_simulation" not in sys.modules:
        spec = importlib.util.spec_from_file_location("frailty_simulation", PATH)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return sys.modules["frailty_simulation"]


@pytest.mark.slow
def test_frailty_simulation_converges_and_covers():
    study = load_study()
    results = study.run_study(reps=1000, seed=study.DEFAULT_SEED)
    summary = study.summarise(results, study.load_example().TRUTH)
    table = summary.table.to_string()
    assert summary.convergence_rate >= study.MIN_CONVERGENCE, (
        f"success rate {summary.convergence_rate:.3f} below the issue's 0.99 ({summary.counts})\n{table}"
    )
    cover = summary.table.loc[summary.fixed, [f"coverage {k}" for k in study.SE_KINDS]].to_numpy()
    # The band [0.92, 0.98] is 0.95 +- 0.03, about four Monte Carlo SEs at 1,000
    # replicates (sqrt(0.95 * 0.05 / 1000) = 0.007); 1e-12 absorbs the binary rounding of k / 1000.
    np.testing.assert_allclose(
        cover,
        0.95,
        rtol=0,
        atol=0.03 + 1e-12,
        err_msg=f"coverage of the fixed effects (model, CR1) outside the issue's [0.92, 0.98]\n{table}",
    )
