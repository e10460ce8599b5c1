"""Benchmark: the first 3,000 rows of InstEval, ``y ~ service + (1 | s) + (1 | d)``, ML.

123 students crossed with 755 lecturers (878 random effects, one cluster: the blocked engine). A
small crossed fit is mostly fixed cost: building the ``pm.Model`` from the formula, reading it,
loading the compiled scale maps, the optimiser's evaluations. In one process: imports, the data,
then (``--repeat`` times) ``pmv.lmm``, the ML fit and the full covariance on the SD scale; the
first run includes what the process loads from the compile cache, the later ones are a fitting
session's. lme4's ``lmer`` and glmmTMB on the same rows in ``anchors.R`` (``InstEval[1:3000, ]``)::

    python benchmarks/insteval_3000.py [--repeat 3]
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402

from _timing import crossed_benchmark  # noqa: E402

FORMULA = "y ~ service + (1 | s) + (1 | d)"


def load():
    import pymc_mixvcov as pmv

    return pmv.datasets.load("insteval").iloc[:3000].reset_index(drop=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    raise SystemExit(crossed_benchmark("InstEval[:3000], " + FORMULA, FORMULA, load, parser.parse_args().repeat, T0))
