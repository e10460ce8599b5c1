"""The graph evaluator's direct NumPy thunks against pytensor's own ``Op.perform``.

Every thunk must give ``perform``'s result: to the last bit or so for elementwise ops and
scatters (the same arithmetic), and to a few ulps where the order of operations differs:
reductions, whose rearranged form sums in another order (1e-13 relative on sums of 8 to 2,000
terms of order 1), and small products, where NumPy's kernel may fuse multiply and add (1e-14
absolute on entries that are sums of a few products of standard normals, of order 1).
"""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.graph.fg import FunctionGraph

from pymc_mixvcov.compilation.evaluator import GraphFunction, thunk_of

RNG = np.random.default_rng(7)


def _reference(inputs, outputs, values):
    """pytensor's Python linker, no rewrites: each node's own ``perform``."""
    mode = pytensor.compile.mode.Mode(linker="py", optimizer=None)
    fn = pytensor.function(inputs, outputs, mode=mode, on_unused_input="ignore")
    return fn(*values)


def _direct_nodes(outputs) -> int:
    fg = FunctionGraph(outputs=outputs, clone=False)
    return sum(thunk_of(node) is not None for node in fg.toposort())


@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        ((2000, 2, 2), 0),
        ((2000, 2, 2), 1),
        ((2000, 2, 2), 2),
        ((2000, 2, 2), (1, 2)),
        ((2000, 2, 2), (0, 2)),
        ((2000, 2, 2, 2), 2),
        ((2000, 2), 1),
        ((2000, 2), 0),
        ((300, 6, 6), 0),
        ((300, 6, 6, 6), 2),
        ((40, 50), 1),
        ((3, 2), 0),
        ((2000, 2, 2), None),
    ],
)
@pytest.mark.parametrize("reducer", [pt.sum, pt.max, pt.prod])
def test_reductions_match_perform(shape, axis, reducer):
    x = pt.tensor("x", shape=(None,) * len(shape))
    out = reducer(x, axis=axis)
    value = RNG.uniform(0.5, 1.5, size=shape)  # products of up to 2,000 terms stay finite
    got = GraphFunction([x], [out])(value)[0]
    (want,) = _reference([x], [out], [value])
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


def test_reduction_of_a_transposed_view():
    x = pt.tensor3("x")
    out = pt.sum(pt.swapaxes(x, 1, 2) * 2.0, axis=1)
    value = RNG.standard_normal((2000, 2, 3))
    np.testing.assert_allclose(GraphFunction([x], [out])(value)[0], _reference([x], [out], [value])[0], rtol=1e-13)


def test_scatter_add_one_index_with_duplicates():
    theta, w = pt.vector("theta"), pt.tensor3("w")
    idx = RNG.integers(0, 5, size=(2000, 2, 2))
    out = pt.grad(pt.sum(w * theta[idx]), theta)  # d/dtheta of a gather is a scatter-add
    assert _direct_nodes([out]) >= 1
    args = [RNG.standard_normal(5), RNG.standard_normal((2000, 2, 2))]
    np.testing.assert_allclose(
        GraphFunction([theta, w], [out])(*args)[0], _reference([theta, w], [out], args)[0], rtol=1e-12
    )


def test_scatter_add_two_indices_broadcast():
    x, y = pt.matrix("x"), pt.tensor3("y")
    rows = np.arange(300)[:, None, None]
    cols = RNG.integers(0, 5, size=(300, 2, 2))
    out = pt.inc_subtensor(x[rows, cols], y)
    args = [RNG.standard_normal((300, 5)), RNG.standard_normal((300, 2, 2))]
    np.testing.assert_allclose(GraphFunction([x, y], [out])(*args)[0], _reference([x, y], [out], args)[0], rtol=1e-13)


def test_scatter_add_negative_and_invalid_indices_follow_numpy():
    x, y, i = pt.vector("x"), pt.vector("y"), pt.lvector("i")
    out = pt.inc_subtensor(x[i], y)
    fn = GraphFunction([x, y, i], [out])
    args = [np.zeros(4), np.array([1.0, 2.0, 3.0]), np.array([-1, 0, -1])]
    np.testing.assert_array_equal(fn(*args)[0], _reference([x, y, i], [out], args)[0])
    with pytest.raises(IndexError):
        fn(np.zeros(4), np.ones(2), np.array([0, 4]))


@pytest.mark.parametrize(("m", "k", "n"), [(2, 2, 2), (2, 2, 1), (1, 3, 2), (2, 2, 4), (3, 3, 3)])
def test_small_matmul_matches_perform(m, k, n):
    a = pt.tensor3("a", shape=(None, m, k))
    b = pt.tensor3("b", shape=(None, n, k))
    out = pt.matmul(a, pt.swapaxes(b, 1, 2))  # a transposed operand, as in the gradient graphs
    args = [RNG.standard_normal((500, m, k)), RNG.standard_normal((500, n, k))]
    got, want = GraphFunction([a, b], [out])(*args)[0], _reference([a, b], [out], args)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)


def test_small_matmul_broadcasts_the_batch():
    a = pt.tensor3("a", shape=(1, 2, 2))
    b = pt.tensor3("b", shape=(None, 2, 2))
    out = pt.matmul(a, b)
    args = [RNG.standard_normal((1, 2, 2)), RNG.standard_normal((50, 2, 2))]
    got, want = GraphFunction([a, b], [out])(*args)[0], _reference([a, b], [out], args)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)


def test_elementwise_thunks_match_perform():
    x, y = pt.matrix("x"), pt.vector("y")
    outs = [pt.softplus(x), pt.second(x, y), x + y + x * y + 1.0, pt.exp(x) * y * 2.0 * x]
    assert _direct_nodes(outs) >= 4
    args = [RNG.standard_normal((50, 3)) * 30, RNG.standard_normal(3)]
    got = GraphFunction([x, y], outs)(*args)
    for g, w in zip(got, _reference([x, y], outs, args), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-15)


def test_op_from_graph_left_in_a_graph_is_evaluated_without_compiling():
    a, b = pt.vector("a"), pt.vector("b")
    ofg = pytensor.compile.builders.OpFromGraph([a, b], [pt.exp(a) * b + 1.0])
    x, y = pt.vector("x"), pt.vector("y")
    out = ofg(x, y) * 2.0
    assert _direct_nodes([out]) >= 1
    args = [RNG.standard_normal(5), RNG.standard_normal(5)]
    np.testing.assert_allclose(
        GraphFunction([x, y], [out])(*args)[0], 2.0 * (np.exp(args[0]) * args[1] + 1.0), rtol=1e-15
    )


def test_integer_inputs_with_a_float_result_and_casts():
    k, x = pt.lvector("k"), pt.vector("x")
    outs = [pt.gammaln(k + 1), pt.cast(x * 3.7, "int64"), k * x]
    assert _direct_nodes(outs) >= 3
    args = [np.arange(50), RNG.standard_normal(50)]
    got = GraphFunction([k, x], outs)(*args)
    for g, w in zip(got, _reference([k, x], outs, args), strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-15)
