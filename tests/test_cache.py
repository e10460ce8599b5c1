"""The on-disk graph cache (pymc_mixvcov/cache.py) and the model map it keeps
(pymc_mixvcov/derivatives.py: ModelMap)."""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest

import pymc_mixvcov as pmv
from pymc_mixvcov import cache, derivatives
from pymc_mixvcov.evaluator import GraphFunction
from pymc_mixvcov.marginal import build_structure, signature_of
from pymc_mixvcov.spec import inspect_model


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYMC_MIXVCOV_CACHE", str(tmp_path))
    return tmp_path


def _map(model, random):
    spec = inspect_model(model, random)
    return spec, derivatives.ModelMap(spec, signature_of(build_structure(spec)))


def test_graph_round_trip():
    x, y = pt.vector("x"), pt.scalar("y")
    out = [pt.exp(x) * y + pt.sum(x**2), pt.stack([x[0], y])]
    ins2, outs2 = cache.loads_graph(cache.dumps_graph([x, y], out))
    args = [np.array([0.1, -0.3, 2.0]), 1.5]
    for a, b in zip(GraphFunction([x, y], out)(*args), GraphFunction(ins2, outs2)(*args), strict=True):
        np.testing.assert_array_equal(a, b)


def test_model_map_is_stored_and_loaded(empty_cache, monkeypatch):
    model = pmv.lmm("Reaction ~ Days + (Days | Subject)", pmv.datasets.load("sleepstudy"))
    spec, first = _map(model.model, model.random)
    nat = np.asarray(spec.nat0, float) + 0.1
    phi, J, T = first(nat)
    u, Ju = first.unconstrained(nat)
    assert len(list(empty_cache.glob("modelmap-*.pkl"))) == 1
    # a second map of the same model loads the derivatives: nothing is differentiated again
    monkeypatch.setattr(derivatives, "jacobian_of", lambda *a, **k: pytest.fail("rebuilt, not loaded"))
    _, second = _map(model.model, model.random)
    phi2, J2, T2 = second(nat)
    u2, Ju2 = second.unconstrained(nat)
    for a, b in [(phi, phi2), (J, J2), (T, T2), (u, u2), (Ju, Ju2)]:
        np.testing.assert_array_equal(a, b)
    # and they are the derivatives: central differences (step 1e-6, truncation ~1e-12)
    h = 1e-6
    for i in range(nat.size):
        e = np.zeros_like(nat)
        e[i] = h
        fd = (second(nat + e, second=False)[0] - second(nat - e, second=False)[0]) / (2 * h)
        np.testing.assert_allclose(J2[:, i], fd, rtol=0, atol=1e-7 * max(1.0, np.abs(J2).max()))
        fdJ = (second(nat + e)[1] - second(nat - e)[1]) / (2 * h)
        np.testing.assert_allclose(T2[:, :, i], fdJ, rtol=0, atol=1e-6 * max(1.0, np.abs(T2).max()))


def test_model_map_with_shared_data_is_built_not_stored(empty_cache):
    df = pmv.datasets.load("sleepstudy")
    codes = df["Subject"].cat.codes.to_numpy()
    coords = {"Subject": list(df["Subject"].cat.categories), "fixed": ["(Intercept)", "Days"]}
    X = np.column_stack([np.ones(len(df)), df["Days"].to_numpy(float)])
    with pm.Model(coords=coords) as model:
        scale = pm.Data("scale", 2.0)  # a shared variable in the random-effect SD
        beta = pm.Normal("beta", 0, 100, dims="fixed")
        sd = pm.HalfNormal("sd", 50)
        u = pm.Normal("u", 0, sd * scale, dims="Subject")
        sigma = pm.HalfNormal("sigma", 50)
        pm.Normal("y", pt.dot(X, beta) + u[codes], sigma, observed=df["Reaction"].to_numpy(float))
    spec, mm = _map(model, ["u"])
    nat = np.asarray(spec.nat0, float)
    phi, J, _ = mm(nat, second=False)
    assert not list(empty_cache.glob("modelmap-*.pkl"))
    # theta = sd * scale / sigma: d theta / d sd = scale / sigma, read through the shared value
    start = {p.name: p.start for p in spec.params}
    theta_row = signature_of(build_structure(spec)).p
    np.testing.assert_allclose(J[theta_row, start["sd"]], 2.0 / nat[start["sigma"]], rtol=1e-12)
    assert np.isfinite(phi).all()


def test_entries_are_keyed_by_evaluation_mode(empty_cache, monkeypatch):
    default = cache._file("k")
    monkeypatch.setenv("PYMC_MIXVCOV_MODE", "NUMBA")
    assert cache._file("k") != default
