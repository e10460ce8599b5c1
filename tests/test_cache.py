"""The on-disk graph cache (pymc_mixvcov/cache.py) and the model map it keeps
(pymc_mixvcov/derivatives.py: ModelMap)."""

import pickle

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest

import pymc_mixvcov as pmv
from pymc_mixvcov.compilation import cache, derivatives
from pymc_mixvcov.compilation.evaluator import GraphFunction
from pymc_mixvcov.engines.marginal import build_structure, signature_of
from pymc_mixvcov.model.spec import inspect_model


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty disk cache, and no model map compiled earlier in this process (kept in memory)."""
    monkeypatch.setenv("PYMC_MIXVCOV_CACHE", str(tmp_path))
    monkeypatch.setattr(derivatives, "_MAPS", type(derivatives._MAPS)())
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


# -- entries are validated before they are evaluated -----------------------------------------------
def _graph_a():
    x = pt.vector("x")
    return [x], [pt.exp(x)]


def _graph_b():
    x, y = pt.vector("x"), pt.matrix("y")
    return [x, y], [pt.dot(y, x), pt.sum(y)]


def _evaluate_b(inputs, outputs):
    x, y = np.array([1.0, 2.0]), np.array([[1.0, 0.5], [0.0, 3.0]])
    return GraphFunction(inputs, outputs)(x, y)


def _fail():
    pytest.fail("rebuilt, not loaded")


def test_an_entry_of_another_key_is_rebuilt_never_evaluated(empty_cache):
    cache.load_graph("p1-r1-s9", _graph_a)
    path_a, path_b = cache._file("p1-r1-s9"), cache._file("p2-r2-s10")
    # a readable entry of another signature under this signature's name (a copied or renamed
    # file, a hash collision of the name): before the entries were validated, it was loaded
    # and evaluated as if it were this signature's graph
    path_b.write_bytes(path_a.read_bytes())
    built = []
    ins, outs = cache.load_graph("p2-r2-s10", lambda: built.append(1) or _graph_b())
    assert built == [1]
    # and it is the right graph: y @ x = (2, 6) and sum(y) = 4.5, by hand
    got = _evaluate_b(ins, outs)
    np.testing.assert_array_equal(got[0], [2.0, 6.0])
    assert float(got[1]) == 4.5
    # the entry was overwritten: the next load takes it from disk
    ins2, outs2 = cache.load_graph("p2-r2-s10", _fail)
    for a, b in zip(_evaluate_b(ins2, outs2), got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_entry_from_another_version_is_rebuilt(empty_cache):
    cache.load_graph("k", _graph_b)
    path = cache._file("k")
    # under this file name, an entry written by another version of the package
    header = {"format": cache.FORMAT, "key": "k", "versions": "0.0.1|another version"}
    path.write_bytes(pickle.dumps(header) + cache.dumps_graph(*_graph_a()))
    built = []
    ins, outs = cache.load_graph("k", lambda: built.append(1) or _graph_b())
    assert built == [1] and len(ins) == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "old format"])
def test_an_unreadable_entry_is_rebuilt_and_replaced(empty_cache, damage):
    cache.load_graph("k", _graph_b)
    path = cache._file("k")
    blob = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x80\x05not a pickle at all")
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # the previous format: the graph's pickle alone, no header
        path.write_bytes(cache.dumps_graph(*_graph_a()))
    built = []
    cache.load_graph("k", lambda: built.append(1) or _graph_b())
    assert built == [1]
    ins, outs = cache.load_graph("k", _fail)  # replaced by a good entry
    np.testing.assert_array_equal(_evaluate_b(ins, outs)[0], [2.0, 6.0])


def test_a_swapped_entry_does_not_break_later_fits(empty_cache, monkeypatch):
    # the end-to-end form of the failure: a readable entry of another function under the name of
    # sleepstudy's profile function used to crash every later run with an IndexError inside the
    # evaluator; now it is rebuilt and the fit is the fit of a clean cache
    model = pmv.lmm("Reaction ~ Days + (Days | Subject)", pmv.datasets.load("sleepstudy"))
    monkeypatch.setattr(derivatives, "_COMPILED", type(derivatives._COMPILED)())
    clean = model.fit(method="ML")
    profile = [f for f in empty_cache.glob("profile-ML-*.pkl")]
    scales = [f for f in empty_cache.glob("scales-*.pkl")]
    assert len(profile) == 1 and len(scales) == 1
    profile[0].write_bytes(scales[0].read_bytes())
    monkeypatch.setattr(derivatives, "_COMPILED", type(derivatives._COMPILED)())  # a new process
    again = model.fit(method="ML")
    # the same computation on the same data: identical to the last bit
    np.testing.assert_array_equal(again.params("var").to_numpy(), clean.params("var").to_numpy())
    np.testing.assert_array_equal(again.vcov("var").to_numpy(), clean.vcov("var").to_numpy())


# -- failed writes -----------------------------------------------------------------------------------
def test_a_failed_write_warns_once_per_process(tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("PYMC_MIXVCOV_CACHE", str(blocker / "cache"))  # its parent is a file
    monkeypatch.setattr(cache, "_write_warned", False, raising=False)
    with pytest.warns(pmv.MixVcovWarning, match="could not write the compile cache") as record:
        ins, outs = cache.load_graph("k1", _graph_b)
        cache.load_graph("k2", _graph_a)
    assert len([w for w in record if "compile cache" in str(w.message)]) == 1
    np.testing.assert_array_equal(_evaluate_b(ins, outs)[0], [2.0, 6.0])  # and the graph is still used
    assert not list(tmp_path.rglob("*.tmp"))


# -- the in-memory cache is bounded ------------------------------------------------------------------
def test_compiled_functions_in_memory_are_bounded(empty_cache, monkeypatch):
    monkeypatch.setattr(derivatives, "_COMPILED", type(derivatives._COMPILED)())
    monkeypatch.setattr(derivatives, "COMPILED_MAXSIZE", 3, raising=False)
    fns = [derivatives._cached_function(f"k{i}", _graph_a) for i in range(5)]
    mode = derivatives.compile_mode()  # entries are kept per key and compilation mode
    assert list(derivatives._COMPILED) == [(k, mode) for k in ("k2", "k3", "k4")]
    assert derivatives._cached_function("k3", _fail) is fns[3]  # a hit is kept, and moved last
    derivatives._cached_function("k0", _fail)  # dropped from memory, loaded from disk
    assert list(derivatives._COMPILED) == [(k, mode) for k in ("k4", "k3", "k0")]
