"""Benchmark: InstEval, crossed LMM (73,421 rows, 4,128 random effects), ML.

``y ~ service + (1 | s) + (1 | d) + (1 | dept:service)``: 2,972 students crossed with 1,128
lecturers and 28 department-by-service cells, one cluster of 4,128 random effects, fitted by the
blocked engine (``fit.engine``). In one process: imports, the data, then (``--repeat`` times)
``pmv.lmm``, the ML fit (exact derivatives, the observed information at the optimum) and the full
covariance of the fixed effects and variance components on the SD scale, as lme4's ``lmer``
(fit, fixed-effect vcov) and glmmTMB's ``fit + vcov(full = TRUE)`` in ``anchors.R``. Crossed designs
have no cluster scores, so there is no sandwich here. See :func:`_timing.crossed_benchmark`::

    python benchmarks/insteval.py [--repeat 3]
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402

from _timing import crossed_benchmark  # noqa: E402

FORMULA = "y ~ service + (1 | s) + (1 | d) + (1 | dept:service)"


def load():
    import pymc_mixvcov as pmv

    return pmv.datasets.load("insteval")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    raise SystemExit(crossed_benchmark("InstEval, " + FORMULA, FORMULA, load, parser.parse_args().repeat, T0))
