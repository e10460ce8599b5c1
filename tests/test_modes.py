"""Compilation modes (``PYMC_MIXVCOV_MODE``): every documented mode runs, an unknown one is refused.

A mode is chosen by the environment of the process, as a user chooses it, so each mode runs in
a subprocess. The compiled modes' sleepstudy fits are marked ``slow``: numba compiles each
Hessian graph for tens of seconds (a first sleepstudy fit took 2 to 5 minutes on a 2-core
machine, 11 s once pytensor has cached the code), JAX 35 to 55 s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import get_args

import numpy as np
import pytest
from conftest import reference, scaled_error

from pymc_mixvcov.compilation import derivatives
from pymc_mixvcov.errors import MixVcovError

HAS_JAX = importlib.util.find_spec("jax") is not None

# a small graph with the node that pytensor's in-place rewrites turned into a destructive one
# (the Hessian's rows are stacked with IncSubtensor): compiled in the mode of the environment
SMALL = """
import json
import numpy as np
import pytensor.tensor as pt
from pymc_mixvcov.compilation import derivatives as d

x = pt.vector("x", shape=(3,))
f = x[0] ** 2 * x[1] + pt.exp(x[2]) * x[0]
inputs, outputs = d._cached_graph(None, lambda: ([x], [f, pt.grad(f, x), d.hessian(f, x)]))
fn = d.compile_fn(inputs, outputs, rewrite=False)
v, g, H = fn(np.array([1.5, -0.5, 0.25]))
linker = type(fn.maker.linker).__name__ if hasattr(fn, "maker") else type(fn).__name__
print(json.dumps({"v": float(v), "g": np.asarray(g).tolist(), "H": np.asarray(H).tolist(), "linker": linker}))
"""

FIT = """
import json
import pymc_mixvcov as pmv
from pymc_mixvcov.compilation import derivatives as d

fit = pmv.lmm("Reaction ~ Days + (Days | Subject)", pmv.datasets.load("sleepstudy")).fit(method="ML")
linkers = sorted({type(f.maker.linker).__name__ for f in d._COMPILED.values() if hasattr(f, "maker")})
print(json.dumps({"loglik": fit.loglik, "vcov": fit.vcov("var", "observed").to_numpy().tolist(), "linkers": linkers}))
"""


def _run(script: str, mode: str | None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYMC_MIXVCOV_MODE"}
    if mode is not None:
        env["PYMC_MIXVCOV_MODE"] = mode
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)


def _result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_modes_are_the_literal():
    assert get_args(derivatives.Mode) == ("PY", "NUMBA", "FAST_RUN", "JAX")


@pytest.mark.parametrize("name", ["NUMBAA", "numba", "C"])
def test_unknown_mode_is_refused_listing_the_valid_ones(monkeypatch, sleepstudy, name):
    import pymc_mixvcov as pmv

    monkeypatch.setenv("PYMC_MIXVCOV_MODE", name)
    with pytest.raises(MixVcovError, match="is not a compilation mode") as err:
        # a signature never fitted in this session: nothing of it is in memory
        pmv.lmm("Reaction ~ 1 + (1 | Subject)", sleepstudy).fit(method="ML")
    for valid in get_args(derivatives.Mode):
        assert repr(valid) in str(err.value)


@pytest.mark.skipif(HAS_JAX, reason="jax is installed")
def test_jax_mode_without_jax_says_so(monkeypatch):
    monkeypatch.setenv("PYMC_MIXVCOV_MODE", "JAX")
    with pytest.raises(MixVcovError, match="needs the jax package"):
        derivatives.compile_mode()


def test_numba_mode_compiles_a_hessian_graph():
    # f = x0^2 x1 + exp(x2) x0, at x = (1.5, -0.5, 0.25): closed-form value, gradient and Hessian
    x0, x1, x2 = 1.5, -0.5, 0.25
    e = np.exp(x2)
    want_g = [2 * x0 * x1 + e, x0**2, e * x0]
    want_H = [[2 * x1, 2 * x0, e], [2 * x0, 0.0, 0.0], [e, 0.0, e * x0]]
    got = _result(_run(SMALL, "NUMBA"))
    assert got["linker"] == "NumbaLinker"
    # one evaluation of a few flops: rounding only
    np.testing.assert_allclose(got["v"], x0**2 * x1 + e * x0, rtol=1e-14)
    np.testing.assert_allclose(got["g"], want_g, rtol=1e-14)
    np.testing.assert_allclose(got["H"], want_H, rtol=1e-14, atol=1e-15)


def _check_sleepstudy(mode: str, linker: str, sleep_ml) -> None:
    got = _result(_run(FIT, mode))
    assert got["linkers"] == [linker]
    # lme4 1.1-31: -875.9697 (tests/reference/sleepstudy_ml.json); 1e-3 as in test_lmm_reference
    np.testing.assert_allclose(got["loglik"], reference("sleepstudy_ml")["logLik"], atol=1e-3)
    # the same optimum and derivatives as the default mode, to rounding: measured differences
    # are 1e-13 of the standard errors' products (NUMBA 9.9e-14, JAX 1.2e-13)
    np.testing.assert_allclose(got["loglik"], sleep_ml.loglik, rtol=1e-10)
    assert scaled_error(np.array(got["vcov"]), sleep_ml.vcov("var", "observed").to_numpy()).max() < 1e-8


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["NUMBA", "FAST_RUN"])
def test_numba_modes_fit_sleepstudy(mode, sleep_ml):
    _check_sleepstudy(mode, "NumbaLinker", sleep_ml)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_jax_mode_fits_sleepstudy(sleep_ml):
    _check_sleepstudy("JAX", "JAXLinker", sleep_ml)
