"""Benchmark: a MovieLens-1M-shaped crossed design, ``y ~ x + (1 | user) + (1 | item)``, ML.

1,000,209 ratings of 3,706 items by 6,040 users (:func:`_data.movielens`: heavy-tailed counts per
user and per item), 9,746 random effects in one cluster: the blocked engine with a dense
3,706 x 3,706 Schur complement and the compiled weighted cross products of
:mod:`pymc_mixvcov.engines.crossprod`. In one process: imports, the simulation (not timed as
library use), then (``--repeat`` times) ``pmv.lmm``, the ML fit and the full covariance on the SD
scale; lme4's ``lmer`` on the same rows in ``anchors.R``::

    python benchmarks/movielens.py [--repeat 1]
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402

import _data  # noqa: E402
from _timing import crossed_benchmark  # noqa: E402

FORMULA = "y ~ x + (1 | user) + (1 | item)"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    raise SystemExit(
        crossed_benchmark("MovieLens-shaped, " + FORMULA, FORMULA, _data.movielens, parser.parse_args().repeat, T0)
    )
