"""Reporting scales and the delta method.

Every scale is a symbolic map of the natural parameters (the model's free variables on
their constrained scale); covariances move between scales with the exact Jacobian ``J`` of the
map: ``V_scale = J V_natural J^T``. At the maximum-likelihood estimate this equals
re-parameterising the information matrix.

Scales (rows: fixed effects, then variance parameters in lme4's theta order, i.e. the
column-major lower triangle of each term, terms in order, then the residual):

``"var"``
    variances ``cov_<group>.<term>``, covariances ``cov_<group>.<row>.<col>``, ``residual``
    (``sigma^2``); merDeriv's labels.
``"sd"``
    ``sd_<term>|<group>``, ``cor_<row>.<col>|<group>``, ``sigma``; lme4's ``sdcor``.
``"cholesky"``
    ``theta_<group>.<term>``, ``theta_<group>.<row>.<col>``: lme4's theta, the entries of the
    Cholesky factor of each term's covariance relative to ``sigma`` (``G = sigma^2 L L^T``),
    then ``sigma``.
``"natural"``
    the model's own free parameters; ``"unconstrained"``: PyMC's transformed values.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.replace import graph_replace
from pytensor.tensor import TensorVariable

from .errors import MixVcovError
from .spec import GaussianSpec

__all__ = ["Scale", "SCALES", "ScaleMaps", "check_scale", "delta_method"]

Scale = Literal["sd", "var", "cholesky", "natural", "unconstrained"]
SCALES: tuple[str, ...] = get_args(Scale)


def check_scale(scale: str) -> str:
    """Return ``scale`` if it is valid, else raise an error listing the valid ones."""
    if scale not in SCALES:
        raise MixVcovError(f"unknown scale {scale!r}; valid scales are: {', '.join(map(repr, SCALES))}")
    return scale


def _lower_tri_colmajor(r: int) -> list[tuple[int, int]]:
    return [(i, j) for j in range(r) for i in range(j, r)]


class ScaleMaps:
    """Symbolic maps ``natural -> scale`` and their labels for a :class:`GaussianSpec`."""

    def __init__(self, spec: GaussianSpec, fixed_labels: list[str] | None = None):
        self.spec = spec
        nat_labels = spec.natural_labels
        if fixed_labels is None:
            fixed_labels = [nat_labels[i] for i in spec.fixed_index]
        if len(fixed_labels) != spec.fixed_index.size:
            raise MixVcovError(
                f"{len(fixed_labels)} fixed-effect labels given for {spec.fixed_index.size} fixed effects"
            )
        self.fixed_labels = list(fixed_labels)

    def labels(self, scale: str) -> list[str]:
        check_scale(scale)
        spec = self.spec
        if scale == "natural":
            return spec.natural_labels
        if scale == "unconstrained":
            return spec.unconstrained_labels()
        out = list(self.fixed_labels)
        for t in spec.terms:
            g, e = t.group, t.effects
            for i, j in _lower_tri_colmajor(t.r):
                if scale == "var":
                    out.append(f"cov_{g}.{e[i]}" if i == j else f"cov_{g}.{e[i]}.{e[j]}")
                elif scale == "sd":
                    out.append(f"sd_{e[i]}|{g}" if i == j else f"cor_{e[i]}.{e[j]}|{g}")
                else:
                    out.append(f"theta_{g}.{e[i]}" if i == j else f"theta_{g}.{e[i]}.{e[j]}")
        out.append("residual" if scale == "var" else "sigma")
        return out

    def maps(self, nat: TensorVariable) -> dict[str, tuple[TensorVariable, list[str]]]:
        """Symbolic values of every scale at ``nat`` (natural is the identity)."""
        spec = self.spec
        repl = {spec.nat: nat}
        sigma = graph_replace(spec.sigma, repl, strict=False)
        beta = nat[spec.fixed_index]
        parts = {"var": [beta], "sd": [beta], "cholesky": [beta]}
        for t in spec.terms:
            lam = graph_replace(t.lam, repl, strict=False)
            G = pt.dot(lam, lam.T)
            sd = pt.sqrt(pt.diagonal(G))
            idx = _lower_tri_colmajor(t.r)
            rows = np.array([i for i, _ in idx])
            cols = np.array([j for _, j in idx])
            parts["var"].append(G[rows, cols])
            cor = G / (sd[:, None] * sd[None, :])
            diag = rows == cols
            parts["sd"].append(pt.where(diag, sd[rows], cor[rows, cols]))
            parts["cholesky"].append(lam[rows, cols] / sigma)
        parts["var"].append(pt.reshape(sigma**2, (1,)))
        parts["sd"].append(pt.reshape(sigma, (1,)))
        parts["cholesky"].append(pt.reshape(sigma, (1,)))
        out = {k: (pt.concatenate(v), self.labels(k)) for k, v in parts.items()}
        unc = graph_replace(spec.unconstrained(), repl, strict=False)
        out["unconstrained"] = (unc, self.labels("unconstrained"))
        return out


def delta_method(V: np.ndarray, J: np.ndarray, depends: np.ndarray | None = None) -> np.ndarray:
    """``J V J^T``: the covariance of ``h(x)`` when ``x`` has covariance ``V`` and ``J = dh/dx``.

    Entries of ``V`` that are NaN (parameters held at a boundary) propagate only to the rows of
    ``h`` that depend on them: ``depends[i, k]`` says whether ``h_i`` depends on ``x_k`` (default:
    ``J != 0``, which misses dependence whose derivative vanishes at the boundary).
    """
    bad = np.isnan(np.diag(V))
    Vc = np.where(np.isnan(V), 0.0, V)
    Jc = np.where(np.isfinite(J), J, 0.0)
    out = Jc @ Vc @ Jc.T
    touched = ~np.all(np.isfinite(J[:, ~bad]), axis=1)
    if bad.any():
        dep = np.abs(J) > 0 if depends is None else depends
        touched |= np.any(dep[:, bad], axis=1)
    if touched.any():
        out[touched, :] = np.nan
        out[:, touched] = np.nan
    return 0.5 * (out + out.T)
