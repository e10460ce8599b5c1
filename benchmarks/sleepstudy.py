"""Benchmark: ML fit and full covariance matrix for lme4's sleepstudy, in a fresh process.

What it measures
----------------
Wall-clock time of one complete, fresh-process workflow with :mod:`pymc_mixvcov` on the
``sleepstudy`` data (180 rows, 18 subjects), model ``Reaction ~ Days + (Days | Subject)``:

1. **imports** -- ``pymc_mixvcov`` (which imports ``pymc``, ``pytensor``, ``scipy``,
   ``numpy`` and ``pandas``, with the garbage collector paused), ``numpy`` and ``pandas``;
   ``formulae`` is imported by :func:`pymc_mixvcov.lmm` on first use, within *build model*;
2. **load data** -- ``pmv.datasets.load("sleepstudy")`` (bundled CSV, ``Subject`` a
   categorical with lme4's level order);
3. **build model** -- ``pmv.lmm(formula, df)``: import ``formulae``, parse the formula, build
   the design matrices and the PyMC model;
4. **fit** -- ``m.fit(method="ML")``: integrate the random effects out, maximise the marginal
   likelihood (L-BFGS-B then exact Newton steps). The exact observed information is
   evaluated at the optimum as part of the fit (the Newton steps use it);
5. **vcov** -- ``f.vcov(scale="var")``: the full ``6 x 6`` covariance matrix of the fixed
   effects and the variance components, from the inverse observed information mapped to the
   variance scale with the exact Jacobian.
6. **cluster scores** -- ``f.scores(level="cluster", scale="var")``: one row per cluster;
7. **CR1 sandwich** -- ``f.sandwich(scale="var", adjust="CR1")``: the cluster-robust covariance
   of all parameters.

It also reports the time since the first line of this script ran (``time.perf_counter`` at
the top) and, on Linux, the time since the process started (from ``/proc/self/stat``), which
includes interpreter start-up. To measure the whole process as a user experiences it, time it
from outside, e.g.::

    /usr/bin/time -f "%e s %M KB" .venv/bin/python benchmarks/sleepstudy.py

which includes interpreter start-up and shutdown as well. On data this small the fixed costs
(imports, graph construction and compilation) dominate. Compiled graphs are cached on disk per model signature
(``~/.cache/pymc_mixvcov`` or ``$PYMC_MIXVCOV_CACHE``): point ``PYMC_MIXVCOV_CACHE`` to an empty
directory to time a first-ever run.

Anchor
------
Reference figure for other software (given with the task, measured elsewhere; not
re-measured by this script, nor necessarily on the same machine):

* R lme4 + merDeriv + sandwich, ML fit + full covariance matrix, whole fresh R process:
  1.85 s.
"""

import time

T0 = time.perf_counter()

import sys  # noqa: E402

from _timing import print_report, since_process_start, time_workflow  # noqa: E402

FORMULA = "Reaction ~ Days + (Days | Subject)"


def main() -> int:
    phases: dict[str, float] = {}
    t = time.perf_counter()
    # pymc_mixvcov first: it imports its dependencies with the garbage collector paused
    import pymc_mixvcov as pmv  # noqa: I001

    import numpy as np
    import pandas as pd

    phases["imports"] = time.perf_counter() - t

    t = time.perf_counter()
    df = pmv.datasets.load("sleepstudy")
    phases["load data"] = time.perf_counter() - t

    t = time.perf_counter()
    m = pmv.lmm(FORMULA, df)
    phases["build model"] = time.perf_counter() - t

    f, V, S, W = time_workflow(lambda: m.fit(method="ML"), phases)
    caught = f.caught_warnings

    end = time.perf_counter()
    since_start = since_process_start()

    est = f.params("var")
    se = pd.Series(np.sqrt(np.diag(V.to_numpy())), index=V.index)
    se_cr1 = pd.Series(np.sqrt(np.diag(W.to_numpy())), index=W.index)

    print(f"sleepstudy: {FORMULA}, n = {len(df)}, {df['Subject'].nunique()} subjects, ML")
    print_report(phases, T0, end, since_start, f, S)
    table = pd.DataFrame({"estimate": est, "se": se.reindex(est.index), "se CR1": se_cr1.reindex(est.index)})
    print()
    print("estimates (variance scale), SEs from the full vcov and from the CR1 sandwich:")
    print(table.to_string(float_format=lambda v: f"{v:.6g}"))
    print()
    print("full vcov (variance scale):")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(V.to_string(float_format=lambda v: f"{v:.6g}"))
    if caught:
        print()
        print("warnings during the fit:")
        for w in caught:
            print(f"  {w.category.__name__}: {str(w.message).splitlines()[0]}")
    return 0 if f.converged else 1


if __name__ == "__main__":
    sys.exit(main())
