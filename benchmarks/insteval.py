"""Benchmark: InstEval, crossed LMM (73,421 rows, 4,128 random effects), ML.

``y ~ service + (1 | s) + (1 | d) + (1 | dept:service)``: 2,972 students crossed with 1,128
lecturers and 28 department-by-service cells, one cluster of 4,128 random effects, fitted by the
blocked engine (``fit.engine``). One fresh process: imports, ``pmv.lmm``, ML fit (exact
derivatives) and the full observed covariance, as lme4's ``lmer`` (fit, fixed-effect vcov) and
glmmTMB's ``fit + vcov(full = TRUE)`` in ``anchors.R``. Crossed designs have no cluster scores,
so there is no sandwich here. It prints the peak resident memory of the process. Time it from
outside::

    /usr/bin/time -f "%e s %M KB" .venv/bin/python benchmarks/insteval.py
"""

import time

T0 = time.perf_counter()

from _timing import print_report, since_process_start  # noqa: E402


def main() -> int:
    import resource

    phases: dict[str, float] = {}
    t = time.perf_counter()
    # pymc_mixvcov first: it imports its dependencies with the garbage collector paused
    import pymc_mixvcov as pmv  # noqa: I001

    import numpy as np
    import pandas as pd

    phases["imports"] = time.perf_counter() - t
    t = time.perf_counter()
    data = pmv.datasets.load("insteval")
    phases["load data"] = time.perf_counter() - t
    t = time.perf_counter()
    model = pmv.lmm("y ~ service + (1 | s) + (1 | d) + (1 | dept:service)", data)
    phases["build model"] = time.perf_counter() - t
    t = time.perf_counter()
    f = model.fit()
    phases["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    V = f.vcov("sd")
    phases["vcov"] = time.perf_counter() - t
    print_report(phases, T0, time.perf_counter(), since_process_start(), f)
    print(f"engine: {f.engine}   peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    table = pd.DataFrame({"estimate": f.params("sd"), "se": np.sqrt(np.diag(V.to_numpy()))})
    print(table.to_string(float_format=lambda v: f"{v:.6g}"))
    return 0 if f.converged else 1


if __name__ == "__main__":
    raise SystemExit(main())
