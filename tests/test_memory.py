"""Bounded memory: a loop of model builds and fits in one process reaches a plateau.

Each loop runs in a fresh interpreter (the memory of the test process itself depends on what
ran before), which prints its resident set size (``/proc/self/statm``) after every fit. The
growth per fit after a warm-up must stay below 0.05 MB. Before the collector pauses stopped
promoting every object of the process to the oldest generation (each ``pmv.lmm`` call did, on
importing formulae), the garbage cycles of every fit, a pm.Model's graph among them, waited
there for a full collection that never came: 0.7 MB per sleepstudy fit, never freed.

The memory of a process settles once the oldest generation holds enough garbage for CPython's
own trigger of a full collection (a quarter of its long-lived objects): about 40 sleepstudy
fits. The default test warms up for 40 fits and measures 40 more; the slow ones measure 150
more, for a formula model and a model written by hand in PyMC.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc/self/statm (Linux)")

LOOP = """
import json, os, sys, warnings
import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pymc_mixvcov as pmv

warnings.simplefilter("ignore")
kind, n = sys.argv[1], int(sys.argv[2])
df = pmv.datasets.load("sleepstudy")
page = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page


def handwritten():
    codes = df["Subject"].cat.codes.to_numpy()
    x, y = df["Days"].to_numpy(float), df["Reaction"].to_numpy(float)
    coords = {"Subject": list(df["Subject"].cat.categories), "effect": ["(Intercept)", "Days"]}
    with pm.Model(coords=coords) as model:
        beta = pm.Normal("beta", 0, 1000, shape=2)
        chol, _, _ = pm.LKJCholeskyCov("chol", n=2, eta=1.0, sd_dist=pm.HalfNormal.dist(100), compute_corr=True)
        u = pm.MvNormal("u", mu=0, chol=chol, dims=("Subject", "effect"))
        sigma = pm.HalfNormal("sigma", 100)
        mu = beta[0] + beta[1] * x + u[codes, 0] + u[codes, 1] * x
        pm.Normal("y", mu, sigma, observed=y)
    return pmv.fit(model, random=["u"], method="ML")


out = []
for _ in range(n):
    if kind == "formula":
        pmv.lmm("Reaction ~ Days + (Days | Subject)", df).fit(method="ML")
    else:
        handwritten()
    out.append(rss())
print(json.dumps(out))
"""


def _loop(kind: str, n: int) -> list[float]:
    cmd = [sys.executable, "-c", LOOP, kind, str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def _growth(kind: str, warm: int, measured: int) -> tuple[float, list[float]]:
    """MB per fit over the ``measured`` fits after ``warm`` fits, and the whole RSS trace.

    A first process fills the disk cache: the peak of building the graphs (tens of MB) would
    otherwise hide the growth of the first hundred fits.
    """
    _loop(kind, 1)
    trace = _loop(kind, warm + measured)
    return (trace[-1] - trace[warm - 1]) / measured, trace


def test_a_loop_of_fits_reaches_a_plateau():
    per_fit, trace = _growth("formula", warm=40, measured=40)
    assert per_fit < 0.05, f"{per_fit:.3f} MB per fit after warm-up; RSS every 10 fits: {trace[::10]}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["formula", "handwritten"])
def test_a_long_loop_of_fits_reaches_a_plateau(kind):
    per_fit, trace = _growth(kind, warm=50, measured=150)
    assert per_fit < 0.05, f"{per_fit:.3f} MB per fit after warm-up; RSS every 10 fits: {trace[::10]}"
