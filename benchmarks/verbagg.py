"""Benchmark: VerbAgg, crossed binomial GLMM (7,584 rows), Laplace.

``r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)``: 316 subjects crossed with 24
items, one cluster of 340 random effects. One fresh process: imports, ``pmv.glmm``, ML fit
(Laplace, exact derivatives) and the full covariance, as glmmTMB's ``fit + vcov(full = TRUE)``
(1.95 s on this machine; tests/reference/verbagg_glmmtmb.json). Crossed designs have no cluster
scores, and a binomial Laplace fit no observation scores, so there is no sandwich here.
Time it from outside::

    /usr/bin/time -f "%e s %M KB" .venv/bin/python benchmarks/verbagg.py
"""

import time

T0 = time.perf_counter()

from _timing import print_report, since_process_start  # noqa: E402


def main() -> int:
    phases: dict[str, float] = {}
    t = time.perf_counter()
    # pymc_mixvcov first: it imports its dependencies with the garbage collector paused
    import pymc_mixvcov as pmv  # noqa: I001

    import numpy as np
    import pandas as pd

    phases["imports"] = time.perf_counter() - t
    t = time.perf_counter()
    va = pmv.datasets.load("verbagg")
    model = pmv.glmm("r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", va, family="binomial")
    phases["build model"] = time.perf_counter() - t
    t = time.perf_counter()
    f = model.fit()
    phases["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    V = f.vcov("sd")
    phases["vcov"] = time.perf_counter() - t
    print_report(phases, T0, time.perf_counter(), since_process_start(), f)
    table = pd.DataFrame({"estimate": f.params("sd"), "se": np.sqrt(np.diag(V.to_numpy()))})
    print(table.to_string(float_format=lambda v: f"{v:.6g}"))
    return 0 if f.converged else 1


if __name__ == "__main__":
    raise SystemExit(main())
