"""Shared fixtures: fits are made once per session (each costs a few seconds of graph building)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pymc_mixvcov as pmv

REF = Path(__file__).parent / "reference"

# no status lines in tests (pymc_mixvcov/output/progress.py); tests of the display set their own
os.environ.setdefault("PYMC_MIXVCOV_PROGRESS", "0")


def central_differences(f, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central differences of ``f`` at ``x`` (a test of exact derivatives, never used by the
    package), one row per coordinate, with the step ``h * max(1, |x_k|)``."""
    out = []
    for k in range(x.size):
        e = np.zeros_like(x)
        e[k] = h * max(1.0, abs(x[k]))
        out.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * e[k]))
    return np.array(out)


@pytest.fixture(scope="module")
def crossed_vector():
    """Simulated crossed design with a correlated vector term: 8 g-levels (intercept and slope)
    crossed with 6 h-levels, 3 replicates per cell, n = 144."""
    rng = np.random.default_rng(14)
    g = np.repeat(np.arange(8), 18)
    h = np.tile(np.repeat(np.arange(6), 3), 8)
    x = rng.normal(size=g.size)
    G = np.array([[1.0, 0.3], [0.3, 0.5]])
    u = rng.multivariate_normal(np.zeros(2), G, size=8)
    v = rng.normal(scale=0.7, size=6)
    y = 1.0 + 0.5 * x + u[g, 0] + u[g, 1] * x + v[h] + rng.normal(scale=0.8, size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{k}" for k in g], "h": [f"h{k}" for k in h]})


def reference(name: str) -> dict:
    """A reference file written by tests/reference/generate.R (lme4 1.1-31, merDeriv 0.2-4, R 4.2.2)."""
    return json.loads((REF / f"{name}.json").read_text())


def ref_matrix(ref: dict, key: str) -> pd.DataFrame:
    m = ref[key]
    return pd.DataFrame(np.array(m["values"], float), index=m["colnames"], columns=m["colnames"])


def scaled_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """``|got - want| / sqrt(want_ii want_jj)``: entrywise error relative to the standard errors."""
    d = np.sqrt(np.abs(np.diag(want)))
    return np.abs(got - want) / np.outer(d, d)


@pytest.fixture(scope="session")
def sleepstudy():
    return pmv.datasets.load("sleepstudy")


@pytest.fixture(scope="session")
def sleep_ml(sleepstudy):
    return pmv.lmm("Reaction ~ Days + (Days | Subject)", sleepstudy).fit(method="ML")


@pytest.fixture(scope="session")
def sleep_reml(sleepstudy):
    return pmv.lmm("Reaction ~ Days + (Days | Subject)", sleepstudy).fit(method="REML")


@pytest.fixture(scope="session")
def penicillin_ml():
    return pmv.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", pmv.datasets.load("penicillin")).fit("ML")


@pytest.fixture(scope="session")
def poisson_slope_data():
    """Small Poisson data with a correlated random intercept and slope: 12 clusters of 8 on
    ``g``, ``log mu = 0.3 + 0.5 x + u0_g + u1_g x`` with ``u = L z``, ``L = [[0.6, 0], [0.2, 0.4]]``
    (seed 5), and a crossed factor ``h`` with 5 levels."""
    rng = np.random.default_rng(5)
    G, m = 12, 8
    g = np.repeat(np.arange(G), m)
    x = rng.uniform(-1, 1, size=G * m)
    u = rng.normal(size=(G, 2)) @ np.array([[0.6, 0.0], [0.2, 0.4]]).T
    y = rng.poisson(np.exp(0.3 + 0.5 * x + u[g, 0] + u[g, 1] * x))
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g), "h": pd.Categorical(np.arange(G * m) % 5)})


@pytest.fixture(scope="session")
def cbpp():
    return pmv.datasets.load("cbpp")


@pytest.fixture(scope="session")
def cbpp_fit(cbpp):
    """lme4's cbpp binomial GLMM, Laplace (tests/reference/cbpp_binomial.json)."""
    return pmv.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial").fit()


def on_engine(ref, fns):
    """``ref``'s fit with its engine's functions replaced by ``fns``, at ``ref``'s estimates: the
    results' code (scores, sandwiches) on another engine's pieces at the same parameters."""
    import copy

    fit = copy.copy(ref)
    nat = ref._opt["nat"]
    fit._functions = fns
    fit._opt = {**fns.information(nat), **fns.scales(nat), "nat": nat}
    fit._cache, fit._vcov_nat = {}, {}
    return fit
