"""Benchmark: InstEval binary, crossed logit GLMM (73,421 rows, 4,100 random effects), Laplace.

``I(y >= 4) ~ service + (1 | s) + (1 | d)``, binomial: 2,972 students crossed with 1,128
lecturers, one cluster of 4,100 random effects, fitted by the blocked Laplace engine
(``fit.engine``, :mod:`pymc_mixvcov.engines.blocked_laplace`). One fresh process: imports,
``pmv.glmm``, ML fit (Laplace, exact gradient and Hessian) and the full observed covariance, as
glmmTMB's ``fit + vcov(full = TRUE)`` and lme4's ``glmer`` fit and ``vcov`` in ``anchors.R``
(workload ``insteval_binary``). The in-process figure is model building, fit and covariance;
after it the script times the two-way (student, lecturer) CR1 sandwich from the observation
scores on its own line. It prints the peak resident memory of the process. Time it from
outside::

    /usr/bin/time -f "%e s %M KB" .venv/bin/python benchmarks/insteval_binary.py
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
    data["yb"] = (data["y"] >= 4).astype(int)  # I(y >= 4)
    phases["load data"] = time.perf_counter() - t
    t = time.perf_counter()
    model = pmv.glmm("yb ~ service + (1 | s) + (1 | d)", data, family="binomial")
    phases["build model"] = time.perf_counter() - t
    t = time.perf_counter()
    f = model.fit()
    phases["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    V = f.vcov("sd")
    phases["vcov"] = time.perf_counter() - t
    print_report(phases, T0, time.perf_counter(), since_process_start(), f)
    t = time.perf_counter()
    W = f.sandwich("sd", adjust="CR1", cluster=[data["s"].to_numpy(), data["d"].to_numpy()])
    print(f"two-way (s, d) CR1 sandwich  {time.perf_counter() - t:.3f} s (observation scores; not in in-process)")
    print(f"engine: {f.engine}   peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    se = np.sqrt(np.diag(V.to_numpy()))
    table = pd.DataFrame({"estimate": f.params("sd"), "se": se, "se CR1 (s, d)": np.sqrt(np.diag(W.to_numpy()))})
    print(table.to_string(float_format=lambda v: f"{v:.6g}"))
    return 0 if f.converged else 1


if __name__ == "__main__":
    raise SystemExit(main())
