"""Benchmark: ML fit and full covariance matrix of a 100,000-row linear mixed model.

What it measures
----------------
Wall-clock time of one complete, fresh-process workflow with :mod:`pymc_mixvcov`:

1. **imports** -- ``pymc_mixvcov`` (which imports ``pymc``, ``pytensor``, ``scipy``,
   ``numpy`` and ``pandas``, with the garbage collector paused), ``numpy`` and ``pandas``;
   ``formulae`` is imported by :func:`pymc_mixvcov.lmm` on first use, within *build model*;
2. **simulate** -- the data set below (seeded, ``np.random.default_rng(2026)``);
3. **build model** -- ``pmv.lmm("y ~ x + (x | g)", df)``: import ``formulae``, parse the
   formula, build the design matrices and the PyMC model;
4. **fit** -- ``m.fit(method="ML")``: integrate the random effects out, maximise the marginal
   likelihood (L-BFGS-B then exact Newton steps). The exact observed information is
   evaluated at the optimum as part of the fit (the Newton steps use it);
5. **vcov** -- ``f.vcov(scale="var")``: the full ``6 x 6`` covariance matrix of the fixed
   effects and the variance components (random-effect variances, covariance, residual
   variance), from the inverse observed information mapped to the variance scale with the
   exact Jacobian.
6. **cluster scores** -- ``f.scores(level="cluster", scale="var")``: one row per cluster;
7. **CR1 sandwich** -- ``f.sandwich(scale="var", adjust="CR1")``: the cluster-robust covariance
   of all parameters.

It also reports the time since the first line of this script ran (``time.perf_counter`` at
the top) and, on Linux, the time since the process started (from ``/proc/self/stat``), which
includes interpreter start-up. To measure the whole process as a user experiences it, time it
from outside, e.g.::

    /usr/bin/time -f "%e s %M KB" .venv/bin/python benchmarks/lmm_100k.py

which includes interpreter start-up and shutdown as well. Compiled graphs are cached on disk per model signature
(``~/.cache/pymc_mixvcov`` or ``$PYMC_MIXVCOV_CACHE``): point ``PYMC_MIXVCOV_CACHE`` to an empty
directory to time a first-ever run.

Data
----
``n = 100,000`` rows in 2,000 clusters of 50; ``x ~ N(0, 1)``;
``y = 1 + 0.5 x + b0_g + b1_g x + e`` with ``(b0_g, b1_g)`` bivariate normal, standard
deviations 1.0 and 0.5 and correlation 0.3, and ``e ~ N(0, 1)``. True values on the variance
scale: intercept variance 1.0, covariance 0.15, slope variance 0.25, residual variance 1.0.

Anchors
-------
Reference figures for other software on the same model and data size (given with the task,
measured elsewhere; not re-measured by this script, nor necessarily on the same machine):

* R lme4 ``lmer`` (ML), fit alone, no covariance of the variance components: 1.5 s;
* R glmmTMB, fit + full covariance: 11.3 s;
* Python statsmodels ``MixedLM``: 8.6 s;
* R lme4 + merDeriv (full covariance matrix): infeasible at this size.
"""

import time

T0 = time.perf_counter()

import sys  # noqa: E402

import _data  # noqa: E402
from _timing import print_report, since_process_start, time_workflow  # noqa: E402

N_CLUSTERS, CLUSTER_SIZE, SEED = _data.N_CLUSTERS, _data.CLUSTER_SIZE, _data.SEED


def main() -> int:
    phases: dict[str, float] = {}
    t = time.perf_counter()
    # pymc_mixvcov first: it imports its dependencies with the garbage collector paused
    import pymc_mixvcov as pmv  # noqa: I001

    import numpy as np
    import pandas as pd

    phases["imports"] = time.perf_counter() - t

    t = time.perf_counter()
    df = _data.lmm_100k()
    n = len(df)
    phases["simulate"] = time.perf_counter() - t

    t = time.perf_counter()
    m = pmv.lmm("y ~ x + (x | g)", df)
    phases["build model"] = time.perf_counter() - t

    f, V, S, W = time_workflow(lambda: m.fit(method="ML"), phases)
    caught = f.caught_warnings

    end = time.perf_counter()
    since_start = since_process_start()

    est = f.params("var")
    se = pd.Series(np.sqrt(np.diag(V.to_numpy())), index=V.index)
    se_cr1 = pd.Series(np.sqrt(np.diag(W.to_numpy())), index=W.index)
    truth = {
        "(Intercept)": 1.0,
        "x": 0.5,
        "cov_g.(Intercept)": 1.0,
        "cov_g.x.(Intercept)": 0.15,
        "cov_g.x": 0.25,
        "residual": 1.0,
    }

    print(f"lmm_100k: y ~ x + (x | g), n = {n:,}, {N_CLUSTERS:,} clusters of {CLUSTER_SIZE}, ML, seed {SEED}")
    print_report(phases, T0, end, since_start, f, S)
    table = pd.DataFrame(
        {
            "estimate": est,
            "se": se.reindex(est.index),
            "se CR1": se_cr1.reindex(est.index),
            "truth": pd.Series(truth).reindex(est.index),
        }
    )
    print()
    print("estimates (variance scale), SEs from the full vcov and from the CR1 sandwich:")
    print(table.to_string(float_format=lambda v: f"{v:.6g}"))
    if caught:
        print()
        print("warnings during the fit:")
        for w in caught:
            print(f"  {w.category.__name__}: {str(w.message).splitlines()[0]}")
    return 0 if f.converged else 1


if __name__ == "__main__":
    sys.exit(main())
