"""The only place that compiles pytensor graphs: values, gradients, Hessians, Jacobians.

Every derivative is symbolic (pytensor's reverse mode, Hessians as the Jacobian of the
gradient); none is a finite difference. Graphs are kept small: the likelihood is written on
cluster statistics (see :mod:`pymc_mixvcov.marginal`), so a Hessian graph holds a few hundred
nodes whatever the number of observations.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.gradient import grad, jacobian
from pytensor.tensor import TensorVariable

__all__ = ["compile_fn", "hessian", "jacobian_of", "LMMFunctions"]

#: Compilation mode. The default, ``"PY"``, evaluates the graph with NumPy and applies only
#: the merge rewrite (no JIT, no C compiler): graphs written on cluster statistics are small, so
#: start-up dominates and this is fastest on first and later runs alike. ``PYMC_MIXVCOV_MODE``
#: overrides it with any pytensor mode name (``NUMBA``, ``FAST_RUN``, ...).
MODE_NAME = os.environ.get("PYMC_MIXVCOV_MODE", "PY")
JACOBIAN = os.environ.get("PYMC_MIXVCOV_JACOBIAN", "unrolled")


def _mode():
    if MODE_NAME == "PY":
        return pytensor.compile.mode.Mode(linker="py", optimizer="merge")
    if MODE_NAME == "PYNONE":
        return pytensor.compile.mode.Mode(linker="py", optimizer=None)
    return MODE_NAME


def compile_fn(inputs: Sequence[TensorVariable], outputs: Sequence[TensorVariable]):
    """Compile ``outputs`` as a function of ``inputs`` in the configured mode."""
    return pytensor.function(list(inputs), list(outputs), mode=_mode(), on_unused_input="ignore")


def jacobian_of(y: TensorVariable, x: TensorVariable) -> TensorVariable:
    """Jacobian ``dy/dx`` of a vector ``y`` with respect to a vector ``x``.

    One reverse pass per entry of ``y``, looped by a ``Scan`` over the entries: the graph holds
    one copy of the reverse pass, which keeps compilation fast.
    """
    m = y.type.shape[0]
    if m == 0:
        return pt.zeros((0, x.type.shape[0]))
    if JACOBIAN == "unrolled" and m is not None:
        return pt.stack([grad(y[i], x, disconnected_inputs="ignore") for i in range(m)])
    return jacobian(y, x, vectorize=False)


def hessian(f: TensorVariable, x: TensorVariable) -> TensorVariable:
    """Full Hessian of scalar ``f`` with respect to the vector ``x`` (Jacobian of the gradient)."""
    return jacobian_of(grad(f, x), x)


class LMMFunctions:
    """Compiled functions of a Gaussian marginal likelihood, built on first use.

    Parameters
    ----------
    marginal : GaussianMarginal
        Symbolic likelihood pieces.
    method : {"ML", "REML"}
        The criterion optimised.
    scales : ScaleMaps
        Symbolic maps from the natural parameters to every reporting scale.
    """

    def __init__(self, marginal, method: str, scales):
        self.m = marginal
        self.method = method
        self.scales_map = scales
        spec = marginal.spec
        self.P = spec.n_params
        self.vi = spec.variance_index
        self.fi = spec.fixed_index
        self._cache: dict[str, object] = {}

    def _full(self, vv: TensorVariable) -> TensorVariable:
        return pt.set_subtensor(pt.zeros((self.P,))[self.vi], vv)

    def _get(self, key: str, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def profile(self, vv: np.ndarray) -> tuple[float, np.ndarray]:
        """Profiled criterion (``beta`` at its GLS value) and its gradient in ``vv``."""

        def build():
            v = pt.vector("vv", shape=(self.vi.size,))
            f = self.m.profiled_loglik(self._full(v), self.method)
            beta, _ = self.m.gls(self._full(v))
            nat = pt.set_subtensor(self._full(v)[self.fi], beta)
            return compile_fn([v], [f, grad(f, v), nat])

        f, g, nat = self._get("profile", build)(np.asarray(vv, float))
        return float(f), np.asarray(g), np.asarray(nat)

    def information(self, nat: np.ndarray) -> dict[str, np.ndarray]:
        """Criterion, gradient, observed and expected information on the natural scale.

        For ML these are derivatives in all natural parameters. For REML the criterion does not
        involve ``beta``: gradient and information are those of the REML criterion in the variance
        parameters, with ``X^T V^{-1} X`` as the ``beta`` block (zero cross block).
        """

        def build():
            nat_d = pt.vector("nat", shape=(self.P,))  # differentiation point
            nat_0 = pt.vector("nat0", shape=(self.P,))  # reference point of the KL divergence
            if self.method == "ML":
                ll = self.m.loglik(nat_d)
                gr = grad(ll, nat_d)
                obs = -hessian(ll, nat_d)
                exp = hessian(self.m.kl(nat_d, nat_0, "ML"), nat_d)
            else:
                _, XtVX = self.m.gls(nat_d)
                vd = nat_d[self.vi]
                ll = self.m.reml_loglik(self._full(vd))
                gr = pt.set_subtensor(pt.zeros((self.P,))[self.vi], grad(ll, vd))
                obs_v = -hessian(ll, vd)
                exp_v = hessian(self.m.kl(self._full(vd), self._full(nat_0[self.vi]), "REML"), vd)
                obs = _blockdiag(XtVX, obs_v, self.fi, self.vi, self.P)
                exp = _blockdiag(XtVX, exp_v, self.fi, self.vi, self.P)
            return compile_fn([nat_d, nat_0], [ll, gr, obs, exp])

        ll, gr, obs, exp = self._get("information", build)(nat, nat)
        return {"loglik": float(ll), "grad": np.asarray(gr), "observed": np.asarray(obs), "expected": np.asarray(exp)}

    def scales(self, nat: np.ndarray) -> dict[str, np.ndarray]:
        """Values and Jacobians (with respect to the natural parameters) of every scale."""

        def build():
            nat_d = pt.vector("nat", shape=(self.P,))
            outs = {}
            for name, (val, _) in self.scales_map.maps(nat_d).items():
                outs[f"value_{name}"] = val
                outs[f"jac_{name}"] = jacobian_of(val, nat_d)
            return compile_fn([nat_d], list(outs.values())), list(outs)

        fn, keys = self._get("scales", build)
        return dict(zip(keys, (np.asarray(v) for v in fn(nat)), strict=True))


def _blockdiag(XtVX, Hv, fi, vi, P) -> TensorVariable:
    out = pt.zeros((P, P))
    out = pt.set_subtensor(out[np.ix_(fi, fi)], XtVX) if fi.size else out
    return pt.set_subtensor(out[np.ix_(vi, vi)], Hv)
