"""Benchmark: a kb07-shaped crossed design with correlated 4 x 4 random-effect terms, ML.

``rt ~ S + T + U + (1 + S + T + U | subj) + (1 + S + T + U | item)`` on the simulated
56 subjects x 32 items of :func:`_data.kb07` (1,789 rows, 352 random effects in one cluster, 25
parameters: the blocked engine). In one process: imports, the data, then (``--repeat`` times)
``pmv.lmm``, the ML fit and the full covariance on the SD scale; lme4's ``lmer`` and glmmTMB on the
same rows in ``anchors.R``. The covariance agrees with the numDeriv reference of
``tests/reference/generate_kb07.R`` (``tests/test_crossed.py``)::

    python benchmarks/kb07.py [--repeat 3]
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402

import _data  # noqa: E402
from _timing import crossed_benchmark  # noqa: E402

FORMULA = "rt ~ S + T + U + (1 + S + T + U | subj) + (1 + S + T + U | item)"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    raise SystemExit(crossed_benchmark("kb07-shaped, " + FORMULA, FORMULA, _data.kb07, parser.parse_args().repeat, T0))
